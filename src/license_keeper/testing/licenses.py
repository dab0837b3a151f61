"""A factory for structurally valid (and deliberately broken) Kong Enterprise license documents.

For tests only: the signatures are random hex, not signed by Kong.
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
import string
import uuid

from license_keeper.license import LicenseRecord

__all__ = ["LEAK_PATTERNS", "leaks", "make_document", "make_record"]

_KEY_ALPHABET = string.ascii_letters + string.digits


def random_license_key() -> str:
    """A key shaped like Kong's, e.g. 00141000017ODj3AAG_a1V41000004wT0OEAU."""
    part1 = "0014" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(14))
    part2 = "a1V4" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(14))
    return f"{part1}_{part2}"


def random_signature(n_bytes: int = 256) -> str:
    """Random lowercase hex, 2 * n_bytes characters (512 by default)."""
    return secrets.token_hex(n_bytes)


def _iso(value: datetime.date | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


def make_document(
    *,
    customer: str = "Example Company, Inc",
    product: str = "Konnect Enterprise",
    creation_date: datetime.date | str | None = None,
    expiration_date: datetime.date | str | None = None,
    license_key: str | None = None,
    signature: str | None = None,
    version: str | int = "1",
    admin_seats: str = "1",
    dataplanes: str = "1",
    support_plan: str = "None",
) -> str:
    """A license document as Konnect serves it in `payload`. Defaults: valid for a year from today (UTC)."""
    today = datetime.datetime.now(datetime.UTC).date()
    if creation_date is None:
        creation_date = today
    if expiration_date is None:
        expiration_date = today + datetime.timedelta(days=365)
    doc = {
        "license": {
            "payload": {
                "admin_seats": admin_seats,
                "customer": customer,
                "dataplanes": dataplanes,
                "license_creation_date": _iso(creation_date),
                "license_expiration_date": _iso(expiration_date),
                "license_key": license_key if license_key is not None else random_license_key(),
                "product_subscription": product,
                "support_plan": support_plan,
            },
            "signature": signature if signature is not None else random_signature(),
            "version": version,
        }
    }
    return json.dumps(doc, separators=(",", ":"))


def make_record(
    *,
    updated_at: int,
    id: str | None = None,
    source: str = "konnect",
    document: str | None = None,
    **document_kwargs: object,
) -> LicenseRecord:
    """A LicenseRecord around `document` (or a fresh make_document(**document_kwargs))."""
    if document is None:
        document = make_document(**document_kwargs)  # type: ignore[arg-type]
    elif document_kwargs:
        raise TypeError("pass either document or document keyword arguments, not both")
    record_id = id if id is not None else str(uuid.uuid4())
    return LicenseRecord(document=document, id=record_id, updated_at=updated_at, source=source)


# What must never leave the keeper (logs, Events, metrics): license keys of this factory's shape,
# signatures (long hex) and raw document fields.
LEAK_PATTERNS = [
    re.compile(r"0014[A-Za-z0-9]{14}_a1V4[A-Za-z0-9]{14}"),
    re.compile(r"[0-9a-fA-F]{64,}"),
    re.compile(r'"license_key"|\\"license_key\\"|license_expiration_date|"signature"'),
]


def leaks(text: str) -> list[str]:
    """The license material found in ``text`` (each cut to 40 characters), for assertions."""
    return [m.group(0)[:40] for p in LEAK_PATTERNS for m in p.finditer(text)]
