"""The chart's objects applied to the real API server, and the keeper run as the chart's ServiceAccount
with the chart's settings: it adopts the pre-created Secret and does the whole job."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Secret

from license_keeper.election import read_holder
from license_keeper.kube import Kube
from license_keeper.testing.audit import AuditEntry
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
        ("create", "events", "", "events.k8s.io"): False,  # its Events are core/v1
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


# Verbs the chart's Role grants that a full run need not show in the audit log, and why. Empty: every
# granted verb is used by the run below. Add an entry only with its reason.
GRANTED_BUT_UNUSED: dict[tuple[str, str, str], str] = {}


def _grants(rules: list[dict[str, Any]], entry: AuditEntry) -> bool:
    """Whether one of the Role's rules allows the audited request, as RBAC decides it: a create has no
    name to match (RBAC cannot limit create by name); a list or watch with a metadata.name field
    selector is matched by that name."""
    name = None if entry.verb == "create" else entry.name
    return any(
        entry.api_group in rule["apiGroups"]
        and entry.resource in rule["resources"]
        and entry.verb in rule["verbs"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for rule in rules
    )


async def test_the_roles_verbs_are_exactly_those_a_full_run_uses(
    controlplane: ControlPlane,
    namespace: str,
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    admin_kube: Kube,
    tmp_path: Any,
) -> None:
    """Issue 26 item 4: the Role granted `update` on the Secret and `events.k8s.io` Events, which the
    keeper no longer uses (its writes are merge patches, its Events core/v1). Judged from the API
    server's audit log of a full run as the chart's ServiceAccount: two replicas, the first license,
    the Secret deleted twice (recreated; the second Event a patch of the first), a rotation, a handover
    on SIGTERM. Every verb the keeper used is granted, and every granted verb was used."""
    since = time.time() - 1
    objs = await asyncio.to_thread(_install, controlplane, namespace, {})
    sa = only(objs, "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{namespace}:{sa}"
    secret = only(objs, "Secret")["metadata"]["name"]
    rules = only(objs, "Role")["rules"]
    _, container = _container(objs)
    token = controlplane.request_token(namespace, sa)
    kubeconfig = controlplane.write_kubeconfig(
        tmp_path / "chart-sa.kubeconfig", token=token, user=sa, namespace=namespace
    )

    started: list[KeeperProcess] = []

    def keeper(pod: str) -> KeeperProcess:
        env = _chart_env(container, pod, namespace) | {"LICENSE_KEEPER_RESYNC_PERIOD": "5s"}
        k = KeeperProcess(
            kubeconfig=kubeconfig,
            namespace=namespace,
            konnect=KonnectEndpoint.of(konnect),
            workdir=tmp_path / "keepers",
            name=pod,
            env=env,
        )
        started.append(k)
        return k.start()

    async def holds(document: str) -> bool:
        try:
            s = await admin_api.get(Secret, secret, namespace=namespace)
        except ApiError:
            return False
        return bool(s.data) and base64.b64decode(s.data["license"]).decode() == document

    try:
        leader = keeper("lk-license-keeper-aaa11")
        await ready(leader)
        follower = keeper("lk-license-keeper-bbb22")
        await ready(follower)
        assert konnect.record is not None
        await wait_for(lambda: holds(konnect.record.document), 20)
        for _ in range(2):  # recreated twice: the same Event again is a patch of the first
            await admin_api.delete(Secret, secret, namespace=namespace)
            await wait_for(lambda: holds(konnect.record.document), 20)
        rotated = konnect.rotate()
        leader.signal(signal.SIGHUP)
        await wait_for(lambda: holds(rotated.document), 20)
        await asyncio.sleep(6)  # a re-read of the Secret (every 5 s here)
        assert leader.terminate() == 0  # releases the Lease; the follower takes it

        async def follower_leads() -> bool:
            info = await read_holder(admin_kube, namespace, "kong-license-keeper")
            return info is not None and info.holder == follower.name

        await wait_for(follower_leads, 20)
        await asyncio.sleep(3)  # and renews it
    finally:
        for k in started:
            k.kill()

    entries = [e for e in controlplane.audit_entries(since=since, namespace=namespace) if e.username == user]
    refused = [e.brief() for e in entries if e.code == 403 or not _grants(rules, e)]
    assert not refused, "used but not granted:\n" + "\n".join(refused)
    used = {(e.api_group, e.resource, e.verb) for e in entries}
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    print("\nverbs used: " + ", ".join(f"{r}.{g or 'core'}:{v}" for g, r, v in sorted(used)))
    assert granted - used == set(GRANTED_BUT_UNUSED), "granted but never used: " + str(sorted(granted - used))
