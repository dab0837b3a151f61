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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from .license import LicenseRecord
from .policy import (
    DesiredSecret,
    SecretSnapshot,
    SecretState,
    WriteAction,
    choose,
    desired_secret,
    is_better,
    merged_secret_fields,
    plan_write,
    record_from_secret,
)

log = logging.getLogger("license_keeper.store")

MAX_CONFLICT_RETRIES = 5
API_TIMEOUT_SECONDS = 30  # a hung connection to the API server must not stall the loop forever
WATCH_TIMEOUT_SECONDS = 300


class StoreError(Exception):
    """The API server refused or failed a Secret operation. Messages carry no Secret content."""


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


def snapshot_from(obj: client.V1Secret | dict[str, Any] | None) -> SecretSnapshot:
    if obj is None:
        return SecretSnapshot.missing()
    if isinstance(obj, dict):  # raw watch objects
        meta = obj.get("metadata") or {}
        data = obj.get("data") or {}
        immutable = bool(obj.get("immutable"))
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        rv, uid = meta.get("resourceVersion"), meta.get("uid")
    else:
        meta = obj.metadata
        data = obj.data or {}
        immutable = bool(obj.immutable)
        labels, annotations = meta.labels or {}, meta.annotations or {}
        rv, uid = meta.resource_version, meta.uid
    decoded: dict[str, bytes] = {}
    for key, value in data.items():
        try:
            decoded[key] = base64.b64decode(value or "", validate=True)
        except ValueError:
            decoded[key] = b""  # the API server never serves this; keep going with an empty value
    return SecretSnapshot(
        exists=True,
        data=decoded,
        labels=dict(labels),
        annotations=dict(annotations),
        immutable=immutable,
        resource_version=rv,
        uid=uid,
    )


def _encode(data: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}


def _explain(e: ApiException, verb: str, what: str) -> StoreError:
    # The API server's message names the verb, resource and identity; it never echoes Secret data.
    reason = e.reason or "error"
    if e.status == 403:
        return StoreForbidden(f"forbidden to {verb} {what} (HTTP 403): check the keeper's Role")
    if e.status == 409:
        return StoreConflict(f"conflict on {verb} {what} (HTTP 409)")
    if e.status == 422 and "immutable" in (e.body or "").lower():
        return StoreImmutable(f"{what} is immutable (HTTP 422)")
    return StoreError(f"{verb} {what}: HTTP {e.status} {reason}")


class SecretStore:
    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.namespace = namespace
        self.name = name
        self._core = client.CoreV1Api(api)

    @property
    def what(self) -> str:
        return f"Secret {self.namespace}/{self.name}"

    async def read(self) -> SecretSnapshot:
        try:
            obj = await self._core.read_namespaced_secret(
                self.name, self.namespace, _request_timeout=API_TIMEOUT_SECONDS
            )
        except ApiException as e:
            if e.status == 404:
                return SecretSnapshot.missing()
            raise _explain(e, "get", self.what) from None
        return snapshot_from(obj)

    async def create(self, desired: DesiredSecret) -> SecretSnapshot:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, labels=desired.labels, annotations=desired.annotations
            ),
            type="Opaque",
            data=_encode(desired.data),
        )
        try:
            return snapshot_from(
                await self._core.create_namespaced_secret(self.namespace, body, _request_timeout=API_TIMEOUT_SECONDS)
            )
        except ApiException as e:
            raise _explain(e, "create", self.what) from None

    async def replace(self, current: SecretSnapshot, desired: DesiredSecret) -> SecretSnapshot:
        merged = merged_secret_fields(current, desired)
        body: Any = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                # Carrying the resourceVersion turns a lost race into a 409 instead of a silent overwrite.
                "resourceVersion": current.resource_version,
                "labels": merged.labels,
                "annotations": merged.annotations,
            },
            "type": "Opaque",
            "data": _encode(merged.data),
        }
        try:
            return snapshot_from(
                await self._core.replace_namespaced_secret(
                    self.name, self.namespace, body, _request_timeout=API_TIMEOUT_SECONDS
                )
            )
        except ApiException as e:
            raise _explain(e, "update", self.what) from None

    async def sync(
        self,
        held: LicenseRecord | None,
        now: datetime | None = None,
        *,
        existed_before: bool = False,
        may_write: Callable[[], bool] = lambda: True,
        reason: str | None = None,
        snapshot: SecretSnapshot | None = None,
    ) -> SyncOutcome:
        """Make the Secret hold the best of ``held`` and what it already holds; write only on change.

        On a 409 the Secret is read again and the choice made again, so a better license that someone
        else wrote in the meantime is taken, never overwritten. ``may_write`` is asked right before
        each write (leadership can be lost while we wait on the API server).
        """
        now = now or datetime.now(UTC)
        current = snapshot if snapshot is not None else await self.read()
        for _ in range(MAX_CONFLICT_RETRIES):
            in_secret = record_from_secret(current)
            best = choose(held, [in_secret], now)
            took = best is not held and best is in_secret and is_better(in_secret, held, now)
            plan = plan_write(current, best, existed_before=existed_before)
            if plan.action == WriteAction.NONE:
                return SyncOutcome(current, best, took_secret=took)
            if plan.action == WriteAction.REFUSE:
                return SyncOutcome(current, best, refused=plan.refusal, took_secret=took)
            if not may_write():
                return SyncOutcome(current, best, took_secret=took)
            assert best is not None
            desired = desired_secret(best)
            try:
                if plan.action == WriteAction.CREATE:
                    written = await self.create(desired)
                else:
                    written = await self.replace(current, desired)
            except StoreConflict:
                log.info("write conflict on %s; reading it again", self.what)
                current = await self.read()
                held = best
                continue
            except StoreImmutable:
                return SyncOutcome(current, best, refused=SecretState.IMMUTABLE)
            return SyncOutcome(written, best, wrote=reason or plan.reason)
        raise StoreConflict(f"{self.what} kept changing under us ({MAX_CONFLICT_RETRIES} conflicts in a row)")

    async def watch(self, stop: asyncio.Event | None = None) -> AsyncIterator[SecretSnapshot]:
        """Snapshots of this one Secret as it changes (field selector on its name), reconnecting forever.

        The first snapshot is the current state. DELETED yields a missing snapshot.
        """
        resource_version: str | None = None
        backoff = 1.0
        while stop is None or not stop.is_set():
            try:
                if resource_version is None:
                    listing = await self._core.list_namespaced_secret(
                        self.namespace,
                        field_selector=f"metadata.name={self.name}",
                        _request_timeout=API_TIMEOUT_SECONDS,
                    )
                    resource_version = listing.metadata.resource_version
                    yield snapshot_from(listing.items[0] if listing.items else None)
                w = watch.Watch()
                async with w.stream(
                    self._core.list_namespaced_secret,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=resource_version,
                    timeout_seconds=WATCH_TIMEOUT_SECONDS,
                    allow_watch_bookmarks=True,
                ) as stream:
                    async for event in stream:
                        kind = event["type"]
                        raw = event["raw_object"]
                        rv = (raw.get("metadata") or {}).get("resourceVersion")
                        if rv:
                            resource_version = rv
                        if kind == "BOOKMARK":
                            continue
                        yield SecretSnapshot.missing() if kind == "DELETED" else snapshot_from(raw)
                backoff = 1.0
            except ApiException as e:
                if e.status == 410:
                    resource_version = None
                    continue
                log.warning("watch of %s: %s; retrying in %.0f s", self.what, _explain(e, "watch", self.what), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            except (TimeoutError, OSError, StoreError) as e:
                log.warning("watch of %s interrupted (%s); retrying in %.0f s", self.what, type(e).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
