"""Every gateway pod, found and checked, on a real node: the chart's admin-svc target beside its restart target.

Three DB-less gateway pods (the gateway stand-in: plain HTTP on 8001, so the admin Service's port is http
here) behind a Service the EndpointSlice controller keeps; the keeper finds them from its EndpointSlices and asks
each at its pod address. What a pod runs is what the pod itself reports; what the keeper says is its metrics
(counts by state, never pod names) and its Events. The keeper never writes a DB-less pod: every request it
sent, as each pod's access log shows, is a GET.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import make_document
from license_keeper.testing.pods import GATEWAY, Cluster, eventually, gateway_pods, http_text, keeper_pods, pod_ready

from .conftest import FIGURES
from .test_pods import lease_holder, licensed_install

ADMIN_SERVICE = "gateway-admin"
PERIOD = 5.0  # the chart's delivery.period here


def admin_service(namespace: str) -> dict[str, Any]:
    """The gateways' admin Service, as Kong's chart names its plain admin port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": ADMIN_SERVICE, "namespace": namespace},
        "spec": {
            "selector": {"app": GATEWAY},
            "ports": [{"name": "admin", "port": 8001, "targetPort": "admin", "protocol": "TCP"}],
        },
    }


def target_label(c: Cluster) -> str:
    return f"admin-svc={c.namespace}/{ADMIN_SERVICE}:admin"


def leader_metrics(c: Cluster) -> str:
    holder = lease_holder(c)
    for pod in keeper_pods(c):
        if pod["metadata"]["name"] == holder and pod["status"].get("podIP"):
            return http_text(f"http://{pod['status']['podIP']}:8080/metrics")
    return ""


def pod_counts(c: Cluster) -> dict[str, float]:
    """license_keeper_delivery_pods{target=<admin-svc>} by state, from the leader."""
    label = f'target="{target_label(c)}"'
    out = {}
    for line in leader_metrics(c).splitlines():
        if line.startswith("license_keeper_delivery_pods{") and label in line:
            state = line.split('state="', 1)[1].split('"', 1)[0]
            out[state] = float(line.rsplit(" ", 1)[1])
    return out


def counts_are(c: Cluster, **expected: float) -> bool:
    got = pod_counts(c)
    return all(got.get(k, 0.0) == v for k, v in expected.items()) and sum(got.values()) == sum(expected.values())


def keeper_requests(c: Cluster, pod: str) -> list[str]:
    """The requests the keeper sent this gateway pod, from its access log (User-Agent license-keeper)."""
    log = c.kubectl("logs", pod, check=False)
    return [line for line in log.splitlines() if line.endswith('"license-keeper"')]


def events(c: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in c.get("events")["items"] if e.get("reason") == reason]


def pin(pod: dict[str, Any], document: str) -> None:
    """Make one gateway pod run another license: a /licenses write straight to it (the stand-in keeps it in
    memory in place of KONG_LICENSE_DATA, as DB-less Kong does a license pushed through /config)."""
    body = json.dumps({"payload": document}).encode()
    req = urllib.request.Request(
        f"http://{pod['status']['podIP']}:8001/licenses", data=body, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 201


async def test_every_gateway_pod_is_found_and_checked_and_dbless_pods_are_never_written(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    await asyncio.to_thread(cluster.apply, admin_service(cluster.namespace))
    await licensed_install(
        cluster,
        konnect,
        delivery={
            "period": "5s",
            "restart": {"deployments": [GATEWAY]},
            "adminService": {"services": [f"{ADMIN_SERVICE}:admin"]},
        },
    )
    await eventually(lambda: counts_are(cluster, delivered=3), 60, what="3 of 3 gateway pods delivered")

    # --- 1. a pod deleted and replaced: the new one is found and checked within one delivery period
    pods = await asyncio.to_thread(gateway_pods, cluster)
    victim = pods[0]["metadata"]["name"]
    await asyncio.to_thread(cluster.kubectl, "delete", "pod", victim, "--wait=false")

    def new_ready_pod() -> str:
        fresh = [p for p in gateway_pods(cluster) if p["metadata"]["name"] not in {q["metadata"]["name"] for q in pods}]
        return fresh[0]["metadata"]["name"] if fresh and pod_ready(fresh[0]) else ""

    await eventually(new_ready_pod, 60, interval=0.2, what="the replacement pod Ready")
    newcomer = await asyncio.to_thread(new_ready_pod)
    ready_at = time.monotonic()
    await eventually(
        lambda: any("GET /license/report" in r for r in keeper_requests(cluster, newcomer)),
        PERIOD + 5,
        interval=0.2,
        what="the keeper asked the new pod",
    )
    checked = time.monotonic() - ready_at
    FIGURES["admin-svc: a new gateway pod Ready -> checked by the keeper (s)"] = round(checked, 2)
    assert checked <= PERIOD, f"the new pod was checked {checked:.1f} s after it was Ready (period {PERIOD:g} s)"
    await eventually(lambda: counts_are(cluster, delivered=3), 30, what="3 of 3 again")

    # --- 2. one pod pinned to another license: drift on that pod only, and an Event naming it
    pods = await asyncio.to_thread(gateway_pods, cluster)
    pinned = pods[1]
    await asyncio.to_thread(pin, pinned, make_document(expiration_date="2027-02-01"))
    await eventually(lambda: counts_are(cluster, delivered=2, drift=1), 30, what="2 delivered, 1 in drift")
    await eventually(lambda: events(cluster, "GatewayPodDrift"), 30, what="the GatewayPodDrift Event")
    (event,) = await asyncio.to_thread(events, cluster, "GatewayPodDrift")
    assert pinned["metadata"]["name"] in event["message"] and event["type"] == "Warning", event["message"]
    assert "KONG_LICENSE_DATA" in event["message"]
    await asyncio.to_thread(cluster.kubectl, "delete", "pod", pinned["metadata"]["name"], "--wait=false")
    await eventually(lambda: counts_are(cluster, delivered=3), 60, what="3 of 3 after the pinned pod was replaced")

    # --- 3. a rotation: the counts go 0/3 (the pods still run the old license) -> 3/3 (rolled)
    samples: list[tuple[float, dict[str, float]]] = []
    konnect.rotate()
    started = time.monotonic()
    while time.monotonic() - started < 120:
        counts = await asyncio.to_thread(pod_counts, cluster)
        samples.append((round(time.monotonic() - started, 2), counts))
        if any(c.get("delivered") == 0 for _, c in samples) and counts == {
            "delivered": 3.0, "pending": 0.0, "drift": 0.0, "unreachable": 0.0,
        }:  # fmt: skip
            break
        await asyncio.sleep(0.3)
    assert any(c.get("delivered") == 0 and sum(c.values()) >= 3 for _, c in samples), samples
    assert samples[-1][1].get("delivered") == 3 and sum(samples[-1][1].values()) == 3, samples
    FIGURES["admin-svc: Konnect rotates -> 3 of 3 gateway pods checked on the new license (s)"] = samples[-1][0]

    # never a write to a DB-less pod: every request the keeper sent any gateway pod is a GET
    for pod in await asyncio.to_thread(gateway_pods, cluster):
        sent = await asyncio.to_thread(keeper_requests, cluster, pod["metadata"]["name"])
        assert sent and all('"GET ' in r for r in sent), sent
