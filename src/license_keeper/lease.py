"""The rules of a ``coordination.k8s.io/v1`` Lease, as client-go's leader election applies them (pure).

Time is an argument everywhere: the monotonic clock for expiry (``observe``, ``lease_expired``,
``may_acquire``, ``next_attempt_at``, ``is_leading``) and the wall clock only for the stamps written
for humans (``acquire_spec``, ``release_spec``). The I/O around these rules is ``election.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .policy import MANAGED_BY_LABEL, MANAGED_BY_VALUE

__all__ = [
    "LeaseRecord",
    "Observation",
    "acquire_spec",
    "format_micro_time",
    "is_leading",
    "lease_expired",
    "may_acquire",
    "new_lease",
    "next_attempt_at",
    "observe",
    "parse_micro_time",
    "record_of",
    "release_spec",
    "updated_lease",
    "validate_timings",
]

API_VERSION = "coordination.k8s.io/v1"
KIND = "Lease"


def validate_timings(lease_duration: float, renew_deadline: float, retry_period: float) -> None:
    """client-go's rule: lease duration > renew deadline > retry period > 0."""
    for label, value in (
        ("lease_duration", lease_duration),
        ("renew_deadline", renew_deadline),
        ("retry_period", retry_period),
    ):
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number of seconds, got {value!r}")
    if retry_period <= 0:
        raise ValueError(f"retry_period must be greater than zero, got {retry_period}")
    if renew_deadline <= retry_period:
        raise ValueError(f"renew_deadline ({renew_deadline} s) must be greater than retry_period ({retry_period} s)")
    if lease_duration <= renew_deadline:
        raise ValueError(
            f"lease_duration ({lease_duration} s) must be greater than renew_deadline ({renew_deadline} s)"
        )


def format_micro_time(moment: datetime) -> str:
    """A ``metav1.MicroTime`` as the API server parses it: RFC 3339 with exactly six fraction digits.

    (``datetime.isoformat()``, which kubernetes-asyncio uses for model objects, drops the fraction
    when it is zero and the server then rejects the value; that is why bodies here are plain dicts.)
    """
    if moment.tzinfo is None:
        raise ValueError("a MicroTime needs a timezone-aware datetime")
    utc = moment.astimezone(UTC)
    # Not strftime: glibc's %Y does not zero-pad years before 1000.
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_micro_time(value: object) -> datetime | None:
    """``renewTime``/``acquireTime`` as a datetime; None when absent or unparsable (display only)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about leadership, plus the version it was read at.

    ``holder`` is None when the Lease is free (no holderIdentity, or an empty one after a release).
    Two records compare equal only if nothing about them changed, which is what ``observe`` needs.
    """

    holder: str | None
    lease_duration_seconds: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None


def record_of(lease: Mapping[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}
    metadata = lease.get("metadata") or {}
    holder = spec.get("holderIdentity")
    acquire = spec.get("acquireTime")
    renew = spec.get("renewTime")
    rv = metadata.get("resourceVersion")
    return LeaseRecord(
        holder=holder if isinstance(holder, str) and holder else None,
        lease_duration_seconds=_int_or_none(spec.get("leaseDurationSeconds")),
        acquire_time=acquire if isinstance(acquire, str) else None,
        renew_time=renew if isinstance(renew, str) else None,
        transitions=_int_or_none(spec.get("leaseTransitions")) or 0,
        resource_version=rv if isinstance(rv, str) else None,
    )


@dataclass(frozen=True)
class Observation:
    """A Lease record and the monotonic time at which we first saw it in exactly this state."""

    record: LeaseRecord
    observed_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """client-go's ``observedTime``: the clock restarts whenever the record changes in any way."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def lease_expired(observation: Observation, now: float, default_duration: float) -> bool:
    """Has the holder's lease run out, measured only on our monotonic clock?"""
    duration = observation.record.lease_duration_seconds
    seconds = duration if duration is not None and duration > 0 else default_duration
    return now >= observation.observed_at + seconds


def next_attempt_at(
    observation: Observation | None, started: float, retry_period: float, default_duration: float
) -> float:
    """When a follower tries again: after a retry period, or the moment the observed lease runs out
    if that comes sooner, so a takeover after a crash costs the lease duration plus at most one
    retry period of observation lag, not two."""
    at = started + retry_period
    if observation is not None and observation.record.holder is not None:
        duration = observation.record.lease_duration_seconds
        seconds = duration if duration is not None and duration > 0 else default_duration
        expiry = observation.observed_at + seconds
        if started < expiry < at:
            return expiry
    return at


def may_acquire(observation: Observation | None, identity: str, now: float, default_duration: float) -> bool:
    """May we write ourselves into this Lease? (None = the Lease does not exist: create it.)

    Free (no holder, e.g. released) or already ours: at once. Someone else's: only once their lease
    expired by our clock, counted from when we observed the record last change.
    """
    if observation is None:
        return True
    holder = observation.record.holder
    if holder is None or holder == identity:
        return True
    return lease_expired(observation, now, default_duration)


def lease_duration_seconds(lease_duration: float) -> int:
    """The whole seconds written into the Lease; rounded up, so followers never wait less than we assume."""
    return max(1, math.ceil(lease_duration))


def acquire_spec(previous: LeaseRecord | None, identity: str, lease_duration: float, now: datetime) -> dict[str, Any]:
    """The spec for taking (or renewing) the Lease, following client-go's record rules.

    The same holder keeps its acquireTime and transition count; a new holder (also after a release
    or on first creation's successor) sets acquireTime to now and counts one more transition.
    """
    stamp = format_micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": lease_duration_seconds(lease_duration),
        "renewTime": stamp,
    }
    if previous is None:
        spec.update(acquireTime=stamp, leaseTransitions=0)
    elif previous.holder == identity:
        spec.update(acquireTime=previous.acquire_time or stamp, leaseTransitions=previous.transitions)
    else:
        spec.update(acquireTime=stamp, leaseTransitions=previous.transitions + 1)
    return spec


def release_spec(previous: LeaseRecord, now: datetime) -> dict[str, Any]:
    """client-go's ReleaseOnCancel record: no holder, a 1 s lease, transitions unchanged."""
    stamp = format_micro_time(now)
    return {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": stamp,
        "renewTime": stamp,
        "leaseTransitions": previous.transitions,
    }


def new_lease(name: str, namespace: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}},
        "spec": dict(spec),
    }


def updated_lease(current: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body: the object as read (so its resourceVersion guards the write), spec fields replaced.

    Spec fields we do not manage (e.g. ``strategy``, ``preferredHolder``) are kept.
    """
    metadata = dict(current.get("metadata") or {})
    if not metadata.get("resourceVersion"):
        raise ValueError("refusing an unguarded Lease update: the object has no resourceVersion")
    return {
        **current,
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {**(current.get("spec") or {}), **spec},
    }


def is_leading(leading: bool, last_renew: float | None, now: float, renew_deadline: float) -> bool:
    """Leading, and the last successful renew (timed from before its request) is younger than the deadline."""
    return leading and last_renew is not None and now - last_renew < renew_deadline
