"""Delivery targets: where the held license goes and how each reads back what its gateways run.

* ``AdminApiTarget``: ``/licenses`` on a Kong Admin API (adminapi.AdminSession, one per round).
* ``AdminServiceTarget``: every gateway pod behind an admin Service (EndpointSlices, watched through kube.py):
  ``/license/report`` of each pod, ``/licenses`` written once per database.
* ``KongLicenseTarget``: a cluster-scoped KongLicense that KIC / Kong Operator push to their gateways.
* ``RestartTarget``: a rolling restart of a workload that reads ``KONG_LICENSE_DATA`` at start.

Each target's decisions (plan, diagnosis) are pure functions in ``delivery.py``; the loop that runs the
targets is ``deliver.py``. A failing round becomes a ``TargetReport`` (``TargetFailure`` inside), never an
exception; reasons carry no license text, key, signature or token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .adminapi import IN_CLEAR, AdminApiOptions, AdminSession, TargetFailure, sends_in_clear
from .delivery import (
    DEFAULT_GRACE_SECONDS,
    SERVICE_NAME_LABEL,
    DeliveryState,
    GatewayPod,
    PodReport,
    PodState,
    ReportedLicense,
    TargetReport,
    TargetSpec,
    diagnose_admin,
    diagnose_konglicense,
    diagnose_pod,
    diagnose_rollout,
    konglicense_object,
    konglicense_winner,
    license_row_id,
    next_pod_report,
    parse_admin_url,
    plan_admin,
    plan_konglicense,
    plan_restart,
    pod_takes_writes,
    secret_license,
    service_dns_name,
    service_pods,
    summarize_pods,
)
from .license import License

if TYPE_CHECKING:
    from .kube import Kube

__all__ = [
    "AdminApiOptions",
    "AdminApiTarget",
    "AdminServiceTarget",
    "Fence",
    "KongLicenseTarget",
    "RestartTarget",
    "Target",
    "TargetFailure",
    "build_targets",
]

log = logging.getLogger("license_keeper.deliver")  # one logger for delivery, as before the split


Fence = Callable[[], bool]  # True while this replica may write (it holds the Lease): asked before every write


def always() -> bool:
    return True


NOT_LEADING = "not the leader any more: nothing written"


def check_fence(may_write: Fence) -> None:
    """Right before a write, as the Secret's writes are fenced: a replica that lost the Lease writes nothing."""
    if not may_write():
        raise TargetFailure(DeliveryState.PENDING, NOT_LEADING)


class Target(Protocol):
    label: str

    async def deliver(self, lic: License, may_write: Fence = always) -> TargetReport: ...
    async def check(self, lic: License) -> TargetReport: ...
    async def close(self) -> None: ...


class _TargetBase:
    """What every target shares: ``deliver`` writes where needed, ``check`` only reads back; a round that
    fails becomes a report (``_failed``), never an exception."""

    label: str
    clock: Callable[[], float]

    async def close(self) -> None:
        return None

    async def deliver(self, lic: License, may_write: Fence = always) -> TargetReport:
        return await self._round(lic, write=True, fence=may_write)

    async def check(self, lic: License) -> TargetReport:
        return await self._round(lic, write=False, fence=always)

    async def _round(self, lic: License, *, write: bool, fence: Fence) -> TargetReport:
        raise NotImplementedError

    def _failed(self, failure: TargetFailure) -> TargetReport:
        return TargetReport(self.label, failure.state, failure.reason, at=self.clock())


# --- Kong Admin API ----------------------------------------------------------------------------------------


class AdminApiTarget(_TargetBase):
    """``/licenses`` on one Kong Admin API (a traditional node or a hybrid control plane).

    One session per round (adminapi.AdminSession); the token and TLS context come from the options' shared
    credential cache (files re-read at most once a second, off the loop; one TLS context per configuration).
    Every request runs under ``options.timeout``.
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
        self.url = parse_admin_url(spec.value)  # the one parsed URL: it alone decides TLS
        self.row_id = row_id
        self.options = options or AdminApiOptions()
        self.clock = clock
        self.wrote_at: float | None = None
        self.unsupported: str | None = None  # why the node refused our write (405), once seen

    async def _round(self, lic: License, *, write: bool, fence: Fence) -> TargetReport:
        try:
            if sends_in_clear(self.options, self.url.tls):
                raise TargetFailure(DeliveryState.ERROR, IN_CLEAR)
            credentials = await self.options.credentials.load(self.options, tls=self.url.tls)
            async with AdminSession(self.options, credentials, connections=2) as session:
                rows = await session.rows(self.url)
                wrote = False
                if write and plan_admin(rows, lic.document).put:
                    check_fence(fence)
                    await session.put(self.url, self.row_id, lic.document, self.label)
                    wrote, self.wrote_at = True, self.clock()
                    rows = await session.rows(self.url)
                report = await session.report(self.url)
        except TargetFailure as failure:
            self.unsupported = failure.reason if failure.state is DeliveryState.UNSUPPORTED else self.unsupported
            return self._failed(failure)
        state, reason = diagnose_admin(
            lic, rows, report, self.row_id, wrote_at=self.wrote_at, now=self.clock(), grace=self.options.grace
        )
        if state is not DeliveryState.DELIVERED and self.unsupported and not write:
            # a read-only check of a node that refused our write: say so, not "drift"
            state, reason = DeliveryState.UNSUPPORTED, self.unsupported
        return TargetReport(self.label, state, reason, wrote=wrote, at=self.clock())


# --- every gateway pod behind an admin Service -------------------------------------------------------------


ENDPOINTSLICES = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
ROUND_SECONDS = 120.0  # the Deliverer's round timeout for one target; an admin Service's grows with its pods
# Pods asked at once: bounds the answers and TLS connections in memory (asyncio keeps a 256 KiB buffer per TLS
# connection; 32 at once grew the keeper by 12 MiB with 300 pods, 16 by 7) and the load on the network.
MAX_CONCURRENT_PODS = 16


class ServiceEndpoints:
    """The admin Service's ready endpoints, from a watch of its EndpointSlices through the one Kubernetes edge
    (``run``, in the delivery loop), or one listing when nothing watches (``license-keeper status``)."""

    def __init__(self, kube: Kube, namespace: str, service: str, port_name: str | None) -> None:
        self.kube = kube
        self.service = f"{namespace}/{service}"
        self.port_name = port_name
        self.collection = ENDPOINTSLICES.format(namespace=namespace)
        self.selector = f"{SERVICE_NAME_LABEL}={service}"
        self.slices: dict[str, dict[str, Any]] = {}
        self.watching = False
        self.synced = False  # listed at least once since the watch started
        self.failure: str | None = None  # the watch's last failure, until it lists or delivers again

    def pods(self) -> list[GatewayPod]:
        return service_pods(self.slices.values(), self.port_name)

    async def run(self, stop: asyncio.Event, on_change: Callable[[], None]) -> None:
        """Keep ``slices`` current until ``stop``; ``on_change`` when the set of ready pods changed."""
        self.watching, self.synced = True, False
        try:
            async for event in self.kube.watch_list(
                self.collection,
                label_selector=self.selector,
                stop=stop,
                what=f"EndpointSlices of Service {self.service}",
                on_failure=self._failed,
            ):
                before = self.pods()
                self._apply(event.type, event.obj)
                self.synced, self.failure = True, None
                after = self.pods()
                if after != before:
                    self._log_change(before, after)
                    on_change()
        finally:
            self.watching = False

    def _apply(self, kind: str, obj: dict[str, Any] | None) -> None:
        if kind == "LIST":
            items = (obj or {}).get("items") or []
            self.slices = {_name(o): o for o in items if isinstance(o, dict)}
        elif obj is not None and kind in ("ADDED", "MODIFIED"):
            self.slices[_name(obj)] = obj
        elif obj is not None and kind == "DELETED":
            self.slices.pop(_name(obj), None)

    def _failed(self, error: Exception, retry_in: float) -> None:
        text = str(error)
        if text != self.failure:
            log.warning("watching %s failed: %s; retrying in %.1f s", self.selector, text, retry_in)
        self.failure = text

    def _log_change(self, before: list[GatewayPod], after: list[GatewayPod]) -> None:
        old, new = {p.name for p in before}, {p.name for p in after}
        for name in sorted(new - old):
            log.info("found gateway pod %s behind Service %s", name, self.service)
        for name in sorted(old - new):
            log.info("gateway pod %s left Service %s (not ready, or gone)", name, self.service)

    async def current(self) -> list[GatewayPod]:
        """The ready pods: from the watch when it runs, else listed once now."""
        if self.watching:
            if not self.synced:
                raise TargetFailure(
                    DeliveryState.ERROR,
                    f"EndpointSlices of Service {self.service} not listed yet"
                    + (f": {self.failure}" if self.failure else ""),
                )
            return self.pods()
        listing = await _kube(
            f"list EndpointSlices of Service {self.service}",
            self.kube.request(
                "GET", self.collection, what="list EndpointSlices", params={"labelSelector": self.selector}
            ),
        )
        self._apply("LIST", listing)
        return self.pods()


def _undecided(answer: Answer) -> bool:
    """The pod answered, but its report does not tell whether it takes /licenses writes."""
    return isinstance(answer, ReportedLicense) and pod_takes_writes(answer, None) is None


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


Answer = ReportedLicense | TargetFailure


class AdminServiceTarget(_TargetBase):
    """Every gateway pod behind an admin Service: reads ``/license/report`` of each ready pod, writes
    ``/licenses`` once per database (one DB-backed pod, or a hybrid control plane), never a DB-less pod or a
    data plane. Reports per pod (delivered / pending / drift / unreachable) and, as the target's state, the
    worst pod's with counts.

    A pod is reached at its address; over TLS its certificate is verified against ``options.server_name``,
    else the Service's DNS name ``<service>.<namespace>.svc`` (the address is not in its names).
    """

    def __init__(
        self,
        spec: TargetSpec,
        kube: Kube,
        row_id: str,
        options: AdminApiOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        namespace, service, port_name = spec.service
        self.label = spec.label
        self.service = f"{namespace}/{service}"
        self.endpoints = ServiceEndpoints(kube, namespace, service, port_name)
        self.row_id = row_id
        self.options = options or AdminApiOptions()
        self.server_name = self.options.server_name or service_dns_name(namespace, service)
        self.clock = clock
        self.pods: dict[str, PodReport] = {}  # the last round's, by pod name
        self.configuration: dict[str, tuple[str, str]] = {}  # pod -> (database, role), from GET / once
        self.refused: set[str] = set()  # pods that answered 405 to a write
        self.wrote_at: float | None = None
        self.held: tuple[str, float] | None = None  # (fingerprint, since when it is the one to deliver)

    async def run_background(self, stop: asyncio.Event, on_change: Callable[[], None]) -> None:
        await self.endpoints.run(stop, on_change)

    @property
    def round_timeout(self) -> float:
        """Long enough for every pod to time out, 16 at a time, and the write after them."""
        batches = -(-len(self.endpoints.pods()) // MAX_CONCURRENT_PODS)
        return ROUND_SECONDS + (batches + 4) * self.options.timeout

    def _held_since(self, lic: License, now: float, write: bool) -> float:
        """Since when ``lic`` is the license to deliver, as the delivery loop saw it; a read-only check
        without that history (``status``) gives no grace."""
        if self.held is not None and self.held[0] == lic.fingerprint:
            return self.held[1]
        if not write:
            return float("-inf")
        self.held = (lic.fingerprint, now)
        return now

    async def _round(self, lic: License, *, write: bool, fence: Fence) -> TargetReport:
        held_since = self._held_since(lic, self.clock(), write)
        try:
            pods = await self.endpoints.current()
            credentials = await self.options.credentials.load(self.options, tls=any(p.tls for p in pods))
        except TargetFailure as failure:
            return self._failed(failure)
        wrote, problem, rows = False, None, None
        async with AdminSession(
            self.options, credentials, connections=MAX_CONCURRENT_PODS, keep_alive=False
        ) as session:
            answers = await self._ask_all(session, pods)
            await self._learn_configurations(session, pods, answers)
            writer = self._writer(pods, answers)
            if writer is not None:
                try:
                    rows = await session.rows(writer.url, server_hostname=self.server_name)
                    if write and plan_admin(rows, lic.document).put:
                        check_fence(fence)
                        await session.put(
                            writer.url, self.row_id, lic.document, self.label, server_hostname=self.server_name
                        )
                        wrote, self.wrote_at = True, self.clock()
                        rows = await session.rows(writer.url, server_hostname=self.server_name)
                        answers[writer.name] = await self._ask(session, writer)
                except TargetFailure as failure:
                    if failure.reason == NOT_LEADING:
                        return self._failed(failure)
                    if failure.state is DeliveryState.UNSUPPORTED:
                        self.refused.add(writer.name)
                    problem = failure
        return self._report(lic, pods, answers, rows, held_since, wrote=wrote, problem=problem)

    async def _ask(self, session: AdminSession, pod: GatewayPod) -> Answer:
        try:
            return await session.report(pod.url, server_hostname=self.server_name)
        except TargetFailure as failure:
            return failure

    async def _ask_all(self, session: AdminSession, pods: list[GatewayPod]) -> dict[str, Answer]:
        gate = asyncio.Semaphore(MAX_CONCURRENT_PODS)

        async def one(pod: GatewayPod) -> Answer:
            async with gate:
                return await self._ask(session, pod)

        answers = await asyncio.gather(*(one(p) for p in pods))
        return {pod.name: answer for pod, answer in zip(pods, answers, strict=True)}

    async def _learn_configurations(
        self, session: AdminSession, pods: list[GatewayPod], answers: dict[str, Answer]
    ) -> None:
        """``GET /`` once per pod whose report does not say whether it takes writes (hybrid, older Kong)."""
        live = {p.name for p in pods}
        self.configuration = {k: v for k, v in self.configuration.items() if k in live}
        self.refused &= live
        unknown = [p for p in pods if p.name not in self.configuration and _undecided(answers[p.name])]

        async def learn(pod: GatewayPod) -> None:
            try:
                self.configuration[pod.name] = await session.role(pod.url, server_hostname=self.server_name)
            except TargetFailure as failure:
                log.debug("GET / of gateway pod %s: %s", pod.name, failure.reason)

        await asyncio.gather(*(learn(p) for p in unknown[:MAX_CONCURRENT_PODS]))  # the rest next round

    def _takes_writes(self, pod: GatewayPod, answer: Answer) -> bool:
        if not isinstance(answer, ReportedLicense):
            return False
        return bool(pod_takes_writes(answer, self.configuration.get(pod.name)))

    def _writer(self, pods: list[GatewayPod], answers: dict[str, Answer]) -> GatewayPod | None:
        """One pod per database: the first (by name) that answered and takes /licenses writes."""
        return next((p for p in pods if p.name not in self.refused and self._takes_writes(p, answers[p.name])), None)

    def _report(
        self,
        lic: License,
        pods: list[GatewayPod],
        answers: dict[str, Answer],
        rows: list[dict[str, Any]] | None,
        held_since: float,
        *,
        wrote: bool,
        problem: TargetFailure | None,
    ) -> TargetReport:
        now = self.clock()
        reports = []
        for pod in pods:
            answer = answers[pod.name]
            if isinstance(answer, TargetFailure):
                pod_state, why = PodState.UNREACHABLE, answer.reason
            else:
                pod_state, why = diagnose_pod(
                    lic,
                    answer,
                    rows=rows if self._takes_writes(pod, answer) else None,
                    our_id=self.row_id,
                    wrote_at=self.wrote_at,
                    held_since=held_since,
                    now=now,
                    grace=self.options.grace,
                )
            reports.append(next_pod_report(self.pods.get(pod.name), pod, pod_state, why, now))
        self.pods = {r.pod: r for r in reports}
        state, reason = summarize_pods(reports, self.service)
        if self.endpoints.failure is not None:
            reason += f"; watching its EndpointSlices fails ({self.endpoints.failure}): pods as last seen"
        if problem is not None:
            reason += f"; writing /licenses failed: {problem.reason}"
            if state is DeliveryState.DELIVERED:
                state = problem.state
        return TargetReport(self.label, state, reason, wrote=wrote, at=now, pods=tuple(reports))


# --- Kubernetes targets -----------------------------------------------------------------------------------


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


class KongLicenseTarget(_TargetBase):
    """A cluster-scoped KongLicense that KIC / Kong Operator push to their gateways."""

    def __init__(
        self,
        spec: TargetSpec,
        kube: Kube,
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        grace: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        self.label = spec.label
        self.name = spec.value
        self.owner = owner  # "<namespace>/<secret>": a KongLicense of this name another keeper owns is foreign
        self.grace = grace
        self.kube = kube
        self.clock = clock
        self.wrote_at: float | None = None

    async def _round(self, lic: License, *, write: bool, fence: Fence) -> TargetReport:
        path = f"{KONGLICENSES}/{self.name}"
        what = f"KongLicense {self.name}"
        try:
            obj = await _kube(f"get {what}", self.kube.request("GET", path, what=f"get {what}"), missing_ok=True)
            plan = plan_konglicense(obj, lic.document, self.owner) if write else None
            wrote = plan is not None
            if plan is not None:
                check_fence(fence)
            if plan is not None and plan.get("create"):
                obj = await _kube(
                    f"create {what} (is the KongLicense CRD installed?)",
                    self.kube.request(
                        "POST",
                        KONGLICENSES,
                        konglicense_object(self.name, lic.document, self.owner),
                        what=f"create {what}",
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
            return self._failed(failure)
        state, reason = diagnose_konglicense(
            obj, lic.document, winner, wrote_at=self.wrote_at, now=self.clock(), grace=self.grace, owner=self.owner
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


class RestartTarget(_TargetBase):
    """Roll a Deployment / StatefulSet whose pods read KONG_LICENSE_DATA from the Secret at start.

    New pods get what the Secret holds, not what the keeper holds: a write of the held license can fail or be
    refused (an API error, an immutable or foreign Secret). So every round reads the Secret back (the keeper's
    Role already allows ``get`` on it), rolls only for the license it holds and reports from it.
    """

    def __init__(
        self, spec: TargetSpec, kube: Kube, namespace: str, secret_name: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        from .store import SecretStore

        self.label = spec.label
        kind, self.name = spec.workload
        self.kind = kind
        self.path = f"/apis/apps/v1/namespaces/{namespace}/{kind}s/{self.name}"
        self.kube = kube
        self.secret = SecretStore(kube, namespace, secret_name)
        self.clock = clock

    async def _round(self, lic: License, *, write: bool, fence: Fence) -> TargetReport:
        what = f"{self.kind} {self.name}"
        wrote = False
        in_secret: License | None = None
        try:
            obj = await _kube(f"get {what}", self.kube.request("GET", self.path, what=f"get {what}"), missing_ok=True)
            if obj is not None:
                in_secret = await self._in_secret()
            fingerprint = in_secret.fingerprint if in_secret is not None else None
            plan = plan_restart(obj, fingerprint, self.secret.name) if write and obj is not None else None
            if plan is not None:
                check_fence(fence)
                obj = await _kube(
                    f"patch {what}",
                    self.kube.request("PATCH", self.path, plan.patch, what=f"patch {what}", content_type=MERGE_PATCH),
                )
                if plan.adopt:
                    # Nothing restarted and nothing was delivered, so no "delivered" Event: only noted here.
                    log.info(
                        "adopted %s: its pods read the license from Secret %s, which holds license %s; not restarted",
                        what,
                        self.secret.name,
                        fingerprint,
                    )
                else:
                    wrote = True
                    log.info("restarting %s for license %s (the Secret holds it)", what, fingerprint)
        except TargetFailure as failure:
            return self._failed(failure)
        state, reason = diagnose_rollout(obj, in_secret, lic, what, secret=self.secret.name)
        return TargetReport(self.label, state, reason, wrote=wrote, at=self.clock())

    async def _in_secret(self) -> License | None:
        """What a pod starting now reads from the Secret (its ``license`` key)."""
        from .store import StoreError

        try:
            snapshot = await self.secret.read()
        except StoreError as exc:  # its message names the Secret and the failure, never its content
            raise TargetFailure(DeliveryState.ERROR, str(exc)) from None
        return secret_license(snapshot.data)


def build_targets(
    specs: Sequence[TargetSpec],
    *,
    kube: Kube | None,
    namespace: str,
    secret_name: str,
    admin: AdminApiOptions | None = None,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> list[Target]:
    """One target object per ``--deliver`` spec; Kubernetes targets need ``kube``."""
    out: list[Target] = []
    for spec in specs:
        options = AdminApiOptions(grace=grace) if admin is None else admin
        if spec.kind == "admin-api":
            out.append(AdminApiTarget(spec, license_row_id(namespace, secret_name), options))
        elif kube is None:
            raise ValueError(f"{spec.label} needs a Kubernetes client")
        elif spec.kind == "admin-svc":
            out.append(AdminServiceTarget(spec, kube, license_row_id(namespace, secret_name), options))
        elif spec.kind == "konglicense":
            out.append(KongLicenseTarget(spec, kube, owner=f"{namespace}/{secret_name}", grace=grace))
        else:
            out.append(RestartTarget(spec, kube, namespace, secret_name))
    return out
