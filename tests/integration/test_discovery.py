"""admin-svc on the real API server: gateway pods found from hand-made EndpointSlices (no controller-manager
runs here, so the admin makes them, as the EndpointSlice controller would), asked at their addresses where
stand-ins listen, the keeper as a ServiceAccount with only the Role the chart renders for it.

The API server refuses loopback endpoints, so the stand-ins listen on addresses of a /24 made local to this
machine for the session (testing.localnet: a ``local`` route on ``lo``; root, as the node tests need).

Stand-ins: DB-less gateways (testing.gateway, plain HTTP, as on the node) and Kong Admin APIs (testing.kong,
TLS; DB-backed nodes share one database, a hybrid control plane sends its rows to data planes).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from license_keeper.deliver import AdminServiceTarget, Deliverer, DeliveryCollector, delivery_events
from license_keeper.delivery import DeliveryState, PodState, license_row_id, parse_target
from license_keeper.kube import Kube
from license_keeper.license import License, LicenseRecord
from license_keeper.targets import AdminApiOptions, build_targets
from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.gateway import Gateway
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.licenses import make_document, make_record
from license_keeper.testing.localnet import LocalRange, LocalRangeUnavailable
from license_keeper.testing.tls import TLSMaterial

D, P = DeliveryState, PodState
pytestmark = pytest.mark.controlplane
SVC = "kong-admin"
SECRET = "kong-license"
# The chart's Role for an admin-svc target (templates/rbac-delivery.yaml), checked there in test_chart_static.
DISCOVERY_RULES = [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]


def record(**kw: Any) -> LicenseRecord:
    return make_record(updated_at=1, document=make_document(**kw))


def held_license(rec: LicenseRecord) -> License:
    assert rec.license is not None
    return rec.license


def endpoint_slice(
    name: str, service: str, pods: list[tuple[str, str]], port: int, port_name: str, ready: bool = True
) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller writes one: (pod, address) endpoints on one port."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": pod}}
            for pod, ip in pods
        ],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


@pytest.fixture(scope="module")
def local() -> Iterator[LocalRange]:
    try:
        with LocalRange() as r:
            yield r
    except LocalRangeUnavailable as e:
        pytest.fail(str(e), pytrace=False)


class Addresses:
    """One local address per stand-in, in the order asked for."""

    def __init__(self, local: LocalRange) -> None:
        self.local, self.count = local, 0

    def next(self) -> str:
        self.count += 1
        return self.local.address(self.count)


@pytest.fixture
def addresses(local: LocalRange) -> Addresses:
    return Addresses(local)


class Slices:
    """The admin's hand on a namespace's EndpointSlices: one slice per stand-in (each has its own port)."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp, self.path = cp, f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"

    def add(
        self, pod: str, where: tuple[str, int], *, service: str = SVC, port_name: str = "admin", ready: bool = True
    ) -> None:
        ip, port = where
        self.cp.must("POST", self.path, endpoint_slice(f"{service}-{pod}", service, [(pod, ip)], port, port_name,
                                                       ready))  # fmt: skip

    def set_ready(self, pod: str, ready: bool, *, service: str = SVC) -> None:
        obj = self.cp.must("GET", f"{self.path}/{service}-{pod}")
        obj["endpoints"][0]["conditions"]["ready"] = ready
        self.cp.must("PUT", f"{self.path}/{service}-{pod}", obj)

    def remove(self, pod: str, *, service: str = SVC) -> None:
        self.cp.must("DELETE", f"{self.path}/{service}-{pod}")


@pytest.fixture
def slices(controlplane: ControlPlane, namespace: str) -> Slices:
    return Slices(controlplane, namespace)


@pytest.fixture
async def keeper_kube(controlplane: ControlPlane, namespace: str) -> AsyncIterator[Kube]:
    """The keeper's client with only the chart's EndpointSlice Role in the Service's namespace."""
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", DISCOVERY_RULES)
    kube = Kube.from_kubeconfig(sa.kubeconfig, timeout=10.0)
    try:
        yield kube
    finally:
        await kube.close()


def target(kube: Kube, namespace: str, spec: str = f"{SVC}:admin", **options: Any) -> AdminServiceTarget:
    options.setdefault("timeout", 3.0)
    options.setdefault("grace", 5.0)
    (t,) = build_targets(
        [parse_target(f"admin-svc={namespace}/{spec}")],
        kube=kube,
        namespace=namespace,
        secret_name=SECRET,
        admin=AdminApiOptions(**options),
    )
    assert isinstance(t, AdminServiceTarget)
    return t


async def gateways(stack: AsyncExitStack, addresses: Addresses, documents: list[str | None]) -> list[Gateway]:
    """DB-less gateways (plain HTTP), each on a local address, running KONG_LICENSE_DATA = its document."""
    out = []
    for i, doc in enumerate(documents):
        gw = Gateway(doc, hostname=f"gw-{i}")
        await gw.start(addresses.next(), 0)
        stack.push_async_callback(gw.stop)
        out.append(gw)
    return out


def at(gw: Gateway) -> tuple[str, int]:
    assert gw.address is not None
    host, port = gw.address.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def kong_at(kong: KongStandIn) -> tuple[str, int]:
    return kong.host, kong.port


def age_held(t: AdminServiceTarget, seconds: float) -> None:
    """As if the held license had been the one to deliver for ``seconds`` more (past the pending grace)."""
    assert t.held is not None
    t.held = (t.held[0], t.held[1] - seconds)


def states(report: Any) -> dict[str, str]:
    return {p.pod: p.state.value for p in report.pods}


# --- DB-less pods: read every one, write none ---------------------------------------------------------------


async def test_every_dbless_pod_is_checked_and_none_is_written(
    namespace: str, slices: Slices, addresses: Addresses, keeper_kube: Kube
) -> None:
    held, other = record(), record(expiration_date="2027-03-01")
    lic = held_license(held)
    async with AsyncExitStack() as stack:
        gws = await gateways(stack, addresses, [held.document, held.document, held.document])
        for i, gw in enumerate(gws):
            await asyncio.to_thread(slices.add, f"gw-{i}", at(gw))
        t = target(keeper_kube, namespace)
        report = await t.deliver(lic)
        assert (report.state, report.wrote) == (D.DELIVERED, False), report.reason
        assert report.reason.startswith("3 of 3 gateway pods run the held license")
        assert states(report) == {"gw-0": "delivered", "gw-1": "delivered", "gw-2": "delivered"}

        # one pod pinned to another license (as DB-less /config or a wrong Secret would): drift on it only
        pinned = await gateways(stack, addresses, [other.document])
        await asyncio.to_thread(slices.remove, "gw-1")
        await asyncio.to_thread(slices.add, "gw-1", at(pinned[0]))
        report = await t.deliver(lic)
        assert states(report)["gw-1"] == "pending", "within the grace period after the held license changed"
        age_held(t, 60)
        report = await t.deliver(lic)
        assert report.state is D.DRIFT, report.reason
        assert states(report) == {"gw-0": "delivered", "gw-1": "drift", "gw-2": "delivered"}
        assert report.reason.startswith("2 of 3 gateway pods run the held license; gw-1: drift: runs one from "
                                        "KONG_LICENSE_DATA (expires 2027-03-01)"), report.reason  # fmt: skip
        assert lic.license_key not in report.reason and held.document not in report.reason
        for gw in [*gws, *pinned]:
            assert gw.node.rows == {}, "a DB-less pod was written"


# --- DB-backed pods: one write per database; TLS verified by the Service's name -----------------------------


async def test_db_backed_pods_get_one_write_and_are_verified_by_the_service_name(
    namespace: str, slices: Slices, addresses: Addresses, keeper_kube: Kube, tmp_path: Path
) -> None:
    tls = TLSMaterial.create(tmp_path / "tls", hosts=[f"{SVC}.{namespace}.svc"])
    async with AsyncExitStack() as stack:
        kongs = [
            await stack.enter_async_context(KongStandIn(tls=tls, host=addresses.next(), address_in_cert=False))
            for _ in range(3)
        ]
        for k in kongs[1:]:
            k.node = kongs[0].node  # one database behind every node
        for i, k in enumerate(kongs):
            await asyncio.to_thread(slices.add, f"kong-{i}", kong_at(k), port_name="admin-tls")
        t = target(keeper_kube, namespace, f"{SVC}:admin-tls", ca_file=tls.ca_file)
        held = held_license(record())
        report = await t.deliver(held)
        # the pod written runs it at once; the others were asked before the write (Kong's nodes take a DB change
        # within db_update_frequency): pending this round, delivered the next
        assert (report.state, report.wrote) == (D.PENDING, True), report.reason
        assert states(report) == {"kong-0": "delivered", "kong-1": "pending", "kong-2": "pending"}
        assert (await t.check(held)).state is D.DELIVERED
        assert sum(len(k.writes()) for k in kongs) == 1, "more than one write for one database"
        assert kongs[0].writes() == [("PUT", f"/licenses/{license_row_id(namespace, SECRET)}")]
        assert all(("GET", "/license/report") in k.requests for k in kongs), "a pod was not asked"
        again = await t.deliver(held)
        assert again.wrote is False and sum(len(k.writes()) for k in kongs) == 1

        # a certificate that does not hold the Service's name: every pod unreachable, nothing sent
        wrong = target(keeper_kube, namespace, f"{SVC}:admin-tls", ca_file=tls.ca_file, server_name="other.svc")
        report = await wrong.check(held)
        assert report.state is D.ERROR and set(states(report).values()) == {"unreachable"}
        assert "does not hold the expected name" in report.pods[0].reason, report.pods[0].reason


async def test_a_hybrid_control_plane_is_written_and_its_data_planes_only_read(
    namespace: str, slices: Slices, addresses: Addresses, keeper_kube: Kube, tmp_path: Path
) -> None:
    tls = TLSMaterial.create(tmp_path / "tls", hosts=[f"kong-cp.{namespace}.svc", f"kong-dp.{namespace}.svc"])
    async with AsyncExitStack() as stack:
        cp = await stack.enter_async_context(
            KongStandIn(tls=tls, role="control_plane", host=addresses.next(), address_in_cert=False)
        )
        dps = [
            await stack.enter_async_context(
                KongStandIn(tls=tls, role="data_plane", database="off", host=addresses.next(), address_in_cert=False)
            )
            for _ in range(2)
        ]
        for dp in dps:
            cp.attach(dp)
        await asyncio.to_thread(slices.add, "cp-0", kong_at(cp), service="kong-cp", port_name="admin-tls")
        for i, dp in enumerate(dps):
            await asyncio.to_thread(slices.add, f"dp-{i}", kong_at(dp), service="kong-dp", port_name="admin-tls")
        held = held_license(record())
        cps = target(keeper_kube, namespace, "kong-cp", ca_file=tls.ca_file)
        dpt = target(keeper_kube, namespace, "kong-dp", ca_file=tls.ca_file)
        assert (await cps.deliver(held)).wrote is True and len(cp.writes()) == 1
        assert (await cps.check(held)).state is D.DELIVERED
        report = await dpt.deliver(held)
        assert (report.state, report.wrote) == (D.DELIVERED, False), report.reason
        assert states(report) == {"dp-0": "delivered", "dp-1": "delivered"}
        assert all(dp.writes() == [] for dp in dps), "a data plane was written"


# --- pods come and go: the watch finds them, a round checks them at once --------------------------------------


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


async def test_pods_found_and_lost_through_the_watch_are_checked_at_once(
    namespace: str, slices: Slices, addresses: Addresses, keeper_kube: Kube
) -> None:
    held = record()
    events: list[tuple[str, str, bool]] = []
    async with AsyncExitStack() as stack:
        gws = await gateways(stack, addresses, [held.document, held.document, held.document, None])
        for i, gw in enumerate(gws[:2]):
            await asyncio.to_thread(slices.add, f"gw-{i}", at(gw))
        t = target(keeper_kube, namespace, grace=1.0)
        deliverer = Deliverer(
            [t], grace=1.0, on_report=lambda prev, cur: events.extend(delivery_events(prev, cur, 1.0))
        )
        registry = CollectorRegistry()
        registry.register(DeliveryCollector(deliverer))
        stop = asyncio.Event()
        loop = asyncio.create_task(deliverer.run_periodic(lambda: held, stop, period=600.0, retry_base=600.0))
        try:

            def pods() -> dict[str, str]:
                return states(deliverer.reports()[0]) if deliverer.reports() else {}

            await eventually(lambda: pods() == {"gw-0": "delivered", "gw-1": "delivered"}, 10, "two pods")
            added = time.monotonic()
            await asyncio.to_thread(slices.add, "gw-2", at(gws[2]))
            await eventually(lambda: pods().get("gw-2") == "delivered", 10, "the new pod checked")
            found_in = time.monotonic() - added
            assert found_in < 5.0, f"a new pod was checked only after {found_in:.1f} s (period 600 s)"

            await asyncio.to_thread(slices.set_ready, "gw-0", False)
            await eventually(lambda: "gw-0" not in pods(), 10, "a not-ready pod left")
            await asyncio.to_thread(slices.remove, "gw-1")
            await eventually(lambda: set(pods()) == {"gw-2"}, 10, "a removed pod left")

            await asyncio.to_thread(slices.add, "gw-3", at(gws[3]))  # runs no license: drift, and stays
            await eventually(lambda: pods().get("gw-3") == "drift", 10, "the unlicensed pod in drift")
            deliverer.kick()
            await asyncio.sleep(1.2)
            deliverer.kick()
            await eventually(lambda: any(e[0] == "GatewayPodDrift" for e in events), 10, "the stays-in-drift Event")
            text = generate_latest(registry).decode()
            label = f'target="admin-svc={namespace}/{SVC}:admin"'
            assert f'license_keeper_delivery_pods{{state="delivered",{label}}} 1.0' in text
            assert f'license_keeper_delivery_pods{{state="drift",{label}}} 1.0' in text
            assert f'license_keeper_delivery_state{{state="drift",{label}}} 1.0' in text
            assert f"license_keeper_delivery_oldest_pod_behind_seconds{{{label}}}" in text
            assert "gw-3" not in text, "a pod name in a metric label"
        finally:
            stop.set()
            await asyncio.wait_for(loop, 10)
    (drift,) = [e for e in events if e[0] == "GatewayPodDrift"]
    assert "gw-3" in drift[1] and drift[2] is True and held.document not in drift[1]


# --- RBAC and credentials -----------------------------------------------------------------------------------


async def test_without_the_endpointslice_role_the_target_says_forbidden(
    controlplane: ControlPlane, namespace: str, slices: Slices
) -> None:
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "no-discovery", [])
    async with Kube.from_kubeconfig(sa.kubeconfig, timeout=10.0) as kube:
        report = await target(kube, namespace).check(held_license(record()))
    assert report.state is D.ERROR and "forbidden" in report.reason, report.reason


async def test_a_token_never_goes_to_a_plain_http_pod_unless_the_network_is_trusted(
    namespace: str, slices: Slices, addresses: Addresses, keeper_kube: Kube, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    held = record()
    async with AsyncExitStack() as stack:
        (gw,) = await gateways(stack, addresses, [held.document])
        await asyncio.to_thread(slices.add, "gw-0", at(gw))
        report = await target(keeper_kube, namespace, token_file=token).check(held_license(held))
        assert states(report) == {"gw-0": "unreachable"} and "in clear" in report.pods[0].reason
        assert gw.requests == 0
        trusted = target(keeper_kube, namespace, token_file=token, trusted_network=True)
        assert (await trusted.check(held_license(held))).state is D.DELIVERED


# --- license-keeper status lists the pods ---------------------------------------------------------------------


async def test_status_lists_every_gateway_pod(
    controlplane: ControlPlane, namespace: str, slices: Slices, addresses: Addresses, admin_kube: Kube
) -> None:
    import json
    import subprocess
    import sys

    from license_keeper.store import SecretStore

    held, other = record(), record(expiration_date="2027-03-01")
    await SecretStore(admin_kube, namespace, SECRET).sync(held)
    async with AsyncExitStack() as stack:
        gws = await gateways(stack, addresses, [held.document, other.document])
        for i, gw in enumerate(gws):
            await asyncio.to_thread(slices.add, f"gw-{i}", at(gw))
        args = [sys.executable, "-m", "license_keeper", "status", f"--kubeconfig={controlplane.admin_kubeconfig}",
                f"--namespace={namespace}", f"--deliver=admin-svc={namespace}/{SVC}:admin"]  # fmt: skip
        env = {"PATH": "/usr/bin:/bin"}
        done = await asyncio.to_thread(
            subprocess.run, [*args, "-o", "json"], capture_output=True, text=True, timeout=60, env=env
        )
        (delivery,) = json.loads(done.stdout)["delivery"]
        assert delivery["state"] == "drift" and delivery["reason"].startswith("1 of 2 gateway pods")
        assert [(p["pod"], p["state"]) for p in delivery["pods"]] == [("gw-0", "delivered"), ("gw-1", "drift")]
        assert [p["address"] for p in delivery["pods"]] == ["{}:{}".format(*at(gw)) for gw in gws]
        text = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60, env=env)
        assert "gw-1" in text.stdout and "runs one from KONG_LICENSE_DATA" in text.stdout, text.stdout
        assert held.document not in done.stdout + text.stdout + done.stderr + text.stderr
