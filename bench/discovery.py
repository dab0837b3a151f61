"""admin-svc with 300 gateway pods: what checking every pod costs the keeper, round by round.

    .venv/bin/python bench/discovery.py [--pods 300] [--rounds 10] [--new 5]

Starts etcd and kube-apiserver (license_keeper.testing.controlplane) and, in a separate process, ``--pods``
gateway stand-ins (license_keeper.testing.gateway: DB-less, HTTPS on port 8444 with a certificate for the admin
Service's DNS name only, not the pods' addresses) on addresses of /24s made local to this machine
(license_keeper.testing.localnet; root: the API server refuses loopback endpoints). The admin makes their
EndpointSlices, 100 endpoints each, as the EndpointSlice controller would. Then, in this process, the keeper's
own delivery code as ``license-keeper run`` builds it (settings -> deliverer_from_settings, a Kube client on the
API server): the EndpointSlice watch, then ``--rounds`` delivery rounds, and prints one table:

* one round's time with every pod asked (median, min to max);
* the longest event-loop stall during the rounds (a 5 ms ticker; goal <= 50 ms);
* the resident memory before the first round, after it and after the last (growth goal <= 10 MiB);
* requests per pod per round (the stand-ins count what they answer);
* a new ready endpoint -> the keeper has checked that pod (the watch kicks a round), ``--new`` times.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVICE, PORT, PER_SLICE = "kong-admin", 8444, 100


# --- the stand-ins, in their own process ----------------------------------------------------------------------


async def serve(addresses: list[str], tls_dir: Path, document: str) -> None:
    """Gateways on every address; a control port on 127.0.0.1 answers GET /stats with the request counts."""
    import ssl

    from aiohttp import web

    from license_keeper.testing.gateway import Gateway
    from license_keeper.testing.tls import TLSMaterial

    tls = TLSMaterial.load(tls_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.server_cert_file, tls.server_key_file)
    gateways = []
    for i, address in enumerate(addresses):
        gw = Gateway(document, hostname=f"gw-{i}", log=lambda level, message: None)
        await gw.start(address, PORT, ssl_context=ctx)
        gateways.append(gw)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"requests": sum(g.requests for g in gateways), "pods": len(gateways)})

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(json.dumps({"control": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()


# --- the keeper's side, measured here ---------------------------------------------------------------------------


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Stalls:
    """The longest time a 5 ms ticker did not run, and how much of it this thread spent on a CPU: a stall with
    little CPU time is the host not running the process (2 shared cores), not the keeper's work."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.longest_cpu = 0.0
        self.busiest = 0.0  # the most CPU time the loop's thread spent in one tick
        self.task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before, cpu = loop.time(), time.thread_time()
            await asyncio.sleep(0.005)
            stall, busy = loop.time() - before - 0.005, time.thread_time() - cpu
            if stall > self.longest:
                self.longest, self.longest_cpu = stall, busy
            self.busiest = max(self.busiest, busy)


def endpoint_slice(name: str, endpoints: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": pod}}
            for pod, ip in endpoints
        ],
        "ports": [{"name": "admin-tls", "port": PORT, "protocol": "TCP"}],
    }


def stand_in_requests(control: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{control}/stats", timeout=10) as r:
        return int(json.load(r)["requests"])


async def measure(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str]]:
    from license_keeper.config import load_settings
    from license_keeper.deliver import deliverer_from_settings
    from license_keeper.kube import Kube
    from license_keeper.testing.controlplane import ControlPlane
    from license_keeper.testing.licenses import make_record
    from license_keeper.testing.localnet import LocalRange
    from license_keeper.testing.tls import TLSMaterial

    total = args.pods + args.new
    ranges = [LocalRange() for _ in range((total + 253) // 254)]
    cp = ControlPlane(workdir / "cp")
    served: subprocess.Popen[str] | None = None
    try:
        for r in ranges:
            r.__enter__()
        addresses = [r.address(n) for r in ranges for n in range(1, 255)][:total]
        cp.start()
        namespace = cp.create_namespace("bench-discovery")
        tls = TLSMaterial.create(workdir / "tls", hosts=[f"{SERVICE}.{namespace}.svc"])
        held = make_record(updated_at=1)
        served = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
            [sys.executable, __file__, "serve", "--tls-dir", str(tls.directory), "--addresses", ",".join(addresses)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "DOCUMENT": held.document},
        )  # fmt: skip
        assert served.stdout is not None
        control = int(json.loads(served.stdout.readline())["control"])

        pods = [(f"gw-{i}", ip) for i, ip in enumerate(addresses)]
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        for start in range(0, args.pods, PER_SLICE):
            cp.must(
                "POST", slices, endpoint_slice(f"{SERVICE}-{start}", pods[start : min(start + PER_SLICE, args.pods)])
            )

        settings = load_settings(
            deliver=(f"admin-svc={namespace}/{SERVICE}:admin-tls",),
            deliver_admin_ca_file=tls.ca_file,
            delivery_period="600s",
            environ={},
        )
        kube = Kube.from_kubeconfig(cp.admin_kubeconfig)
        deliverer = deliverer_from_settings(settings, kube, namespace=namespace)
        (target,) = deliverer.targets
        stop = asyncio.Event()
        watch = asyncio.create_task(target.run_background(stop, deliverer.kick_soon))  # type: ignore[attr-defined]
        while not target.endpoints.synced:  # type: ignore[attr-defined]  # noqa: ASYNC110 - polled, as a user would
            await asyncio.sleep(0.05)

        gc.collect()
        gc.freeze()  # as the keeper does once it has imported what it needs (cli.common.started)
        stalls = Stalls()
        stalls.task = asyncio.create_task(stalls.tick())
        before_rss = rss()
        before_requests = await asyncio.to_thread(stand_in_requests, control)
        times, after_first = [], 0
        for i in range(args.rounds):
            started = time.monotonic()
            (report,) = await deliverer.deliver(held)
            times.append(time.monotonic() - started)
            if i == 0:
                after_first = rss()
            assert report.state.value == "delivered" and len(report.pods) == args.pods, report.reason[:300]
        after_rss = rss()
        requests = await asyncio.to_thread(stand_in_requests, control) - before_requests
        stalls.task.cancel()

        # new endpoints while the delivery loop runs with a 10-minute period: found and checked by the kick
        loop = asyncio.create_task(deliverer.run_periodic(lambda: held, stop, period=600.0))
        await asyncio.sleep(2)
        found: list[float] = []
        for n in range(args.new):
            pod = pods[args.pods + n]
            added = time.monotonic()
            await asyncio.to_thread(cp.must, "POST", slices, endpoint_slice(f"{SERVICE}-new-{n}", [pod]))
            while not any(p.pod == pod[0] and p.state.value == "delivered" for p in deliverer.reports()[0].pods):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            found.append(time.monotonic() - added)
            await asyncio.sleep(1.5)
        stop.set()
        await loop
        watch.cancel()  # an open watch ends only when the server ends it (minutes): the keeper cancels it too
        await asyncio.gather(watch, return_exceptions=True)
        await deliverer.close()
        await kube.close()
    finally:
        if served is not None:
            served.kill()
        cp.stop()
        for r in ranges:
            r.__exit__()

    mib = 1024 * 1024
    return [
        (f"one round, {args.pods} pods asked (median, min to max, n={args.rounds})",
         f"**{statistics.median(times):.2f} s** ({min(times):.2f} to {max(times):.2f})"),
        ("longest event-loop stall during the rounds (goal <= 50 ms)",
         f"**{stalls.longest * 1000:.0f} ms** ({stalls.longest_cpu * 1000:.0f} ms of it on the CPU; the most CPU "
         f"in one tick: {stalls.busiest * 1000:.0f} ms)"),
        (f"RSS before the first round -> after it -> after round {args.rounds}",
         f"{before_rss / mib:.1f} -> {after_first / mib:.1f} -> {after_rss / mib:.1f} MiB"),
        (f"RSS growth over {args.rounds} rounds (goal <= 10 MiB)", f"**{(after_rss - before_rss) / mib:+.1f} MiB**"),
        ("requests per pod per round", f"**{requests / args.pods / args.rounds:.2f}**"),
        (f"a new ready endpoint -> its pod checked (median, min to max, n={args.new})",
         f"**{statistics.median(found):.2f} s** ({min(found):.2f} to {max(found):.2f})"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    s = sub.add_parser("serve")
    s.add_argument("--tls-dir", type=Path, required=True)
    s.add_argument("--addresses", required=True)
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--new", type=int, default=5)
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve(args.addresses.split(","), args.tls_dir, os.environ["DOCUMENT"]))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-discovery-") as tmp:
        rows = asyncio.run(measure(args, Path(tmp)))
    print("| figure | measured |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
