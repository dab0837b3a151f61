"""The chart's objects applied to the real API server, and the keeper run as the chart's ServiceAccount
with the chart's settings: it adopts the pre-created Secret and does the whole job."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from license_keeper.election import read_holder
from license_keeper.kube import Kube
from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.keeper import KeeperProcess, KonnectEndpoint
from license_keeper.testing.konnect import KonnectStandIn

from ..integration.test_chart_static import _container, _install, only
from .conftest import events_text, leaks, ready, wait_for


def _chart_env(container: dict[str, Any], pod: str, namespace: str) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update({"POD_NAME": pod, "POD_NAMESPACE": namespace})  # the downward API's values
    return env


def _review(
    cp: ControlPlane, user: str, namespace: str, verb: str, resource: str, name: str = "", group: str = ""
) -> bool:
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": resource,
                "name": name,
            },
        },
    }
    return bool(cp.must("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body)["status"]["allowed"])


async def test_keeper_as_the_charts_service_account_does_the_full_job(
    controlplane: ControlPlane,
    namespace: str,
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    admin_kube: Kube,
    tmp_path: Any,
) -> None:
    objs = await asyncio.to_thread(_install, controlplane, namespace, {})
    sa = only(objs, "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{namespace}:{sa}"
    secret = only(objs, "Secret")["metadata"]["name"]
    _, container = _container(objs)

    # SubjectAccessReviews: its Secret and Lease, nothing else, never delete, nothing in other namespaces.
    other = controlplane.create_namespace(f"{namespace}-other")
    allowed = {
        ("get", "secrets", secret, ""): True,
        ("update", "secrets", secret, ""): False,  # never replaced whole: every write is a merge patch
        ("patch", "secrets", secret, ""): True,
        ("get", "leases", "kong-license-keeper", "coordination.k8s.io"): True,
        ("update", "leases", "kong-license-keeper", "coordination.k8s.io"): True,
        ("get", "secrets", "another-secret", ""): False,
        ("list", "secrets", "", ""): False,
        ("delete", "secrets", secret, ""): False,
        ("delete", "leases", "kong-license-keeper", "coordination.k8s.io"): False,
        ("delete", "events", "", ""): False,
    }
    for (verb, resource, name, group), expected in allowed.items():
        assert _review(controlplane, user, namespace, verb, resource, name, group) is expected, (verb, resource, name)
    assert not _review(controlplane, user, other, "list", "secrets")
    assert not _review(controlplane, user, other, "get", "secrets", secret)

    token = controlplane.request_token(namespace, sa)
    kubeconfig = controlplane.write_kubeconfig(
        tmp_path / "chart-sa.kubeconfig", token=token, user=sa, namespace=namespace
    )

    started: list[KeeperProcess] = []

    def keeper(pod: str) -> KeeperProcess:
        k = KeeperProcess(
            kubeconfig=kubeconfig,
            namespace=namespace,
            konnect=KonnectEndpoint.of(konnect),  # the chart mounts these files; here they are local
            workdir=tmp_path / "keepers",
            name=pod,
            env=_chart_env(container, pod, namespace),
        )
        started.append(k)
        return k.start()

    first = keeper("lk-license-keeper-abc12")
    try:
        await ready(first)
        assert konnect.record is not None

        async def stored() -> bool:
            s = await admin_api.get(Secret, secret, namespace=namespace)
            return bool(s.data) and base64.b64decode(s.data["license"]).decode() == konnect.record.document

        await wait_for(stored, 20)
        live = await admin_api.get(Secret, secret, namespace=namespace)
        rendered = only(objs, "Secret")["metadata"]["labels"]
        assert live.metadata.labels == {**rendered, **live.metadata.labels}  # the chart's labels kept
        assert set(live.data) == {"payload", "id", "updated_at", "license"}
        info = await read_holder(admin_kube, namespace, "kong-license-keeper")
        assert info is not None and info.holder == "lk-license-keeper-abc12"
        assert await asyncio.to_thread(first.writes) == 1
        text = await events_text(admin_api, namespace)
        assert "LicenseStored" in text and not leaks(text)

        # restart during an outage: ready from the Secret alone, nothing written
        await konnect.set_mode("closed")
        first.kill()
        second = keeper("lk-license-keeper-def34")
        took = await ready(second, timeout=10)
        assert took < 5.0
        await asyncio.sleep(2)
        assert await asyncio.to_thread(second.writes) == 0
        assert not leaks(first.logs() + second.logs())
    finally:
        for k in started:
            k.kill()
