"""The Kong Enterprise license document: parse, validate structurally, expiry maths, fingerprint.

Pure: no I/O. The signature algorithm and key are not public, so validation is structural only.
Errors never carry values from the document (no key, no signature, no customer), not even through
exception chains.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KONG_ERROR_NOTICE_DAYS",
    "KONG_GRACE_PERIOD_DAYS",
    "KONG_WARNING_NOTICE_DAYS",
    "MAX_UPDATED_AT",
    "License",
    "LicenseError",
    "LicenseRecord",
    "UpdatedAtError",
    "describe",
    "format_restored_at",
    "has_lone_surrogate",
    "parse_license",
    "parse_restored_at",
    "parse_updated_at",
]

_PAYLOAD_FIELDS: dict[str, str] = {
    # document key -> License attribute
    "customer": "customer",
    "product_subscription": "product",
    "license_key": "license_key",
    "license_creation_date": "creation_date",
    "license_expiration_date": "expiration_date",
    "admin_seats": "admin_seats",
    "dataplanes": "dataplanes",
    "support_plan": "support_plan",
}
_DATE_FIELDS = frozenset({"license_creation_date", "license_expiration_date"})
_HEX = frozenset(string.hexdigits)
_SURROGATES = re.compile("[\ud800-\udfff]")

# ``updated_at`` is Konnect's Unix time in seconds. Larger than year 3000 in seconds means someone wrote
# milliseconds; later than now plus a day of clock skew means a value that would beat every future
# Konnect license (the "newer_updated_at" rule) for as long as it is held.
MAX_UPDATED_AT = 32503680000  # 3000-01-01T00:00:00Z
UPDATED_AT_SKEW_SECONDS = 86400.0
_UPDATED_AT_MAX_DIGITS = 20  # int() refuses more than 4300 digits; no sane value has more than 11

# What Kong does as expiry nears (EE license_helpers.lua; REFERENCE §9): a daily WARN line below 90 days
# left, ERR below 30; at expiry a grace period of 30 days begins (daily CRIT) and after it the Admin API
# is read-only (only /licenses and the keyring recovery accept writes).
KONG_WARNING_NOTICE_DAYS = 90
KONG_ERROR_NOTICE_DAYS = 30
KONG_GRACE_PERIOD_DAYS = 30


class LicenseError(ValueError):
    """A license document is structurally invalid. The message names the field, never a value."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"license {field}: {problem}")

    def __str__(self) -> str:
        return f"license {self.field}: {self.problem}"


@dataclass(frozen=True, repr=False)
class License:
    customer: str
    product: str
    license_key: str
    creation_date: datetime.date
    expiration_date: datetime.date
    admin_seats: str
    dataplanes: str
    support_plan: str
    signature: str
    version: str
    document: str

    @property
    def expires_at(self) -> datetime.datetime:
        """End of the expiration date: 00:00 UTC of the following day (Kong expires at the end of the day)."""
        day_after = self.expiration_date + datetime.timedelta(days=1)
        return datetime.datetime(day_after.year, day_after.month, day_after.day, tzinfo=datetime.UTC)

    @property
    def kong_expires_at(self) -> datetime.datetime:
        """Kong's own expiry instant: noon UTC of the expiration date (Lua's os.time{year, month, day}
        fills in hour 12, in the gateway's time zone: UTC in Kong's images). Its grace period starts here."""
        day = self.expiration_date
        return datetime.datetime(day.year, day.month, day.day, 12, tzinfo=datetime.UTC)

    @property
    def grace_period_ends_at(self) -> datetime.datetime:
        """When Kong's 30-day grace period ends and the gateways' Admin API turns read-only."""
        return self.kong_expires_at + datetime.timedelta(days=KONG_GRACE_PERIOD_DAYS)

    def seconds_left(self, now: datetime.datetime) -> float:
        """Seconds until expiry; negative once expired. `now` must be timezone-aware."""
        return (self.expires_at - now).total_seconds()

    def days_left(self, now: datetime.datetime) -> float:
        return self.seconds_left(now) / 86400.0

    def is_expired(self, now: datetime.datetime) -> bool:
        return now >= self.expires_at

    @property
    def fingerprint(self) -> str:
        """First 16 hex characters of sha256 over the exact document text (utf-8)."""
        return hashlib.sha256(self.document.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    @property
    def kong_signature(self) -> float:
        """The value Kong's Prometheus plugin exports as `kong_enterprise_license_signature`.

        Source: Kong/kong `kong/plugins/prometheus/enterprise/exporter.lua`, `metric_data()`:
            metrics.license_signature:set(tonumber("0x" .. sub(sig, #sig-33, #sig)))
        Lua's `string.sub` is 1-based and inclusive, so this is the last 34 hex characters of the
        signature (the whole signature when it is shorter), read as one hexadecimal integer and
        stored as a double (LuaJIT rounds the 136-bit integer to the nearest double, as `float()` does).
        """
        return float(int(self.signature[-34:], 16))

    @property
    def kong_signature_exported(self) -> float:
        """``kong_signature`` as Prometheus reads it from Kong's /metrics: Lua prints numbers with 14
        significant digits (``%.14g``), so a full-precision copy would never equal Kong's figure."""
        return float(f"{self.kong_signature:.14g}")

    def __repr__(self) -> str:
        return (
            f"License(customer={self.customer!r}, expires={self.expiration_date.isoformat()}, "
            f"fingerprint={self.fingerprint})"
        )

    __str__ = __repr__


def has_lone_surrogate(text: str) -> bool:
    """A JSON ``\\ud800`` escape decodes to a lone surrogate: a str that cannot be encoded as UTF-8."""
    return _SURROGATES.search(text) is not None


def _require_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise LicenseError(name, "must be a string")
    if has_lone_surrogate(value):
        raise LicenseError(name, "is not valid Unicode (lone surrogate escape)")
    if not value.strip():
        raise LicenseError(name, "is empty")
    return value


def _parse_date(value: str, name: str) -> datetime.date:
    # strict YYYY-MM-DD; fromisoformat alone would also accept 20170720
    if len(value) != 10 or value[4] != "-" or value[7] != "-":
        raise LicenseError(name, "is not a date in YYYY-MM-DD form")
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise LicenseError(name, "is not a valid calendar date") from None


def parse_license(document: str | bytes) -> License:
    """Parse and structurally validate a Kong Enterprise license document.

    Raises LicenseError naming the offending field. An expiration before the creation date is
    accepted (it is just an expired license).
    """
    if isinstance(document, bytes | bytearray):
        try:
            text = bytes(document).decode("utf-8")
        except UnicodeDecodeError:
            raise LicenseError("document", "is not valid UTF-8") from None
    elif isinstance(document, str):
        text = document
    else:
        raise LicenseError("document", "must be text")
    if not text.strip():
        raise LicenseError("document", "is empty")
    if has_lone_surrogate(text):
        # Such text cannot be written to a Secret (UTF-8 encode fails): reject it here, not at write time.
        raise LicenseError("document", "is not valid UTF-8 (lone surrogate)")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise LicenseError("document", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise LicenseError("document", "is not a JSON object")
    lic = data.get("license")
    if lic is None:
        raise LicenseError("license", "is missing")
    if not isinstance(lic, dict):
        raise LicenseError("license", "is not an object")
    payload = lic.get("payload")
    if payload is None:
        raise LicenseError("payload", "is missing")
    if not isinstance(payload, dict):
        raise LicenseError("payload", "is not an object")

    values: dict[str, Any] = {}
    for key, attr in _PAYLOAD_FIELDS.items():
        if key not in payload:
            raise LicenseError(key, "is missing")
        raw = _require_str(payload[key], key)
        values[attr] = _parse_date(raw, key) if key in _DATE_FIELDS else raw

    if "signature" not in lic:
        raise LicenseError("signature", "is missing")
    signature = _require_str(lic["signature"], "signature")
    if not set(signature) <= _HEX:
        raise LicenseError("signature", "is not hexadecimal")

    if "version" not in lic:
        raise LicenseError("version", "is missing")
    version_raw = lic["version"]
    if isinstance(version_raw, bool) or not isinstance(version_raw, int | str):
        raise LicenseError("version", "must be a string or an integer")
    version = str(version_raw)
    if has_lone_surrogate(version):
        raise LicenseError("version", "is not valid Unicode (lone surrogate escape)")
    if not version.strip():
        raise LicenseError("version", "is empty")

    return License(signature=signature, version=version, document=text, **values)


@dataclass(frozen=True)
class LicenseRecord:
    """A license document plus the metadata Konnect and the Secret attach to it.

    ``restored_at`` / ``restored_by``: an operator's restore (Unix seconds, who), 0 / "" otherwise; the
    Secret carries them as annotations beside the document they were written with, and the policy ranks
    the license from that moment on. Equality and hashing use everything but ``source`` (informational).
    """

    document: str = field(repr=False)
    id: str
    updated_at: int
    source: str = field(default="konnect", compare=False)
    restored_at: int = 0
    restored_by: str = ""

    @property
    def license(self) -> License | None:
        return _parse_cached(self)[0]

    @property
    def problem(self) -> str | None:
        return _parse_cached(self)[1]

    @property
    def valid(self) -> bool:
        return self.license is not None


def _parse_cached(record: LicenseRecord) -> tuple[License | None, str | None]:
    cached = record.__dict__.get("_parsed")
    if cached is None:
        try:
            if has_lone_surrogate(record.id):
                # the id is written to the Secret as UTF-8 too
                raise LicenseError("id", "is not valid Unicode (lone surrogate escape)")
            if has_lone_surrogate(record.restored_by):
                raise LicenseError("restored-by", "is not valid Unicode (lone surrogate escape)")
            cached = (parse_license(record.document), None)
        except LicenseError as exc:
            cached = (None, str(exc))
        # frozen dataclass: bypass __setattr__ for a private memo (not a field, not compared)
        object.__setattr__(record, "_parsed", cached)
    return cached


def describe(record: LicenseRecord | None) -> str:
    """The one rendering of a license for humans (logs, Events, CLI): fingerprint, expiry, updated_at.

    Nothing else: never the customer, key, signature or document.
    """
    if record is None:
        return "no license"
    lic = record.license
    if lic is None:
        return "an invalid license"
    restored = f", restored {format_restored_at(record.restored_at)}" if record.restored_at else ""
    return (
        f"license {lic.fingerprint} (expires {lic.expiration_date.isoformat()}, updated_at {record.updated_at}"
        f"{restored})"
    )


def format_restored_at(seconds: int) -> str:
    """The one rendering of a restore's time: RFC 3339 in UTC to the second, as the annotation holds it."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_restored_at(raw: str, now: datetime.datetime | None) -> int:
    """The restore time an annotation holds (``format_restored_at``'s form only), as Unix seconds.

    Raises UpdatedAtError, as for ``updated_at`` and with the same bounds: no later than ``now`` plus a day
    (a restore from the future would outrank every Konnect license to come), not beyond the year 3000.
    """
    text = raw.strip()
    if len(text) != 20 or not text.endswith("Z") or text[10] != "T":
        raise UpdatedAtError("restored-at is not a time like 2026-12-01T09:30:00Z")
    try:
        moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        raise UpdatedAtError("restored-at is not a valid time") from None
    return parse_updated_at(int(moment.timestamp()), now)


# --- updated_at ---------------------------------------------------------------------------------------


class UpdatedAtError(ValueError):
    """An ``updated_at`` outside the one accepted form and range. The message names the problem only."""


def parse_updated_at(raw: object, now: datetime.datetime | None) -> int:
    """The one parser of ``updated_at`` (Konnect answers, Secret keys, backup files): Unix seconds.

    Accepts an int (not bool) or a str/bytes of ASCII digits, in ``0 .. MAX_UPDATED_AT`` and, when
    ``now`` is given, no later than ``now`` + ``UPDATED_AT_SKEW_SECONDS``. Raises UpdatedAtError.
    Zero is in range (a hand-made Secret or backup may say "unknown"); Konnect's rule that zero is an
    invalid answer is the Konnect client's.
    """
    value = _updated_at_int(raw)
    if value > MAX_UPDATED_AT:
        raise UpdatedAtError("updated_at is beyond the year 3000 (milliseconds instead of seconds?)")
    if now is not None and value > now.timestamp() + UPDATED_AT_SKEW_SECONDS:
        raise UpdatedAtError("updated_at is in the future (more than a day ahead of this clock)")
    return value


def _updated_at_int(raw: object) -> int:
    if isinstance(raw, bool | float):
        raise UpdatedAtError("updated_at is not an integer")
    if isinstance(raw, int):
        if raw < 0:
            raise UpdatedAtError("updated_at is negative")
        return raw
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("ascii")
        except UnicodeDecodeError:
            raise UpdatedAtError("updated_at is not decimal digits") from None
    if not isinstance(raw, str):
        raise UpdatedAtError("updated_at is not an integer")
    text = raw.strip()
    # ASCII digits only, as KIC writes them: str.isdigit() also accepts "²", which int() rejects.
    if not (text.isascii() and text.isdigit()):
        raise UpdatedAtError("updated_at is not decimal digits")
    if len(text) > _UPDATED_AT_MAX_DIGITS:
        raise UpdatedAtError("updated_at is beyond the year 3000 (milliseconds instead of seconds?)")
    return int(text)
