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
``run_periodic`` backs off (jittered) until the next success or ``kick``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import aiohttp
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .delivery import (
    DEFAULT_GRACE_SECONDS,
    DELIVERY_STATES,
    DeliveryState,
    ReportedLicense,
    TargetReport,
    TargetSpec,
    diagnose_admin,
    diagnose_konglicense,
    diagnose_rollout,
    konglicense_object,
    konglicense_winner,
    license_row_id,
    plan_admin,
    plan_konglicense,
    plan_restart,
)
from .license import License, LicenseRecord

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "AdminApiOptions",
    "AdminApiTarget",
    "Deliverer",
    "DeliveryCollector",
    "KongLicenseTarget",
    "RestartTarget",
    "Target",
    "TargetFailure",
    "build_targets",
    "deliverer_from_settings",
    "delivery_event",
    "render_reports",
]

log = logging.getLogger("license_keeper.deliver")

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_PAGES = 100
ROUND_TIMEOUT_SECONDS = 120.0


class Target(Protocol):
    label: str

    async def deliver(self, lic: License) -> TargetReport: ...
    async def check(self, lic: License) -> TargetReport: ...
    async def close(self) -> None: ...


class TargetFailure(Exception):
    """A target could not be asked or written; ``reason`` is fit for logs (no body, no license text)."""

    def __init__(self, state: DeliveryState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


# --- Kong Admin API ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminApiOptions:
    token_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    grace: float = DEFAULT_GRACE_SECONDS  # a write not shown by then is drift


class AdminApiTarget:
    """``/licenses`` on one Kong Admin API (a traditional node or a hybrid control plane).

    A fresh aiohttp session per round, so a rotated token, client certificate or CA file is read again;
    a round is a few requests every few minutes. Every request runs under ``options.timeout``.
    """

    def __init__(
        self,
        spec: TargetSpec,
        row_id: str,
        options: AdminApiOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.label = spec.label
        self.url = spec.value
        self.row_id = row_id
        self.options = options or AdminApiOptions()
        self.clock = clock
        self.wrote_at: float | None = None
        self.unsupported: str | None = None  # why the node refused our write (405), once seen

    async def close(self) -> None:
        return None

    async def deliver(self, lic: License) -> TargetReport:
        return await self._round(lic, write=True)

    async def check(self, lic: License) -> TargetReport:
        return await self._round(lic, write=False)

    async def _round(self, lic: License, *, write: bool) -> TargetReport:
        try:
            async with self._session() as session:
                rows = await self._rows(session)
                wrote = False
                if write and plan_admin(rows, lic.document).put:
                    await self._put(session, lic.document)
                    wrote, self.wrote_at = True, self.clock()
                    rows = await self._rows(session)
                report = await self._report(session)
        except TargetFailure as failure:
            self.unsupported = failure.reason if failure.state is DeliveryState.UNSUPPORTED else self.unsupported
            return TargetReport(self.label, failure.state, failure.reason, at=self.clock())
        state, reason = diagnose_admin(
            lic, rows, report, self.row_id, wrote_at=self.wrote_at, now=self.clock(), grace=self.options.grace
        )
        if state is not DeliveryState.DELIVERED and self.unsupported and not write:
            # a read-only check of a node that refused our write: say so, not "drift"
            state, reason = DeliveryState.UNSUPPORTED, self.unsupported
        return TargetReport(self.label, state, reason, wrote=wrote, at=self.clock())

    def _session(self) -> aiohttp.ClientSession:
        opts = self.options
        headers = {"Accept": "application/json", "User-Agent": "license-keeper"}
        try:
            if opts.token_file is not None:
                headers["Kong-Admin-Token"] = opts.token_file.read_text().strip()
            ctx = ssl.create_default_context(cafile=str(opts.ca_file) if opts.ca_file else None)
            if opts.client_cert_file is not None:
                ctx.load_cert_chain(opts.client_cert_file, opts.client_key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TargetFailure(
                DeliveryState.ERROR, f"cannot load Admin API credentials: {type(exc).__name__}"
            ) from None
        return aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=opts.timeout),
            connector=aiohttp.TCPConnector(ssl=ctx if self.url.startswith("https:") else False),
            trust_env=False,
        )

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        what = f"{method} {path.split('?')[0]}"
        try:
            async with session.request(method, self.url + path, json=body, allow_redirects=False) as resp:
                raw = await _read_capped(resp)
                status, ctype = resp.status, resp.headers.get("Content-Type", "")
        except TimeoutError:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: timed out after {self.options.timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: TLS: server certificate not trusted") from None
        except aiohttp.ClientSSLError:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: TLS handshake failed") from None
        except aiohttp.ClientConnectorError:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: unreachable (cannot connect)") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: transport error ({type(exc).__name__})") from None
        return status, _check_answer(what, status, ctype, raw)

    async def _rows(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        path: str | None = "/licenses?size=1000"
        for _ in range(MAX_PAGES):
            if path is None:
                return rows
            status, body = await self._call(session, "GET", path)
            if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise TargetFailure(DeliveryState.ERROR, f"GET /licenses: unexpected answer (HTTP {status})")
            rows += [r for r in body["data"] if isinstance(r, dict)]
            nxt = body.get("next")
            path = nxt if isinstance(nxt, str) and nxt.startswith("/licenses") else None
        raise TargetFailure(DeliveryState.ERROR, f"GET /licenses: more than {MAX_PAGES} pages")

    async def _put(self, session: aiohttp.ClientSession, document: str) -> None:
        path = f"/licenses/{quote(self.row_id)}"
        status, _ = await self._call(session, "PUT", path, {"payload": document})
        if status in (200, 201):
            log.info("delivered the license to %s (PUT /licenses/%s)", self.label, self.row_id)
            return
        if status == 405:
            raise TargetFailure(
                DeliveryState.UNSUPPORTED,
                "Kong refuses /licenses writes (405: DB-less or data plane); deliver with konglicense or restart",
            )
        if status == 400:
            raise TargetFailure(
                DeliveryState.ERROR, "PUT /licenses: Kong refused the license (HTTP 400 schema violation)"
            )
        if status == 409:
            raise TargetFailure(DeliveryState.PENDING, "PUT /licenses: another row took the license meanwhile (409)")
        raise TargetFailure(DeliveryState.ERROR, f"PUT /licenses: unexpected HTTP {status}")

    async def _report(self, session: aiohttp.ClientSession) -> ReportedLicense:
        status, body = await self._call(session, "GET", "/license/report")
        lic = body.get("license") if isinstance(body, dict) else None
        if status != 200 or not isinstance(lic, dict):
            raise TargetFailure(
                DeliveryState.ERROR, f"GET /license/report: unexpected answer (HTTP {status}; Kong Enterprise?)"
            )
        return ReportedLicense(str(lic.get("license_key") or ""), str(lic.get("license_expiration_date") or ""))


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The body, but no more than MAX_BODY_BYTES + 1 bytes (a proxy could stream forever)."""
    raw = bytearray()
    while chunk := await resp.content.read(65536):
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            break
    return bytes(raw)


def _check_answer(what: str, status: int, ctype: str, raw: bytes) -> Any:
    """The JSON body, or a failure for answers that are not Kong's (never quoting the body)."""
    import json

    if status in (401, 403):
        raise TargetFailure(
            DeliveryState.ERROR, f"{what}: HTTP {status} (check the Kong-Admin-Token and its RBAC role)"
        )
    if status >= 500 or status == 429:
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} from the Admin API")
    if 300 <= status < 400:
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} redirect (not followed)")
    if len(raw) > MAX_BODY_BYTES:
        raise TargetFailure(DeliveryState.ERROR, f"{what}: answer larger than {MAX_BODY_BYTES} bytes")
    if status == 204 or not raw:
        return None
    if "json" not in ctype.lower():
        kind = ctype.split(";")[0].strip() or "no content type"
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} answer is not JSON ({kind})")
    try:
        return json.loads(raw)
    except ValueError:
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} answer is not valid JSON") from None


# --- Kubernetes targets -----------------------------------------------------------------------------------


class KubeLike(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        what: str,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict[str, Any]: ...


MERGE_PATCH = "application/merge-patch+json"
KONGLICENSES = "/apis/configuration.konghq.com/v1alpha1/konglicenses"


async def _kube(what: str, op: Awaitable[dict[str, Any]], *, missing_ok: bool = False) -> dict[str, Any] | None:
    """One kube call; KubeError -> TargetFailure (kube.py already strips object content from messages)."""
    from .kube import Forbidden, KubeError, NotFound

    try:
        return await op
    except NotFound:
        if missing_ok:
            return None
        raise TargetFailure(DeliveryState.ERROR, f"{what}: not found") from None
    except Forbidden as exc:
        raise TargetFailure(
            DeliveryState.ERROR, f"{what}: forbidden (RBAC: see the chart's delivery values) ({exc})"
        ) from None
    except KubeError as exc:
        raise TargetFailure(DeliveryState.ERROR, str(exc)) from None


class KongLicenseTarget:
    """A cluster-scoped KongLicense that KIC / Kong Operator push to their gateways."""

    def __init__(
        self,
        spec: TargetSpec,
        kube: KubeLike,
        *,
        clock: Callable[[], float] = time.time,
        grace: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.label = spec.label
        self.name = spec.value
        self.grace = grace
        self.kube = kube
        self.clock = clock
        self.wrote_at: float | None = None

    async def close(self) -> None:
        return None

    async def deliver(self, lic: License) -> TargetReport:
        return await self._round(lic, write=True)

    async def check(self, lic: License) -> TargetReport:
        return await self._round(lic, write=False)

    async def _round(self, lic: License, *, write: bool) -> TargetReport:
        path = f"{KONGLICENSES}/{self.name}"
        what = f"KongLicense {self.name}"
        try:
            obj = await _kube(f"get {what}", self.kube.request("GET", path, what=f"get {what}"), missing_ok=True)
            plan = plan_konglicense(obj, lic.document) if write else None
            wrote = plan is not None
            if plan is not None and plan.get("create"):
                obj = await _kube(
                    f"create {what} (is the KongLicense CRD installed?)",
                    self.kube.request(
                        "POST", KONGLICENSES, konglicense_object(self.name, lic.document), what=f"create {what}"
                    ),
                )
            elif plan is not None:
                obj = await _kube(
                    f"patch {what}",
                    self.kube.request("PATCH", path, plan, what=f"patch {what}", content_type=MERGE_PATCH),
                )
            if wrote:
                self.wrote_at = self.clock()
                log.info(
                    "delivered the license to %s (%s)",
                    self.label,
                    "created" if plan and plan.get("create") else "patched",
                )
            winner = await self._winner()
        except TargetFailure as failure:
            return TargetReport(self.label, failure.state, failure.reason, at=self.clock())
        state, reason = diagnose_konglicense(
            obj, lic.document, winner, wrote_at=self.wrote_at, now=self.clock(), grace=self.grace
        )
        return TargetReport(self.label, state, reason, wrote=wrote, at=self.clock())

    async def _winner(self) -> str | None:
        """Which KongLicense controllers pick; None when listing is not allowed (then status alone tells)."""
        from .kube import KubeError

        try:
            listing = await self.kube.request("GET", KONGLICENSES, what="list KongLicenses")
        except KubeError as exc:  # 403 without delivery.kongLicense.detectCompeting: the status still tells
            log.debug("cannot list KongLicenses: %s", exc)
            return None
        return konglicense_winner([o for o in listing.get("items") or [] if isinstance(o, dict)])


class RestartTarget:
    """Roll a Deployment / StatefulSet whose pods read KONG_LICENSE_DATA from the Secret at start."""

    def __init__(
        self, spec: TargetSpec, kube: KubeLike, namespace: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.label = spec.label
        kind, self.name = spec.workload
        self.kind = kind
        self.path = f"/apis/apps/v1/namespaces/{namespace}/{kind}s/{self.name}"
        self.kube = kube
        self.clock = clock

    async def close(self) -> None:
        return None

    async def deliver(self, lic: License) -> TargetReport:
        return await self._round(lic, write=True)

    async def check(self, lic: License) -> TargetReport:
        return await self._round(lic, write=False)

    async def _round(self, lic: License, *, write: bool) -> TargetReport:
        what = f"{self.kind} {self.name}"
        fingerprint = lic.fingerprint
        wrote = False
        try:
            obj = await _kube(f"get {what}", self.kube.request("GET", self.path, what=f"get {what}"), missing_ok=True)
            patch = plan_restart(obj, fingerprint) if write and obj is not None else None
            if patch is not None:
                obj = await _kube(
                    f"patch {what}",
                    self.kube.request("PATCH", self.path, patch, what=f"patch {what}", content_type=MERGE_PATCH),
                )
                wrote = True
                log.info("restarting %s for license %s", what, fingerprint)
        except TargetFailure as failure:
            return TargetReport(self.label, failure.state, failure.reason, at=self.clock())
        state, reason = diagnose_rollout(obj, fingerprint, what)
        return TargetReport(self.label, state, reason, wrote=wrote, at=self.clock())


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
    ) -> None:
        self.targets = list(targets)
        self.clock = clock
        self.round_timeout = round_timeout
        self.on_report = on_report  # (previous, current) after each target's round: Events, logs
        self.last: dict[str, TargetReport] = {}
        self.last_success: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()

    def reports(self) -> list[TargetReport]:
        return [self.last[t.label] for t in self.targets if t.label in self.last]

    def kick(self) -> None:
        """Deliver at once in ``run_periodic`` (call after each Secret write)."""
        self._kick.set()

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
        try:
            async with asyncio.timeout(self.round_timeout):
                return await (target.deliver(lic) if write else target.check(lic))
        except TimeoutError:
            reason = f"no answer within {self.round_timeout:g} s"
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
        while not stop.is_set():
            self._kick.clear()
            reports = await self.deliver(current())
            failed = any(r.state in (DeliveryState.ERROR, DeliveryState.DRIFT, DeliveryState.PENDING) for r in reports)
            failures = failures + 1 if failed else 0
            delay = period if not failures else min(period, retry_base * 2 ** (failures - 1)) * rng.uniform(0.5, 1.0)
            await _wait_any(stop, self._kick, delay)

    async def close(self) -> None:
        for target in self.targets:
            await target.close()


async def _wait_any(stop: asyncio.Event, kick: asyncio.Event, delay: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(kick.wait())]
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
        for report in self.deliverer.reports():
            for s in DELIVERY_STATES:
                state.add_metric([report.target, s], 1.0 if report.state.value == s else 0.0)
            if report.target in self.deliverer.last_success:
                last.add_metric([report.target], self.deliverer.last_success[report.target])
        yield state
        yield last


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
    return "\n".join(lines)


def build_targets(
    specs: Sequence[TargetSpec],
    *,
    kube: KubeLike | None,
    namespace: str,
    secret_name: str,
    admin: AdminApiOptions | None = None,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> list[Target]:
    """One target object per ``--deliver`` spec; Kubernetes targets need ``kube``."""
    out: list[Target] = []
    for spec in specs:
        if spec.kind == "admin-api":
            options = AdminApiOptions(grace=grace) if admin is None else admin
            out.append(AdminApiTarget(spec, license_row_id(namespace, secret_name), options))
        elif kube is None:
            raise ValueError(f"{spec.label} needs a Kubernetes client")
        elif spec.kind == "konglicense":
            out.append(KongLicenseTarget(spec, kube, grace=grace))
        else:
            out.append(RestartTarget(spec, kube, namespace))
    return out


def deliverer_from_settings(
    settings: Settings,
    kube: KubeLike | None,
    *,
    namespace: str,
    on_report: Callable[[TargetReport | None, TargetReport], None] | None = None,
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
    )
    targets = build_targets(
        settings.delivery_targets(),
        kube=kube,
        namespace=namespace,
        secret_name=settings.effective_secret_name,
        admin=admin,
        grace=grace,
    )
    return Deliverer(targets, on_report=on_report)
