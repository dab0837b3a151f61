"""The keeper and DB-less gateways as pods on a real node: the figures of the seed's scenario.

    .venv/bin/python bench/node.py [--runs 5]

Starts a node beside the control plane (license_keeper.testing.node; root, the packages .ci/run installs),
installs the chart with helm and a gateway Deployment of 3 pods that read KONG_LICENSE_DATA from the Secret,
then prints one table (medians over --runs):

* the node's start, to Ready;
* one gateway pod deleted -> its replacement runs the license, with Konnect black-holed and the keeper at 0;
* a keeper pod deleted -> its replacement created -> Ready (from the Secret, Konnect black-holed);
* Konnect serves a newer license -> every one of the 3 gateway pods runs it (rolled by the restart target);
* the node restarted (kubelet and containerd stopped, every container killed) -> both keepers Ready.

"Runs the license" is what each gateway pod reports at its pod address. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.node import Node
from license_keeper.testing.pods import (
    GATEWAY_IMAGE,
    KEEPER,
    KEEPER_IMAGE,
    Cluster,
    all_gateways_run,
    build_images,
    eventually,
    gateway_deployment,
    gateway_pods,
    install_keeper,
    keeper_pods,
    pod_ready,
    secret_key,
)


def keepers_ready(c: Cluster, count: int, not_uids: set[str] = frozenset()) -> bool:  # type: ignore[assignment]
    pods = [p for p in keeper_pods(c) if not p["metadata"].get("deletionTimestamp")]
    fresh = all(p["metadata"]["uid"] not in not_uids for p in pods) if not_uids else True
    return len(pods) == count and fresh and all(pod_ready(p) for p in pods)


async def gateway_replaced(c: Cluster, key: str) -> float:
    victim = (await asyncio.to_thread(gateway_pods, c))[0]["metadata"]
    started = time.monotonic()
    await asyncio.to_thread(c.kubectl, "delete", "pod", victim["name"], "--wait=false")

    def replaced() -> bool:
        pods = gateway_pods(c)
        return victim["uid"] not in {p["metadata"]["uid"] for p in pods} and all_gateways_run(c, key, 3)

    await eventually(replaced, 90, interval=0.1, what="the replacement runs the license")
    return time.monotonic() - started


async def keeper_replaced(c: Cluster) -> float:
    pods = await asyncio.to_thread(keeper_pods, c)
    old = {p["metadata"]["uid"] for p in pods}
    await asyncio.to_thread(c.kubectl, "delete", "pod", pods[0]["metadata"]["name"], "--wait=false")
    await eventually(lambda: len({p["metadata"]["uid"] for p in keeper_pods(c)} - old) == 1, 60, interval=0.05)
    new = next(p for p in await asyncio.to_thread(keeper_pods, c) if p["metadata"]["uid"] not in old)
    created = time.monotonic()  # observed within 50 ms of the pod's creation
    await eventually(lambda: pod_ready(c.get("pod", new["metadata"]["name"])), 60, interval=0.05)
    return time.monotonic() - created


async def rotation(c: Cluster, konnect: KonnectStandIn, key: str) -> tuple[float, str]:
    started = time.monotonic()
    konnect.rotate()
    await eventually(lambda: secret_key(c) != key, 60, interval=0.1, what="the newer license stored")
    new_key = await asyncio.to_thread(secret_key, c)
    await eventually(lambda: all_gateways_run(c, new_key, 3), 120, interval=0.2, what="3 gateways on it")
    return time.monotonic() - started, new_key


async def node_restart(c: Cluster) -> float:
    before = {p["metadata"]["uid"]: p["status"].get("containerStatuses") for p in keeper_pods(c)}
    await asyncio.to_thread(c.node.stop_runtime)
    started = time.monotonic()
    await asyncio.to_thread(c.node.start_runtime)

    def back() -> bool:
        pods = keeper_pods(c)
        return keepers_ready(c, 2) and all(p["status"].get("containerStatuses") != before.get(
            p["metadata"]["uid"]) for p in pods)  # fmt: skip

    await eventually(back, 180, interval=0.2, what="keepers restarted and Ready")
    return time.monotonic() - started


def row(what: str, values: list[float]) -> None:
    spread = f" ({min(values):.2f} to {max(values):.2f}, n={len(values)})" if len(values) > 1 else ""
    print(f"| {what} | **{statistics.median(values):.2f} s**{spread} |", flush=True)


async def measure(node: Node, workdir: Path, runs: int) -> None:
    c = Cluster(node, "bench", workdir)
    node.cp.must("POST", "/api/v1/namespaces", {"metadata": {"name": "bench"}})
    async with KonnectStandIn(tls_dir=workdir / "konnect-tls", host=node.node_ip) as konnect:
        await asyncio.to_thread(install_keeper, c, konnect)
        await eventually(lambda: "license" in c.secret_data(), 60)
        key = await asyncio.to_thread(secret_key, c)
        await asyncio.to_thread(c.apply, gateway_deployment("bench", 3))
        await eventually(lambda: all_gateways_run(c, key, 3), 90)

        rotations = []
        for _ in range(runs):
            took, key = await rotation(c, konnect, key)
            rotations.append(took)
            await asyncio.sleep(6)  # a delivery period: the rollout settles and is reported
        await konnect.set_mode("blackhole")
        keepers = [await keeper_replaced(c) for _ in range(runs)]
        restart = [await node_restart(c)]
        await asyncio.to_thread(c.kubectl, "scale", f"deployment/{KEEPER}", "--replicas=0")
        await eventually(lambda: not keeper_pods(c), 60)
        gateways = [await gateway_replaced(c, key) for _ in range(runs)]

    print("\n| figure | measured |\n|---|---|")
    print(f"| node start → Ready (containerd, control plane, kubelet, …) | **{node.timings['node Ready']:.2f} s** |")
    row("gateway pod deleted → its replacement runs the license (Konnect down, keeper at 0)", gateways)
    row("keeper pod created → Ready from the Secret (Konnect down)", keepers)
    row("Konnect rotates → every one of 3 gateway pods on the new license", rotations)
    row("node restart (kubelet, containerd, every container killed) → both keepers Ready", restart)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="license-keeper-bench-node-") as tmp:
        node = Node(Path(tmp) / "node")
        try:
            node.start()
            build_images()
            node.import_images([KEEPER_IMAGE, GATEWAY_IMAGE])
            asyncio.run(measure(node, Path(tmp), args.runs))
        finally:
            node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
