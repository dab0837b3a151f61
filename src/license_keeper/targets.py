"""Delivery targets: where the held license goes and how each reads back what its gateways run.

* ``AdminApiTarget``: ``/licenses`` on a Kong Admin API (aiohttp, a fresh session per round).
* ``KongLicenseTarget``: a cluster-scoped KongLicense that KIC / Kong Operator push to their gateways.
* ``RestartTarget``: a rolling restart of a workload that reads ``KONG_LICENSE_DATA`` at start.

Each target's decisions (plan, diagnosis) are pure functions in ``delivery.py``; the loop that runs the
targets is ``deliver.py``. A failing round becomes a ``TargetReport`` (``TargetFailure`` inside), never an
exception; reasons carry no license text, key, signature or token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .adminapi import IN_CLEAR, AdminApiOptions, AdminSession, TargetFailure, sends_in_clear
from .delivery import (
    DEFAULT_GRACE_SECONDS,
    DeliveryState,
    TargetReport,
    TargetSpec,
    diagnose_admin,
    diagnose_konglicense,
    diagnose_rollout,
    konglicense_object,
    konglicense_winner,
    license_row_id,
    parse_admin_url,
    plan_admin,
    plan_konglicense,
    plan_restart,
    secret_license,
)
from .license import License

if TYPE_CHECKING:
    from .kube import Kube

__all__ = [
    "AdminApiOptions",
    "AdminApiTarget",
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
        if spec.kind == "admin-api":
            options = AdminApiOptions(grace=grace) if admin is None else admin
            out.append(AdminApiTarget(spec, license_row_id(namespace, secret_name), options))
        elif kube is None:
            raise ValueError(f"{spec.label} needs a Kubernetes client")
        elif spec.kind == "konglicense":
            out.append(KongLicenseTarget(spec, kube, owner=f"{namespace}/{secret_name}", grace=grace))
        else:
            out.append(RestartTarget(spec, kube, namespace, secret_name))
    return out
