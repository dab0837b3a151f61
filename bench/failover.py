"""Prints measured figures: readiness after restart during a Konnect outage, leader failover after
SIGKILL and after SIGTERM (median of several runs), and the keeper's resident memory.

    .venv/bin/python bench/failover.py [--runs 5]

Uses the real control plane (built by `make controlplane`), the Konnect stand-in and real keeper
processes with the default Lease timings (15 s lease, 10 s renew deadline, 2 s retry).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.keeper import KeeperProcess, KonnectEndpoint, keeper_rules
from license_keeper.testing.konnect import KonnectStandIn

SECRET, LEASE = "kong-license", "kong-license-keeper"


async def until(predicate, timeout: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


def rss_mib(k: KeeperProcess) -> float:
    assert k.proc is not None
    for line in Path(f"/proc/{k.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="lk-bench-"))
    cp = await asyncio.to_thread(ControlPlane(work / "cp").start)
    ready_times, kill_times, term_times, rss = [], [], [], []
    try:
        async with KonnectStandIn(tls_dir=work / "tls") as konnect:
            for i in range(runs):
                ns = cp.create_namespace(f"bench-{i}")
                access = cp.service_account(ns, "license-keeper", keeper_rules(SECRET, LEASE))

                def keeper(name: str, ns: str = ns, access=access) -> KeeperProcess:  # type: ignore[no-untyped-def]
                    return KeeperProcess(
                        kubeconfig=access.kubeconfig, namespace=ns, konnect=KonnectEndpoint.of(konnect),
                        workdir=work / ns, name=name,
                    ).start()

                await konnect.set_mode("license")
                a = keeper("a")
                await asyncio.to_thread(a.wait_ready, 60)
                await until(lambda a=a: a.writes() == 1)
                # restart during an outage
                await konnect.set_mode("blackhole")
                a.kill()
                b = keeper("b")
                ready_times.append(await asyncio.to_thread(b.wait_ready, 60))
                await asyncio.sleep(1)
                rss.append(rss_mib(b))
                await konnect.set_mode("license")
                # SIGKILL failover: b takes over a's lease (a is dead), then c follows b
                await until(lambda b=b: b.metric("license_keeper_leader") == 1)
                c = keeper("c")
                await asyncio.to_thread(c.wait_ready, 60)
                start = time.monotonic()
                b.kill()
                await until(lambda c=c: c.metric("license_keeper_leader") == 1)
                kill_times.append(time.monotonic() - start)
                # SIGTERM failover: d follows c; c releases the lease on SIGTERM
                d = keeper("d")
                await asyncio.to_thread(d.wait_ready, 60)
                start = time.monotonic()
                await asyncio.to_thread(c.terminate)
                await until(lambda d=d: d.metric("license_keeper_leader") == 1)
                term_times.append(time.monotonic() - start)
                d.kill()
                print(
                    f"run {i + 1}: ready after restart {ready_times[-1]:.2f} s, SIGKILL failover "
                    f"{kill_times[-1]:.2f} s, SIGTERM failover {term_times[-1]:.2f} s, RSS {rss[-1]:.0f} MiB",
                    flush=True,
                )
    finally:
        await asyncio.to_thread(cp.stop)
    print(f"median ready after restart (Konnect black-holed): {statistics.median(ready_times):.2f} s")
    print(f"median failover after SIGKILL: {statistics.median(kill_times):.2f} s (bound: 17 s)")
    print(f"median failover after SIGTERM: {statistics.median(term_times):.2f} s (bound: 3 s)")
    print(f"median keeper RSS: {statistics.median(rss):.0f} MiB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    asyncio.run(run(p.parse_args().runs))
