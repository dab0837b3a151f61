"""The chart's alerts, judged live: a real Prometheus scrapes the real keeper processes (and a gateway
stand-in), evaluates the rules exactly as `helm template` renders them, and sends alerts to a real
Alertmanager whose webhook receiver is this test. Each fault must make its alert reach Alertmanager, and
only that one, and healing it must resolve it; a healthy installation must fire nothing.

`for:` is scaled by the chart's prometheusRule.forScale: 1/3600 (an hour is a second) for the faults; the
healthy installation is judged at 1/60, the ratio of the 500 ms scrape interval here to the chart's 30 s,
so the margin of `for:` over a leader change is the real one. Prometheus, Alertmanager and the receiver
are shared by the module; every scenario has its own namespace, keepers and Konnect stand-in.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.faultproxy import FaultProxy
from license_keeper.testing.keeper import KeeperProcess, keeper_rules
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import make_document, make_record
from license_keeper.testing.prometheus import (
    Alertmanager,
    AlertReceiver,
    PanelQuery,
    Prometheus,
    ReceivedAlert,
    Target,
    dashboard_queries,
    label_names,
    rules_from_chart,
    selectors,
)
from license_keeper.testing.tls import TLSMaterial

from .conftest import LEASE, SECRET, KeeperFactory

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "license-keeper"
REQUIRED = {"konnect.controlPlaneId": "0b8d6a5e-3b64-4c1f-9a1e-2f6a7b1c9d00", "konnect.tlsSecretName": "konnect"}
FAST = 1 / 3600  # faults: an hour of `for:` is a second
HEALTHY = 1 / 60  # the healthy installation: the tests' 500 ms scrape interval is the chart's 30 s
# Keepers poll every second (the sync-stale alert: 3 periods) and give Konnect a second per request.
POLL = ("--polling-period=1s", "--initial-polling-period=1s", "--konnect-timeout=1s")
TIMINGS: dict[str, float] = {}  # scenario -> seconds, printed at the end of the module (BENCHMARKS.md)


# --------------------------------------------------------------------------------- the monitoring stack
@dataclass
class Monitoring:
    prom: Prometheus
    am: Alertmanager
    receiver: AlertReceiver
    gateway_tls: TLSMaterial
    rules: dict[float, dict[str, Any]]
    scale: float = 0.0

    def use(self, scale: float) -> None:
        """Evaluate the chart's rules rendered with forScale ``scale`` from now on."""
        if scale != self.scale:
            self.prom.set_rules("chart", self.rules[scale])
            self.scale = scale


@pytest.fixture(scope="module")
def monitoring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    work = tmp_path_factory.mktemp("monitoring")
    rules = {
        s: rules_from_chart(CHART, {"prometheusRule.forScale": s}, workdir=work, required=REQUIRED)
        for s in (FAST, HEALTHY)
    }
    gateway_tls = TLSMaterial.create(work / "gateway-tls")
    with (
        AlertReceiver() as receiver,
        Alertmanager(work / "alertmanager", receiver.url) as am,
        Prometheus(work / "prometheus", alertmanager=am.address, gateway_ca_file=gateway_tls.ca_file) as prom,
    ):
        mon = Monitoring(prom, am, receiver, gateway_tls, rules)
        mon.use(FAST)
        yield mon
    print("\nlive alert scenarios (s):", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=1))


# ---------------------------------------------------------------------------------------- installations
@dataclass
class Install:
    """The keepers of one namespace, scraped as the chart's ServiceMonitor would have them."""

    mon: Monitoring
    namespace: str
    make: KeeperFactory
    keepers: list[KeeperProcess] = field(default_factory=list)
    gateway: KongStandIn | None = None

    async def start(self, names: list[str], *args: str, kubeconfigs: dict[str, Path] | None = None) -> None:
        started = [self.make(n, *POLL, *args, kubeconfig=(kubeconfigs or {}).get(n)) for n in names]
        for k in started:  # scraped once it holds a license and sees the Secret, as a new pod once ready
            await until(lambda k=k: _settled(k), 30, f"{k.name} to hold a license and see the Secret")
        self.keepers += started
        self.watch()
        await until(lambda: self.scraped(), 20, "Prometheus to scrape every keeper")

    def running(self) -> list[KeeperProcess]:
        return [k for k in self.keepers if k.exited() is None]

    def watch(self) -> None:
        labels = {"namespace": self.namespace, "job": "license-keeper", "service": "license-keeper"}
        self.mon.prom.set_targets(
            "keepers", [Target(f"127.0.0.1:{k.metrics_port}", {**labels, "pod": k.name}) for k in self.running()]
        )
        gateways = []
        if self.gateway is not None:
            gateways = [
                Target(
                    f"127.0.0.1:{self.gateway.port}", {"namespace": self.namespace, "pod": "gateway-0", "job": "kong"}
                )
            ]
        self.mon.prom.set_targets("gateways", gateways)

    def scraped(self) -> bool:
        up = self.mon.prom.targets_up("keepers")
        return {f"127.0.0.1:{k.metrics_port}" for k in self.running()} <= {a for a, v in up.items() if v == 1}

    def leaders(self) -> list[KeeperProcess]:
        return [k for k in self.running() if k.metric("license_keeper_leader") == 1]


def _settled(k: KeeperProcess) -> bool:
    if k.exited() is not None:
        raise RuntimeError(f"{k.name} {k.exited()}:\n{k.logs()[-2000:]}")
    return (
        k.metric('license_keeper_secret_state{state="present"}') == 1
        and k.metric('license_keeper_license_state{state="missing"}', 1) == 0
    )


@pytest.fixture
def install(monitoring: Monitoring, namespace: str, keepers: KeeperFactory) -> Iterator[Install]:
    monitoring.use(FAST)
    inst = Install(monitoring, namespace, keepers)
    yield inst
    monitoring.prom.set_targets("keepers", [])
    monitoring.prom.set_targets("gateways", [])


async def until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> float:
    """Seconds until ``predicate`` (run in a thread: it does blocking HTTP) is true."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - start
        await asyncio.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------- judging
def in_namespace(namespace: str) -> Callable[[ReceivedAlert], bool]:
    return lambda a: a.labels.get("namespace") == namespace


async def reaches_alertmanager(
    mon: Monitoring, name: str, status: str, since: float, where: Callable[[ReceivedAlert], bool], timeout: float
) -> ReceivedAlert:
    def found() -> list[ReceivedAlert]:
        return mon.receiver.alerts(since, lambda a: a.name == name and a.status == status and where(a))

    await until(lambda: bool(found()), timeout, f"{name} {status} at Alertmanager")
    return found()[0]


def fired(mon: Monitoring, since: float, where: Callable[[ReceivedAlert], bool]) -> list[str]:
    """The names of the alerts that reached Alertmanager firing since ``since``, once per notification."""
    return sorted(a.name for a in mon.receiver.alerts(since, where) if a.status == "firing")


async def fires_then_resolves(
    inst: Install, name: str, fault: Callable[[], Any], heal: Callable[[], Any], timeout: float = 30
) -> ReceivedAlert:
    """Apply ``fault``: ``name`` reaches Alertmanager for this namespace, once, and no other alert does;
    apply ``heal``: it resolves."""
    mon, ns, since = inst.mon, inst.namespace, time.time()
    await _call(fault)
    alert = await reaches_alertmanager(mon, name, "firing", since, in_namespace(ns), timeout)
    took = time.time() - since
    await _call(heal)
    await reaches_alertmanager(mon, name, "resolved", since, in_namespace(ns), timeout)
    TIMINGS[f"{name}: fired after"] = took
    assert fired(mon, since, in_namespace(ns)) == [name], "one alert, once for the installation"
    return alert


async def _call(step: Callable[[], Any]) -> None:
    result = step()
    if asyncio.iscoroutine(result):
        await result


# -------------------------------------------------------------------------------------------- scenarios
async def test_konnect_black_holed_fires_sync_stale(install: Install, konnect: KonnectStandIn) -> None:
    await install.start(["keeper-0", "keeper-1"])
    alert = await fires_then_resolves(
        install,
        "LicenseKeeperKonnectSyncStale",
        lambda: konnect.set_mode("blackhole"),
        lambda: konnect.set_mode("license"),
    )
    assert [alert.labels["pod"]] == [k.name for k in install.leaders()]  # only the leader polls and is judged


async def test_secret_deleted_and_not_recreated_fires_secret_alert(
    install: Install, controlplane: ControlPlane, namespace: str
) -> None:
    # rbac.allowSecretCreate=false: the chart pre-creates the Secret empty; a deleted one is not recreated
    access = controlplane.service_account(namespace, "keeper-nocreate", keeper_rules(SECRET, LEASE, allow_create=False))
    secrets = f"/api/v1/namespaces/{namespace}/secrets"
    empty = {"metadata": {"name": SECRET, "annotations": {"license-keeper.io/adopt": "true"}}, "type": "Opaque"}
    controlplane.must("POST", secrets, empty)
    names = ["keeper-0", "keeper-1"]
    await install.start(names, kubeconfigs=dict.fromkeys(names, access.kubeconfig))
    await fires_then_resolves(
        install,
        "LicenseKeeperSecretNotPresent",
        lambda: controlplane.must("DELETE", f"{secrets}/{SECRET}"),
        lambda: controlplane.must("POST", secrets, empty),  # `helm upgrade` recreates it empty; the keeper fills it
    )


@pytest.mark.parametrize(
    ("days", "name"),
    [
        (20, "LicenseKeeperLicenseExpiringSoon"),
        (3, "LicenseKeeperLicenseExpiryCritical"),
        (-3, "LicenseKeeperLicenseExpired"),
    ],
)
async def test_expiry_fires_the_matching_alert_only(
    install: Install, konnect: KonnectStandIn, days: int, name: str
) -> None:
    expires = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=days)
    konnect.serve(make_record(updated_at=int(time.time()), expiration_date=expires))
    since = time.time()
    await install.start(["keeper-0", "keeper-1"])
    alert = await reaches_alertmanager(install.mon, name, "firing", since, in_namespace(install.namespace), 30)
    # Kong's dates, from the grace-period metric through the alert's own query
    grace_end = expires + datetime.timedelta(days=30)
    text = alert.annotations["description"]
    assert f"read-only on {grace_end.isoformat()}" in text, text
    assert expires.isoformat() in text, text
    TIMINGS[f"{name}: fired after"] = time.time() - since
    konnect.rotate()  # a renewed license: the next poll takes it
    await reaches_alertmanager(install.mon, name, "resolved", since, in_namespace(install.namespace), 30)
    assert fired(install.mon, since, in_namespace(install.namespace)) == [name]


async def test_no_leader_fires_partitioned_and_scaled_to_zero(
    install: Install, controlplane: ControlPlane, keeper_access: Any, tmp_path: Path
) -> None:
    lease = ("--leader-elect-lease-duration=2s", "--leader-elect-renew-deadline=1s", "--leader-elect-retry-period=0.5s")
    names = ["keeper-0", "keeper-1"]
    proxies = [
        FaultProxy(controlplane.server, controlplane.ca_file, tls_dir=tmp_path / f"proxy-{n}").start() for n in names
    ]
    try:
        kubeconfigs = {
            n: p.write_kubeconfig(
                tmp_path / f"{n}.kubeconfig", token=keeper_access.token, user=n, namespace=install.namespace
            )
            for n, p in zip(names, proxies, strict=True)
        }
        await install.start(names, *lease, kubeconfigs=kubeconfigs)

        def partition(mode: str) -> None:
            for p in proxies:
                p.set_mode(mode)

        # partitioned from the API server: the leader cannot renew and exits, the other cannot take over
        await fires_then_resolves(
            install, "LicenseKeeperNoLeader", lambda: partition("partition"), lambda: partition("pass")
        )
    finally:
        for p in proxies:
            p.stop()
    await _scaled_to_zero(install)


async def _scaled_to_zero(install: Install) -> None:
    """No keeper scraped at all: the alert has no namespace to carry (absent()); it resolves with one back."""
    mon, since = install.mon, time.time()
    for k in install.running():
        k.kill()
    install.watch()
    unlabelled = lambda a: "namespace" not in a.labels  # noqa: E731
    await reaches_alertmanager(mon, "LicenseKeeperNoLeader", "firing", since, unlabelled, 30)
    TIMINGS["LicenseKeeperNoLeader (scaled to 0): fired after"] = time.time() - since
    install.keepers.clear()
    await install.start(["keeper-2"])
    await reaches_alertmanager(mon, "LicenseKeeperNoLeader", "resolved", since, unlabelled, 30)


async def test_gateway_pinned_to_another_license_fires_mismatch_and_drift(
    install: Install, konnect: KonnectStandIn
) -> None:
    async with KongStandIn(tls=install.mon.gateway_tls) as kong:
        install.gateway = kong
        await _start_delivering(install, kong, ["keeper-0", "keeper-1"])
        since = time.time()
        kong.node.env_license = make_document()  # KONG_LICENSE_DATA: another license hides /licenses
        ns = in_namespace(install.namespace)
        for name in ("LicenseDeliveryDrift", "LicenseKeeperGatewayLicenseMismatch"):
            await reaches_alertmanager(install.mon, name, "firing", since, ns, 60)
            TIMINGS[f"{name}: fired after"] = time.time() - since
        await _check_dashboard_queries(install)  # every panel has data, delivery included, in drift too
        kong.node.env_license = None
        for name in ("LicenseDeliveryDrift", "LicenseKeeperGatewayLicenseMismatch"):
            await reaches_alertmanager(install.mon, name, "resolved", since, ns, 30)
        assert fired(install.mon, since, ns) == ["LicenseDeliveryDrift", "LicenseKeeperGatewayLicenseMismatch"]


async def _start_delivering(install: Install, kong: KongStandIn, names: list[str]) -> None:
    deliver = (
        f"--deliver=admin-api={kong.address}",
        f"--deliver-admin-ca-file={kong.tls.ca_file}",
        "--delivery-period=1s",
    )
    await install.start(names, *deliver)
    target = f"admin-api={kong.address}"
    delivered = f'license_keeper_delivery_state{{state="delivered",target="{target}"}}'
    await until(lambda: any(k.metric(delivered) == 1 for k in install.leaders()), 30, "the gateway to run the license")
    gateway = f"127.0.0.1:{kong.port}"
    await until(lambda: install.mon.prom.targets_up("gateways").get(gateway) == 1, 20, "the gateway to be scraped")


async def test_healthy_three_replicas_fire_nothing_across_a_leader_change(
    install: Install, konnect: KonnectStandIn
) -> None:
    """Three replicas, a gateway they deliver to, a graceful leader change and a replacement replica: no
    alert goes pending but the no-leader one during the change, none fires, Alertmanager gets nothing."""
    mon, ns = install.mon, install.namespace
    mon.use(HEALTHY)
    async with KongStandIn(tls=mon.gateway_tls) as kong:
        install.gateway = kong
        await _start_delivering(install, kong, ["keeper-0", "keeper-1", "keeper-2"])
        ours = lambda a: a.get("labels", {}).get("namespace", ns) == ns  # noqa: E731 (unlabelled: absent())
        try:
            await until(lambda: not [a for a in mon.prom.alerts() if ours(a)], 30, "no alert pending to start with")
        except TimeoutError:
            pending = sorted({a["labels"]["alertname"] for a in mon.prom.alerts() if ours(a)})
            raise AssertionError(f"a healthy installation keeps these alerts pending or firing: {pending}") from None
        since, seen = time.time(), []
        seen += await _watch_alerts(mon, ours, 8)
        (old,) = await asyncio.to_thread(install.leaders)
        await asyncio.to_thread(old.terminate)  # a rolling update: SIGTERM, the Lease released
        await install.start(["keeper-3"])
        await until(lambda: len(install.leaders()) == 1, 20, "a new leader")
        seen += await _watch_alerts(mon, ours, 5 * 60 * HEALTHY + 5)  # the no-leader alert's `for:` and more
        TIMINGS["healthy window (3 replicas, leader change)"] = time.time() - since
        print("\nhealthy window, alerts pending at some point:", sorted({a["labels"]["alertname"] for a in seen}))
        assert not [a for a in seen if a["state"] == "firing"], seen
        assert {a["labels"]["alertname"] for a in seen} <= {"LicenseKeeperNoLeader"}, seen
        assert not mon.receiver.alerts(since, lambda a: a.labels.get("namespace", ns) == ns)
        await _check_dashboard_queries(install)
        await _check_names_exist(install)


async def _watch_alerts(
    mon: Monitoring, ours: Callable[[dict[str, Any]], bool], seconds: float
) -> list[dict[str, Any]]:
    """Every pending or firing alert Prometheus shows, sampled each evaluation for ``seconds``."""
    seen: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen += [a for a in await asyncio.to_thread(mon.prom.alerts) if ours(a)]
        await asyncio.sleep(0.5)
    return seen


# ----------------------------------------------------------------------------- the dashboard, the names
DASHBOARD = CHART / "files" / "dashboard.json"


async def _check_dashboard_queries(install: Install) -> None:
    """Every panel's query, as Grafana sends it with "All" chosen, returns data from the live Prometheus."""
    variables = {
        "namespace": install.namespace,
        "job": ".+",
        "instance": ".+",
        "__rate_interval": "4s",
        "__range": "5m",
    }
    empty = []
    for q in dashboard_queries(json.loads(DASHBOARD.read_text())):
        result = await asyncio.to_thread(install.mon.prom.query, q.resolved(variables))
        if not result:
            empty.append(f"{q.panel}/{q.ref_id}: {q.resolved(variables)}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def _rule_exprs(mon: Monitoring) -> list[str]:
    return [r["expr"] for g in mon.rules[FAST]["groups"] for r in g["rules"]]


async def _check_names_exist(install: Install) -> None:
    """Every metric name and label the rules and the dashboard read is in what Prometheus scraped."""
    prom = install.mon.prom
    exprs = _rule_exprs(install.mon) + [q.expr for q in dashboard_queries(json.loads(DASHBOARD.read_text()))]
    variables = {"namespace": ".+", "job": ".+", "instance": ".+", "__rate_interval": "4s", "__range": "5m"}
    scraped = await asyncio.to_thread(prom.series, '{__name__=~".+"}')
    labels_of: dict[str, set[str]] = {}
    for s in scraped:
        labels_of.setdefault(s["__name__"], set()).update(s)
    missing = []
    for expr in exprs:
        tree = await asyncio.to_thread(prom.parse, PanelQuery("", "", expr).resolved(variables))
        names = {sel["name"] for sel in selectors(tree) if sel["name"]}
        missing += [f"metric {n} (in {expr!r})" for n in names if n not in labels_of]
        known = set().union(*(labels_of.get(n, set()) for n in names)) if names else set()
        missing += [f"label {label} (in {expr!r})" for label in set(label_names(tree)) - known]
    assert not missing, "not in a real scrape:\n" + "\n".join(sorted(set(missing)))
