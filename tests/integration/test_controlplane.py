"""Proof that the test control plane is a real API server: each of these fails against a fake."""

from __future__ import annotations

import asyncio
import base64
import secrets

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from license_keeper.testing.controlplane import ControlPlane

from ..conftest import ServiceAccountFactory, api_client_for


def _secret(name: str, value: str) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name),
        data={"value": base64.b64encode(value.encode()).decode()},
    )


async def test_rbac_allows_only_the_named_secret(
    admin_api: client.ApiClient, namespace: str, service_account: ServiceAccountFactory
) -> None:
    core = client.CoreV1Api(admin_api)
    await core.create_namespaced_secret(namespace, _secret("mine", "a"))
    await core.create_namespaced_secret(namespace, _secret("other", "b"))
    sa = service_account([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get"]}])

    restricted = await api_client_for(sa.kubeconfig)
    try:
        api = client.CoreV1Api(restricted)
        got = await api.read_namespaced_secret("mine", namespace)
        assert base64.b64decode(got.data["value"]) == b"a"
        with pytest.raises(ApiException) as denied:
            await api.read_namespaced_secret("other", namespace)
        assert denied.value.status == 403
        with pytest.raises(ApiException) as denied_delete:
            await api.delete_namespaced_secret("mine", namespace)
        assert denied_delete.value.status == 403
    finally:
        await restricted.close()


async def test_stale_resource_version_conflicts(admin_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(admin_api)
    created = await core.create_namespaced_secret(namespace, _secret("s", "v1"))
    fresh = await core.read_namespaced_secret("s", namespace)
    fresh.data = {"value": base64.b64encode(b"v2").decode()}
    await core.replace_namespaced_secret("s", namespace, fresh)

    created.data = {"value": base64.b64encode(b"v3").decode()}
    with pytest.raises(ApiException) as conflict:
        await core.replace_namespaced_secret("s", namespace, created)  # carries the old resourceVersion
    assert conflict.value.status == 409
    final = await core.read_namespaced_secret("s", namespace)
    assert base64.b64decode(final.data["value"]) == b"v2"


async def test_secrets_are_encrypted_in_etcd(
    admin_api: client.ApiClient, namespace: str, controlplane: ControlPlane
) -> None:
    plaintext = f"plaintext-{secrets.token_hex(16)}"
    await client.CoreV1Api(admin_api).create_namespaced_secret(namespace, _secret("enc", plaintext))
    stored = controlplane.etcd_get(f"/registry/secrets/{namespace}/enc")
    assert stored is not None
    assert stored.startswith(b"k8s:enc:secretbox:v1:key1:")
    assert plaintext.encode() not in stored
    assert base64.b64encode(plaintext.encode()) not in stored
    # A ConfigMap is not in the encryption config: the same bytes are stored in the clear, which
    # shows the check above would catch a server without encryption.
    await client.CoreV1Api(admin_api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="plain"), data={"v": plaintext})
    )
    clear = controlplane.etcd_get(f"/registry/configmaps/{namespace}/plain")
    assert clear is not None and clear.startswith(b"k8s\x00") and plaintext.encode() in clear


async def test_field_selected_watch_sees_one_secret_lifecycle(admin_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(admin_api)
    seen: list[tuple[str, str]] = []

    async def watch_one() -> None:
        w = watch.Watch()
        async with w.stream(
            core.list_namespaced_secret,
            namespace,
            field_selector="metadata.name=watched",
            timeout_seconds=30,
        ) as stream:
            async for event in stream:
                seen.append((event["type"], event["object"].metadata.name))
                if event["type"] == "DELETED":
                    return

    task = asyncio.create_task(watch_one())
    await asyncio.sleep(0.5)  # let the watch open before the first change
    await core.create_namespaced_secret(namespace, _secret("unrelated", "x"))
    await core.create_namespaced_secret(namespace, _secret("watched", "1"))
    await core.patch_namespaced_secret("watched", namespace, {"data": {"value": base64.b64encode(b"2").decode()}})
    await core.delete_namespaced_secret("unrelated", namespace)
    await core.delete_namespaced_secret("watched", namespace)
    await asyncio.wait_for(task, 20)
    assert seen == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]
