"""SecretStore against the real API server, as the keeper's least-privilege ServiceAccount.

Every Secret is read and written through the API server's own base64 handling (values encoded once),
which is exactly what KIC 3.5's fake-client tests never exercised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from license_keeper.kube import Kube
from license_keeper.license import LicenseRecord
from license_keeper.policy import (
    ADOPT_ANNOTATION,
    EXPIRATION_ANNOTATION,
    FINGERPRINT_ANNOTATION,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SecretSnapshot,
    SecretState,
    desired_secret,
    record_from_secret,
)
from license_keeper.store import SecretStore, StoreForbidden
from license_keeper.testing.keeper import keeper_rules
from license_keeper.testing.licenses import make_record

from ..conftest import ServiceAccountFactory

SECRET = "kong-license"
LEASE = "kong-license-keeper"
CUSTOMER = "Vermilion Yak Logistics GmbH"
NOW = datetime.datetime.now(datetime.UTC)
TODAY = NOW.date()


def lic(updated_at: int, days: int = 365) -> LicenseRecord:
    return make_record(
        updated_at=updated_at,
        customer=CUSTOMER,
        creation_date=TODAY - datetime.timedelta(days=30),
        expiration_date=TODAY + datetime.timedelta(days=days),
    )


def b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def keeper_format(record: LicenseRecord) -> dict[str, Any]:
    """The fields SecretStore would write for ``record``, as an API body (values base64 once)."""
    d = desired_secret(record)
    return {
        "metadata": {"labels": d.labels, "annotations": d.annotations},
        "data": {k: b64(v) for k, v in d.data.items()},
    }


@contextlib.asynccontextmanager
async def restricted_store(
    service_account: ServiceAccountFactory,
    namespace: str,
    name: str = SECRET,
    rules: list[dict[str, Any]] | None = None,
) -> AsyncIterator[SecretStore]:
    sa = service_account(keeper_rules(name, LEASE) if rules is None else rules)
    kube = Kube.from_kubeconfig(sa.kubeconfig)
    try:
        yield SecretStore(kube, namespace, name)
    finally:
        await kube.close()


def secret_body(body: dict[str, Any]) -> Secret:
    return Secret.from_dict({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", **body})


async def admin_create(admin_api: AsyncClient, namespace: str, body: dict[str, Any]) -> Secret:
    return await admin_api.create(secret_body(body), namespace=namespace)


async def admin_read(admin_api: AsyncClient, namespace: str, name: str = SECRET) -> Secret:
    return await admin_api.get(Secret, name, namespace=namespace)


async def admin_replace(admin_api: AsyncClient, namespace: str, record: LicenseRecord) -> Secret:
    """Someone else (another keeper, an operator) writes ``record`` in the keeper's format."""
    body = keeper_format(record)
    body["metadata"]["name"] = SECRET
    return await admin_api.replace(secret_body(body), namespace=namespace)


def decoded(secret: Secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


async def test_reads_a_secret_written_in_kic_35_format(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    cp_id = "0f3c2a55-8d1e-4c1b-9a63-5d0e6b7f8a90"
    name = f"konnect-license-{cp_id}"
    record = lic(1_718_000_000)
    await admin_create(
        admin_api,
        namespace,
        {
            "metadata": {"name": name, "labels": {"konghq.com/managed-by": "kong-ingress-controller"}},
            "data": {"payload": b64(record.document), "id": b64(record.id), "updated_at": b64(str(record.updated_at))},
        },
    )
    async with restricted_store(service_account, namespace, name) as store:
        snapshot = await store.read()
    assert snapshot.exists
    assert set(snapshot.data) == {"payload", "id", "updated_at"}
    got = record_from_secret(snapshot)
    assert got == record  # document, id and updated_at exactly (base64-decoded once)
    assert got is not None and got.valid and got.document == record.document
    assert got.license is not None and got.license.customer == CUSTOMER


async def test_sync_writes_a_secret_that_reads_back_identically(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    record = lic(1_718_000_000)
    async with restricted_store(service_account, namespace) as store:
        outcome = await store.sync(record, NOW)
        assert outcome.wrote == "create" and outcome.refused is None and outcome.held == record
        back = await store.read()
    assert record_from_secret(back) == record
    raw = await admin_read(admin_api, namespace)
    assert raw.type == "Opaque"
    data = decoded(raw)
    assert set(data) == {"payload", "id", "updated_at", "license"}
    assert data["payload"] == data["license"] == record.document.encode()
    assert data["id"] == record.id.encode() and data["updated_at"] == str(record.updated_at).encode()
    assert raw.metadata.labels == {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    assert record.license is not None
    assert raw.metadata.annotations == {
        EXPIRATION_ANNOTATION: record.license.expiration_date.isoformat(),
        FINGERPRINT_ANNOTATION: record.license.fingerprint,
    }
    assert back.resource_version == raw.metadata.resourceVersion == outcome.snapshot.resource_version


async def test_second_sync_with_the_same_license_writes_nothing(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    record = lic(1_718_000_000)
    async with restricted_store(service_account, namespace) as store:
        first = await store.sync(record, NOW)
        version = (await admin_read(admin_api, namespace)).metadata.resourceVersion
        second = await store.sync(record, NOW)
        # also from a fresh reader whose held license came from the Secret itself
        third = await store.sync(record_from_secret(await store.read()), NOW)
    assert first.wrote == "create"
    assert second.wrote is None and second.refused is None and not second.took_secret
    assert third.wrote is None
    assert (await admin_read(admin_api, namespace)).metadata.resourceVersion == version


async def test_pre_created_empty_secret_is_filled_and_others_fields_kept(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    await admin_create(
        admin_api,
        namespace,
        {"metadata": {"name": SECRET, "labels": {"helm.sh/chart": "kong-2.0"}, "annotations": {"a": "b"}}},
    )
    record = lic(1_718_000_000)
    async with restricted_store(service_account, namespace, rules=keeper_rules(SECRET, LEASE, allow_create=False)) as s:
        outcome = await s.sync(record, NOW)
    assert outcome.wrote == "create"
    raw = await admin_read(admin_api, namespace)
    assert raw.metadata.labels == {"helm.sh/chart": "kong-2.0", MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    assert raw.metadata.annotations["a"] == "b"
    assert decoded(raw)["license"] == record.document.encode()


async def test_conflict_with_a_better_license_takes_it_without_overwriting(
    service_account: ServiceAccountFactory,
    admin_api: AsyncClient,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, ours, better = lic(1_000), lic(2_000), lic(3_000)
    async with restricted_store(service_account, namespace) as store:
        await store.sync(old, NOW)
        stale = await store.read()
        theirs = await admin_replace(admin_api, namespace, better)  # lands between our read and our write
        with caplog.at_level(logging.INFO, logger="license_keeper.store"):
            outcome = await store.sync(ours, NOW, snapshot=stale)
    assert "write conflict" in caplog.text  # the stale resourceVersion really did meet a 409
    assert outcome.took_secret is True
    assert outcome.held == better
    assert outcome.wrote is None and outcome.refused is None
    after = await admin_read(admin_api, namespace)
    assert after.metadata.resourceVersion == theirs.metadata.resourceVersion
    assert decoded(after)["payload"] == better.document.encode()


async def test_conflict_with_a_worse_license_overwrites_it_after_reading_again(
    service_account: ServiceAccountFactory,
    admin_api: AsyncClient,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, ours = lic(1_000), lic(2_000)
    worse = lic(1_500, days=10)
    async with restricted_store(service_account, namespace) as store:
        await store.sync(old, NOW)
        stale = await store.read()
        theirs = await admin_replace(admin_api, namespace, worse)
        with caplog.at_level(logging.INFO, logger="license_keeper.store"):
            outcome = await store.sync(ours, NOW, snapshot=stale)
    assert "write conflict" in caplog.text
    assert outcome.wrote == "rotate" and not outcome.took_secret and outcome.held == ours
    after = await admin_read(admin_api, namespace)
    assert after.metadata.resourceVersion != theirs.metadata.resourceVersion
    assert record_from_secret(SecretSnapshot(exists=True, data=decoded(after))) == ours


async def test_foreign_secret_is_refused_and_untouched(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    foreign = await admin_create(
        admin_api,
        namespace,
        {"metadata": {"name": SECRET, "labels": {"owner": "platform-team"}}, "data": {"license": b64("theirs")}},
    )
    async with restricted_store(service_account, namespace) as store:
        outcome = await store.sync(lic(1_718_000_000), NOW)
    assert outcome.refused is SecretState.FOREIGN and outcome.wrote is None
    after = await admin_read(admin_api, namespace)
    assert after.metadata.resourceVersion == foreign.metadata.resourceVersion
    assert decoded(after) == {"license": b"theirs"}


async def test_adopt_annotation_hands_a_foreign_secret_over(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    await admin_create(
        admin_api,
        namespace,
        {
            "metadata": {
                "name": SECRET,
                "labels": {"owner": "platform-team"},
                "annotations": {ADOPT_ANNOTATION: "true"},
            },
            "data": {"license": b64("theirs"), "extra": b64("kept")},
        },
    )
    record = lic(1_718_000_000)
    async with restricted_store(service_account, namespace) as store:
        outcome = await store.sync(record, NOW)
    assert outcome.wrote == "repair"
    data = decoded(await admin_read(admin_api, namespace))
    assert data["license"] == record.document.encode() and data["extra"] == b"kept"


async def test_immutable_secret_of_ours_is_refused_without_an_exception(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    old = lic(1_000)
    body = keeper_format(old)
    body["metadata"]["name"] = SECRET
    created = await admin_create(admin_api, namespace, {**body, "immutable": True})
    async with restricted_store(service_account, namespace) as store:
        outcome = await store.sync(lic(2_000), NOW)
        assert outcome.refused is SecretState.IMMUTABLE and outcome.wrote is None
        # Even when our snapshot does not know it is immutable, the API server's 422 becomes a refusal.
        lying = dataclasses.replace(await store.read(), immutable=False)
        outcome = await store.sync(lic(3_000), NOW, snapshot=lying)
        assert outcome.refused is SecretState.IMMUTABLE and outcome.wrote is None
    after = await admin_read(admin_api, namespace)
    assert after.metadata.resourceVersion == created.metadata.resourceVersion
    assert decoded(after)["payload"] == old.document.encode()


async def test_forbidden_raises_store_forbidden_without_license_text(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    record = lic(1_718_000_000)
    assert record.license is not None
    body = keeper_format(record)
    body["metadata"]["name"] = SECRET
    await admin_create(admin_api, namespace, body)
    no_get = [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["update", "patch"]}]
    async with restricted_store(service_account, namespace, rules=no_get) as store:
        for attempt in (store.read(), store.sync(lic(2_000_000_000), NOW)):
            with pytest.raises(StoreForbidden) as info:
                await attempt
            message = str(info.value)
            assert "403" in message and f"{namespace}/{SECRET}" in message and "\n" not in message
            for text in (CUSTOMER, record.document, record.license.license_key, record.license.signature[:40]):
                assert text not in message
            assert info.value.__cause__ is None and info.value.__suppress_context__


async def _next(queue: asyncio.Queue[SecretSnapshot], timeout: float = 10.0) -> SecretSnapshot:
    return await asyncio.wait_for(queue.get(), timeout)


async def test_watch_yields_initial_modified_and_deleted(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    first, second = lic(1_000), lic(2_000)
    # Another Secret in the namespace: the field selector must keep it out (and RBAC would forbid it).
    await admin_create(admin_api, namespace, {"metadata": {"name": "unrelated"}, "data": {"x": b64("y")}})
    queue: asyncio.Queue[SecretSnapshot] = asyncio.Queue()
    async with restricted_store(service_account, namespace) as store:
        stop = asyncio.Event()

        async def consume() -> None:
            async for snapshot in store.watch(stop):
                await queue.put(snapshot)

        task = asyncio.create_task(consume())
        try:
            initial = await _next(queue)
            assert not initial.exists  # nothing there yet

            await store.sync(first, NOW)
            added = await _next(queue)
            assert record_from_secret(added) == first

            await admin_replace(admin_api, namespace, second)
            modified = await _next(queue)
            assert record_from_secret(modified) == second
            assert modified.labels == {MANAGED_BY_LABEL: MANAGED_BY_VALUE}

            await admin_api.patch(
                Secret, "unrelated", {"data": {"x": b64("z")}}, namespace=namespace, patch_type=PatchType.MERGE
            )
            await admin_api.delete(Secret, SECRET, namespace=namespace)
            deleted = await _next(queue)
            assert deleted == SecretSnapshot.missing()
            assert queue.empty()
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_watch_starts_with_the_current_secret(
    service_account: ServiceAccountFactory, admin_api: AsyncClient, namespace: str
) -> None:
    record = lic(1_000)
    body = keeper_format(record)
    body["metadata"]["name"] = SECRET
    created = await admin_create(admin_api, namespace, body)
    queue: asyncio.Queue[SecretSnapshot] = asyncio.Queue()
    async with restricted_store(service_account, namespace) as store:
        stop = asyncio.Event()

        async def consume() -> None:
            async for snapshot in store.watch(stop):
                await queue.put(snapshot)

        task = asyncio.create_task(consume())
        try:
            initial = await _next(queue)
            assert initial.resource_version == created.metadata.resourceVersion
            assert record_from_secret(initial) == record
            await admin_api.delete(Secret, SECRET, namespace=namespace)
            assert not (await _next(queue)).exists
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
