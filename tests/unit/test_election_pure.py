"""The pure decisions of leader election: tables and properties, no API server, no sleeping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from license_keeper import election
from license_keeper.election import default_identity
from license_keeper.lease import (
    LeaseRecord,
    Observation,
    acquire_spec,
    format_micro_time,
    is_leading,
    lease_expired,
    may_acquire,
    observe,
    parse_micro_time,
    record_of,
    release_spec,
    updated_lease,
    validate_timings,
)

ME = "me"
NOW = datetime(2025, 3, 4, 5, 6, 7, 0, tzinfo=UTC)
# The Go layout metav1.MicroTime parses: RFC3339Micro "2006-01-02T15:04:05.000000Z07:00".
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


def rec(
    holder: str | None = "other",
    duration: int | None = 15,
    rv: str = "1",
    transitions: int = 3,
    acquire: str | None = "2025-01-01T00:00:00.000000Z",
) -> LeaseRecord:
    return LeaseRecord(holder, duration, acquire, "2025-01-01T00:00:01.000000Z", transitions, rv)


# --- validate_timings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "ok"),
    [
        (15, 10, 2, True),
        (3, 2, 0.5, True),
        (10, 10, 2, False),  # lease must exceed renew deadline
        (9, 10, 2, False),
        (15, 2, 2, False),  # renew deadline must exceed retry period
        (15, 10, 0, False),
        (15, 10, -1, False),
        (float("nan"), 10, 2, False),
        (float("inf"), 10, 2, False),
    ],
)
def test_validate_timings(lease: float, renew: float, retry: float, ok: bool) -> None:
    if ok:
        validate_timings(lease, renew, retry)
    else:
        with pytest.raises(ValueError):
            validate_timings(lease, renew, retry)


def test_constructor_rejects_bad_timings() -> None:
    with pytest.raises(ValueError, match="renew_deadline"):
        election.LeaderElector(None, "ns", "lease", ME, lease_duration=5, renew_deadline=5, retry_period=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identity"):
        election.LeaderElector(None, "ns", "lease", "")  # type: ignore[arg-type]


# --- MicroTime -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (NOW, "2025-03-04T05:06:07.000000Z"),  # isoformat() would drop the zero fraction
        (NOW.replace(microsecond=12), "2025-03-04T05:06:07.000012Z"),
        (
            datetime(2025, 3, 4, 7, 6, 7, 5, tzinfo=timezone(timedelta(hours=2))),
            "2025-03-04T05:06:07.000005Z",
        ),
    ],
)
def test_format_micro_time(moment: datetime, text: str) -> None:
    assert format_micro_time(moment) == text
    assert MICRO_TIME.match(text)


def test_format_micro_time_needs_timezone() -> None:
    with pytest.raises(ValueError):
        format_micro_time(datetime(2025, 1, 1))


@given(st.datetimes(timezones=st.just(UTC)))
def test_micro_time_round_trips(moment: datetime) -> None:
    text = format_micro_time(moment)
    assert MICRO_TIME.match(text)
    assert parse_micro_time(text) == moment


@pytest.mark.parametrize("value", [None, "", "yesterday", 17])
def test_parse_micro_time_tolerates_garbage(value: object) -> None:
    assert parse_micro_time(value) is None


# --- reading a Lease -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "holder"),
    [
        ({"holderIdentity": "a"}, "a"),
        ({"holderIdentity": ""}, None),  # released
        ({}, None),
        ({"holderIdentity": None}, None),
    ],
)
def test_record_of_holder(spec: dict[str, object], holder: str | None) -> None:
    assert record_of({"metadata": {"resourceVersion": "7"}, "spec": spec}).holder == holder


def test_record_of_full() -> None:
    lease = {
        "metadata": {"resourceVersion": "42"},
        "spec": {
            "holderIdentity": "a",
            "leaseDurationSeconds": 15,
            "acquireTime": "x",
            "renewTime": "y",
            "leaseTransitions": 4,
        },
    }
    assert record_of(lease) == LeaseRecord("a", 15, "x", "y", 4, "42")
    assert record_of({}) == LeaseRecord(None, None, None, None, 0, None)


# --- observation and expiry (our monotonic clock only) ---------------------------------------------


def test_observe_restarts_the_clock_only_on_change() -> None:
    first = observe(None, rec(rv="1"), 100.0)
    assert first.observed_at == 100.0
    assert observe(first, rec(rv="1"), 130.0) is first  # unchanged: keep counting from 100
    assert observe(first, rec(rv="2"), 130.0).observed_at == 130.0  # renewed: count again
    assert observe(first, rec(holder="third"), 130.0).observed_at == 130.0


@pytest.mark.parametrize(
    ("observation", "now", "expected"),
    [
        (None, 0.0, True),  # no Lease: create it
        (Observation(rec(holder=None), 100.0), 100.0, True),  # released: take at once
        (Observation(rec(holder=ME), 100.0), 100.0, True),  # ours already (e.g. same POD_NAME)
        (Observation(rec(duration=15), 100.0), 100.0, False),
        (Observation(rec(duration=15), 100.0), 114.999, False),
        (Observation(rec(duration=15), 100.0), 115.0, True),
        (Observation(rec(duration=1), 100.0), 101.0, True),  # the holder's own duration counts
        (Observation(rec(duration=None), 100.0), 109.0, False),  # none written: our default (10)
        (Observation(rec(duration=None), 100.0), 110.0, True),
        (Observation(rec(duration=0), 100.0), 109.0, False),
    ],
)
def test_may_acquire(observation: Observation | None, now: float, expected: bool) -> None:
    assert may_acquire(observation, ME, now, default_duration=10.0) is expected


def test_remote_renew_time_is_ignored_for_expiry() -> None:
    # A renewTime far in the past (skewed holder clock) or the future changes nothing: only the
    # time we observed the record decides.
    for renew in ("1999-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z"):
        record = LeaseRecord("other", 15, None, renew, 0, "9")
        assert not lease_expired(Observation(record, 50.0), 64.0, 15.0)
        assert lease_expired(Observation(record, 50.0), 65.0, 15.0)


@given(
    observed=st.floats(0, 1e6),
    elapsed=st.floats(0, 1e3),
    duration=st.integers(1, 300),
)
def test_never_take_someone_elses_unexpired_lease(observed: float, elapsed: float, duration: int) -> None:
    observation = Observation(rec(holder="other", duration=duration), observed)
    assert may_acquire(observation, ME, observed + elapsed, 15.0) is (elapsed >= duration)


@given(
    lease=st.floats(1, 60),
    renew_fraction=st.floats(0.05, 0.95),
    sent=st.floats(0, 1e5),
    server_delay=st.floats(0, 5),
    observe_delay=st.floats(0, 5),
    now_offset=st.floats(0, 200),
)
def test_leader_and_follower_never_overlap(
    lease: float,
    renew_fraction: float,
    sent: float,
    server_delay: float,
    observe_delay: float,
    now_offset: float,
) -> None:
    # The leader sends a renew at `sent`; the server stores it later; a follower first sees it later
    # still. Whenever the leader still says is_leader, the follower must not be allowed to take over.
    renew_deadline = lease * renew_fraction
    spec = acquire_spec(rec(holder=ME), ME, lease, NOW)
    stored = LeaseRecord(ME, spec["leaseDurationSeconds"], None, spec["renewTime"], 3, "8")
    observed_at = sent + server_delay + observe_delay
    now = sent + now_offset
    follower_may = now >= observed_at and may_acquire(Observation(stored, observed_at), "f", now, lease)
    assert not (is_leading(True, sent, now, renew_deadline) and follower_may)


@pytest.mark.parametrize(
    ("leading", "last", "now", "expected"),
    [
        (True, 100.0, 100.0, True),
        (True, 100.0, 109.999, True),
        (True, 100.0, 110.0, False),  # exactly the deadline: no longer
        (False, 100.0, 101.0, False),
        (True, None, 101.0, False),
    ],
)
def test_is_leading(leading: bool, last: float | None, now: float, expected: bool) -> None:
    assert is_leading(leading, last, now, 10.0) is expected


# --- bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "acquire", "transitions"),
    [
        (None, "2025-03-04T05:06:07.000000Z", 0),  # creation
        (rec(holder=ME, transitions=3), "2025-01-01T00:00:00.000000Z", 3),  # renew keeps both
        (rec(holder="other", transitions=3), "2025-03-04T05:06:07.000000Z", 4),  # takeover
        (rec(holder=None, transitions=3), "2025-03-04T05:06:07.000000Z", 4),  # after a release
        (rec(holder=ME, acquire=None), "2025-03-04T05:06:07.000000Z", 3),
    ],
)
def test_acquire_spec(previous: LeaseRecord | None, acquire: str, transitions: int) -> None:
    spec = acquire_spec(previous, ME, 15.0, NOW)
    assert spec == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "renewTime": "2025-03-04T05:06:07.000000Z",
        "acquireTime": acquire,
        "leaseTransitions": transitions,
    }


@pytest.mark.parametrize(("duration", "seconds"), [(15.0, 15), (2.5, 3), (0.2, 1), (3, 3)])
def test_lease_duration_is_rounded_up(duration: float, seconds: int) -> None:
    assert acquire_spec(None, ME, duration, NOW)["leaseDurationSeconds"] == seconds


def test_release_spec_is_client_go_release_on_cancel() -> None:
    assert release_spec(rec(holder=ME, transitions=5), NOW) == {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": "2025-03-04T05:06:07.000000Z",
        "renewTime": "2025-03-04T05:06:07.000000Z",
        "leaseTransitions": 5,
    }


def test_updated_lease_keeps_resource_version_and_unknown_fields() -> None:
    current = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "l", "namespace": "n", "resourceVersion": "77", "labels": {"a": "b"}},
        "spec": {"holderIdentity": "other", "strategy": "OldestEmulationVersion", "leaseTransitions": 1},
    }
    body = updated_lease(current, acquire_spec(record_of(current), ME, 15, NOW))
    assert body["metadata"] == current["metadata"]
    assert body["metadata"]["resourceVersion"] == "77"
    assert body["spec"]["strategy"] == "OldestEmulationVersion"
    assert body["spec"]["holderIdentity"] == ME
    assert body["spec"]["leaseTransitions"] == 2
    assert current["spec"]["holderIdentity"] == "other"  # input untouched


def test_updated_lease_refuses_unguarded_writes() -> None:
    with pytest.raises(ValueError, match="resourceVersion"):
        updated_lease({"metadata": {"name": "l"}, "spec": {}}, {"holderIdentity": ME})


# --- identity --------------------------------------------------------------------------------------


def test_default_identity_prefers_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "kong-7d9f-abcde")
    assert default_identity() == "kong-7d9f-abcde"


def test_default_identity_without_pod_name_is_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.setattr(election.socket, "gethostname", lambda: "host")
    first, second = default_identity(), default_identity()
    assert first.startswith("host_") and second.startswith("host_")
    assert first != second


def test_follower_wakes_at_lease_expiry_when_it_comes_before_the_next_retry() -> None:
    from license_keeper.lease import next_attempt_at

    held = Observation(rec("other", 15), observed_at=100.0)
    assert next_attempt_at(held, started=114.2, retry_period=2.0, default_duration=15.0) == 115.0
    assert next_attempt_at(held, started=110.0, retry_period=2.0, default_duration=15.0) == 112.0
    assert next_attempt_at(held, started=116.0, retry_period=2.0, default_duration=15.0) == 118.0
    assert next_attempt_at(None, started=5.0, retry_period=2.0, default_duration=15.0) == 7.0
