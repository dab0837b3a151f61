"""The keeper's figures in one table: start to ready, failover, memory, API calls per unchanged poll.

    .venv/bin/python bench/keeper.py [--runs 10] [--failovers 5] [--rss-minutes 10] [--polls 20]
                                     [--only ready,failover,polls,rss] [--python PATH] [--baseline PATH]

Uses the real control plane (built by `make controlplane`, audit log on), the Konnect stand-in and
real keeper processes with the default Lease timings (15 s lease, 10 s renew deadline, 2 s retry).
Prints figures; asserts nothing (the tests do). `make bench` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from license_keeper.testing.controlplane import ControlPlane, ServiceAccountAccess
from license_keeper.testing.keeper import KeeperProcess, KonnectEndpoint, keeper_rules
from license_keeper.testing.konnect import KonnectStandIn

SECRET, LEASE = "kong-license", "kong-license-keeper"


@dataclass
class Start:
    ready: float  # seconds from spawn to the first 200 on /readyz
    on_cpu: float  # of which the keeper ran on a CPU
    waiting: float  # and waited for one


@dataclass
class Figure:
    name: str
    value: str
    goal: str
    anchor: str


def rss_mib(k: KeeperProcess) -> float:
    assert k.proc is not None
    for line in Path(f"/proc/{k.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_times(k: KeeperProcess) -> tuple[float, float]:
    """Seconds the keeper's threads have run on a CPU, and waited for one, so far (schedstat).

    Start-up is CPU-bound: on a shared host the same work takes from 0.4 s to 0.65 s of CPU depending
    on the minute, so the start times are printed beside what the keeper itself used."""
    assert k.proc is not None
    on_cpu = waiting = 0
    for stat in Path(f"/proc/{k.proc.pid}/task").glob("*/schedstat"):
        run, wait, _ = stat.read_text().split()
        on_cpu, waiting = on_cpu + int(run), waiting + int(wait)
    return on_cpu / 1e9, waiting / 1e9


async def until(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.01) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - start
        await asyncio.sleep(interval)
    raise TimeoutError("condition not met")


class Bench:
    def __init__(self, cp: ControlPlane, konnect: KonnectStandIn, work: Path, python: str) -> None:
        self.cp, self.konnect, self.work, self.python = cp, konnect, work, python
        self.count = 0
        self.running: list[KeeperProcess] = []

    def namespace(self) -> tuple[str, ServiceAccountAccess]:
        self.count += 1
        ns = self.cp.create_namespace(f"bench-{self.count}-{int(time.time())}")
        return ns, self.cp.service_account(ns, "license-keeper", keeper_rules(SECRET, LEASE))

    def keeper(
        self, ns: str, access: ServiceAccountAccess, name: str, *args: str, python: str | None = None
    ) -> KeeperProcess:
        k = KeeperProcess(
            kubeconfig=access.kubeconfig,
            namespace=ns,
            konnect=KonnectEndpoint.of(self.konnect),
            workdir=self.work / ns,
            name=name,
            args=args,
            python=python or self.python,
        ).start()
        self.running.append(k)
        return k

    def wait_ready(self, k: KeeperProcess) -> float:
        """Seconds from spawn to the first 200 on /readyz, probed every 10 ms."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if k.ready():
                return time.monotonic() - k.started_at
            time.sleep(0.01)
        raise TimeoutError(f"{k.name} not ready")

    async def seeded(self) -> tuple[str, ServiceAccountAccess]:
        """A namespace whose Secret holds a valid license (written by a keeper that is gone again)."""
        ns, access = self.namespace()
        await self.konnect.set_mode("license")
        first = self.keeper(ns, access, "seed")
        await until(lambda: first.writes() == 1)
        first.terminate()
        return ns, access

    async def ready_times(self, runs: int, pythons: list[str]) -> dict[str, list[Start]]:
        """Start -> ready of `runs` keepers on each interpreter, interleaved (so each sees the same host
        minutes), with each one's CPU time and run-queue wait until ready."""
        ns, access = await self.seeded()
        await self.konnect.set_mode("blackhole")
        starts: dict[str, list[Start]] = {p: [] for p in pythons}
        for i in range(runs):
            # ABBA: each build goes first in every other round, so neither always finds the Lease
            # just released or the host just idle.
            for j, python in enumerate(pythons if i % 2 == 0 else pythons[::-1]):
                k = self.keeper(ns, access, f"ready-{i}-{j}", python=python)
                took = await asyncio.to_thread(self.wait_ready, k)
                starts[python].append(Start(took, *cpu_times(k)))
                k.kill()
        return starts

    async def failover(self, kill: bool) -> float:
        ns, access = self.namespace()
        await self.konnect.set_mode("license")
        leader = self.keeper(ns, access, "leader")
        await until(lambda: leader.metric("license_keeper_leader") == 1)
        follower = self.keeper(ns, access, "follower")
        await asyncio.to_thread(self.wait_ready, follower)
        await asyncio.sleep(3)  # the follower has observed the Lease and is waiting on it
        start = time.monotonic()
        if kill:
            leader.kill()
        else:
            leader.signal(signal.SIGTERM)
        await until(lambda: follower.metric("license_keeper_leader") == 1, timeout=60)
        took = time.monotonic() - start
        follower.kill()
        leader.kill()
        return took

    async def steady_rss(self, minutes: float) -> tuple[float, float]:
        ns, access = self.namespace()
        await self.konnect.set_mode("license")
        leader = self.keeper(ns, access, "rss-leader")
        await until(lambda: leader.metric("license_keeper_leader") == 1)
        follower = self.keeper(ns, access, "rss-follower")
        await asyncio.sleep(minutes * 60)
        return rss_mib(leader), rss_mib(follower)

    async def calls_per_unchanged_poll(self, polls: int) -> tuple[float, int]:
        """Secret requests by the keeper's ServiceAccount per unchanged Konnect poll, from the audit log."""
        ns, access = self.namespace()
        await self.konnect.set_mode("license")
        k = self.keeper(ns, access, "polls", "--polling-period=1s", "--initial-polling-period=1s")
        await until(lambda: k.writes() == 1)
        await asyncio.sleep(3)  # past the start-up: the watch is open, the Secret written once
        since = datetime.datetime.now(datetime.UTC)
        before = self.konnect.requests
        await until(lambda: self.konnect.requests - before >= polls, timeout=polls * 3 + 30)
        await asyncio.sleep(1)
        made = self.konnect.requests - before
        entries = self.cp.audit_entries(since=since, namespace=ns, resource="secrets")
        secret_calls = [e for e in entries if e.username == access.username and e.verb not in ("watch",)]
        return len(secret_calls) / made, made

    def stop(self) -> None:
        for k in self.running:
            k.kill()


async def ready_figure(bench: Bench, args: argparse.Namespace) -> list[Figure]:
    pythons = [args.python, *([args.baseline] if args.baseline else [])]
    starts = await bench.ready_times(args.runs, pythons)
    ours = starts[args.python]
    for python, runs in starts.items():
        print(f"start -> ready ({python}): {', '.join(f'{s.ready:.2f}' for s in runs)} s", flush=True)
        print(f"  on a CPU until ready: {', '.join(f'{s.on_cpu:.2f}' for s in runs)} s", flush=True)
        print(f"  waiting for a CPU: {', '.join(f'{s.waiting:.2f}' for s in runs)} s", flush=True)
    ready, on_cpu = statistics.median(s.ready for s in ours), statistics.median(s.on_cpu for s in ours)
    figures = [
        Figure(
            f"start -> ready, Konnect black-holed (median of {len(ours)})",
            f"{ready:.2f} s ({on_cpu:.2f} s on a CPU)",
            "<= 0.5 s",
            "KIC 3.5: up to 300 s",
        )
    ]
    if args.baseline:
        base = starts[args.baseline]
        ratios = [o.ready / b.ready for o, b in zip(ours, base, strict=True)]
        figures.append(
            Figure(
                f"start -> ready of the --baseline build, interleaved (median of {len(base)})",
                f"{statistics.median(s.ready for s in base):.2f} s; this build takes {statistics.median(ratios):.2f}x",
                "-",
                args.baseline,
            )
        )
    return figures


async def failover_figures(bench: Bench, args: argparse.Namespace) -> list[Figure]:
    kills = [await bench.failover(kill=True) for _ in range(args.failovers)]
    terms = [await bench.failover(kill=False) for _ in range(args.failovers)]
    print(f"failover SIGKILL: {', '.join(f'{t:.2f}' for t in kills)} s", flush=True)
    print(f"failover SIGTERM: {', '.join(f'{t:.2f}' for t in terms)} s", flush=True)
    return [
        Figure(
            f"failover after SIGKILL (median of {len(kills)})",
            f"{statistics.median(kills):.2f} s",
            "<= 17 s",
            "Lease duration 15 s is the floor",
        ),
        Figure(
            f"failover after SIGTERM (median of {len(terms)})",
            f"{statistics.median(terms):.2f} s",
            "<= 0.5 s",
            "one retry period (2 s) before",
        ),
    ]


async def polls_figure(bench: Bench, args: argparse.Namespace) -> list[Figure]:
    per_poll, polls = await bench.calls_per_unchanged_poll(args.polls)
    return [
        Figure(
            f"Secret API requests per unchanged poll ({polls} polls, audit log)",
            f"{per_poll:.2f}",
            "0",
            "KIC 3.5: one Secret write per poll",
        )
    ]


async def rss_figure(bench: Bench, args: argparse.Namespace) -> list[Figure]:
    leader_rss, follower_rss = await bench.steady_rss(args.rss_minutes)
    return [
        Figure(
            f"RSS after {args.rss_minutes:g} min, leader / follower",
            f"{leader_rss:.0f} / {follower_rss:.0f} MiB",
            "<= 55 MiB each",
            "88 MiB with kubernetes-asyncio",
        )
    ]


FIGURES: dict[str, Callable[[Bench, argparse.Namespace], Awaitable[list[Figure]]]] = {
    "ready": ready_figure,
    "failover": failover_figures,
    "polls": polls_figure,
    "rss": rss_figure,
}


def interpreter(python: str) -> str:
    """Which Python runs the keeper, and how the keeper is installed there (editable or not)."""
    probe = (
        "import sys, license_keeper as k; "
        "print(sys.version.split()[0], sys.executable, 'editable' if '/src/' in k.__file__ else 'installed')"
    )
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


async def main(args: argparse.Namespace) -> None:
    print(f"keeper runs on: Python {interpreter(args.python)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lk-bench-"))
    cp = await asyncio.to_thread(ControlPlane(work / "cp").start)
    figures: list[Figure] = []
    try:
        async with KonnectStandIn(tls_dir=work / "tls") as konnect:
            bench = Bench(cp, konnect, work, args.python)
            try:
                for name in args.only:
                    figures += await FIGURES[name](bench, args)
            finally:
                bench.stop()
    finally:
        await asyncio.to_thread(cp.stop)
    print_table(figures)


def print_table(figures: list[Figure]) -> None:
    rows = [("figure", "measured", "goal", "anchor"), *((f.name, f.value, f.goal, f.anchor) for f in figures)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for i, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.baseline and os.path.abspath(args.baseline) == os.path.abspath(args.python):
        parser.error("--baseline is the same interpreter as --python; give another build's")
    return args


def figure_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(FIGURES)}, got {value!r}")
    return names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="start -> ready measurements")
    parser.add_argument("--failovers", type=int, default=5, help="failovers of each kind")
    parser.add_argument("--rss-minutes", type=float, default=10.0, help="how long leader and follower run first")
    parser.add_argument("--polls", type=int, default=20, help="unchanged polls counted in the audit log")
    parser.add_argument(
        "--python",
        default=os.environ.get("LICENSE_KEEPER_TEST_PYTHON") or sys.executable,
        help="the interpreter that runs the keeper (make bench: the runtime from bench/runtime.sh)",
    )
    parser.add_argument(
        "--baseline",
        help="another build's interpreter (an older checkout's virtualenv): its start -> ready is measured "
        "interleaved with this one's, and the ratio printed, which the host's CPU speed does not change",
    )
    parser.add_argument(
        "--only",
        type=figure_names,
        default=list(FIGURES),
        help=f"comma-separated figures to measure, of {','.join(FIGURES)} (default: all)",
    )
    asyncio.run(main(check_args(parser, parser.parse_args())))
