"""admin-svc: the pure decisions (delivery.py): EndpointSlices -> gateway pods, per-pod truth, the summary."""

from __future__ import annotations

from typing import Any

import pytest

from license_keeper.delivery import (
    DeliveryState,
    GatewayPod,
    PodReport,
    PodState,
    ReportedLicense,
    TargetReport,
    diagnose_pod,
    next_pod_report,
    oldest_behind,
    parse_target,
    pod_counts,
    pod_takes_writes,
    pods_staying_in_drift,
    service_pods,
    summarize_pods,
)
from license_keeper.license import parse_license
from license_keeper.testing.licenses import make_document

D, P = DeliveryState, PodState
HELD = parse_license(make_document(expiration_date="2030-01-01"))
OTHER = parse_license(make_document(expiration_date="2029-01-01"))
RUNS_HELD = ReportedLicense(HELD.license_key, "2030-01-01", deployment="dbless")
RUNS_OTHER = ReportedLicense(OTHER.license_key, "2029-01-01", deployment="dbless")


@pytest.mark.parametrize(
    ("text", "value", "service"),
    [
        ("admin-svc=kong/kong-admin", "kong/kong-admin", ("kong", "kong-admin", None)),
        ("ADMIN-SVC=kong/kong-admin:admin-tls", "kong/kong-admin:admin-tls", ("kong", "kong-admin", "admin-tls")),
    ],
)
def test_parse_admin_svc(text: str, value: str, service: tuple[str, str, str | None]) -> None:
    spec = parse_target(text)
    assert (spec.kind, spec.value, spec.service) == ("admin-svc", value, service)
    assert spec.label == f"admin-svc={value}"


@pytest.mark.parametrize(
    "text",
    ["admin-svc=kong-admin", "admin-svc=Kong/admin", "admin-svc=kong/", "admin-svc=kong/a:Bad_Port", "admin-svc=a/b:"],
)
def test_parse_admin_svc_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)


def endpoint(
    ip: str, pod: str | None = None, ready: bool | None = True, terminating: bool | None = None
) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
    ep: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if pod:
        ep["targetRef"] = {"kind": "Pod", "name": pod}
    return ep


def eps(*endpoints: dict[str, Any], ports: list[dict[str, Any]] | None = None, kind: str = "IPv4") -> dict[str, Any]:
    return {
        "addressType": kind,
        "endpoints": list(endpoints),
        "ports": ports if ports is not None else [{"name": "admin-tls", "port": 8444}],
    }


def test_service_pods_are_the_ready_endpoints_once_each() -> None:
    slices = [
        eps(endpoint("10.0.0.1", "kong-a"), endpoint("10.0.0.2", "kong-b", ready=False)),
        eps(endpoint("10.0.0.3", "kong-c", terminating=True), endpoint("10.0.0.4", "kong-d", ready=None)),
        eps(endpoint("10.0.0.1", "kong-a")),  # listed twice while slices are rewritten
        eps(endpoint("kong.example"), kind="FQDN"),
        eps(endpoint("fd00::5", "kong-e"), kind="IPv6"),
    ]
    pods = service_pods(slices, None)
    assert [(p.name, p.address, p.port, p.tls) for p in pods] == [
        ("kong-a", "10.0.0.1", 8444, True),
        ("kong-d", "10.0.0.4", 8444, True),
        ("kong-e", "fd00::5", 8444, True),
    ]
    assert str(pods[2].url) == "https://[fd00::5]:8444"


@pytest.mark.parametrize(
    ("ports", "port_name", "found"),
    [
        ([{"name": "admin", "port": 8001}], None, (8001, False)),  # the only port
        ([{"name": "admin", "port": 8001}, {"name": "admin-tls", "port": 8444}], None, (8444, True)),  # KIC's names
        ([{"name": "admin", "port": 8001}, {"name": "admin-tls", "port": 8444}], "admin", (8001, False)),
        ([{"name": "proxy", "port": 8000}, {"name": "status", "port": 8100}], None, None),  # no admin port
        ([{"name": "admin", "port": 8444, "appProtocol": "https"}], "admin", (8444, True)),
        ([{"name": "admin-tls", "port": 8001, "appProtocol": "http"}], None, (8001, False)),
        ([{"name": "admin-tls", "port": 8444}], "other", None),
    ],
)
def test_the_admin_port_and_its_scheme(
    ports: list[dict[str, Any]], port_name: str | None, found: tuple[int, bool] | None
) -> None:
    pods = service_pods([eps(endpoint("10.0.0.1", "p"), ports=ports)], port_name)
    assert ([(p.port, p.tls) for p in pods] or [None]) == [found]


def test_a_pod_without_a_target_ref_is_named_by_its_address() -> None:
    (pod,) = service_pods([eps(endpoint("10.0.0.9"))], None)
    assert pod.name == "10.0.0.9:8444"


@pytest.mark.parametrize(
    ("report", "configuration", "takes"),
    [
        (ReportedLicense("k", "d", deployment="traditional"), None, True),
        (ReportedLicense("k", "d", deployment="dbless"), ("postgres", "traditional"), False),
        (ReportedLicense("k", "d", deployment="hybrid"), None, None),  # ask GET /
        (ReportedLicense("k", "d", deployment="hybrid"), ("postgres", "control_plane"), True),
        (ReportedLicense("k", "d", deployment="hybrid"), ("off", "data_plane"), False),
        (ReportedLicense("k", "d"), ("off", "traditional"), False),  # an older Kong: GET / says DB-less
        (ReportedLicense("k", "d"), ("postgres", "traditional"), True),
    ],
)
def test_which_pods_take_license_writes(
    report: ReportedLicense, configuration: tuple[str, str] | None, takes: bool | None
) -> None:
    assert pod_takes_writes(report, configuration) is takes


def test_diagnose_a_dbless_pod() -> None:
    def diagnose(report: ReportedLicense, held_since: float = 0.0) -> tuple[PodState, str]:
        return diagnose_pod(HELD, report, rows=None, our_id="x", wrote_at=None, held_since=held_since, now=1000.0)

    assert diagnose(RUNS_HELD)[0] is P.DELIVERED
    state, reason = diagnose(RUNS_OTHER, held_since=950.0)
    assert state is P.PENDING and "50 s new" in reason
    state, reason = diagnose(RUNS_OTHER)
    assert state is P.DRIFT and "KONG_LICENSE_DATA" in reason and "2029-01-01" in reason
    assert HELD.license_key not in reason and OTHER.license_key not in reason
    assert diagnose(ReportedLicense("UNLICENSED", "UNLICENSED", deployment="dbless"))[0] is P.DRIFT


def test_diagnose_a_data_plane_points_at_its_control_plane() -> None:
    report = ReportedLicense(OTHER.license_key, "2029-01-01", deployment="hybrid")
    state, reason = diagnose_pod(HELD, report, rows=None, our_id="x", wrote_at=None, held_since=0.0, now=1000.0)
    assert state is P.DRIFT and "control plane" in reason and "KONG_LICENSE_DATA" not in reason


def test_diagnose_a_db_backed_pod_from_its_database_rows() -> None:
    report = ReportedLicense(OTHER.license_key, "2029-01-01", deployment="traditional")
    rows = [{"id": "theirs", "payload": OTHER.document, "created_at": 1, "updated_at": 9}]
    state, reason = diagnose_pod(HELD, report, rows=rows, our_id="ours", wrote_at=None, held_since=0.0, now=1000.0)
    assert state is P.DRIFT and "newer /licenses row not written by the keeper" in reason
    state, _ = diagnose_pod(HELD, report, rows=rows, our_id="ours", wrote_at=990.0, held_since=0.0, now=1000.0)
    assert state is P.PENDING


POD = GatewayPod("kong-a", "10.0.0.1", 8444, True)


def test_pod_reports_carry_since_and_behind_across_rounds() -> None:
    first = next_pod_report(None, POD, P.PENDING, "new", 100.0)
    assert (first.since, first.rounds, first.behind_since, first.address) == (100.0, 1, 100.0, "10.0.0.1:8444")
    second = next_pod_report(first, POD, P.DRIFT, "other", 110.0)
    assert (second.since, second.rounds, second.behind_since) == (110.0, 1, 100.0)
    third = next_pod_report(second, POD, P.DRIFT, "other", 120.0)
    assert (third.since, third.rounds, third.behind_since) == (110.0, 2, 100.0)
    fixed = next_pod_report(third, POD, P.DELIVERED, "ok", 130.0)
    assert (fixed.since, fixed.behind_since) == (130.0, None)
    assert oldest_behind([third, fixed], 150.0) == 50.0 and oldest_behind([fixed], 150.0) == 0.0


def pod(name: str, state: PodState, reason: str = "why", since: float = 0.0) -> PodReport:
    return PodReport(name, "10.0.0.1:8444", state, reason, since)


def test_the_target_is_its_worst_pod_with_counts() -> None:
    assert summarize_pods([], "kong/kong-admin") == (D.PENDING, "no ready gateway pods behind Service kong/kong-admin")
    state, reason = summarize_pods(
        [pod("a", P.DELIVERED), pod("b", P.DRIFT, "runs one from KONG_LICENSE_DATA"), pod("c", P.DELIVERED)], "s"
    )
    assert state is D.DRIFT
    assert reason == "2 of 3 gateway pods run the held license; b: drift: runs one from KONG_LICENSE_DATA"
    assert summarize_pods([pod("a", P.UNREACHABLE), pod("b", P.PENDING)], "s")[0] is D.ERROR
    assert summarize_pods([pod("a", P.UNREACHABLE), pod("b", P.DRIFT)], "s")[0] is D.DRIFT, "known wrong outranks"
    assert summarize_pods([pod("a", P.DELIVERED), pod("b", P.PENDING)], "s")[0] is D.PENDING
    many = summarize_pods([pod(f"p{i}", P.DRIFT) for i in range(10)], "s")[1]
    assert many.endswith("and 7 more") and many.count(": drift:") == 3
    assert pod_counts([pod("a", P.DELIVERED), pod("b", P.DRIFT)]) == {
        "delivered": 1,
        "pending": 0,
        "drift": 1,
        "unreachable": 0,
    }


def test_a_pod_that_stays_in_drift_is_told_once_per_episode() -> None:
    def at(t: float, *pods: PodReport) -> TargetReport:
        return TargetReport("admin-svc=kong/kong-admin", D.DRIFT, "r", at=t, pods=pods)

    r1 = at(100.0, pod("a", P.DRIFT, since=100.0), pod("b", P.DELIVERED))
    assert pods_staying_in_drift(None, r1, stay=10.0) == []
    r2 = at(105.0, pod("a", P.DRIFT, since=100.0))
    assert pods_staying_in_drift(r1, r2, stay=10.0) == []
    r3 = at(111.0, pod("a", P.DRIFT, since=100.0))
    assert [p.pod for p in pods_staying_in_drift(r2, r3, stay=10.0)] == ["a"]
    r4 = at(120.0, pod("a", P.DRIFT, since=100.0))
    assert pods_staying_in_drift(r3, r4, stay=10.0) == [], "told already"
    r5 = at(200.0, pod("a", P.DRIFT, since=150.0))  # left drift and came back: a new episode
    assert [p.pod for p in pods_staying_in_drift(r4, r5, stay=10.0)] == ["a"]


async def test_pods_found_start_rounds_at_most_once_a_second_and_a_secret_write_at_once() -> None:
    import asyncio
    import time

    from license_keeper.deliver import MIN_ROUND_GAP_SECONDS, Deliverer
    from license_keeper.testing.licenses import make_record

    class Counting:
        label = "admin-svc=kong/kong-admin"

        def __init__(self) -> None:
            self.rounds: list[float] = []

        async def deliver(self, lic: Any, may_write: Any = None) -> TargetReport:
            self.rounds.append(time.monotonic())
            return TargetReport(self.label, D.DELIVERED, "ok", at=time.time())

        async def check(self, lic: Any) -> TargetReport:
            return await self.deliver(lic)

        async def close(self) -> None:
            return None

    target = Counting()
    deliverer = Deliverer([target])
    held = make_record(updated_at=1)
    stop = asyncio.Event()
    loop = asyncio.create_task(deliverer.run_periodic(lambda: held, stop, period=600.0))
    await asyncio.sleep(0.1)
    for _ in range(20):  # a rollout: the EndpointSlices change many times a second
        deliverer.kick_soon()
        await asyncio.sleep(0.05)
    assert len(target.rounds) == 2, target.rounds  # the first, then one at most a second after it
    assert target.rounds[1] - target.rounds[0] >= MIN_ROUND_GAP_SECONDS
    await asyncio.sleep(0.1)
    before = len(target.rounds)
    deliverer.kick()  # a Secret write: at once, however recent the last round
    await asyncio.sleep(0.1)
    assert len(target.rounds) == before + 1
    stop.set()
    await asyncio.wait_for(loop, 5)
