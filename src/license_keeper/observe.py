"""What the keeper shows the world: probes, Prometheus metrics, Kubernetes Events and log lines.

Metrics about the license are computed at scrape time from the keeper's current state (gauges set on
events went stale in cert-manager and External Secrets). No license text, key, signature or customer
ever reaches a label, an Event or a log line: only fingerprints, dates and counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .config import parse_addr
from .kube import Kube, KubeError, NotFound
from .license import LicenseRecord
from .policy import SecretState, license_state

__all__ = [
    "HEALTH_STALE_SECONDS",
    "KONNECT_RESULTS",
    "LICENSE_STATES",
    "POLL_LOOP_STALE_SECONDS",
    "SECRET_VIEW_STALE_SECONDS",
    "WRITE_REASONS",
    "EventRecorder",
    "JsonFormatter",
    "KeeperState",
    "Metrics",
    "TextFormatter",
    "metrics_app",
    "poll_loop_stall_bound",
    "probe_app",
    "setup_logging",
    "start_site",
]

log = logging.getLogger("license_keeper.observe")

LICENSE_STATES = ("valid", "expiring", "expired", "missing", "invalid")
KONNECT_RESULTS = ("ok", "no_license", "unreachable", "timeout", "auth", "server_error", "invalid_response")
WRITE_REASONS = ("create", "rotate", "repair", "recreate", "restore")
HEALTH_STALE_SECONDS = 120.0
# The leader's poll loop beats before each Konnect request and at least once a sleep slice (30 s).
# Between two beats it waits for one Konnect request and one Secret sync, and the sync may first wait
# for another one to let go of the lock; a sync is a read and a write, each under the API timeout.
# Longer than the longest such step (and never under five minutes) without a beat: stuck, not slow.
POLL_LOOP_STALE_SECONDS = 300.0
POLL_STEP_API_CALLS = 4
SECRET_VIEW_STALE_SECONDS = 180.0  # 3 x the 60 s re-read period


def poll_loop_stall_bound(konnect_deadline: float, api_timeout: float) -> float:
    """How long the leader's poll loop may go without a beat before /healthz calls it stalled: the
    longest step it can take inside its configured timeouts, and at least five minutes."""
    longest_step = konnect_deadline + POLL_STEP_API_CALLS * api_timeout
    return max(POLL_LOOP_STALE_SECONDS, longest_step)


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
    # The Secret view: monotonic time of the last watch event or successful re-read (start counts as
    # one, so a keeper that never reaches the API server turns unhealthy after the same bound).
    secret_view_at: float = field(default_factory=time.monotonic)
    secret_view_stale_after: float = SECRET_VIEW_STALE_SECONDS

    poll_beat: float | None = None  # the leader's poll loop; None while not leading
    poll_loop_stale_after: float = POLL_LOOP_STALE_SECONDS  # see poll_loop_stall_bound

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def beat_poll_loop(self) -> None:
        self.poll_beat = time.monotonic()

    def note_secret_view(self) -> None:
        self.secret_view_at = time.monotonic()

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """Alive: the event loop runs, the Secret view is fresh, and on the leader the poll loop moves."""
        now = time.monotonic() if now is None else now
        if now - self.heartbeat > HEALTH_STALE_SECONDS:
            return False, f"event loop stalled: no heartbeat for {now - self.heartbeat:.0f} s"
        if now - self.secret_view_at > self.secret_view_stale_after:
            return False, (
                f"Secret view stale: no watch event or successful read for {now - self.secret_view_at:.0f} s "
                f"(bound {self.secret_view_stale_after:.0f} s)"
            )
        if self.leader and self.poll_beat is not None and now - self.poll_beat > self.poll_loop_stale_after:
            return False, (
                f"poll loop stalled: no progress for {now - self.poll_beat:.0f} s "
                f"(bound {self.poll_loop_stale_after:.0f} s)"
            )
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
        grace = GaugeMetricFamily(
            "license_keeper_license_grace_period_end_timestamp_seconds",
            "Unix time at which Kong's 30-day grace period after the held license's expiry ends and the "
            "gateways' Admin API turns read-only (noon UTC of the expiration date, plus 30 days).",
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
            grace.add_metric([], lic.grace_period_ends_at.timestamp())
            # Equal to Kong's figure only as printed (14 digits): the mismatch alert compares with !=.
            signature.add_metric([], lic.kong_signature_exported)
            info.add_metric([lic.fingerprint, s.held.source], 1.0)
        yield expiry
        yield grace
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


def probe_app(state: KeeperState) -> web.Application:
    """Probes only. A poll is asked for through the Secret (syncrequest.py), never on this port: the port
    is reachable from the whole cluster, and loopback is no identity (a mesh sidecar connects from it)."""

    async def healthz(_: web.Request) -> web.Response:
        ok, reason = state.health()
        return web.Response(status=200 if ok else 503, text=f"{reason}\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, reason = state.ready()
        return web.Response(status=200 if ok else 503, text=f"{reason}\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def metrics_app(metrics: Metrics) -> web.Application:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


# --- Kubernetes Events ------------------------------------------------------------------------------


EVENT_QUEUE_SIZE = 64


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Events on the license Secret, sent by a background task so that no caller ever waits on the
    API server for one (Events are best effort; the Secret is what matters).

    Repeats of the same reason and message bump the count of the Event already recorded, as
    client-go's recorder does; when that Event is gone (the API server's Event TTL removed it), a
    new one is created. A full queue drops the oldest Event and logs it.
    """

    def __init__(self, kube: Kube, namespace: str, secret_name: str, component: str, host: str) -> None:
        self._kube = kube
        self.namespace = namespace
        self.secret_name = secret_name
        self.component = component
        self.host = host
        self._recent: dict[tuple[str, str], tuple[str, int]] = {}  # (reason, message) -> (event name, count)
        self._queue: asyncio.Queue[tuple[str, str, bool, datetime]] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self.uid: str | None = None
        self.sent = 0

    def emit(self, reason: str, message: str, *, warning: bool = False) -> None:
        """Queue an Event; never blocks."""
        if self._queue.full():
            dropped = self._queue.get_nowait()
            log.warning("event queue full; dropping event %s", dropped[0])
        self._queue.put_nowait((reason, message, warning, datetime.now(UTC)))

    async def run(self) -> None:
        """Send queued Events until cancelled."""
        while True:
            reason, message, warning, when = await self._queue.get()
            try:
                await self._send(reason, message, warning, when)
                self.sent += 1
            except KubeError as e:
                log.warning("could not record event %s: %s", reason, e)

    async def flush(self, timeout: float) -> None:
        """Send what is queued, for at most ``timeout`` seconds (on shutdown)."""
        try:
            async with asyncio.timeout(timeout):
                while not self._queue.empty():
                    reason, message, warning, when = self._queue.get_nowait()
                    await self._send(reason, message, warning, when)
        except (TimeoutError, KubeError) as e:
            log.warning("could not record all events on shutdown (%s)", type(e).__name__)

    @property
    def _collection(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/events"

    async def _send(self, reason: str, message: str, warning: bool, when: datetime) -> None:
        key = (reason, message)
        if key in self._recent:
            name, count = self._recent[key]
            try:
                await self._kube.request(
                    "PATCH",
                    f"{self._collection}/{name}",
                    {"count": count + 1, "lastTimestamp": _stamp(when)},
                    what=f"patch Event {name}",
                    content_type="application/merge-patch+json",
                )
                self._recent[key] = (name, count + 1)
                return
            except NotFound:
                del self._recent[key]  # expired by the API server's Event TTL: record it anew
        name = f"{self.secret_name}.{int(when.timestamp() * 1e6):x}"
        await self._kube.request(
            "POST", self._collection, self._event(name, reason, message, warning, when), what=f"create Event {reason}"
        )
        self._recent[key] = (name, 1)

    def _event(self, name: str, reason: str, message: str, warning: bool, when: datetime) -> dict[str, Any]:
        involved: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": self.secret_name,
            "namespace": self.namespace,
        }
        if self.uid:
            involved["uid"] = self.uid
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": self.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "firstTimestamp": _stamp(when),
            "lastTimestamp": _stamp(when),
            "count": 1,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }


# --- logs ----------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
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
    for noisy in ("aiohttp.access", "httpx2", "httpcore2", "lightkube", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
