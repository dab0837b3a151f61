"""license_keeper.observe: state derived at scrape time, the metrics text, and log lines."""

from __future__ import annotations

import datetime
import json
import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from license_keeper.license import LicenseRecord
from license_keeper.observe import (
    KONNECT_RESULTS,
    LICENSE_STATES,
    WRITE_REASONS,
    JsonFormatter,
    KeeperState,
    Metrics,
    TextFormatter,
)
from license_keeper.policy import SecretState
from license_keeper.testing.licenses import make_record

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC)
TODAY = NOW.date()
CUSTOMER = "Quixotic Zebra Holdings Ltd"
KEY = "0014SECRETKEYabcdef_a1V4SECRETKEYabcdef"
SIGNATURE = "deadbeef" * 64


def record(days: int, **kw: str) -> LicenseRecord:
    return make_record(
        updated_at=1_700_000_000,
        customer=CUSTOMER,
        license_key=KEY,
        signature=SIGNATURE,
        creation_date=TODAY - datetime.timedelta(days=400),
        expiration_date=TODAY + datetime.timedelta(days=days),
        **kw,
    )


INVALID = LicenseRecord(
    document=json.dumps({"license": {"payload": {"customer": CUSTOMER}}}), id="id-7f3a9c", updated_at=1
)
STATES = {
    "missing": (None, False),
    "invalid": (INVALID, False),
    "expired": (record(-2), False),
    "expiring": (record(3), True),
    "valid": (record(200), True),
}


@pytest.mark.parametrize("state", list(STATES))
def test_license_state_and_readiness(state: str) -> None:
    held, ready = STATES[state]
    s = KeeperState(renew_before=7 * 86400.0, held=held)
    assert s.license_state(NOW) == state
    ok, reason = s.ready(NOW)
    assert ok is ready
    assert reason and "\n" not in reason
    assert CUSTOMER not in reason and KEY not in reason


def test_expiry_boundaries() -> None:
    held = record(0)  # expires at the end of today
    s = KeeperState(renew_before=1.0, held=held)
    assert held.license is not None
    end = held.license.expires_at
    assert s.license_state(end - datetime.timedelta(seconds=2)) == "valid"
    assert s.license_state(end - datetime.timedelta(seconds=1)) == "expiring"
    assert s.license_state(end) == "expired"


def families(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("secret", list(SecretState))
def test_one_hot_gauges_sum_to_one(state: str, secret: SecretState) -> None:
    held, _ = STATES[state]
    f = families(Metrics(KeeperState(held=held, secret_state=secret)))
    license_states = {labels["state"]: v for labels, v in f["license_keeper_license_state"]}
    assert set(license_states) == set(LICENSE_STATES)
    assert sum(license_states.values()) == 1.0 and license_states[state] == 1.0
    secret_states = {labels["state"]: v for labels, v in f["license_keeper_secret_state"]}
    assert set(secret_states) == {x.value for x in SecretState}
    assert sum(secret_states.values()) == 1.0 and secret_states[secret.value] == 1.0


@pytest.mark.parametrize("source", ["konnect", "secret", "backup"])
def test_license_info_and_values(source: str) -> None:
    held = record(200, source=source)
    state = KeeperState(held=held, leader=True, last_konnect_success=1_800_000_000.0, polling_period=3600.0)
    f = families(Metrics(state))
    [(labels, value)] = f["license_keeper_license_info"]
    assert held.license is not None
    assert labels == {"fingerprint": held.license.fingerprint, "source": source}
    assert value == 1.0
    assert f["license_keeper_license_expiration_timestamp_seconds"] == [({}, held.license.expires_at.timestamp())]
    assert f["license_keeper_kong_license_signature"] == [({}, held.license.kong_signature_exported)]
    grace = held.license.grace_period_ends_at
    assert f["license_keeper_license_grace_period_end_timestamp_seconds"] == [({}, grace.timestamp())]
    assert f["license_keeper_konnect_last_success_timestamp_seconds"] == [({}, 1_800_000_000.0)]
    assert f["license_keeper_polling_period_seconds"] == [({}, 3600.0)]
    assert f["license_keeper_leader"] == [({}, 1.0)]


@pytest.mark.parametrize("state", ["missing", "invalid"])
def test_no_license_series_without_a_valid_license(state: str) -> None:
    f = families(Metrics(KeeperState(held=STATES[state][0])))
    for name in (
        "license_keeper_license_info",
        "license_keeper_license_expiration_timestamp_seconds",
        "license_keeper_kong_license_signature",
        "license_keeper_license_grace_period_end_timestamp_seconds",
        "license_keeper_konnect_last_success_timestamp_seconds",
    ):
        assert name not in f
    assert f["license_keeper_leader"] == [({}, 0.0)]


def test_metrics_never_carry_license_text() -> None:
    held = record(200)
    for h in (held, INVALID):
        text = Metrics(KeeperState(held=h, secret_state=SecretState.PRESENT)).render().decode()
        for secret_text in (CUSTOMER, "Quixotic", KEY, SIGNATURE, SIGNATURE[-34:], "deadbeef", h.document, h.id):
            assert secret_text not in text
        assert "license_key" not in text and 'signature"' not in text


def test_counters_start_at_zero_for_every_label_value() -> None:
    m = Metrics(KeeperState())
    f = families(m)
    assert {labels["result"]: v for labels, v in f["license_keeper_konnect_requests_total"]} == dict.fromkeys(
        KONNECT_RESULTS, 0.0
    )
    assert {labels["reason"]: v for labels, v in f["license_keeper_secret_writes_total"]} == dict.fromkeys(
        WRITE_REASONS, 0.0
    )
    m.secret_writes.labels("create").inc()
    m.konnect_requests.labels("timeout").inc(2)
    f = families(m)
    writes = {labels["reason"]: v for labels, v in f["license_keeper_secret_writes_total"]}
    assert writes == {**dict.fromkeys(WRITE_REASONS, 0.0), "create": 1.0}
    requests = {labels["result"]: v for labels, v in f["license_keeper_konnect_requests_total"]}
    assert requests == {**dict.fromkeys(KONNECT_RESULTS, 0.0), "timeout": 2.0}


def test_metrics_are_computed_at_scrape_time() -> None:
    state = KeeperState()
    m = Metrics(state)
    assert {lbl["state"]: v for lbl, v in families(m)["license_keeper_license_state"]}["missing"] == 1.0
    state.held = record(200)
    state.leader = True
    f = families(m)
    assert {lbl["state"]: v for lbl, v in f["license_keeper_license_state"]}["valid"] == 1.0
    assert f["license_keeper_leader"] == [({}, 1.0)]


def test_two_registries_do_not_collide() -> None:
    a, b = Metrics(KeeperState()), Metrics(KeeperState())
    a.secret_writes.labels("rotate").inc()
    assert {lbl["reason"]: v for lbl, v in families(b)["license_keeper_secret_writes_total"]}["rotate"] == 0.0


def _log_record(msg: str, *, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = None
    if exc is not None:
        try:
            raise exc
        except BaseException:
            exc_info = sys.exc_info()
    return logging.LogRecord("license_keeper.agent", logging.WARNING, __file__, 1, msg, (), exc_info)


def test_json_formatter_one_line_valid_json() -> None:
    line = JsonFormatter().format(_log_record('multi\nline "quoted" message'))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == 'multi\nline "quoted" message'
    assert entry["level"] == "warning"
    assert entry["logger"] == "license_keeper.agent"
    assert set(entry) == {"ts", "level", "logger", "msg"}
    datetime.datetime.fromisoformat(entry["ts"])


def test_json_formatter_keeps_only_the_exception_type() -> None:
    leak = f"{CUSTOMER} {KEY} {SIGNATURE}"
    line = JsonFormatter().format(_log_record("poll failed", exc=ValueError(leak)))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["error"] == "ValueError"
    assert CUSTOMER not in line and KEY not in line and SIGNATURE not in line
    assert "Traceback" not in line


def test_text_formatter_keeps_only_the_exception_type() -> None:
    leak = f"{CUSTOMER} {KEY}"
    text = TextFormatter().format(_log_record("poll failed", exc=RuntimeError(leak)))
    assert "RuntimeError" in text
    assert CUSTOMER not in text and KEY not in text and "Traceback" not in text


def test_health_tells_a_stuck_poll_loop_from_a_quiet_one() -> None:
    from license_keeper.observe import HEALTH_STALE_SECONDS, POLL_LOOP_STALE_SECONDS, KeeperState

    s = KeeperState(secret_view_stale_after=1e9)  # only the loops here; the Secret view below
    s.heartbeat = 1000.0
    assert s.health(now=1000.0 + HEALTH_STALE_SECONDS - 1) == (True, "ok")
    ok, reason = s.health(now=1000.0 + HEALTH_STALE_SECONDS + 1)
    assert not ok and "event loop stalled" in reason

    s.poll_beat = 1000.0
    s.heartbeat = 1000.0 + POLL_LOOP_STALE_SECONDS
    assert s.health(now=s.heartbeat + 1) == (True, "ok")  # a follower's poll loop does not run
    s.leader = True
    ok, reason = s.health(now=s.heartbeat + 1)
    assert not ok and "poll loop stalled" in reason
    s.beat_poll_loop()
    s.heartbeat = s.poll_beat
    assert s.health(now=s.poll_beat + 1) == (True, "ok")


def test_health_fails_when_the_secret_view_is_stale_and_says_why() -> None:
    from license_keeper.observe import SECRET_VIEW_STALE_SECONDS, KeeperState

    s = KeeperState()
    s.secret_view_at = 1000.0
    s.heartbeat = 1000.0 + SECRET_VIEW_STALE_SECONDS - 1  # the event loop runs; only the view ages
    assert s.health(now=1000.0 + SECRET_VIEW_STALE_SECONDS - 1) == (True, "ok")
    s.heartbeat = 1000.0 + SECRET_VIEW_STALE_SECONDS
    ok, reason = s.health(now=1000.0 + SECRET_VIEW_STALE_SECONDS + 1)
    assert not ok and "Secret view stale" in reason and "181 s" in reason
    s.note_secret_view()  # a watch event or a successful re-read
    s.heartbeat = s.secret_view_at
    assert s.health(now=s.secret_view_at + 1) == (True, "ok")


@pytest.mark.parametrize(
    ("konnect_deadline", "api_timeout", "bound"),
    [
        (31.0, 30.0, 300.0),  # the defaults: the five-minute floor
        (301.0, 30.0, 421.0),  # the longest --konnect-timeout (5m): its request and two Secret syncs
        (61.0, 60.0, 301.0),
        (0.0, 30.0, 300.0),  # no Konnect client: the floor
    ],
)
def test_the_poll_loop_stall_bound_follows_the_timeouts(
    konnect_deadline: float, api_timeout: float, bound: float
) -> None:
    from license_keeper.observe import poll_loop_stall_bound

    assert poll_loop_stall_bound(konnect_deadline, api_timeout) == bound


@given(konnect=st.floats(1.0, 3600.0), api=st.floats(1.0, 300.0))
def test_the_poll_loop_stall_bound_outlasts_a_konnect_request_and_two_secret_syncs(konnect: float, api: float) -> None:
    from license_keeper.observe import POLL_LOOP_STALE_SECONDS, poll_loop_stall_bound

    bound = poll_loop_stall_bound(konnect, api)
    assert bound >= konnect + 4 * api and bound >= POLL_LOOP_STALE_SECONDS


def test_health_calls_a_poll_loop_stalled_only_past_its_own_bound() -> None:
    """Issue 26 item 1: with a 5 minute Konnect timeout, 310 s inside one request is not a stall."""
    from license_keeper.observe import KeeperState, poll_loop_stall_bound

    s = KeeperState(secret_view_stale_after=1e9, leader=True, poll_loop_stale_after=poll_loop_stall_bound(301.0, 30.0))
    s.poll_beat = 1000.0
    s.heartbeat = 1000.0 + 310.0
    assert s.health(now=1000.0 + 310.0) == (True, "ok")
    s.heartbeat = 1000.0 + 422.0
    ok, reason = s.health(now=1000.0 + 422.0)
    assert not ok and reason == "poll loop stalled: no progress for 422 s (bound 421 s)"
