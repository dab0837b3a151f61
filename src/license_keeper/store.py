"""The one Secret that holds the license: read, write-if-changed, watch. Never delete.

Every decision (is it ours, what should it hold, is a write needed, which license is better) is a pure
function in ``policy``; this module only talks to the API server and turns its answers into typed
results. Values are base64-decoded exactly once, on read (KIC 3.5 decoded twice, which only worked
against its fake client).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from .kube import Conflict, Forbidden, Invalid, Kube, KubeError, Unreachable
from .license import LicenseRecord
from .policy import (
    DesiredSecret,
    SecretSnapshot,
    SecretState,
    WriteAction,
    choose,
    desired_secret,
    is_better,
    labels_to_impose,
    plan_write,
    record_from_secret,
)
from .syncrequest import SyncAnswer, answer_patch, requested

__all__ = ["SecretStore", "StoreError", "StoreForbidden", "SyncOutcome", "snapshot_from"]

log = logging.getLogger("license_keeper.store")

MAX_CONFLICT_RETRIES = 5


class StoreError(Exception):
    """The API server refused or failed a Secret operation. Messages carry no Secret content.

    ``verb`` and ``what`` name the call ("patch", "Secret kong/kong-license") and ``api_error`` is the
    API failure behind it, if any, so a command line can word it as kubectl does without parsing text.
    """

    def __init__(self, message: str, *, verb: str = "", what: str = "", api_error: KubeError | None = None) -> None:
        super().__init__(message)
        self.verb = verb
        self.what = what
        self.api_error = api_error


class StoreUnreachable(StoreError):
    """The API server could not be reached or answered 5xx; try again later."""


class StoreForbidden(StoreError):
    pass


class StoreConflict(StoreError):
    pass


class StoreImmutable(StoreError):
    pass


@dataclass(frozen=True)
class SyncOutcome:
    """What ``SecretStore.sync`` did."""

    snapshot: SecretSnapshot  # the Secret after the call
    held: LicenseRecord | None  # the license to hold now (the Secret's, if it was better)
    wrote: str | None = None  # write reason (create/rotate/repair/recreate/restore), None if no write
    refused: SecretState | None = None  # foreign or immutable: we left it alone
    took_secret: bool = False  # the Secret held a better license than ours, and we took it


def snapshot_from(obj: Mapping[str, Any] | None) -> SecretSnapshot:
    """A Secret as raw JSON (a watch event, or a model's ``to_dict()``), decoded once."""
    if obj is None:
        return SecretSnapshot.missing()
    meta = obj.get("metadata") or {}
    data = obj.get("data") or {}
    decoded: dict[str, bytes] = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(value or "", validate=True)
        except (ValueError, TypeError):
            decoded[key] = b""  # the API server never serves this; keep going with an empty value
    return SecretSnapshot(
        exists=True,
        data=decoded,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        immutable=bool(obj.get("immutable")),
        resource_version=meta.get("resourceVersion"),
        uid=meta.get("uid"),
    )


def _encode(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}


def _store_error(e: KubeError, verb: str, what: str) -> StoreError:
    """The store's words for an API failure, naming the call once (``e.reason`` leaves it out)."""
    kind: type[StoreError] = StoreError
    text = f"{verb} {what}: HTTP {e.code}"
    if isinstance(e, Forbidden):
        kind, text = StoreForbidden, f"forbidden to {verb} {what} (HTTP {e.code}): check the keeper's Role"
    elif isinstance(e, Conflict):
        kind, text = StoreConflict, f"conflict on {verb} {what} (HTTP 409)"
    elif isinstance(e, Invalid) and e.immutable:
        kind, text = StoreImmutable, f"{what} is immutable (HTTP 422)"
    elif isinstance(e, Unreachable):
        kind, text = StoreUnreachable, f"{verb} {what}: {e.reason}"
    return kind(text, verb=verb, what=what, api_error=e)


def patch_body(current: SecretSnapshot, desired: DesiredSecret) -> dict[str, Any]:
    """A JSON merge patch with only our keys, labels and annotations.

    Every field we do not own (type, ownerReferences, finalizers, other keys) is left as it is, and
    the resourceVersion turns a lost race into a 409 instead of a silent overwrite. Our annotations that
    must go (a restore's mark once another license is held) are removed with null.
    """
    removed: dict[str, str | None] = {k: None for k in desired.absent_annotations if k in current.annotations}
    return {
        "metadata": {
            "resourceVersion": current.resource_version,
            "labels": labels_to_impose(current, desired),
            "annotations": {**desired.annotations, **removed},
        },
        "data": _encode(desired.data),
    }


class SecretStore:
    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name

    @property
    def what(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    @property
    def collection(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"

    async def read(self) -> SecretSnapshot:
        try:
            obj = await self.kube.get(Secret, self.name, namespace=self.namespace)
        except KubeError as e:
            raise _store_error(e, "get", self.what) from None
        return snapshot_from(obj.to_dict() if obj is not None else None)

    async def create(self, desired: DesiredSecret) -> SecretSnapshot:
        body = Secret(
            metadata=ObjectMeta(
                name=self.name, namespace=self.namespace, labels=desired.labels, annotations=desired.annotations
            ),
            type="Opaque",
            data=_encode(desired.data),
        )
        try:
            created = await self.kube.call(f"create {self.what}", lambda: self.kube.client.create(body))
        except KubeError as e:
            raise _store_error(e, "create", self.what) from None
        return snapshot_from(created.to_dict())

    async def update(self, current: SecretSnapshot, desired: DesiredSecret) -> SecretSnapshot:
        return await self._merge_patch(patch_body(current, desired), "update")

    async def patch(self, body: Mapping[str, Any]) -> SecretSnapshot:
        """One JSON merge patch (the body carries its resourceVersion guard, if any)."""
        return await self._merge_patch(body, "patch")

    async def _merge_patch(self, body: Mapping[str, Any], verb: str) -> SecretSnapshot:
        try:
            patched = await self.kube.request(
                "PATCH",
                f"{self.collection}/{self.name}",
                body,
                what=f"{verb} {self.what}",
                content_type="application/merge-patch+json",
            )
        except KubeError as e:
            raise _store_error(e, verb, self.what) from None
        return snapshot_from(patched)

    async def answer_sync(self, answer: SyncAnswer, current: SecretSnapshot) -> SecretSnapshot | None:
        """Record the answer to a poll request; clear the request only while it is still the one answered.

        Guarded by resourceVersion: on a 409 the Secret is read again, so a request made meanwhile is never
        cleared unanswered. A Secret deleted meanwhile has nothing left to answer on: None.
        """
        for _ in range(MAX_CONFLICT_RETRIES):
            if not current.exists:
                return None
            clear = requested(current.annotations) == answer.request
            try:
                return await self.patch(answer_patch(answer, current.resource_version, clear=clear))
            except StoreConflict:
                current = await self.read()
        raise StoreConflict(f"{self.what} kept changing under us ({MAX_CONFLICT_RETRIES} conflicts in a row)")

    async def sync(
        self,
        held: LicenseRecord | None,
        now: datetime | None = None,
        *,
        existed_before: bool = False,
        still_leading: Callable[[], bool] = lambda: True,
        reason: str | None = None,
        snapshot: SecretSnapshot | None = None,
        force: bool = False,
    ) -> SyncOutcome:
        """Make the Secret hold the best of ``held`` and what it already holds; write only on change.

        On a 409 the Secret is read again and the choice made again, so a better license that someone
        else wrote in the meantime is taken, never overwritten. ``still_leading`` is asked right before
        each write (leadership can be lost while we wait on the API server). ``force`` (an operator's
        ``restore --force``) writes ``held`` even over a better license.
        """
        now = now or datetime.now(UTC)
        current = snapshot if snapshot is not None else await self.read()
        for _ in range(MAX_CONFLICT_RETRIES):
            in_secret = record_from_secret(current, now=now)
            best = held if force and held is not None else choose(held, [in_secret], now)
            took = best is not held and best is in_secret and is_better(in_secret, held, now)
            plan = plan_write(current, best, existed_before=existed_before)
            if plan.action == WriteAction.NONE:
                return SyncOutcome(current, best, took_secret=took)
            if plan.action == WriteAction.REFUSE:
                return SyncOutcome(current, best, refused=plan.refusal, took_secret=took)
            if not still_leading():
                return SyncOutcome(current, best, took_secret=took)
            assert best is not None
            desired = desired_secret(best)
            try:
                if plan.action == WriteAction.CREATE:
                    written = await self.create(desired)
                else:
                    written = await self.update(current, desired)
            except StoreConflict:
                log.info("write conflict on %s; reading it again", self.what)
                current = await self.read()
                held = best
                continue
            except StoreImmutable:
                return SyncOutcome(current, best, refused=SecretState.IMMUTABLE)
            return SyncOutcome(written, best, wrote=reason or plan.reason)
        raise StoreConflict(f"{self.what} kept changing under us ({MAX_CONFLICT_RETRIES} conflicts in a row)")

    async def watch(
        self, stop: asyncio.Event, on_failure: Callable[[KubeError, float], None] | None = None
    ) -> AsyncIterator[SecretSnapshot]:
        """Snapshots of this one Secret as it changes, reconnecting forever until ``stop`` is set.

        The first snapshot is the current state, and so is the first after every relist. DELETED
        yields a missing snapshot. Failures are reported to ``on_failure`` and retried with backoff.
        """
        async for event in self.kube.watch(
            self.collection, name=self.name, stop=stop, what=self.what, on_failure=on_failure
        ):
            yield SecretSnapshot.missing() if event.type == "DELETED" else snapshot_from(event.obj)
