"""The product's own scenarios on a real node: the chart as users install it, gateways as Kong's chart runs them.

"Licensed" here means what each gateway pod itself reports at its pod address (``/license/report``), never the
keeper's word; "writes" are what the API server's audit log recorded.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import Any

from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.node import NODE_NAME
from license_keeper.testing.pods import (
    GATEWAY,
    KEEPER,
    LEASE,
    Cluster,
    all_gateways_run,
    eventually,
    gateway_deployment,
    gateway_pods,
    http_text,
    install_keeper,
    keeper_pods,
    keeper_secret_writes,
    keeper_values,
    pod_ready,
    running_key,
    secret_key,
)

from .conftest import FIGURES


async def licensed_install(c: Cluster, konnect: KonnectStandIn, replicas: int = 3, **values: Any) -> str:
    """The keeper installed, its license in the Secret, and ``replicas`` gateway pods running it."""
    await asyncio.to_thread(install_keeper, c, konnect, **values)
    await eventually(lambda: "license" in c.secret_data(), 60, what="the keeper wrote the Secret")
    key = await asyncio.to_thread(secret_key, c)
    await asyncio.to_thread(c.apply, gateway_deployment(c.namespace, replicas))
    await eventually(lambda: all_gateways_run(c, key, replicas), 90, what=f"{replicas} gateway pods licensed")
    return key


def scale(c: Cluster, name: str, replicas: int) -> None:
    c.kubectl("scale", f"deployment/{name}", f"--replicas={replicas}")


def keepers_ready(c: Cluster, count: int) -> bool:
    pods = [p for p in keeper_pods(c) if not p["metadata"].get("deletionTimestamp")]
    return len(pods) == count and all(pod_ready(p) for p in pods)


def container_ids(pod: dict[str, Any]) -> str:
    return ",".join(sorted(str(s.get("containerID")) for s in pod.get("status", {}).get("containerStatuses", [])))


def lease_holder(c: Cluster) -> str:
    return str(c.get("lease", LEASE).get("spec", {}).get("holderIdentity") or "")


# --- 1. install --------------------------------------------------------------------------------------------


async def test_install_into_a_restricted_namespace_writes_once_and_licenses_every_gateway_pod(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    since = time.time()
    await asyncio.to_thread(install_keeper, cluster, konnect)  # helm --wait: Ready through the chart's probes
    pods = await asyncio.to_thread(keeper_pods, cluster)
    assert len(pods) == 2 and all(pod_ready(p) for p in pods), [p["status"].get("phase") for p in pods]
    for pod in pods:  # as the kubelet runs it: the projected token, the chart's securityContext
        spec = pod["spec"]
        assert any(v.get("projected") for v in spec["volumes"]), "no ServiceAccount token was mounted"
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["nodeName"] == NODE_NAME
    await eventually(lambda: "license" in cluster.secret_data(), 60, what="the Secret holds a license")
    await asyncio.sleep(8)  # two more polls (3 s): a keeper that wrote on every poll would show it here
    assert len(keeper_secret_writes(cluster, since)) == 1, keeper_secret_writes(cluster, since)

    key = await asyncio.to_thread(secret_key, cluster)
    await asyncio.to_thread(cluster.apply, gateway_deployment(cluster.namespace, 3))
    await eventually(lambda: all_gateways_run(cluster, key, 3), 90, what="3 gateway pods run the Secret's license")

    # The restart target adopts what the gateways already run: delivered, and not one pod restarted for it.
    uids = {p["metadata"]["uid"] for p in await asyncio.to_thread(gateway_pods, cluster)}
    await eventually(lambda: delivery_state(cluster).get("delivered") == 1.0, 60, what="delivered reported")
    await asyncio.sleep(6)  # one more delivery period (5 s)
    assert {p["metadata"]["uid"] for p in await asyncio.to_thread(gateway_pods, cluster)} == uids


# --- 2. the seed's scenario --------------------------------------------------------------------------------


async def test_gateways_restart_licensed_while_konnect_and_the_keeper_are_down(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    key = await licensed_install(cluster, konnect)
    await konnect.set_mode("blackhole")
    await asyncio.to_thread(scale, cluster, KEEPER, 0)
    await eventually(lambda: not keeper_pods(cluster), 60, what="no keeper pod left")

    old = {p["metadata"]["uid"] for p in await asyncio.to_thread(gateway_pods, cluster)}
    started = time.monotonic()
    await asyncio.to_thread(cluster.kubectl, "delete", "pod", "-l", f"app={GATEWAY}", "--wait=false")

    def replaced_and_licensed() -> bool:
        pods = gateway_pods(cluster)
        return not old & {p["metadata"]["uid"] for p in pods} and all_gateways_run(cluster, key, 3)

    await eventually(replaced_and_licensed, 90, what="3 new gateway pods run the license")
    FIGURES["gateway pods deleted -> all 3 new pods licensed, Konnect down, keeper at 0 (s)"] = round(
        time.monotonic() - started, 2
    )

    since = time.time()
    started = time.monotonic()
    await asyncio.to_thread(scale, cluster, KEEPER, 2)
    await eventually(lambda: keepers_ready(cluster, 2), 90, interval=0.25, what="both keepers Ready from the Secret")
    FIGURES["keeper scaled 0 -> 2 -> both Ready from the Secret, Konnect down (s)"] = round(
        time.monotonic() - started, 2
    )
    await asyncio.sleep(5)
    assert keeper_secret_writes(cluster, since) == []


# --- 3. the node restarts ----------------------------------------------------------------------------------


async def test_a_node_restart_during_an_outage_comes_back_licensed_without_a_write(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    key = await licensed_install(cluster, konnect)
    await konnect.set_mode("blackhole")
    before = {container_ids(p) for p in await asyncio.to_thread(keeper_pods, cluster)}
    since = time.time()
    await asyncio.to_thread(cluster.node.stop_runtime)  # kubelet and containerd stopped, every container killed
    started = time.monotonic()
    await asyncio.to_thread(cluster.node.start_runtime)

    def restarted_and_ready() -> bool:  # new containers, not the Ready the API still shows from before
        pods = keeper_pods(cluster)
        return keepers_ready(cluster, 2) and not before & {container_ids(p) for p in pods}

    await eventually(restarted_and_ready, 180, what="both keepers restarted and Ready again")
    FIGURES["node restart (kubelet and containerd back) -> keepers Ready (s)"] = round(time.monotonic() - started, 2)
    await eventually(lambda: all_gateways_run(cluster, key, 3), 120, what="every gateway pod licensed again")
    assert keeper_secret_writes(cluster, since) == []


# --- 4. rotation by rolling restart -------------------------------------------------------------------------


def delivery_state(c: Cluster) -> dict[str, float]:
    """The leader's delivery metrics, scraped from its pod address."""
    holder = lease_holder(c)
    for pod in keeper_pods(c):
        if pod["metadata"]["name"] == holder and pod["status"].get("podIP"):
            text = http_text(f"http://{pod['status']['podIP']}:8080/metrics")
            return {
                line.split("{", 1)[1].split('state="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("license_keeper_delivery_state{") and "restart=" in line
            }
    return {}


async def test_a_newer_license_rolls_the_gateways_and_one_licensed_pod_is_always_ready(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    old_key = await licensed_install(cluster, konnect)
    await eventually(lambda: delivery_state(cluster).get("delivered") == 1.0, 60, what="first delivery adopted")
    since = time.time()
    samples: list[tuple[float, int, int, bool]] = []  # (t, ready licensed pods, pods, delivered reported)
    old_uids = {p["metadata"]["uid"] for p in await asyncio.to_thread(gateway_pods, cluster)}

    konnect.rotate()
    started = time.monotonic()
    new_key: str | None = None
    armed = False  # a `delivered` read before the keeper saw the new license is the old license's
    while time.monotonic() - started < 120:
        if new_key is None and "license" in cluster.secret_data() and secret_key(cluster) != old_key:
            new_key = secret_key(cluster)
        pods = await asyncio.to_thread(gateway_pods, cluster)
        keys = await asyncio.gather(*(asyncio.to_thread(_running, p) for p in pods))
        state = await asyncio.to_thread(delivery_state, cluster)
        ready_licensed = sum(1 for p, k in zip(pods, keys, strict=True) if pod_ready(p) and k)
        olds_left = any(p["metadata"]["uid"] in old_uids for p in pods)
        delivered = state.get("delivered") == 1.0
        samples.append((time.monotonic() - started, ready_licensed, len(pods), delivered))
        armed = armed or (new_key is not None and not delivered)
        if armed and delivered:
            assert not olds_left, "delivered was reported while an old gateway pod still ran"
        if new_key and not olds_left and all(k == new_key for k in keys) and len(pods) == 3:
            break
        await asyncio.sleep(0.5)
    assert new_key is not None, "the keeper did not store the newer license"
    assert all(ready >= 1 for _, ready, _, _ in samples), f"a sample without a Ready licensed gateway: {samples}"
    assert await asyncio.to_thread(all_gateways_run, cluster, new_key, 3), "not every gateway runs the new license"
    FIGURES["Konnect rotates -> every one of 3 gateway pods on the new license (s)"] = round(
        time.monotonic() - started, 2
    )
    await eventually(lambda: delivery_state(cluster).get("delivered") == 1.0, 30, what="delivered reported")
    assert len(keeper_secret_writes(cluster, since)) == 1, keeper_secret_writes(cluster, since)


def _running(pod: dict[str, Any]) -> str | None:
    return running_key(pod)


# --- 5. leader loss ----------------------------------------------------------------------------------------


async def test_a_deleted_leader_is_followed_at_once_and_a_killed_one_within_the_lease(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    await licensed_install(cluster, konnect, replicas=1)
    since = time.time()
    holder = await asyncio.to_thread(lease_holder, cluster)
    assert holder
    started = time.monotonic()
    await asyncio.to_thread(cluster.kubectl, "delete", "pod", holder, "--wait=false")  # SIGTERM, grace period

    def new_holder() -> str:
        h = lease_holder(cluster)
        return h if h and h != holder else ""

    await eventually(new_holder, 30, interval=0.05, what="a follower leads")
    took = time.monotonic() - started
    FIGURES["leader pod deleted (SIGTERM) -> a follower leads (s)"] = round(took, 2)
    assert took <= 2.0, f"a follower led only after {took:.2f} s"  # 1 s goal, plus the poll's own latency

    await eventually(lambda: keepers_ready(cluster, 2), 90, what="two keepers again")
    holder = await asyncio.to_thread(lease_holder, cluster)
    pod = cluster.get("pod", holder)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    started, killed_at = time.monotonic(), time.time()
    await asyncio.to_thread(cluster.node.ctr, "tasks", "kill", "--signal", "SIGKILL", container_id)

    def renewed_since_the_kill() -> bool:
        # The follower, or the killed container restarted by the kubelet under the same pod name: either way
        # a live keeper holds the Lease again.
        renewed = cluster.get("lease", LEASE).get("spec", {}).get("renewTime", "")
        return bool(renewed) and datetime.datetime.fromisoformat(renewed).timestamp() > killed_at + 0.5

    await eventually(renewed_since_the_kill, 40, interval=0.1, what="a live keeper leads after the kill")
    took = time.monotonic() - started
    FIGURES["leader container killed -> a follower leads (s)"] = round(took, 2)
    assert took <= 15.0 + 2.0, f"beyond the Lease duration: {took:.2f} s"

    writers = {e.username for e in cluster.secret_writes(since)}
    assert len(writers) <= 1, f"two writers of the Secret: {writers}"


# --- 6. upgrade and uninstall -------------------------------------------------------------------------------


async def test_helm_upgrade_during_an_outage_keeps_a_ready_keeper_and_uninstall_keeps_the_secret(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    await licensed_install(cluster, konnect, replicas=1)
    await konnect.set_mode("blackhole")
    since = time.time()
    ready_counts: list[int] = []
    upgrade = asyncio.create_task(
        asyncio.to_thread(cluster.install, keeper_values(konnect, cluster.keeper_image, logLevel="debug"), upgrade=True)
    )
    while not upgrade.done():
        pods = await asyncio.to_thread(keeper_pods, cluster)
        ready_counts.append(sum(1 for p in pods if pod_ready(p)))
        await asyncio.sleep(0.5)
    await upgrade
    revisions = json.loads(cluster.helm("history", "lk", "-o", "json"))
    assert len(revisions) == 2
    # helm --wait returns once the new pods are ready; an old one may still be terminating (its grace period)
    pods = [p for p in await asyncio.to_thread(keeper_pods, cluster) if not p["metadata"].get("deletionTimestamp")]
    envs = [{e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]} for p in pods]
    levels = {p["metadata"]["name"]: env.get("LICENSE_KEEPER_LOG_LEVEL") for p, env in zip(pods, envs, strict=True)}
    assert pods and all(v == "debug" for v in levels.values()), f"the upgrade did not roll: {levels}"
    assert ready_counts and min(ready_counts) >= 1, f"no Ready keeper at some point: {ready_counts}"
    assert keeper_secret_writes(cluster, since) == []

    before = cluster.secret_data()
    await asyncio.to_thread(cluster.helm, "uninstall", "lk", "--wait", "--timeout=60s")
    assert cluster.secret_data() == before, "helm uninstall changed or removed the license Secret"


# --- 7. drain ------------------------------------------------------------------------------------------------


def evict(c: Cluster, pod: str) -> int:
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": c.namespace}}
    return c.cp.request("POST", f"/api/v1/namespaces/{c.namespace}/pods/{pod}/eviction", body).status


async def test_a_drain_respects_the_budget_and_keepers_unready_for_lack_of_a_license_do_not_block_it(
    cluster: Cluster, konnect: KonnectStandIn
) -> None:
    # No license anywhere: Konnect has none, so the keepers run but are not Ready.
    konnect.serve(None)
    await asyncio.to_thread(install_keeper, cluster, konnect, wait=False, delivery={"restart": {"deployments": []}})
    await eventually(lambda: len(keeper_pods(cluster)) == 2, 60, what="two keeper pods")
    await asyncio.sleep(3)
    pods = await asyncio.to_thread(keeper_pods, cluster)
    assert not any(pod_ready(p) for p in pods)
    statuses = [await asyncio.to_thread(evict, cluster, p["metadata"]["name"]) for p in pods]
    assert statuses == [201, 201], f"unready keepers blocked the drain: {statuses}"

    # Licensed and Ready: the budget (minAvailable 1) lets one go, and holds the last Ready one.
    konnect.rotate()
    await eventually(lambda: keepers_ready(cluster, 2), 90, what="two Ready keepers")
    await asyncio.to_thread(cluster.kubectl, "cordon", NODE_NAME)
    try:
        pods = await asyncio.to_thread(keeper_pods, cluster)
        first = await asyncio.to_thread(evict, cluster, pods[0]["metadata"]["name"])
        second = await asyncio.to_thread(evict, cluster, pods[1]["metadata"]["name"])
        assert (first, second) == (201, 429), (first, second)
    finally:
        await asyncio.to_thread(cluster.kubectl, "uncordon", NODE_NAME)
