"""`make demo-node`: the seed's scenario on real pods, on a real node beside the local control plane.

1. The chart is installed with helm (two keeper replicas); DB-less gateways (the Kong stand-in's gateway
   image, run as Kong's chart runs Kong) read KONG_LICENSE_DATA from the license Secret.
2. Konnect goes dark and the keeper is scaled to zero.
3. Every gateway pod is deleted: the new pods start licensed, from the Secret alone.
4. The keeper comes back: Ready from the Secret, no write.
5. Konnect returns with a newer license: one Secret write, the gateways rolled by the Deployment controller,
   every pod on the new license.

Needs root and the Debian packages .ci/run installs (containerd, runc, the CNI plugins, iptables, nftables,
podman). Everything it made is removed at the end: `python -m license_keeper.testing.demo_node`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from .controlplane import ControlPlaneError
from .demo import proves, say
from .konnect import KonnectStandIn
from .netguard import NodeUnavailable
from .node import Node
from .pods import (
    GATEWAY,
    GATEWAY_IMAGE,
    KEEPER,
    KEEPER_IMAGE,
    Cluster,
    ImageBuildError,
    all_gateways_run,
    build_images,
    eventually,
    gateway_deployment,
    gateway_pods,
    install_keeper,
    keeper_pods,
    keeper_secret_writes,
    pod_ready,
    secret_key,
)

__all__: list[str] = []  # nothing is imported from here

NAMESPACE = "kong"


async def scenario(node: Node, workdir: Path) -> None:
    c = Cluster(node, NAMESPACE, workdir)
    node.cp.must("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    async with KonnectStandIn(tls_dir=workdir / "konnect-tls", host=node.node_ip) as konnect:
        say("1. helm install the chart; gateways read the Secret", f"Konnect stand-in at {konnect.address}")
        await asyncio.to_thread(install_keeper, c, konnect)
        await eventually(lambda: "license" in c.secret_data(), 60, what="the Secret holds a license")
        key = await asyncio.to_thread(secret_key, c)
        await asyncio.to_thread(c.apply, gateway_deployment(NAMESPACE, 3))
        took = await eventually(lambda: all_gateways_run(c, key, 3), 90, what="3 gateway pods licensed")
        print(await asyncio.to_thread(c.kubectl, "get", "pods", "-o", "wide"))
        proves(f"3 gateway pods run the Secret's license, each asked at its pod address ({took:.1f} s)")

        say("2. Konnect goes dark; the keeper is scaled to zero")
        await konnect.set_mode("blackhole")
        await asyncio.to_thread(c.kubectl, "scale", f"deployment/{KEEPER}", "--replicas=0")
        await eventually(lambda: not keeper_pods(c), 60, what="no keeper pod")
        proves("no keeper runs and Konnect does not answer")

        say("3. every gateway pod is deleted")
        await asyncio.to_thread(c.kubectl, "delete", "pod", "-l", f"app={GATEWAY}", "--wait=false")
        took = await eventually(lambda: all_gateways_run(c, key, 3), 90, what="new gateway pods licensed")
        names = ", ".join(p["metadata"]["name"] for p in await asyncio.to_thread(gateway_pods, c))
        proves(f"the new pods ({names}) started licensed from the Secret in {took:.1f} s")

        say("4. the keeper comes back while Konnect is still dark")
        since = time.time()
        await asyncio.to_thread(c.kubectl, "scale", f"deployment/{KEEPER}", "--replicas=2")
        took = await eventually(
            lambda: len(keeper_pods(c)) == 2 and all(pod_ready(p) for p in keeper_pods(c)), 90, what="keepers Ready"
        )
        proves(f"both keepers Ready from the Secret in {took:.1f} s, {len(keeper_secret_writes(c, since))} writes")

        say("5. Konnect returns with a newer license")
        since = time.time()
        konnect.rotate()
        await konnect.set_mode("license")
        await eventually(lambda: secret_key(c) != key, 60, what="the Secret holds the newer license")
        new_key = await asyncio.to_thread(secret_key, c)
        took = await eventually(lambda: all_gateways_run(c, new_key, 3), 120, what="every gateway on the new license")
        writes = len(keeper_secret_writes(c, since))
        proves(f"{writes} Secret write; the Deployment controller rolled every gateway onto it in {took:.1f} s")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="license-keeper-demo-node-") as tmp:
        node = Node(Path(tmp) / "node")
        try:
            say("0. a real node beside the control plane", "containerd, kubelet, kube-proxy, KCM, scheduler")
            node.start()
            print("   " + ", ".join(f"{k} {v} s" for k, v in node.timings.items()), flush=True)
            build_images()
            node.import_images([KEEPER_IMAGE, GATEWAY_IMAGE])
            asyncio.run(scenario(node, Path(tmp)))
        except (NodeUnavailable, ControlPlaneError, ImageBuildError, TimeoutError, RuntimeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            say("removing the node", "processes, containers, mounts, links, rules and routes")
            node.stop()
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
