"""What the keeper shows the world: probes, Prometheus metrics, Kubernetes Events and log lines.

Metrics about the license are computed at scrape time from the keeper's current state (gauges set on
events went stale in cert-manager and External Secrets). No license text, key, signature or customer
ever reaches a label, an Event or a log line: only fingerprints, dates and counts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .config import parse_addr
from .license import LicenseRecord
from .policy import SecretState, license_state

log = logging.getLogger("license_keeper.observe")

LICENSE_STATES = ("valid", "expiring", "expired", "missing", "invalid")
KONNECT_RESULTS = ("ok", "no_license", "unreachable", "timeout", "auth", "server_error", "invalid_response")
WRITE_REASONS = ("create", "rotate", "repair", "recreate", "restore")
HEALTH_STALE_SECONDS = 120.0
# The leader's poll loop beats at least once a sleep slice (60 s) and once per Konnect call (30 s
# timeout by default); five minutes without a beat means it is stuck, not slow.
POLL_LOOP_STALE_SECONDS = 300.0


@dataclass
class KeeperState:
    """The keeper's live state, read at scrape and probe time. Mutated only by the agent."""

    renew_before: float = 7 * 86400.0
    polling_period: float = 12 * 3600.0
    held: LicenseRecord | None = None
    secret_state: SecretState = SecretState.MISSING
    leader: bool = False
    last_konnect_success: float | None = None  # wall clock
    heartbeat: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)

    poll_beat: float | None = None  # the leader's poll loop; None while not leading

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def beat_poll_loop(self) -> None:
        self.poll_beat = time.monotonic()

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """Alive: the event loop runs, and on the leader the poll loop is not stuck."""
        now = time.monotonic() if now is None else now
        if now - self.heartbeat > HEALTH_STALE_SECONDS:
            return False, f"event loop stalled: no heartbeat for {now - self.heartbeat:.0f} s"
        if self.leader and self.poll_beat is not None and now - self.poll_beat > POLL_LOOP_STALE_SECONDS:
            return False, f"poll loop stalled: no progress for {now - self.poll_beat:.0f} s"
        return True, "ok"

    def license_state(self, now: datetime | None = None) -> str:
        return license_state(self.held, now or datetime.now(UTC), self.renew_before)

    def ready(self, now: datetime | None = None) -> tuple[bool, str]:
        state = self.license_state(now)
        if state in ("valid", "expiring"):
            return True, f"license {state}"
        return False, {
            "missing": "no license held yet (Secret empty and Konnect not answered)",
            "invalid": "held license is invalid",
            "expired": "held license is expired",
        }[state]


class StateCollector(Collector):
    """Gauges derived from ``KeeperState`` on every scrape."""

    def __init__(self, state: KeeperState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state
        now = datetime.now(UTC)
        lic = s.held.license if s.held is not None else None

        expiry = GaugeMetricFamily(
            "license_keeper_license_expiration_timestamp_seconds",
            "Unix time at which the held license expires (end of its expiration date, UTC).",
        )
        signature = GaugeMetricFamily(
            "license_keeper_kong_license_signature",
            "The held license's signature as Kong exports it in kong_enterprise_license_signature.",
        )
        info = GaugeMetricFamily(
            "license_keeper_license_info",
            "The held license: fingerprint (sha256 prefix of the document) and where it came from.",
            labels=["fingerprint", "source"],
        )
        if lic is not None and s.held is not None:
            expiry.add_metric([], lic.expires_at.timestamp())
            signature.add_metric([], lic.kong_signature)
            info.add_metric([lic.fingerprint, s.held.source], 1.0)
        yield expiry
        yield signature
        yield info

        yield _one_hot(
            "license_keeper_license_state",
            "State of the held license: valid, expiring (within --renew-before), expired, missing, invalid.",
            LICENSE_STATES,
            s.license_state(now),
        )
        yield _one_hot(
            "license_keeper_secret_state",
            "State of the license Secret: present, missing, foreign (not ours), invalid, immutable.",
            tuple(x.value for x in SecretState),
            s.secret_state.value,
        )
        last = GaugeMetricFamily(
            "license_keeper_konnect_last_success_timestamp_seconds",
            "Unix time of the last successful Konnect license request (license or 'no license').",
        )
        if s.last_konnect_success is not None:
            last.add_metric([], s.last_konnect_success)
        yield last
        period = GaugeMetricFamily(
            "license_keeper_polling_period_seconds", "The regular Konnect polling period (--polling-period)."
        )
        period.add_metric([], s.polling_period)
        yield period
        leader = GaugeMetricFamily("license_keeper_leader", "1 if this replica holds the leader Lease.")
        leader.add_metric([], 1.0 if s.leader else 0.0)
        yield leader


def _one_hot(name: str, doc: str, states: tuple[str, ...], current: str) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["state"])
    for st in states:
        g.add_metric([st], 1.0 if st == current else 0.0)
    return g


class Metrics:
    """The keeper's registry: scrape-time gauges plus two counters."""

    def __init__(self, state: KeeperState) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StateCollector(state))
        self.konnect_requests = Counter(
            "license_keeper_konnect_requests",
            "Konnect license requests by result.",
            ["result"],
            registry=self.registry,
        )
        self.secret_writes = Counter(
            "license_keeper_secret_writes",
            "Writes of the license Secret by reason (create, rotate, repair, recreate, restore).",
            ["reason"],
            registry=self.registry,
        )
        # Zero series for every label value, so rate() and absent() behave from the first scrape.
        for r in KONNECT_RESULTS:
            self.konnect_requests.labels(r)
        for w in WRITE_REASONS:
            self.secret_writes.labels(w)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- HTTP: probes and metrics ---------------------------------------------------------------------


async def start_site(app: web.Application, addr: str) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``addr``; returns the runner and the bound port (``:0`` picks one)."""
    host, port = parse_addr(addr)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port  # the real port when asked for :0
    return runner, int(bound)


def probe_app(state: KeeperState, on_sync: Callable[[], Awaitable[tuple[int, str]]]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok, reason = state.health()
        return web.Response(status=200 if ok else 503, text=f"{reason}\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, reason = state.ready()
        return web.Response(status=200 if ok else 503, text=f"{reason}\n")

    async def sync(_: web.Request) -> web.Response:
        status, text = await on_sync()
        return web.Response(status=status, text=f"{text}\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post("/sync", sync)
    return app


def metrics_app(metrics: Metrics) -> web.Application:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


# --- Kubernetes Events ------------------------------------------------------------------------------


class EventRecorder:
    """Events on the license Secret. Repeats of the same reason and message bump a count instead of
    creating a new Event. Failing to record is logged, never fatal (Events are best effort)."""

    def __init__(self, api: client.ApiClient, namespace: str, secret_name: str, component: str, host: str) -> None:
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self.secret_name = secret_name
        self.component = component
        self.host = host
        self._recent: dict[tuple[str, str], tuple[str, int]] = {}  # (reason, message) -> (event name, count)
        self.uid: str | None = None

    async def emit(self, reason: str, message: str, *, warning: bool = False) -> None:
        now = datetime.now(UTC)
        key = (reason, message)
        try:
            if key in self._recent:
                name, count = self._recent[key]
                await self._core.patch_namespaced_event(
                    name,
                    self.namespace,
                    {"count": count + 1, "lastTimestamp": now.isoformat().replace("+00:00", "Z")},
                )
                self._recent[key] = (name, count + 1)
                return
            name = f"{self.secret_name}.{int(now.timestamp() * 1e6):x}"
            event = client.CoreV1Event(
                metadata=client.V1ObjectMeta(name=name, namespace=self.namespace),
                involved_object=client.V1ObjectReference(
                    api_version="v1", kind="Secret", name=self.secret_name, namespace=self.namespace, uid=self.uid
                ),
                reason=reason,
                message=message,
                type="Warning" if warning else "Normal",
                first_timestamp=now,
                last_timestamp=now,
                count=1,
                source=client.V1EventSource(component=self.component, host=self.host),
                reporting_component=self.component,
                reporting_instance=self.host,
            )
            await self._core.create_namespaced_event(self.namespace, event)
            self._recent[key] = (name, 1)
        except (TimeoutError, ApiException, OSError) as e:
            status = getattr(e, "status", type(e).__name__)
            log.warning("could not record event %s: %s", reason, status)


# --- logs ----------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__  # type only: tracebacks may quote data
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        return f"  ({ei[0].__name__})" if ei and ei[0] else ""


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (request lines, connection pools) is not ours to print at info.
    for noisy in ("aiohttp.access", "kubernetes_asyncio", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
