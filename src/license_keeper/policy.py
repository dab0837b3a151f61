"""Decisions about licenses, as small pure functions (no I/O; `now` is always an argument).

Which license is better
-----------------------
A chain of named rules, each looking at one property, in priority order (the first rule that tells
two licenses apart decides, like cert-manager's issuing policy chain):

1. ``valid``             a structurally valid document beats None or an invalid one
2. ``unexpired``         an unexpired license beats an expired one
3. ``newer_updated_at``  then the newer Konnect ``updated_at``
4. ``later_expiration``  then the later expiration date

When no rule tells them apart the held license stays (no churn). Among candidates that tie on every
rule, a tie-break on content (fingerprint, id, source) makes the choice independent of their order.
Invalid records never win: ``choose`` returns the best valid license, else the held one unchanged.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from license_keeper.license import LicenseRecord

__all__ = ["RULES", "Rule", "choose", "deciding_rule", "is_better", "rank"]


@dataclass(frozen=True)
class Rule:
    """One named criterion. ``key`` maps a *valid* record to an int; higher is better."""

    name: str
    key: Callable[[LicenseRecord, datetime.datetime], int]


def _valid(record: LicenseRecord, now: datetime.datetime) -> int:
    return 1


def _unexpired(record: LicenseRecord, now: datetime.datetime) -> int:
    lic = record.license
    assert lic is not None
    return 0 if lic.is_expired(now) else 1


def _newer_updated_at(record: LicenseRecord, now: datetime.datetime) -> int:
    return record.updated_at


def _later_expiration(record: LicenseRecord, now: datetime.datetime) -> int:
    lic = record.license
    assert lic is not None
    return lic.expiration_date.toordinal()


RULES: tuple[Rule, ...] = (
    Rule("valid", _valid),
    Rule("unexpired", _unexpired),
    Rule("newer_updated_at", _newer_updated_at),
    Rule("later_expiration", _later_expiration),
)

# Every rule scores None and invalid records the same, below any valid record.
_WORTHLESS: tuple[int, ...] = (0,) * len(RULES)


def _usable(record: LicenseRecord | None) -> bool:
    return record is not None and record.valid


def rank(record: LicenseRecord | None, now: datetime.datetime) -> tuple[int, ...]:
    """Sortable key: a higher rank is a better license. Equal ranks are equally good."""
    if record is None or not _usable(record):
        return _WORTHLESS
    return tuple(rule.key(record, now) for rule in RULES)


def deciding_rule(
    candidate: LicenseRecord | None, incumbent: LicenseRecord | None, now: datetime.datetime
) -> str | None:
    """Name of the first rule that tells the two apart (for logs), or None when they rank equal."""
    for rule, a, b in zip(RULES, rank(candidate, now), rank(incumbent, now), strict=True):
        if a != b:
            return rule.name
    return None


def is_better(
    candidate: LicenseRecord | None, incumbent: LicenseRecord | None, now: datetime.datetime
) -> bool:
    """True when ``candidate`` is strictly better than ``incumbent``; an equal one is not better."""
    return _usable(candidate) and rank(candidate, now) > rank(incumbent, now)


def _tie_break(record: LicenseRecord) -> tuple[str, str, str]:
    # Content-derived, so the winner among equally ranked candidates does not depend on their order.
    digest = hashlib.sha256(record.document.encode("utf-8", "surrogatepass")).hexdigest()
    return (digest, record.id, record.source)


def _best_candidate(
    candidates: Iterable[LicenseRecord | None], now: datetime.datetime
) -> LicenseRecord | None:
    usable = [c for c in candidates if c is not None and _usable(c)]
    if not usable:
        return None
    return max(usable, key=lambda c: (rank(c, now), _tie_break(c)))


def choose(
    held: LicenseRecord | None, candidates: Iterable[LicenseRecord | None], now: datetime.datetime
) -> LicenseRecord | None:
    """The license to hold next: the best valid candidate if strictly better than ``held``, else ``held``.

    ``held`` is returned unchanged (even if invalid or None) when no candidate beats it.
    """
    best = _best_candidate(candidates, now)
    if best is not None and is_better(best, held, now):
        return best
    return held



def license_state(record: LicenseRecord | None, now: datetime.datetime, renew_before: float) -> str:
    """missing, invalid, expired, expiring (within ``renew_before`` seconds) or valid."""
    if record is None:
        return "missing"
    lic = record.license
    if lic is None:
        return "invalid"
    if lic.is_expired(now):
        return "expired"
    return "expiring" if lic.seconds_left(now) <= renew_before else "valid"


# --- What the Secret should hold, and whether to write it ------------------------------------------
#
# The Secret is read as a plain snapshot (decoded data, labels, annotations). These functions decide
# from the snapshot and the held license alone, so the store only carries out what they say.

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "license-keeper"
ADOPT_ANNOTATION = "license-keeper.io/adopt"
EXPIRATION_ANNOTATION = "license-keeper.io/expiration-date"
FINGERPRINT_ANNOTATION = "license-keeper.io/fingerprint"
# KIC 3.5's keys, plus `license`: the key Kong's chart passes to the gateway as KONG_LICENSE_DATA.
LICENSE_KEYS = ("payload", "id", "updated_at", "license")


@dataclass(frozen=True)
class SecretSnapshot:
    """The Secret as last seen: ``data`` values decoded from base64 exactly once."""

    exists: bool
    data: dict[str, bytes] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    immutable: bool = False
    resource_version: str | None = None
    uid: str | None = None

    @classmethod
    def missing(cls) -> SecretSnapshot:
        return cls(exists=False)


@dataclass(frozen=True)
class DesiredSecret:
    """Our part of the Secret for one license; other keys, labels and annotations are left alone."""

    data: dict[str, bytes]
    labels: dict[str, str]
    annotations: dict[str, str]


class SecretState(enum.StrEnum):
    PRESENT = "present"
    MISSING = "missing"
    FOREIGN = "foreign"
    INVALID = "invalid"
    IMMUTABLE = "immutable"


class WriteAction(enum.StrEnum):
    NONE = "none"
    CREATE = "create"
    UPDATE = "update"
    REFUSE = "refuse"


@dataclass(frozen=True)
class WritePlan:
    action: WriteAction
    reason: str | None = None  # create, rotate, repair, recreate (metric label)
    refusal: SecretState | None = None  # why we may not write: foreign or immutable


def is_ours(s: SecretSnapshot) -> bool:
    return s.labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE


def is_empty(s: SecretSnapshot) -> bool:
    return s.exists and not any(s.data.values())


def adoption_requested(s: SecretSnapshot) -> bool:
    return s.annotations.get(ADOPT_ANNOTATION, "").strip().lower() == "true"


def may_write(s: SecretSnapshot) -> bool:
    """Ours, empty (pre-created by a chart), or explicitly handed over; anything else is foreign."""
    return not s.exists or is_ours(s) or is_empty(s) or adoption_requested(s)


def _decode_text(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _decode_updated_at(raw: bytes | None) -> int:
    text = (_decode_text(raw) or "").strip()
    # ASCII digits only, as KIC writes them: str.isdigit() also accepts "²" (which int() rejects),
    # and int() refuses more than 4300 digits; a hand-edited Secret must not crash the reader.
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        return 0
    return int(text)


def record_from_secret(s: SecretSnapshot, source: str = "secret") -> LicenseRecord | None:
    """The license the Secret holds: KIC's ``payload``/``id``/``updated_at``, else Kong's ``license``.

    None when it holds no document at all; a present but broken document comes back as an invalid
    record (``.valid`` False) so the caller can tell "corrupt" from "empty".
    """
    if not s.exists:
        return None
    document = _decode_text(s.data.get("payload")) or _decode_text(s.data.get("license"))
    if document is None:
        if any(s.data.get(k) for k in ("payload", "license")):
            return LicenseRecord(document="", id="", updated_at=0, source=source)  # undecodable bytes
        return None
    return LicenseRecord(
        document=document,
        id=_decode_text(s.data.get("id")) or "",
        updated_at=_decode_updated_at(s.data.get("updated_at")),
        source=source,
    )


def secret_state(s: SecretSnapshot) -> SecretState:
    if not s.exists:
        return SecretState.MISSING
    if not may_write(s):
        return SecretState.FOREIGN
    record = record_from_secret(s)
    if s.immutable:
        return SecretState.IMMUTABLE
    if record is None:
        return SecretState.MISSING
    return SecretState.PRESENT if record.valid else SecretState.INVALID


def desired_secret(record: LicenseRecord) -> DesiredSecret:
    lic = record.license
    if lic is None:
        raise ValueError("refusing to build Secret content from an invalid license")
    document = record.document.encode("utf-8")
    return DesiredSecret(
        data={
            "payload": document,
            "id": record.id.encode("utf-8"),
            "updated_at": str(record.updated_at).encode("ascii"),
            "license": document,
        },
        labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE},
        # Derived from the content only, so an unchanged license never changes the object.
        annotations={
            EXPIRATION_ANNOTATION: lic.expiration_date.isoformat(),
            FINGERPRINT_ANNOTATION: lic.fingerprint,
        },
    )


def labels_to_impose(s: SecretSnapshot, desired: DesiredSecret) -> dict[str, str]:
    """Our label, unless the Secret was handed over with the adopt annotation.

    A Secret pre-created by Helm carries ``app.kubernetes.io/managed-by: Helm``, which Helm resets on
    every upgrade and requires when the release is installed again; imposing ours would mean a
    repair write after each upgrade and a failed re-install. The annotation is the ownership mark then.
    """
    return {} if adoption_requested(s) else desired.labels


def content_matches(s: SecretSnapshot, desired: DesiredSecret) -> bool:
    return (
        s.exists
        and all(s.data.get(k) == v for k, v in desired.data.items())
        and all(s.labels.get(k) == v for k, v in labels_to_impose(s, desired).items())
        and all(s.annotations.get(k) == v for k, v in desired.annotations.items())
    )


def plan_write(s: SecretSnapshot, held: LicenseRecord | None, *, existed_before: bool = False) -> WritePlan:
    """What to do so the Secret holds ``held``. ``existed_before``: we saw it exist since start."""
    if held is None or not held.valid:
        return WritePlan(WriteAction.NONE)
    if not s.exists:
        return WritePlan(WriteAction.CREATE, "recreate" if existed_before else "create")
    if not may_write(s):
        return WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN)
    if content_matches(s, desired_secret(held)):
        return WritePlan(WriteAction.NONE)
    if s.immutable:
        return WritePlan(WriteAction.REFUSE, refusal=SecretState.IMMUTABLE)
    current = record_from_secret(s)
    if current is None:
        return WritePlan(WriteAction.UPDATE, "create")
    # rotate: the Secret gets another license document; repair: same document, keys or metadata fixed.
    if current.valid and current.document != held.document:
        return WritePlan(WriteAction.UPDATE, "rotate")
    return WritePlan(WriteAction.UPDATE, "repair")


def merged_secret_fields(s: SecretSnapshot, desired: DesiredSecret) -> DesiredSecret:
    """Our keys over whatever else the Secret carries (a chart's labels, other tools' annotations)."""
    return DesiredSecret(
        data={**s.data, **desired.data},
        labels={**s.labels, **labels_to_impose(s, desired)},
        annotations={**s.annotations, **desired.annotations},
    )
