"""KongLicense and rolling-restart delivery on the real API server, as a ServiceAccount with the chart's RBAC.

No KIC and no kube-controller-manager run: a test-side KIC (testing.kic) applies the newest-creationTimestamp
rule and writes status; the tests advance Deployment rollout status themselves (testing.workloads).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from license_keeper.deliver import KongLicenseTarget, Target, build_targets
from license_keeper.delivery import ADOPTED_ANNOTATION, FINGERPRINT_ANNOTATION, DeliveryState, parse_target
from license_keeper.kube import Kube
from license_keeper.license import License, LicenseRecord
from license_keeper.policy import SecretState
from license_keeper.store import SecretStore
from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.keeper import keeper_rules
from license_keeper.testing.kic import KONGLICENSES, KongLicenseController, install_konglicense_crd
from license_keeper.testing.licenses import leaks, make_document, make_record
from license_keeper.testing.workloads import advance_rollout, gateway_deployment

D = DeliveryState
pytestmark = pytest.mark.controlplane


SECRET, LEASE = "kong-license", "kong-license-keeper"


def record(updated_at: int = 1, **kw: Any) -> LicenseRecord:
    return make_record(updated_at=updated_at, document=make_document(**kw))


def lic(**kw: Any) -> License:
    rec = record(**kw)
    assert rec.license is not None
    return rec.license


# The chart's rules (templates/rbac-delivery.yaml), checked against the rendered chart in test_chart_static.
def konglicense_rules(name: str, *, can_list: bool = True) -> list[dict[str, Any]]:
    rules = [
        {
            "apiGroups": ["configuration.konghq.com"],
            "resources": ["konglicenses"],
            "resourceNames": [name],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["configuration.konghq.com"], "resources": ["konglicenses"], "verbs": ["create"]},
    ]
    if can_list:
        rules.append({"apiGroups": ["configuration.konghq.com"], "resources": ["konglicenses"], "verbs": ["list"]})
    return rules


def restart_rules(kind: str, name: str) -> list[dict[str, Any]]:
    """The chart's restart Role, and the keeper's own Role (it reads the license Secret with it)."""
    restart = {"apiGroups": ["apps"], "resources": [f"{kind}s"], "resourceNames": [name], "verbs": ["get", "patch"]}
    return [restart, *keeper_rules(SECRET, LEASE)]


def cluster_access(cp: ControlPlane, namespace: str, rules: list[dict[str, Any]]) -> Path:
    """A ServiceAccount bound to a ClusterRole of exactly ``rules``; its kubeconfig."""
    sa = f"keeper-{uuid.uuid4().hex[:6]}"
    cp.create_service_account(namespace, sa)
    cp.must("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {"metadata": {"name": sa}, "rules": rules})
    cp.must(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
        },
    )
    token = cp.request_token(namespace, sa)
    return cp.write_kubeconfig(
        cp.workdir / "kubeconfigs" / f"{sa}.kubeconfig", token=token, user=sa, namespace=namespace
    )


@pytest.fixture(scope="module")
def crd(controlplane: ControlPlane) -> None:
    install_konglicense_crd(controlplane)


@pytest.fixture
async def kube_for() -> AsyncIterator[Any]:
    made: list[Kube] = []

    def make(kubeconfig: Path) -> Kube:
        k = Kube.from_kubeconfig(kubeconfig, timeout=10.0)
        made.append(k)
        return k

    yield make
    for k in made:
        await k.close()


# ------------------------------------------------------------------------------------------- KongLicense


async def test_konglicense_delivered_programmed_and_rotated(
    controlplane: ControlPlane, namespace: str, crd: None, kube_for: Any
) -> None:
    name = f"kl-{uuid.uuid4().hex[:8]}"
    kube = kube_for(await asyncio.to_thread(cluster_access, controlplane, namespace, konglicense_rules(name)))
    target = KongLicenseTarget(parse_target(f"konglicense={name}"), kube, owner=f"{namespace}/{SECRET}")
    kic = KongLicenseController(controlplane)
    first = lic()

    report = await target.deliver(first)
    assert (report.state, report.wrote) == (D.PENDING, True), report.reason
    obj = controlplane.must("GET", f"{KONGLICENSES}/{name}")
    assert obj["rawLicenseString"] == first.document and obj["enabled"] is True
    assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "license-keeper"

    assert await asyncio.to_thread(kic.reconcile) == name
    report = await target.check(first)
    assert report.state is D.DELIVERED and kic.pushed == first.document
    version = controlplane.must("GET", f"{KONGLICENSES}/{name}")["metadata"]["resourceVersion"]
    again = await target.deliver(first)
    assert (again.state, again.wrote) == (D.DELIVERED, False)
    assert controlplane.must("GET", f"{KONGLICENSES}/{name}")["metadata"]["resourceVersion"] == version

    second = lic()
    report = await target.deliver(second)
    assert (report.state, report.wrote) == (D.PENDING, True), "Programmed is for the old generation"
    await asyncio.to_thread(kic.reconcile)
    assert (await target.check(second)).state is D.DELIVERED and kic.pushed == second.document

    # someone disables ours: drift, and the next delivery re-enables it
    resp = await kube.request(
        "PATCH", f"{KONGLICENSES}/{name}", {"enabled": False}, what="t", content_type="application/merge-patch+json"
    )
    assert resp["enabled"] is False
    assert (await target.check(second)).state is D.DRIFT
    assert (await target.deliver(second)).wrote is True
    await asyncio.to_thread(kic.reconcile)
    assert (await target.check(second)).state is D.DELIVERED
    controlplane.must("DELETE", f"{KONGLICENSES}/{name}")


async def test_a_newer_enabled_konglicense_wins_and_is_reported(
    controlplane: ControlPlane, namespace: str, crd: None, kube_for: Any
) -> None:
    name, rival = f"kl-{uuid.uuid4().hex[:8]}", f"kl-rival-{uuid.uuid4().hex[:6]}"
    held = lic()
    for can_list in (True, False):
        kube = kube_for(
            await asyncio.to_thread(cluster_access, controlplane, namespace, konglicense_rules(name, can_list=can_list))
        )
        target = KongLicenseTarget(parse_target(f"konglicense={name}"), kube, owner=f"{namespace}/{SECRET}")
        assert (await target.deliver(held)).wrote is (can_list is True)
        await asyncio.sleep(1.1)  # creationTimestamp has one-second resolution
        controlplane.must(
            "POST",
            KONGLICENSES,
            {
                "apiVersion": "configuration.konghq.com/v1alpha1",
                "kind": "KongLicense",
                "metadata": {"name": rival},
                "rawLicenseString": make_document(),
            },
        )
        kic = KongLicenseController(controlplane)
        assert await asyncio.to_thread(kic.reconcile) == rival
        report = await target.check(held)
        assert report.state is D.DRIFT
        # with list: the keeper names the winner; without: the status condition tells
        assert (rival in report.reason) if can_list else ("ReplacedByNewer" in report.reason), report.reason
        controlplane.must("DELETE", f"{KONGLICENSES}/{rival}")
        assert await asyncio.to_thread(kic.reconcile) == name
        assert (await target.check(held)).state is D.DELIVERED
    controlplane.must("DELETE", f"{KONGLICENSES}/{name}")


async def test_konglicense_without_rbac_is_a_clear_error(
    controlplane: ControlPlane, namespace: str, crd: None, kube_for: Any
) -> None:
    name = f"kl-{uuid.uuid4().hex[:8]}"
    kube = kube_for(await asyncio.to_thread(cluster_access, controlplane, namespace, konglicense_rules("other-name")))
    held = lic()
    report = await KongLicenseTarget(parse_target(f"konglicense={name}"), kube, owner=f"{namespace}/{SECRET}").deliver(
        held
    )
    assert report.state is D.ERROR and "forbidden" in report.reason
    assert held.document not in report.reason and held.license_key not in report.reason


# ------------------------------------------------------------------------------------------- restarts


def restart_target(kube: Kube, namespace: str, workload: str) -> Target:
    """The restart target as the keeper builds it from ``--deliver restart=<workload>``."""
    (target,) = build_targets([parse_target(f"restart={workload}")], kube=kube, namespace=namespace, secret_name=SECRET)
    return target


@pytest.fixture
def secret(controlplane: ControlPlane, namespace: str, kube_for: Any) -> SecretStore:
    """The license Secret, written as the keeper writes it (the store, as the admin)."""
    return SecretStore(kube_for(controlplane.admin_kubeconfig), namespace, SECRET)


async def hold(secret: SecretStore, rec: LicenseRecord) -> License:
    """Put ``rec`` in the Secret (as after a successful write of the held license); its License."""
    outcome = await secret.sync(rec, force=True)
    assert outcome.refused is None and rec.license is not None
    return rec.license


async def test_restart_patches_once_and_waits_for_the_rollout(
    controlplane: ControlPlane, namespace: str, kube_for: Any, secret: SecretStore
) -> None:
    name = "kong-gateway"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    controlplane.must("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", gateway_deployment(name))
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", restart_rules("deployment", name))
    kube = kube_for(sa.kubeconfig)
    replicas = [restart_target(kube, namespace, f"deployment/{name}") for _ in range(2)]  # two keepers
    first = await hold(secret, record())

    report = await replicas[0].deliver(first)
    assert (report.state, report.wrote) == (D.PENDING, True)
    obj = controlplane.must("GET", path)
    generation = obj["metadata"]["generation"]
    assert obj["spec"]["template"]["metadata"]["annotations"][FINGERPRINT_ANNOTATION] == first.fingerprint
    second_keeper = await replicas[1].deliver(first)
    assert second_keeper.wrote is False, "idempotent: a second replica never restarts twice"
    assert controlplane.must("GET", path)["metadata"]["generation"] == generation

    advance_rollout(controlplane, path, updated=1, old=2)
    assert "1/2 updated" in (await replicas[0].check(first)).reason
    # every replica updated, but an old pod still runs, then no new pod is available yet: not delivered
    advance_rollout(controlplane, path, updated=2, old=1)
    report = await replicas[0].check(first)
    assert report.state is D.PENDING and "1 old pods still running" in report.reason, report.reason
    advance_rollout(controlplane, path, updated=2, available=0)
    report = await replicas[0].check(first)
    assert report.state is D.PENDING and "0/2 updated pods available" in report.reason, report.reason
    advance_rollout(controlplane, path, updated=2)
    assert (await replicas[0].check(first)).state is D.DELIVERED

    # the same content again (a new updated_at only) does not restart
    await hold(secret, make_record(updated_at=2, document=first.document))
    assert (await replicas[0].deliver(first)).wrote is False
    rotated = await hold(secret, record(updated_at=3))
    report = await replicas[0].deliver(rotated)
    assert (report.state, report.wrote) == (D.PENDING, True)
    assert controlplane.must("GET", path)["metadata"]["generation"] == generation + 1
    advance_rollout(controlplane, path, updated=2)
    assert (await replicas[0].check(rotated)).state is D.DELIVERED


async def test_paused_deployment_is_not_patched(
    controlplane: ControlPlane, namespace: str, kube_for: Any, secret: SecretStore
) -> None:
    name = "kong-paused"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    controlplane.must(
        "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", gateway_deployment(name, paused=True)
    )
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", restart_rules("deployment", name))
    target = restart_target(kube_for(sa.kubeconfig), namespace, f"deployment/{name}")
    report = await target.deliver(await hold(secret, record()))
    assert (report.state, report.wrote) == (D.DRIFT, False) and "paused" in report.reason
    assert FINGERPRINT_ANNOTATION not in (
        controlplane.must("GET", path)["spec"]["template"]["metadata"].get("annotations") or {}
    )


async def test_restart_of_an_unnamed_or_missing_workload(
    controlplane: ControlPlane, namespace: str, kube_for: Any
) -> None:
    controlplane.must("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", gateway_deployment("not-ours"))
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", restart_rules("deployment", "gw"))
    kube = kube_for(sa.kubeconfig)
    forbidden = await restart_target(kube, namespace, "deployment/not-ours").deliver(lic())
    assert forbidden.state is D.ERROR and "forbidden" in forbidden.reason
    missing = await restart_target(kube, namespace, "deployment/gw").deliver(lic())
    assert missing.state is D.ERROR and "does not exist" in missing.reason


@pytest.mark.parametrize(
    ("strategy", "partition", "delivered", "words"),
    [
        ("RollingUpdate", None, True, "runs pods"),
        ("OnDelete", None, False, "OnDelete"),
        # kubectl calls it rolled out, but the pod below the partition keeps its license
        ("RollingUpdate", 1, False, "1 pods below it"),
    ],
)
async def test_restart_statefulset(
    controlplane: ControlPlane,
    namespace: str,
    kube_for: Any,
    secret: SecretStore,
    strategy: str,
    partition: int | None,
    delivered: bool,
    words: str,
) -> None:
    name = "kong-sts"
    body = gateway_deployment(name)
    body.update(kind="StatefulSet")
    body["spec"].pop("paused")
    update: dict[str, Any] = {"type": strategy}
    if partition is not None:
        update["rollingUpdate"] = {"partition": partition}
    body["spec"].update(serviceName="kong", updateStrategy=update)
    path = f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}"
    controlplane.must("POST", f"/apis/apps/v1/namespaces/{namespace}/statefulsets", body)
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", restart_rules("statefulset", name))
    target = restart_target(kube_for(sa.kubeconfig), namespace, f"statefulset/{name}")
    held = await hold(secret, record())
    assert (await target.deliver(held)).wrote is True
    advance_rollout(controlplane, path, updated=2 - (partition or 0), old=partition or 0)
    report = await target.check(held)
    assert report.state is (D.DELIVERED if delivered else D.DRIFT), report.reason
    assert words in report.reason, report.reason


async def test_restart_rolls_only_for_what_the_secret_holds(
    controlplane: ControlPlane, namespace: str, kube_for: Any, secret: SecretStore
) -> None:
    """New pods read the Secret, not the keeper's memory: while the Secret write of a new license is
    refused, the pods are not rolled for it and the target does not call it delivered; once the Secret
    holds it, they roll."""
    name = "kong-gateway"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    secret_path = f"/api/v1/namespaces/{namespace}/secrets/{SECRET}"
    controlplane.must("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", gateway_deployment(name))
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", restart_rules("deployment", name))
    target = restart_target(kube_for(sa.kubeconfig), namespace, f"deployment/{name}")

    def rolled_for() -> str:
        return str(
            controlplane.must("GET", path)["spec"]["template"]["metadata"]["annotations"][FINGERPRINT_ANNOTATION]
        )

    old = await hold(secret, record(updated_at=1))
    assert (await target.deliver(old)).wrote is True
    advance_rollout(controlplane, path, updated=2)
    assert (await target.check(old)).state is D.DELIVERED

    # The keeper now holds a newer license, but the Secret is immutable: the write is refused.
    frozen = controlplane.must("GET", secret_path)
    frozen["immutable"] = True
    controlplane.must("PUT", secret_path, frozen)
    new_record = record(updated_at=2)
    assert (await secret.sync(new_record)).refused is SecretState.IMMUTABLE
    new = new_record.license
    assert new is not None
    generation = controlplane.must("GET", path)["metadata"]["generation"]
    for report in (await target.deliver(new), await target.check(new)):
        assert report.wrote is False, "rolled the gateways onto the old license the Secret still holds"
        assert report.state is D.DRIFT and "Secret" in report.reason, report.reason
        assert old.fingerprint in report.reason and new.fingerprint in report.reason, report.reason
        assert not leaks(report.reason)
    assert controlplane.must("GET", path)["metadata"]["generation"] == generation
    assert rolled_for() == old.fingerprint

    # The Secret is replaced and the write succeeds: now the pods roll for the new license.
    controlplane.must("DELETE", secret_path)
    await hold(secret, new_record)
    report = await target.deliver(new)
    assert (report.state, report.wrote) == (D.PENDING, True), report.reason
    assert rolled_for() == new.fingerprint
    advance_rollout(controlplane, path, updated=2)
    assert (await target.check(new)).state is D.DELIVERED


async def test_turning_the_target_on_adopts_the_license_the_pods_already_read(
    controlplane: ControlPlane, namespace: str, kube_for: Any, secret: SecretStore
) -> None:
    """Gateways that read KONG_LICENSE_DATA from the Secret already run what it holds: turning the restart
    target on records that on the workload (not on the pod template, which would roll them) and rolls
    nothing; the next change of content rolls them."""
    name = "kong-gateway"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    current = await hold(secret, record(updated_at=1))
    controlplane.must("POST", deployments, gateway_deployment(name, license_from=SECRET))
    advance_rollout(controlplane, path, updated=2)  # the gateways run, started from the Secret
    template = controlplane.must("GET", path)["spec"]["template"]
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", restart_rules("deployment", name))
    kube = kube_for(sa.kubeconfig)
    replicas = [restart_target(kube, namespace, f"deployment/{name}") for _ in range(2)]  # two keepers

    report = await replicas[0].deliver(current)
    assert report.wrote is False, report.reason
    obj = controlplane.must("GET", path)
    assert obj["spec"]["template"] == template, "the pod template changed: every gateway rolls"
    assert obj["metadata"]["annotations"][ADOPTED_ANNOTATION] == current.fingerprint
    advance_rollout(controlplane, path, updated=2)  # the controller observed the annotation; no new pods
    for keeper in replicas:
        report = await keeper.deliver(current)
        assert (report.state, report.wrote) == (D.DELIVERED, False), report.reason
        assert "adopted" in report.reason, report.reason
    assert controlplane.must("GET", path)["spec"]["template"] == template

    # a new license in the Secret: now the pods roll, and the pod template records it
    rotated = await hold(secret, record(updated_at=2))
    report = await replicas[1].deliver(rotated)
    assert (report.state, report.wrote) == (D.PENDING, True), report.reason
    obj = controlplane.must("GET", path)
    assert obj["spec"]["template"]["metadata"]["annotations"][FINGERPRINT_ANNOTATION] == rotated.fingerprint
    assert ADOPTED_ANNOTATION not in (obj["metadata"].get("annotations") or {})
    assert (await replicas[0].deliver(rotated)).wrote is False, "idempotent: a second replica never restarts twice"
    advance_rollout(controlplane, path, updated=2)
    assert (await replicas[0].check(rotated)).state is D.DELIVERED


async def test_pods_that_do_not_read_the_secret_are_rolled_once(
    controlplane: ControlPlane, namespace: str, kube_for: Any, secret: SecretStore
) -> None:
    """Without KONG_LICENSE_DATA from the Secret nothing tells what the pods run: the first round rolls them."""
    name = "kong-gateway"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    current = await hold(secret, record())
    controlplane.must(
        "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", gateway_deployment(name, license_from="other")
    )
    sa = await asyncio.to_thread(controlplane.service_account, namespace, "keeper", restart_rules("deployment", name))
    report = await restart_target(kube_for(sa.kubeconfig), namespace, f"deployment/{name}").deliver(current)
    assert (report.state, report.wrote) == (D.PENDING, True), report.reason
    obj = controlplane.must("GET", path)
    assert obj["spec"]["template"]["metadata"]["annotations"][FINGERPRINT_ANNOTATION] == current.fingerprint
    assert ADOPTED_ANNOTATION not in (obj["metadata"].get("annotations") or {})


# ------------------------------------------------------------------------------------------- fenced writes


async def test_kube_targets_write_nothing_once_the_replica_no_longer_leads(
    controlplane: ControlPlane, namespace: str, crd: None, kube_for: Any, secret: SecretStore
) -> None:
    from license_keeper.deliver import Deliverer

    name, kl = "kong-gateway", f"kl-{uuid.uuid4().hex[:8]}"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    controlplane.must("POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", gateway_deployment(name))
    kube = kube_for(controlplane.admin_kubeconfig)
    targets = build_targets(
        [parse_target(f"restart=deployment/{name}"), parse_target(f"konglicense={kl}")],
        kube=kube,
        namespace=namespace,
        secret_name=SECRET,
    )
    rec = record()
    await hold(secret, rec)
    before = controlplane.must("GET", path)["metadata"]["resourceVersion"]

    reports = await Deliverer(targets, may_write=lambda: False).deliver(rec)
    assert [(r.state, r.wrote) for r in reports] == [(D.PENDING, False)] * 2, [r.reason for r in reports]
    assert all("not the leader" in r.reason for r in reports)
    assert controlplane.must("GET", path)["metadata"]["resourceVersion"] == before, "the Deployment was patched"
    assert controlplane.request("GET", f"{KONGLICENSES}/{kl}").status == 404, "the KongLicense was created"

    reports = await Deliverer(targets, may_write=lambda: True).deliver(rec)
    assert [r.wrote for r in reports] == [True, True]


# ------------------------------------------------------------------------------------------- a foreign KongLicense


async def test_a_konglicense_of_that_name_owned_by_another_installation_is_foreign(
    controlplane: ControlPlane, namespace: str, crd: None, kube_for: Any
) -> None:
    name = f"kl-{uuid.uuid4().hex[:8]}"
    theirs = make_document()
    kube = kube_for(controlplane.admin_kubeconfig)
    (target,) = build_targets([parse_target(f"konglicense={name}")], kube=kube, namespace=namespace, secret_name=SECRET)
    held = lic()
    other_keeper = {"app.kubernetes.io/managed-by": "license-keeper"}
    for labels, notes in (({}, {}), (other_keeper, {"license-keeper.io/owner": f"other-{namespace}/{SECRET}"})):
        controlplane.must(
            "POST",
            KONGLICENSES,
            {
                "apiVersion": "configuration.konghq.com/v1alpha1",
                "kind": "KongLicense",
                "metadata": {"name": name, "labels": labels, "annotations": notes},
                "rawLicenseString": theirs,
            },
        )
        report = await target.deliver(held)
        obj = controlplane.must("GET", f"{KONGLICENSES}/{name}")
        assert obj["rawLicenseString"] == theirs, "another installation's KongLicense was taken over"
        assert (report.state, report.wrote) == (D.DRIFT, False) and "not managed by" in report.reason, report.reason
        assert held.document not in report.reason
        controlplane.must("DELETE", f"{KONGLICENSES}/{name}")

    # handed over explicitly: then it is ours, and it carries our owner from then on
    controlplane.must(
        "POST",
        KONGLICENSES,
        {
            "apiVersion": "configuration.konghq.com/v1alpha1",
            "kind": "KongLicense",
            "metadata": {"name": name, "annotations": {"license-keeper.io/adopt": "true"}},
            "rawLicenseString": theirs,
        },
    )
    assert (await target.deliver(held)).wrote is True
    obj = controlplane.must("GET", f"{KONGLICENSES}/{name}")
    assert obj["rawLicenseString"] == held.document
    assert obj["metadata"]["annotations"]["license-keeper.io/owner"] == f"{namespace}/{SECRET}"
    controlplane.must("DELETE", f"{KONGLICENSES}/{name}")
