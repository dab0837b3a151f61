"""Proof that the test control plane is a real API server: each of these fails against a fake."""

from __future__ import annotations

import asyncio
import base64
import secrets

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Secret
from lightkube.types import PatchType

from license_keeper.testing.controlplane import ControlPlane

from ..conftest import ServiceAccountFactory, client_for


def _secret(name: str, value: str) -> Secret:
    return Secret(
        metadata=ObjectMeta(name=name),
        data={"value": base64.b64encode(value.encode()).decode()},
    )


async def test_rbac_allows_only_the_named_secret(
    admin_api: AsyncClient, namespace: str, service_account: ServiceAccountFactory
) -> None:
    await admin_api.create(_secret("mine", "a"), namespace=namespace)
    await admin_api.create(_secret("other", "b"), namespace=namespace)
    sa = service_account([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get"]}])

    api = client_for(sa.kubeconfig)
    try:
        got = await api.get(Secret, "mine", namespace=namespace)
        assert got.data is not None and base64.b64decode(got.data["value"]) == b"a"
        with pytest.raises(ApiError) as denied:
            await api.get(Secret, "other", namespace=namespace)
        assert denied.value.status.code == 403
        with pytest.raises(ApiError) as denied_delete:
            await api.delete(Secret, "mine", namespace=namespace)
        assert denied_delete.value.status.code == 403
    finally:
        await api.close()


async def test_stale_resource_version_conflicts(admin_api: AsyncClient, namespace: str) -> None:
    created = await admin_api.create(_secret("s", "v1"), namespace=namespace)
    fresh = await admin_api.get(Secret, "s", namespace=namespace)
    fresh.data = {"value": base64.b64encode(b"v2").decode()}
    await admin_api.replace(fresh, namespace=namespace)

    created.data = {"value": base64.b64encode(b"v3").decode()}
    with pytest.raises(ApiError) as conflict:
        await admin_api.replace(created, namespace=namespace)  # carries the old resourceVersion
    assert conflict.value.status.code == 409
    final = await admin_api.get(Secret, "s", namespace=namespace)
    assert final.data is not None and base64.b64decode(final.data["value"]) == b"v2"


async def test_secrets_are_encrypted_in_etcd(
    admin_api: AsyncClient, namespace: str, controlplane: ControlPlane
) -> None:
    plaintext = f"plaintext-{secrets.token_hex(16)}"
    await admin_api.create(_secret("enc", plaintext), namespace=namespace)
    stored = controlplane.etcd_get(f"/registry/secrets/{namespace}/enc")
    assert stored is not None
    assert stored.startswith(b"k8s:enc:secretbox:v1:key1:")
    assert plaintext.encode() not in stored
    assert base64.b64encode(plaintext.encode()) not in stored
    # A ConfigMap is not in the encryption config: the same bytes are stored in the clear, which
    # shows the check above would catch a server without encryption.
    await admin_api.create(ConfigMap(metadata=ObjectMeta(name="plain"), data={"v": plaintext}), namespace=namespace)
    clear = controlplane.etcd_get(f"/registry/configmaps/{namespace}/plain")
    assert clear is not None and clear.startswith(b"k8s\x00") and plaintext.encode() in clear


async def test_field_selected_watch_sees_one_secret_lifecycle(admin_api: AsyncClient, namespace: str) -> None:
    seen: list[tuple[str, str]] = []

    async def watch_one() -> None:
        stream = admin_api.watch(Secret, namespace=namespace, fields={"metadata.name": "watched"}, server_timeout=30)
        async for kind, obj in stream:
            assert obj.metadata is not None and obj.metadata.name is not None
            seen.append((kind, obj.metadata.name))
            if kind == "DELETED":
                return

    task = asyncio.create_task(watch_one())
    await asyncio.sleep(0.5)  # let the watch open before the first change
    await admin_api.create(_secret("unrelated", "x"), namespace=namespace)
    await admin_api.create(_secret("watched", "1"), namespace=namespace)
    await admin_api.patch(
        Secret,
        "watched",
        {"data": {"value": base64.b64encode(b"2").decode()}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await admin_api.delete(Secret, "unrelated", namespace=namespace)
    await admin_api.delete(Secret, "watched", namespace=namespace)
    await asyncio.wait_for(task, 20)
    assert seen == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]
