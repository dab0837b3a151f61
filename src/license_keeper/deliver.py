"""Deliver the held license to running gateways, and read back what they run (drift).

Interface for the agent (leader only; the Secret stays the source of truth)::

    deliverer = deliverer_from_settings(settings, kube, namespace=ns, on_report=...)  # no I/O yet
    if deliverer.targets: ...                        # nothing to run without --deliver
    registry.register(DeliveryCollector(deliverer))  # license_keeper_delivery_* at scrape time
    task = asyncio.create_task(deliverer.run_periodic(lambda: state.held, stop, period=settings.delivery_period))
    deliverer.kick()                                 # after every Secret write: deliver now (no second loop)
    reports = await deliverer.deliver(record)        # one round: write where needed, read back; never raises
    reports = await deliverer.check(record)          # read back only (e.g. `license-keeper status`)
    print(render_reports(deliverer.reports()))
    await deliverer.close()

Each target answers with a ``TargetReport(target, state, reason, wrote, at)``: state is one of delivered,
pending, drift, unsupported, error; reasons and log lines carry no license text, key, signature or token.
A failing target never raises out of ``deliver``/``check``: it becomes an ``error`` report, and
``run_periodic`` backs off (jittered) until the next success or ``kick``. The targets themselves are in
``targets.py`` (those others import are re-exported here); the decisions are in ``delivery.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .delivery import (
    DEFAULT_GRACE_SECONDS,
    DELIVERY_STATES,
    DeliveryState,
    TargetReport,
    oldest_behind,
    pod_counts,
    pods_staying_in_drift,
)
from .license import License, LicenseRecord
from .targets import (
    AdminApiOptions,
    AdminApiTarget,
    AdminServiceTarget,
    Fence,
    KongLicenseTarget,
    RestartTarget,
    Target,
    always,
    build_targets,
)

if TYPE_CHECKING:
    from .config import Settings
    from .kube import Kube

__all__ = [
    "AdminApiOptions",
    "AdminApiTarget",
    "AdminServiceTarget",
    "Deliverer",
    "DeliveryCollector",
    "KongLicenseTarget",
    "RestartTarget",
    "deliverer_from_settings",
    "delivery_event",
    "delivery_events",
    "render_reports",
]

log = logging.getLogger("license_keeper.deliver")

ROUND_TIMEOUT_SECONDS = 120.0
MIN_ROUND_GAP_SECONDS = 1.0  # pods found or gone never start rounds closer than this (Secret writes do not wait)


# --- the round, the loop, metrics ----------------------------------------------------------------------------


def _usable(record: LicenseRecord | None) -> License | None:
    return record.license if record is not None else None


class Deliverer:
    def __init__(
        self,
        targets: Sequence[Target],
        *,
        clock: Callable[[], float] = time.time,
        round_timeout: float = ROUND_TIMEOUT_SECONDS,
        on_report: Callable[[TargetReport | None, TargetReport], None] | None = None,
        may_write: Fence = always,
        grace: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.targets = list(targets)
        self.grace = grace  # a write (or a new held license) not shown by then is drift; a pod in drift this
        # long gets its Event
        self.may_write = may_write  # asked right before every write (the agent: still holding the Lease)
        self.clock = clock
        self.round_timeout = round_timeout
        self.on_report = on_report  # (previous, current) after each target's round: Events, logs
        self.last: dict[str, TargetReport] = {}
        # targets that find their gateway pods themselves (admin-svc): their pods are counted in metrics
        self.discovering = {t.label for t in self.targets if hasattr(t, "run_background")}
        self.last_success: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._soon = asyncio.Event()

    def reports(self) -> list[TargetReport]:
        return [self.last[t.label] for t in self.targets if t.label in self.last]

    def kick(self) -> None:
        """Deliver at once in ``run_periodic`` (call after each Secret write)."""
        self._kick.set()

    def kick_soon(self) -> None:
        """A round soon, but at most one per MIN_ROUND_GAP_SECONDS (gateway pods found or gone: a rollout of
        many pods changes the EndpointSlices many times a second)."""
        self._soon.set()

    async def deliver(self, record: LicenseRecord | None) -> list[TargetReport]:
        return await self._round(record, write=True)

    async def check(self, record: LicenseRecord | None) -> list[TargetReport]:
        return await self._round(record, write=False)

    async def _round(self, record: LicenseRecord | None, *, write: bool) -> list[TargetReport]:
        lic = _usable(record)
        async with self._lock:
            if lic is None:
                now = self.clock()
                why = "no valid license held yet" if record is None else "the held license is invalid: not delivered"
                reports = [TargetReport(t.label, DeliveryState.PENDING, why, at=now) for t in self.targets]
            else:
                reports = list(await asyncio.gather(*(self._one(t, lic, write) for t in self.targets)))
            for report in reports:
                self._remember(report)
            return reports

    async def _one(self, target: Target, lic: License, write: bool) -> TargetReport:
        limit = max(self.round_timeout, getattr(target, "round_timeout", 0.0))
        try:
            async with asyncio.timeout(limit):
                return await (target.deliver(lic, self.may_write) if write else target.check(lic))
        except TimeoutError:
            reason = f"no answer within {limit:g} s"
        except Exception as exc:  # a bug in one target must not stop the others or the agent
            log.exception("delivery to %s failed unexpectedly", target.label)
            reason = f"internal error ({type(exc).__name__})"
        return TargetReport(target.label, DeliveryState.ERROR, reason, at=self.clock())

    def _remember(self, report: TargetReport) -> None:
        previous = self.last.get(report.target)
        self.last[report.target] = report
        if report.state is DeliveryState.DELIVERED:
            self.last_success[report.target] = report.at
        if previous is None or previous.state != report.state or report.wrote:
            level = (
                logging.INFO if report.state in (DeliveryState.DELIVERED, DeliveryState.PENDING) else logging.WARNING
            )
            log.log(level, "delivery to %s: %s: %s", report.target, report.state.value, report.reason)
        if self.on_report is not None:
            self.on_report(previous, report)

    async def run_periodic(
        self,
        current: Callable[[], LicenseRecord | None],
        stop: asyncio.Event,
        *,
        period: float = 600.0,
        retry_base: float = 15.0,
        rng: random.Random | None = None,
    ) -> None:
        """Deliver now, then every ``period`` (or at ``kick()``); after a failed round, retry sooner with
        jittered backoff (``retry_base`` doubling, capped at ``period``). Returns when ``stop`` is set."""
        rng = rng or random.Random()
        failures = 0
        background = self._start_background(stop)
        try:
            while not stop.is_set():
                self._kick.clear()
                self._soon.clear()
                started = time.monotonic()
                reports = await self.deliver(current())
                failed = any(
                    r.state in (DeliveryState.ERROR, DeliveryState.DRIFT, DeliveryState.PENDING) for r in reports
                )
                failures = failures + 1 if failed else 0
                delay = (
                    period if not failures else min(period, retry_base * 2 ** (failures - 1)) * rng.uniform(0.5, 1.0)
                )
                await _wait_any(stop, [self._kick, self._soon], delay)
                _raise_if_died(background)
                # pods found or gone start a round no sooner than MIN_ROUND_GAP after the last one began; a
                # Secret write (kick) never waits
                gap = MIN_ROUND_GAP_SECONDS - (time.monotonic() - started)
                if gap > 0 and not self._kick.is_set() and not stop.is_set():
                    await _wait_any(stop, [self._kick], gap)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    def _start_background(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """What targets keep running between rounds (an admin Service's EndpointSlice watch); a change kicks."""
        tasks = []
        for target in self.targets:
            run = getattr(target, "run_background", None)
            if run is not None:
                tasks.append(asyncio.create_task(run(stop, self.kick_soon), name=f"discover {target.label}"))
        return tasks

    async def close(self) -> None:
        for target in self.targets:
            await target.close()


def _raise_if_died(tasks: list[asyncio.Task[None]]) -> None:
    """A background task ends only when stopped: one that ended by itself ends the loop (and the agent's
    supervisor ends the process), rather than leaving a target on a stale view."""
    for task in tasks:
        if task.done() and not task.cancelled():
            error = task.exception()
            raise RuntimeError(f"{task.get_name()} ended unexpectedly") from error


async def _wait_any(stop: asyncio.Event, kicks: list[asyncio.Event], delay: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, *kicks)]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class DeliveryCollector(Collector):
    """``license_keeper_delivery_state{target,state}`` one-hot and the last delivered time, at scrape time."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "license_keeper_delivery_state",
            "Per delivery target (one-hot): delivered, pending, drift, unsupported, error.",
            labels=["target", "state"],
        )
        last = GaugeMetricFamily(
            "license_keeper_delivery_last_success_timestamp_seconds",
            "Unix time at which the target last reported running the held license.",
            labels=["target"],
        )
        pods = GaugeMetricFamily(
            "license_keeper_delivery_pods",
            "Gateway pods of an admin-svc target by state: delivered, pending, drift, unreachable.",
            labels=["target", "state"],
        )
        behind = GaugeMetricFamily(
            "license_keeper_delivery_oldest_pod_behind_seconds",
            "How long the gateway pod longest off the held license has been so (0: every pod runs it).",
            labels=["target"],
        )
        now = self.deliverer.clock()
        for report in self.deliverer.reports():
            for s in DELIVERY_STATES:
                state.add_metric([report.target, s], 1.0 if report.state.value == s else 0.0)
            if report.target in self.deliverer.last_success:
                last.add_metric([report.target], self.deliverer.last_success[report.target])
            if report.target in self.deliverer.discovering:
                for s, count in pod_counts(report.pods).items():
                    pods.add_metric([report.target, s], float(count))
                behind.add_metric([report.target], oldest_behind(report.pods, now))
        yield state
        yield last
        yield pods
        yield behind


def delivery_events(
    previous: TargetReport | None, report: TargetReport, stay: float = DEFAULT_GRACE_SECONDS
) -> list[tuple[str, str, bool]]:
    """Every Event for this report: the target's (``delivery_event``), then one per gateway pod that has now
    stayed in drift for ``stay`` seconds (once per episode; the pod's name, never its license)."""
    events = [e for e in [delivery_event(previous, report)] if e is not None]
    for pod in pods_staying_in_drift(previous, report, stay):
        events.append(
            (
                "GatewayPodDrift",
                f"gateway pod {pod.pod} of {report.target} stays in drift ({report.at - pod.since:.0f} s): "
                f"{pod.reason}",
                True,
            )
        )
    return events


def delivery_event(previous: TargetReport | None, report: TargetReport) -> tuple[str, str, bool] | None:
    """(reason, message, warning) of the Event for this report, or None (Events on delivery and on drift only)."""
    if report.wrote:
        return "LicenseDelivered", f"license delivered to {report.target}: {report.reason}", False
    if previous is not None and previous.state == report.state:
        return None
    if report.state is DeliveryState.DELIVERED and previous is not None:
        return "LicenseDelivered", f"{report.target} runs the held license again", False
    if report.state in (DeliveryState.DRIFT, DeliveryState.ERROR, DeliveryState.UNSUPPORTED):
        return "LicenseDeliveryDrift", f"{report.target}: {report.state.value}: {report.reason}", True
    return None


def render_reports(reports: Sequence[TargetReport], now: float | None = None) -> str:
    """The `license-keeper status` block: one line per target."""
    if not reports:
        return "delivery: no targets configured"
    now = time.time() if now is None else now
    width = max(len(r.target) for r in reports)
    lines = ["delivery:"]
    for r in reports:
        age = f"{max(0, now - r.at):.0f}s ago" if r.at else "never"
        lines.append(f"  {r.target:<{width}}  {r.state.value:<11}  {r.reason} ({age})")
        if r.pods:
            pod_width = max(len(p.pod) for p in r.pods)
            for p in r.pods:
                lines.append(f"    {p.pod:<{pod_width}}  {p.address:<21}  {p.state.value:<11}  {p.reason}")
    return "\n".join(lines)


def deliverer_from_settings(
    settings: Settings,
    kube: Kube | None,
    *,
    namespace: str,
    on_report: Callable[[TargetReport | None, TargetReport], None] | None = None,
    may_write: Fence = always,
) -> Deliverer:
    """The Deliverer for ``--deliver`` (no targets: a Deliverer with none, whose rounds do nothing).

    A write the gateway does not show within min(2 min, the delivery period) is drift: by the next
    round at the latest, so a short period (the demo's) shows drift quickly too.
    """
    grace = min(DEFAULT_GRACE_SECONDS, settings.delivery_period)
    admin = AdminApiOptions(
        grace=grace,
        token_file=settings.deliver_admin_token_file,
        client_cert_file=settings.deliver_admin_client_cert_file,
        client_key_file=settings.deliver_admin_client_key_file,
        ca_file=settings.deliver_admin_ca_file,
        timeout=settings.deliver_admin_timeout,
        trusted_network=settings.deliver_admin_trusted_network,
        server_name=settings.deliver_admin_tls_server_name,
    )
    targets = build_targets(
        settings.delivery_targets(),
        kube=kube,
        namespace=namespace,
        secret_name=settings.effective_secret_name,
        admin=admin,
        grace=grace,
    )
    return Deliverer(targets, on_report=on_report, may_write=may_write, grace=grace)
