"""Leader election against the real API server: several electors, each with its own restricted identity.

Timings are shortened (lease 3 s, renew deadline 2 s, retry 0.5 s). A sampler checks `is_leader` of
every elector every 10 ms; two leaders at one sampled instant fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from license_keeper.election import LeaderElector, read_holder
from license_keeper.kube import Kube
from license_keeper.testing.controlplane import ControlPlane

from ..conftest import ServiceAccountFactory

LEASE = "kong-license-keeper"
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 3.0, 2.0, 0.5
# Exactly what the chart grants: get/update/list/watch on the one Lease by name, create on leases
# (RBAC cannot restrict create by name).
RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [LEASE],
        "verbs": ["get", "update", "list", "watch"],
    },
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ELECTION_LOGGER = "license_keeper.election"


@dataclass
class Replica:
    elector: LeaderElector
    kube: Kube
    task: asyncio.Task[None] | None = None
    changes: list[tuple[float, bool]] = field(default_factory=list)

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(), name=self.elector.identity)

    async def kill(self) -> None:
        """Like SIGKILL: the loop just stops; nothing is released."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Sampler:
    """Samples every elector's is_leader often; remembers overlaps and when each one led."""

    def __init__(self, replicas: Iterable[Replica], interval: float = 0.01) -> None:
        self.replicas = list(replicas)
        self.interval = interval
        self.samples = 0
        self.overlaps: list[tuple[float, list[str]]] = []
        self.leaders_seen: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            leaders = [r.elector.identity for r in self.replicas if r.elector.is_leader]
            self.samples += 1
            if len(leaders) > 1:
                self.overlaps.append((time.monotonic(), leaders))
            for leader in leaders:
                if not self.leaders_seen or self.leaders_seen[-1] != leader:
                    self.leaders_seen.append(leader)
            await asyncio.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def assert_never_two(self) -> None:
        assert self.samples > 0
        assert not self.overlaps, f"two leaders at once: {self.overlaps[:5]}"


@pytest.fixture
async def replicas(namespace: str, service_account: ServiceAccountFactory) -> AsyncIterator[Callable[..., Any]]:
    made: list[Replica] = []

    async def make(
        count: int, rules: Iterable[Mapping[str, Any]] = RULES, start: bool = True, **kwargs: Any
    ) -> list[Replica]:
        timings = {
            "lease_duration": kwargs.pop("lease_duration", LEASE_DURATION),
            "renew_deadline": kwargs.pop("renew_deadline", RENEW_DEADLINE),
            "retry_period": kwargs.pop("retry_period", RETRY_PERIOD),
        }
        group: list[Replica] = []
        for _ in range(count):
            sa = service_account(rules)
            kube = Kube.from_kubeconfig(sa.kubeconfig)
            identity = f"{sa.name}-replica"
            replica = Replica(None, kube)  # type: ignore[arg-type]
            replica.elector = LeaderElector(
                kube,
                namespace,
                LEASE,
                identity,
                **timings,
                on_change=lambda leading, r=replica: r.changes.append((time.monotonic(), leading)),
                **kwargs,
            )
            group.append(replica)
        made.extend(group)
        if start:
            for replica in group:
                replica.start()
        return group

    try:
        yield make
    finally:
        for replica in made:
            if replica.task is not None:
                replica.task.cancel()
                with contextlib.suppress(BaseException):
                    await replica.task
            await replica.kube.close()


async def wait_for_leader(group: Iterable[Replica], within: float, exclude: Replica | None = None) -> Replica:
    deadline = time.monotonic() + within
    group = list(group)
    while time.monotonic() < deadline:
        for replica in group:
            if replica is not exclude and replica.elector.is_leader:
                return replica
        await asyncio.sleep(0.01)
    holders = [(r.elector.identity, r.elector.holder, r.elector.last_error) for r in group]
    raise AssertionError(f"no leader within {within} s: {holders}")


async def lease_spec(controlplane: ControlPlane, namespace: str) -> dict[str, Any]:
    resp = await asyncio.to_thread(
        controlplane.request, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    )
    assert resp.status == 200, resp.body
    return dict(resp.body["spec"])


# --- the tests -------------------------------------------------------------------------------------


async def test_three_electors_exactly_one_leads(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str, admin_kube: Kube
) -> None:
    assert await read_holder(admin_kube, namespace, LEASE) is None
    group: list[Replica] = await replicas(3)
    with Sampler(group) as sampler:
        leader = await wait_for_leader(group, within=5)
        started = time.monotonic()
        no_leader_samples = 0
        while time.monotonic() - started < 10:
            if sum(r.elector.is_leader for r in group) != 1:
                no_leader_samples += 1
            await asyncio.sleep(0.01)
    sampler.assert_never_two()
    assert sampler.leaders_seen == [leader.elector.identity]  # the same leader all along
    assert no_leader_samples == 0
    followers = [r for r in group if r is not leader]
    for follower in followers:
        assert follower.elector.holder == leader.elector.identity
        assert not follower.elector.leading.is_set()
        assert follower.changes == []
    assert leader.elector.leading.is_set()
    assert [leading for _, leading in leader.changes] == [True]

    spec = await lease_spec(controlplane, namespace)
    assert spec["holderIdentity"] == leader.elector.identity
    assert spec["leaseDurationSeconds"] == 3
    assert spec["leaseTransitions"] == 0
    assert MICRO_TIME.match(spec["renewTime"]) and MICRO_TIME.match(spec["acquireTime"])
    info = await read_holder(admin_kube, namespace, LEASE)
    assert info is not None
    assert info.holder == leader.elector.identity
    assert info.lease_duration_seconds == 3 and info.transitions == 0
    assert info.renew_time is not None and abs((datetime.now(UTC) - info.renew_time).total_seconds()) < 5


async def test_zero_microseconds_micro_time_is_accepted(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str
) -> None:
    # Client model serialization drops a zero fraction here (kubernetes-asyncio sent "…T05:06:07+00:00"),
    # which the API server rejects for a MicroTime; the keeper sends the RFC 3339 micro layout.
    fixed = datetime(2025, 3, 4, 5, 6, 7, 0, tzinfo=UTC)
    (replica,) = await replicas(1, wall_clock=lambda: fixed)
    await wait_for_leader([replica], within=5)
    await asyncio.sleep(RETRY_PERIOD * 3)  # some renews, too
    assert replica.elector.is_leader and replica.elector.last_error is None
    spec = await lease_spec(controlplane, namespace)
    assert spec["renewTime"] == "2025-03-04T05:06:07.000000Z"


async def test_takeover_after_leader_dies_without_release(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str
) -> None:
    group: list[Replica] = await replicas(3)
    with Sampler(group) as sampler:
        leader = await wait_for_leader(group, within=5)
        await asyncio.sleep(1.0)
        await leader.kill()
        killed = time.monotonic()
        assert not leader.elector.is_leader
        successor = await wait_for_leader(group, within=LEASE_DURATION + 4 * RETRY_PERIOD, exclude=leader)
        takeover = time.monotonic() - killed
    sampler.assert_never_two()
    print(f"\ntakeover after kill: {takeover:.2f} s")
    # Expiry is observed-time + lease duration, the observation lags the last renew by at most one
    # retry period and the follower polls every retry period: lease + 2 retry periods at worst.
    assert takeover <= LEASE_DURATION + 2 * RETRY_PERIOD + 0.3
    # ...and nobody jumped in before the dead leader's lease could have run out.
    assert takeover >= LEASE_DURATION - RETRY_PERIOD - 0.1
    assert not leader.elector.lost.is_set()
    spec = await lease_spec(controlplane, namespace)
    assert spec["holderIdentity"] == successor.elector.identity
    assert spec["leaseTransitions"] == 1
    await asyncio.sleep(RETRY_PERIOD * 2)  # the third replica reads the Lease again
    others = [r for r in group if r not in (leader, successor)]
    assert others[0].elector.holder == successor.elector.identity
    assert not others[0].elector.is_leader


async def test_release_hands_over_within_a_retry_period(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str
) -> None:
    group: list[Replica] = await replicas(3)
    with Sampler(group) as sampler:
        leader = await wait_for_leader(group, within=5)
        await asyncio.sleep(1.0)
        released = time.monotonic()
        await leader.elector.release()
        assert not leader.elector.is_leader
        successor = await wait_for_leader(group, within=LEASE_DURATION, exclude=leader)
        handover = time.monotonic() - released
        assert leader.task is not None
        await asyncio.wait_for(leader.task, 1)  # run() returned after release
    sampler.assert_never_two()
    print(f"\nhandover after release: {handover:.2f} s")
    assert handover <= RETRY_PERIOD + 0.3
    assert not leader.elector.lost.is_set()
    assert not leader.elector.leading.is_set()
    assert [leading for _, leading in leader.changes] == [True, False]
    spec = await lease_spec(controlplane, namespace)
    assert spec["holderIdentity"] == successor.elector.identity
    assert spec["leaseTransitions"] == 1
    await leader.elector.release()  # a second release is harmless


async def test_a_watching_follower_takes_a_released_lease_at_once(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str
) -> None:
    """Followers watch the Lease (with the chart's rules: list/watch by name), so a release is taken
    as soon as it is seen, not at the next retry. The retry period here is 8 s; the audit log shows
    the follower's watch was allowed, so the fast takeover is the watch's doing."""
    leader, follower = await replicas(2, lease_duration=30.0, renew_deadline=20.0, retry_period=8.0)
    first = await wait_for_leader([leader, follower], within=10)
    other = follower if first is leader else leader
    await asyncio.sleep(2.0)  # the follower has listed the Lease and opened its watch
    released = time.monotonic()
    await first.elector.release()
    await wait_for_leader([other], within=10)
    handover = time.monotonic() - released
    print(f"\nhandover after release with an 8 s retry period: {handover:.2f} s")
    assert handover < 1.5
    watches = [
        e
        for e in controlplane.audit_entries(namespace=namespace, resource="leases")
        if e.verb == "watch" and e.username.endswith(other.elector.identity.removesuffix("-replica"))
    ]
    assert watches and all(e.code == 200 for e in watches), [e.brief() for e in watches]


async def test_release_of_a_follower_leaves_the_lease_alone(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str
) -> None:
    group: list[Replica] = await replicas(2)
    leader = await wait_for_leader(group, within=5)
    follower = next(r for r in group if r is not leader)
    await asyncio.sleep(RETRY_PERIOD * 2)
    before = await lease_spec(controlplane, namespace)
    await follower.elector.release()
    assert follower.task is not None
    await asyncio.wait_for(follower.task, 1)
    assert leader.elector.is_leader
    after = await lease_spec(controlplane, namespace)
    assert after["holderIdentity"] == before["holderIdentity"] == leader.elector.identity


async def test_apiserver_outage_longer_than_renew_deadline(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str
) -> None:
    group: list[Replica] = await replicas(3)
    with Sampler(group) as sampler:
        leader = await wait_for_leader(group, within=5)
        await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(controlplane.stop_apiserver)
            stopped = time.monotonic()
            await asyncio.wait_for(leader.elector.lost.wait(), RENEW_DEADLINE + 2)
            lost_at = time.monotonic()
            last_renew = leader.elector._last_renew
            assert last_renew is not None
            assert not leader.elector.is_leader
            assert not any(r.elector.is_leader for r in group)
            await asyncio.sleep(max(0.0, stopped + RENEW_DEADLINE + 1.0 - time.monotonic()))
        finally:
            await asyncio.to_thread(controlplane.start_apiserver)
        restarted = time.monotonic()
        successor = await wait_for_leader(group, within=LEASE_DURATION + 10, exclude=leader)
        recovered = time.monotonic() - restarted
        await asyncio.sleep(RETRY_PERIOD * 4)
        assert leader.task is not None and leader.task.done() and leader.task.exception() is None
        assert not leader.elector.is_leader
    sampler.assert_never_two()
    print(
        f"\noutage: lost {lost_at - last_renew:.2f} s after the last renew "
        f"({lost_at - stopped:.2f} s after stop); new leader {recovered:.2f} s after restart"
    )
    assert lost_at - last_renew <= RENEW_DEADLINE + 0.2
    assert [leading for _, leading in leader.changes] == [True, False]
    assert successor.elector.is_leader


async def test_lease_changed_behind_the_leaders_back_loses(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str
) -> None:
    group: list[Replica] = await replicas(2)
    with Sampler(group) as sampler:
        leader = await wait_for_leader(group, within=5)
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
        current = (await asyncio.to_thread(controlplane.request, "GET", path)).body
        current["spec"]["holderIdentity"] = "intruder"
        put = await asyncio.to_thread(controlplane.request, "PUT", path, current)
        assert put.status == 200, put.body
        changed = time.monotonic()
        await asyncio.wait_for(leader.elector.lost.wait(), RETRY_PERIOD + 1)
        detected = time.monotonic() - changed
        assert not leader.elector.is_leader
        # The intruder never renews: after its lease runs out the other replica takes over, and the
        # one that lost never leads again.
        successor = await wait_for_leader(group, within=LEASE_DURATION + 3, exclude=leader)
        await asyncio.sleep(RETRY_PERIOD * 3)
    sampler.assert_never_two()
    print(f"\n409 detected {detected:.2f} s after the change")
    assert detected <= RETRY_PERIOD + 0.3
    assert successor is not leader and not leader.elector.is_leader
    assert leader.elector.holder in ("intruder", successor.elector.identity)
    assert "intruder" not in sampler.leaders_seen


async def test_without_update_permission_the_leader_loses_cleanly(
    replicas: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ELECTION_LOGGER)
    no_update = [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEASE], "verbs": ["get"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]
    (replica,) = await replicas(1, rules=no_update)
    await wait_for_leader([replica], within=5)  # create is allowed, so it leads at first
    await asyncio.wait_for(replica.elector.lost.wait(), RENEW_DEADLINE + 1)
    assert replica.task is not None
    await asyncio.wait_for(replica.task, 1)
    assert replica.task.exception() is None
    assert not replica.elector.is_leader
    records = [r for r in caplog.records if r.name == ELECTION_LOGGER]
    assert not [r for r in records if r.exc_info], "tracebacks were logged"
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    forbidden = [m for m in errors if "cannot update" in m and "lost leadership" not in m]
    assert len(forbidden) == 1, errors  # one clear line, not one per renew attempt
    assert "403" in forbidden[0] and "RBAC" in forbidden[0]
    assert len([m for m in errors if "lost leadership" in m]) == 1
    assert replica.elector.last_error is not None and "403" in replica.elector.last_error


async def test_without_update_permission_a_follower_cannot_take_over_and_says_so(
    replicas: Callable[..., Any], controlplane: ControlPlane, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=ELECTION_LOGGER)
    # A released Lease (free to take) that this identity may read but not update.
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    controlplane.must(
        "POST", path, {"metadata": {"name": LEASE}, "spec": {"holderIdentity": "", "leaseDurationSeconds": 1}}
    )
    no_update = [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEASE], "verbs": ["get"]},
    ]
    (replica,) = await replicas(1, rules=no_update)
    await asyncio.sleep(RETRY_PERIOD * 8)  # eight attempts
    assert replica.task is not None and not replica.task.done()  # still retrying, not crashed
    assert not replica.elector.is_leader and not replica.elector.lost.is_set()
    records = [r for r in caplog.records if r.name == ELECTION_LOGGER]
    assert not [r for r in records if r.exc_info], "tracebacks were logged"
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # one clear line, not one per retry
    assert "403" in errors[0] and "forbidden" in errors[0] and "RBAC" in errors[0]
    assert len([r for r in records if "403" in r.getMessage()]) >= 4  # it did keep trying (debug)
    await replica.elector.release()
    await asyncio.wait_for(replica.task, 2)
