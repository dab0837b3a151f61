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
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
