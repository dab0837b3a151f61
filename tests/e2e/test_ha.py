"""Several keeper processes with Lease leader election on the real control plane."""

from __future__ import annotations

import asyncio
import time

from license_keeper.election import read_holder
from license_keeper.kube import Kube
from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.keeper import KeeperProcess
from license_keeper.testing.konnect import KonnectStandIn

from .conftest import LEASE, KeeperFactory, ready, wait_for

FAST = ("--polling-period=300ms", "--initial-polling-period=300ms")


def konnect_calls(k: KeeperProcess) -> float:
    return sum(v for key, v in k.metrics().items() if key.startswith("license_keeper_konnect_requests_total"))


async def leaders(ks: list[KeeperProcess]) -> list[str]:
    def sample() -> list[str]:
        return [k.name for k in ks if k.proc and k.proc.poll() is None and k.metric("license_keeper_leader") == 1]

    return await asyncio.to_thread(sample)


async def holder(kube: Kube, namespace: str) -> str | None:
    info = await read_holder(kube, namespace, LEASE)
    return info.holder if info else None


async def test_three_replicas_one_leader_does_all_the_work(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_kube: Kube, namespace: str
) -> None:
    ks = [keepers(f"keeper-{i}", *FAST) for i in range(3)]
    for k in ks:
        await ready(k)
    await wait_for(lambda: holder(admin_kube, namespace), 20)
    samples = []
    for _ in range(40):  # ~10 s
        samples.append(await leaders(ks))
        await asyncio.sleep(0.25)
    assert all(len(s) <= 1 for s in samples), samples
    leader_name = await holder(admin_kube, namespace)
    assert samples[-1] == [leader_name]
    for k in ks:
        calls = await asyncio.to_thread(konnect_calls, k)
        writes = await asyncio.to_thread(k.writes)
        if k.name == leader_name:
            assert calls >= 10 and writes == 1
        else:
            assert calls == 0 and writes == 0, k.name
            assert await asyncio.to_thread(k.ready)  # followers are ready from the Secret


async def _failover(keepers: KeeperFactory, admin_kube: Kube, namespace: str, kill: bool) -> float:
    ks = [keepers(f"keeper-{i}") for i in range(2)]
    for k in ks:
        await ready(k)
    await wait_for(lambda: holder(admin_kube, namespace), 20)
    old = await holder(admin_kube, namespace)
    (leader,) = [k for k in ks if k.name == old]
    (follower,) = [k for k in ks if k.name != old]
    await wait_for(lambda: asyncio.to_thread(lambda: leader.metric("license_keeper_leader") == 1), 10)
    start = time.monotonic()
    if kill:
        leader.kill()
    else:
        assert await asyncio.to_thread(leader.terminate) == 0
    await wait_for(lambda: asyncio.to_thread(lambda: follower.metric("license_keeper_leader") == 1), 25, 0.05)
    took = time.monotonic() - start
    assert await holder(admin_kube, namespace) == follower.name
    assert await asyncio.to_thread(follower.ready)
    return took


async def test_sigkilled_leader_is_replaced_within_lease_plus_retry(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_kube: Kube, namespace: str
) -> None:
    took = await _failover(keepers, admin_kube, namespace, kill=True)
    print(f"\nfailover after SIGKILL: {took:.2f} s")
    assert took <= 17.5  # lease 15 s + retry 2 s, plus the metrics scrape interval


async def test_sigtermed_leader_hands_over_within_three_seconds(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_kube: Kube, namespace: str
) -> None:
    took = await _failover(keepers, admin_kube, namespace, kill=False)
    print(f"\nfailover after SIGTERM: {took:.2f} s")
    assert took <= 3.0


async def test_apiserver_outage_never_leaves_two_writers_and_recovers(
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    admin_kube: Kube,
    namespace: str,
    controlplane: ControlPlane,
) -> None:
    ks = [keepers(f"keeper-{i}", *FAST) for i in range(2)]
    for k in ks:
        await ready(k)
    await wait_for(lambda: holder(admin_kube, namespace), 20)
    old = await holder(admin_kube, namespace)
    (leader,) = [k for k in ks if k.name == old]
    overlap: list[list[str]] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            now = await leaders(ks)
            if len(now) > 1:
                overlap.append(now)
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(sampler())
    try:
        await asyncio.to_thread(controlplane.stop_apiserver)  # off the loop: the stand-in runs on it
        down = time.monotonic()
        # The leader cannot renew: it must stop and exit non-zero within the renew deadline (+ retry).
        await wait_for(lambda: leader.proc.poll() is not None, 20)
        lost_after = time.monotonic() - down
        assert leader.proc.returncode == 1
        assert "lost the leader Lease" in leader.logs() and "Traceback" not in leader.logs()
        await asyncio.sleep(1)  # a request the leader sent just before exiting may still be answered
        calls_at_exit = konnect.requests
        await asyncio.sleep(max(0.0, 15 - lost_after))
        assert konnect.requests == calls_at_exit  # nobody calls Konnect without the Lease
    finally:
        await asyncio.to_thread(controlplane.start_apiserver)
    # The kubelet would restart the pod; so do we.
    ks.append(keepers(f"{old}-restarted", *FAST))
    await wait_for(
        lambda: asyncio.to_thread(
            lambda: len([k for k in ks if k.proc.poll() is None and k.metric("license_keeper_leader") == 1]) == 1
        ),
        40,
    )
    rotated = konnect.rotate()
    await wait_for(lambda: asyncio.to_thread(lambda: sum(k.writes() for k in ks if k.proc.poll() is None) == 1), 20)
    stop.set()
    await watcher
    print(f"\nleader exited {lost_after:.1f} s after the API server went away")
    assert not overlap, overlap
    assert rotated.updated_at > 0


async def test_follower_started_during_konnect_outage_is_ready(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_kube: Kube, namespace: str
) -> None:
    leader = keepers("keeper-0")
    await ready(leader)
    await wait_for(lambda: asyncio.to_thread(lambda: leader.writes() == 1), 20)
    await konnect.set_mode("closed")
    follower = keepers("keeper-1")
    took = await ready(follower, timeout=10)
    assert took < 5.0
    assert await asyncio.to_thread(lambda: follower.metric("license_keeper_leader")) == 0
