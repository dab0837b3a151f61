"""Decisions about licenses, as small pure functions (no I/O; `now` is always an argument).

Which license is better
-----------------------
A chain of named rules, each looking at one property, in priority order (the first rule that tells
two licenses apart decides, like cert-manager's issuing policy chain):

1. ``valid``             a structurally valid document beats None or an invalid one
2. ``unexpired``         an unexpired license beats an expired one
3. ``newer_updated_at``  then the newer of Konnect's ``updated_at`` and an operator's restore
                         (``restored_at``): a restored license ranks from the moment of the restore
4. ``later_expiration``  then the later expiration date

When no rule tells two valid licenses apart, their content decides (sha256 of the document, then the
id, ``updated_at``, the restore's time and who restored it): the order is total, so two replicas holding
different but equally ranked licenses converge on the same one instead of writing the Secret back and
forth. Only an equal record ties, and then the held one stays (no churn). Invalid records never win:
``choose`` returns the best valid license, else the held one unchanged.

An operator's restore
---------------------
``restore`` writes the license with the time of the restore (annotation ``restored-at``, beside
``restored-by``), so rule 3 keeps it until Konnect serves a license updated after the restore, and every
replica reads the same mark from the Secret: no replica puts its own license back. What counts as a
*downgrade* for a restore is the license itself (``restore_downgrade``: valid, unexpired, later
expiration; Konnect's ``updated_at`` only between two licenses that both have one and expire the same day),
since an operator's file has no Konnect metadata: a worse license needs ``--force``, and once written it
stays like any restore. An expired license never outranks an
unexpired one (rule 2), so not even ``--force`` writes one over an unexpired license.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from license_keeper.license import (
    LicenseRecord,
    UpdatedAtError,
    format_restored_at,
    parse_restored_at,
    parse_updated_at,
)

__all__ = [
    "ADOPT_ANNOTATION",
    "EXPIRATION_ANNOTATION",
    "FINGERPRINT_ANNOTATION",
    "KIC_MANAGED_BY_LABEL",
    "KIC_SECRET_PREFIX",
    "LICENSE_KEYS",
    "MANAGED_BY_LABEL",
    "MANAGED_BY_VALUE",
    "RESTORED_AT_ANNOTATION",
    "RESTORED_BY_ANNOTATION",
    "RULES",
    "DesiredSecret",
    "SecretSnapshot",
    "SecretState",
    "WriteAction",
    "WritePlan",
    "as_restored",
    "choose",
    "content_matches",
    "data_matches",
    "deciding_rule",
    "desired_secret",
    "foreign_advice",
    "is_better",
    "kic_owned",
    "labels_to_impose",
    "license_state",
    "manageable",
    "merged_secret_fields",
    "order_key",
    "plan_write",
    "rank",
    "record_from_secret",
    "restore_downgrade",
    "secret_state",
    "velero_restore_name",
]


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
    # An operator's restore counts from its own moment: the license stays until Konnect's is newer.
    return max(record.updated_at, record.restored_at)


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


TieBreak = tuple[str, str, int, int, str]


def _tie_break(record: LicenseRecord | None) -> TieBreak:
    # Content-derived, so the winner among equally ranked licenses does not depend on who holds which.
    # Every compared field of the record is in it: only equal records tie.
    if record is None or not _usable(record):
        return ("", "", 0, 0, "")
    return (
        hashlib.sha256(record.document.encode("utf-8", "surrogatepass")).hexdigest(),
        record.id,
        record.updated_at,
        record.restored_at,
        record.restored_by,
    )


def order_key(record: LicenseRecord | None, now: datetime.datetime) -> tuple[tuple[int, ...], TieBreak]:
    """The total order of licenses: the rules' rank, then content. Equal keys mean equal records
    (same document, id, updated_at and restore) or two worthless ones."""
    return (rank(record, now), _tie_break(record))


def deciding_rule(
    candidate: LicenseRecord | None, incumbent: LicenseRecord | None, now: datetime.datetime
) -> str | None:
    """Name of the first rule that tells the two apart (``content`` for the tie-break), None when equal."""
    for rule, a, b in zip(RULES, rank(candidate, now), rank(incumbent, now), strict=True):
        if a != b:
            return rule.name
    return "content" if _tie_break(candidate) != _tie_break(incumbent) else None


def is_better(candidate: LicenseRecord | None, incumbent: LicenseRecord | None, now: datetime.datetime) -> bool:
    """True when ``candidate`` is strictly better than ``incumbent``; an equal record is not better."""
    return _usable(candidate) and order_key(candidate, now) > order_key(incumbent, now)


def _best_candidate(candidates: Iterable[LicenseRecord | None], now: datetime.datetime) -> LicenseRecord | None:
    usable = [c for c in candidates if c is not None and _usable(c)]
    if not usable:
        return None
    # source last: equal records from different sources give the same choice in any order
    return max(usable, key=lambda c: (order_key(c, now), c.source))


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


# --- an operator's restore -------------------------------------------------------------------------------

# The rules that judge a license by itself, without Konnect's metadata (which an operator's file lacks).
_MERIT_RULES = frozenset({"valid", "unexpired", "later_expiration"})


def as_restored(record: LicenseRecord, *, at: int, by: str) -> LicenseRecord:
    """``record`` as an operator restores it at ``at`` (Unix seconds) as ``by``: it ranks from then on."""
    return dataclasses.replace(record, restored_at=at, restored_by=by, source="restore")


def restore_downgrade(
    incumbent: LicenseRecord | None, candidate: LicenseRecord | None, now: datetime.datetime
) -> str | None:
    """The rule by which an operator's ``candidate`` is a worse license than ``incumbent`` (the Secret's),
    or None when it is not worse.

    Judged on the licenses themselves (valid, unexpired, later expiration), since a license file has no
    Konnect ``updated_at`` and the restore's own time will rank it. Only between two licenses that expire
    the same day and both carry Konnect's ``updated_at`` (a backup against Konnect's license) does the older
    one count as worse (``newer_updated_at``): it may be the license before an upgrade of seats or plan.
    """
    for rule, a, b in zip(RULES, rank(incumbent, now), rank(candidate, now), strict=True):
        if rule.name in _MERIT_RULES and a != b:
            return rule.name if a > b else None
    if (
        incumbent is not None
        and candidate is not None
        and _usable(incumbent)
        and _usable(candidate)
        and 0 < candidate.updated_at < incumbent.updated_at
    ):
        return "newer_updated_at"
    return None


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
# An operator's restore: when (RFC 3339, UTC) and who. They count only beside the document whose
# fingerprint the fingerprint annotation names, and the keeper removes them with the next other license.
RESTORED_AT_ANNOTATION = "license-keeper.io/restored-at"
RESTORED_BY_ANNOTATION = "license-keeper.io/restored-by"
_RESTORE_ANNOTATIONS = (RESTORED_AT_ANNOTATION, RESTORED_BY_ANNOTATION)
# Kong Ingress Controller's and Kong Operator's own license store: `konnect-license-<control-plane-id>`,
# written after every Konnect fetch. Never the keeper's to write, adopt annotation or not.
KIC_SECRET_PREFIX = "konnect-license-"
KIC_MANAGED_BY_LABEL = "konghq.com/managed-by"
# Velero labels what it restores with the restore's name (and the backup's); the rest of the object as it
# was backed up, without ownerReferences. Neither changes whether the Secret is ours.
VELERO_RESTORE_LABEL = "velero.io/restore-name"
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
    """Our part of the Secret for one license; other keys, labels and annotations are left alone.

    ``absent_annotations``: ours that must not be there (a restore's mark once another license is held).
    """

    data: dict[str, bytes]
    labels: dict[str, str]
    annotations: dict[str, str]
    absent_annotations: tuple[str, ...] = ()


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


def kic_owned(s: SecretSnapshot, name: str = "") -> bool:
    """KIC's (or Kong Operator's) license store, by its label or its name."""
    return name.startswith(KIC_SECRET_PREFIX) or bool(s.labels.get(KIC_MANAGED_BY_LABEL))


def velero_restore_name(s: SecretSnapshot) -> str | None:
    """The Velero restore that last wrote the Secret (its label), if any: for Events an operator can follow."""
    if not s.exists:
        return None
    return s.labels.get(VELERO_RESTORE_LABEL) or None


def manageable(s: SecretSnapshot) -> bool:
    """Ours, empty (pre-created by a chart), or explicitly handed over; anything else is foreign.

    A Secret another Kong controller labels as its own is foreign even with the adopt annotation: it
    rewrites the Secret after every fetch, and adopting it would only make two writers.
    """
    if s.exists and s.labels.get(KIC_MANAGED_BY_LABEL):
        return False
    return not s.exists or is_ours(s) or is_empty(s) or adoption_requested(s)


def foreign_advice(s: SecretSnapshot, name: str) -> str:
    """The one explanation of a foreign Secret (Events, logs, CLI errors): why it is left alone, what to do."""
    if kic_owned(s, name):
        return (
            f"Secret {name} is Kong Ingress Controller's (or Kong Operator's) own license store, rewritten after "
            "every Konnect fetch; the keeper never writes it: use the keeper's own Secret (--secret-name, default "
            "kong-license) and read this one only with status or export"
        )
    return (
        f"Secret {name} exists but is not managed by license-keeper; leaving it alone. If nothing else writes "
        f"it, hand it over with the annotation {ADOPT_ANNOTATION}=true; otherwise use another --secret-name"
    )


def _decode_text(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _decode_updated_at(raw: bytes | None, now: datetime.datetime | None) -> int:
    # Lenient: a hand-edited Secret must not crash the reader or hide its document; an updated_at out of
    # the one accepted range (see license.parse_updated_at) counts as unknown (0), the lowest rank.
    try:
        return parse_updated_at(raw or b"", now)
    except UpdatedAtError:
        return 0


def _record_from_key(s: SecretSnapshot, key: str, id: str, updated_at: int, source: str) -> LicenseRecord | None:
    raw = s.data.get(key)
    if not raw:
        return None
    document = _decode_text(raw)
    if document is None:
        return LicenseRecord(document="", id="", updated_at=0, source=source)  # undecodable bytes
    return LicenseRecord(document=document, id=id, updated_at=updated_at, source=source)


def record_from_secret(
    s: SecretSnapshot, source: str = "secret", *, now: datetime.datetime | None = None
) -> LicenseRecord | None:
    """The best license the Secret holds, from KIC's ``payload`` or Kong's ``license`` key.

    Both keys are read and the better document wins, so a repair never downgrades the key Kong reads.
    The ``license`` key carries no metadata of its own: both documents get the Secret's ``id`` and
    ``updated_at``. With those equal, the policy's order reduces to the later expiration date (the
    ``unexpired`` rule agrees with it for any ``now``), then content.
    ``now`` bounds ``updated_at`` (a value from the future counts as 0); without it only the fixed range
    applies. None when the Secret holds no document at all; a present but broken document comes back as
    an invalid record (``.valid`` False) so the caller can tell "corrupt" from "empty".
    """
    if not s.exists:
        return None
    id = _decode_text(s.data.get("id")) or ""
    updated_at = _decode_updated_at(s.data.get("updated_at"), now)
    payload = _record_from_key(s, "payload", id, updated_at, source)
    license = _record_from_key(s, "license", id, updated_at, source)
    valid = [_with_restore_mark(s, r, now) for r in (payload, license) if r is not None and r.valid]
    if not valid:
        return payload or license
    return max(valid, key=lambda r: (_expiration(r), _tie_break(r)))


def _with_restore_mark(s: SecretSnapshot, record: LicenseRecord, now: datetime.datetime | None) -> LicenseRecord:
    """The record with the Secret's restore mark, when the mark was written with this very document.

    Lenient like ``updated_at``: a mark that does not parse, lies in the future or sits beside another
    document (keys edited by hand) is no mark at all.
    """
    raw = s.annotations.get(RESTORED_AT_ANNOTATION)
    lic = record.license
    if not raw or lic is None or s.annotations.get(FINGERPRINT_ANNOTATION) != lic.fingerprint:
        return record
    try:
        at = parse_restored_at(raw, now)
    except UpdatedAtError:
        return record
    if at <= 0:
        return record
    return dataclasses.replace(record, restored_at=at, restored_by=s.annotations.get(RESTORED_BY_ANNOTATION, ""))


def _expiration(record: LicenseRecord) -> datetime.date:
    lic = record.license
    assert lic is not None
    return lic.expiration_date


def secret_state(s: SecretSnapshot, held: LicenseRecord | None = None) -> SecretState:
    """What the Secret is like for the keeper. ``held``: the license the keeper holds, if any.

    An immutable Secret is ``immutable`` (the critical alert) only when it does not already hold the
    right data: ``held``'s, or without a valid ``held``, its own best license complete in every key.
    """
    if not s.exists:
        return SecretState.MISSING
    if not manageable(s):
        return SecretState.FOREIGN
    record = record_from_secret(s)
    if s.immutable:
        target = held if held is not None and held.valid else record
        if target is not None and target.valid and data_matches(s, desired_secret(target)):
            return SecretState.PRESENT
        return SecretState.IMMUTABLE
    if record is None:
        return SecretState.MISSING
    return SecretState.PRESENT if record.valid else SecretState.INVALID


def desired_secret(record: LicenseRecord) -> DesiredSecret:
    lic = record.license
    if lic is None:
        raise ValueError("refusing to build Secret content from an invalid license")
    document = record.document.encode("utf-8")
    # Derived from the content only, so an unchanged license never changes the object.
    annotations = {
        EXPIRATION_ANNOTATION: lic.expiration_date.isoformat(),
        FINGERPRINT_ANNOTATION: lic.fingerprint,
    }
    if record.restored_at > 0:
        annotations[RESTORED_AT_ANNOTATION] = format_restored_at(record.restored_at)
        if record.restored_by:
            annotations[RESTORED_BY_ANNOTATION] = record.restored_by
    return DesiredSecret(
        data={
            "payload": document,
            "id": record.id.encode("utf-8"),
            "updated_at": str(record.updated_at).encode("ascii"),
            "license": document,
        },
        labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE},
        annotations=annotations,
        absent_annotations=tuple(k for k in _RESTORE_ANNOTATIONS if k not in annotations),
    )


def labels_to_impose(s: SecretSnapshot, desired: DesiredSecret) -> dict[str, str]:
    """Our label, unless the Secret was handed over with the adopt annotation.

    A Secret pre-created by Helm carries ``app.kubernetes.io/managed-by: Helm``, which Helm resets on
    every upgrade and requires when the release is installed again; imposing ours would mean a
    repair write after each upgrade and a failed re-install. The annotation is the ownership mark then.
    """
    return {} if adoption_requested(s) else desired.labels


def data_matches(s: SecretSnapshot, desired: DesiredSecret) -> bool:
    """Our keys hold exactly what they should (the part an immutable Secret can never change)."""
    return s.exists and all(s.data.get(k) == v for k, v in desired.data.items())


def content_matches(s: SecretSnapshot, desired: DesiredSecret) -> bool:
    return (
        data_matches(s, desired)
        and all(s.labels.get(k) == v for k, v in labels_to_impose(s, desired).items())
        and all(s.annotations.get(k) == v for k, v in desired.annotations.items())
        and not any(k in s.annotations for k in desired.absent_annotations)
    )


def plan_write(s: SecretSnapshot, held: LicenseRecord | None, *, existed_before: bool = False) -> WritePlan:
    """What to do so the Secret holds ``held``. ``existed_before``: we saw it exist since start."""
    if held is None or not held.valid:
        return WritePlan(WriteAction.NONE)
    if not s.exists:
        return WritePlan(WriteAction.CREATE, "recreate" if existed_before else "create")
    if not manageable(s):
        return WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN)
    desired = desired_secret(held)
    if content_matches(s, desired):
        return WritePlan(WriteAction.NONE)
    # Immutability freezes data only: labels and annotations of an immutable Secret can still be fixed.
    if s.immutable and not data_matches(s, desired):
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
    kept = {k: v for k, v in s.annotations.items() if k not in desired.absent_annotations}
    return DesiredSecret(
        data={**s.data, **desired.data},
        labels={**s.labels, **labels_to_impose(s, desired)},
        annotations={**kept, **desired.annotations},
    )
