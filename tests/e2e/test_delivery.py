"""A keeper process delivering the license to a running gateway (the Kong Admin API stand-in), and
reporting what the gateway really runs: rotation reaches it live; a license hidden by KONG_LICENSE_DATA
is drift; the drift clears when the gateway runs the held license again. And a restart target: turned on,
it adopts what the gateways already run; it rolls them only for what the Secret holds."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event

from license_keeper.delivery import ADOPTED_ANNOTATION, FINGERPRINT_ANNOTATION
from license_keeper.testing.controlplane import ControlPlane, ServiceAccountAccess
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import make_document
from license_keeper.testing.workloads import advance_rollout, gateway_deployment

from .conftest import SECRET, KeeperFactory, leaks, ready, wait_for
from .test_backup import cli

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def kong(tmp_path: Path) -> AsyncIterator[KongStandIn]:
    async with KongStandIn(tls_dir=tmp_path / "kong-tls") as gateway:
        yield gateway


def state(k: object, target: str, value: str) -> float:
    return k.metric(f'license_keeper_delivery_state{{state="{value}",target="{target}"}}')  # type: ignore[attr-defined]


def delivering_to(kong: KongStandIn) -> tuple[str, str]:
    return f"--deliver=admin-api={kong.address}", f"--deliver-admin-ca-file={kong.tls.ca_file}"


def runs(kong: KongStandIn, document: str) -> bool:
    active = kong.node.active()
    return active[1] == document


async def test_a_rotation_reaches_the_gateway_live_and_drift_is_reported(
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    kong: KongStandIn,
    admin_api: AsyncClient,
    namespace: str,
    keeper_access: ServiceAccountAccess,
) -> None:
    target = f"admin-api={kong.address}"
    k = keepers("keeper-0", *delivering_to(kong), "--delivery-period=2s")
    await ready(k)
    assert konnect.record is not None
    await wait_for(lambda: runs(kong, konnect.record.document), 20)
    await wait_for(lambda: state(k, target, "delivered") == 1, 10)
    assert k.metric(f'license_keeper_delivery_last_success_timestamp_seconds{{target="{target}"}}') > 0

    rotated = konnect.rotate()
    k.signal(signal.SIGHUP)
    seconds = await wait_for(lambda: runs(kong, rotated.document), 30)
    print(f"\nrotated license running on the gateway {seconds:.1f} s after the poll request")
    rows = list(kong.node.rows.values())
    assert len(rows) == 1  # one stable row id, updated in place: never a second row, never a delete

    # An operator pins KONG_LICENSE_DATA to the old license: /licenses is hidden, the gateway runs
    # another license than the one delivered. That is drift, with the reason.
    kong.node.env_license = make_document()
    await wait_for(lambda: state(k, target, "drift") == 1, 20)
    out = await cli(
        "status",
        "-o",
        "json",
        f"--deliver={target}",
        f"--deliver-admin-ca-file={kong.tls.ca_file}",
        access=keeper_access,
    )
    report = json.loads(out.stdout)
    assert report["delivery"] == [{"target": target, "state": "drift", "reason": report["delivery"][0]["reason"]}]
    assert "KONG_LICENSE_DATA" in report["delivery"][0]["reason"]
    kong.node.env_license = None
    await wait_for(lambda: state(k, target, "delivered") == 1, 20)
    out = await cli(
        "status", f"--deliver={target}", f"--deliver-admin-ca-file={kong.tls.ca_file}", access=keeper_access
    )
    assert out.returncode == 0, out.stderr
    assert "delivered" in out.stdout and target in out.stdout

    events = [e async for e in admin_api.list(Event, namespace=namespace)]
    reasons = {e.reason for e in events}
    assert {"LicenseDelivered", "LicenseDeliveryDrift"} <= reasons
    assert not leaks("\n".join(f"{e.reason} {e.message}" for e in events))
    assert "KONG_LICENSE_DATA" in k.logs()


async def test_delivery_failures_never_touch_the_secret_or_readiness(
    keepers: KeeperFactory, konnect: KonnectStandIn, kong: KongStandIn
) -> None:
    target = f"admin-api={kong.address}"
    await kong.set_mode("server_error")
    k = keepers("keeper-0", *delivering_to(kong), "--delivery-period=2s")
    await ready(k)
    await wait_for(lambda: state(k, target, "error") == 1, 20)
    await asyncio.sleep(1)
    assert k.ready() and k.healthy()
    assert k.metric('license_keeper_secret_writes_total{reason="create"}') == 1
    await kong.set_mode("normal")
    await wait_for(lambda: state(k, target, "delivered") == 1, 40)


async def test_a_restart_target_adopts_what_runs_and_rolls_only_for_what_the_secret_holds(
    controlplane: ControlPlane,
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    namespace: str,
    keeper_access: ServiceAccountAccess,
) -> None:
    name = "kong-gateway"
    target = f"restart=deployment/{name}"
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
    secret_path = f"/api/v1/namespaces/{namespace}/secrets/{SECRET}"
    # the chart's restart Role (delivery.restart.deployments), next to the keeper's own Role
    rules = [{"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": [name], "verbs": ["get", "patch"]}]
    controlplane.create_role(namespace, "keeper-restart", rules)
    controlplane.bind_role(namespace, "keeper-restart", "keeper-restart", keeper_access.name)
    controlplane.must(
        "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", gateway_deployment(name, license_from=SECRET)
    )

    def workload() -> dict[str, Any]:
        return controlplane.must("GET", path)

    def template_annotations(obj: dict[str, Any]) -> dict[str, str]:
        return obj["spec"]["template"]["metadata"].get("annotations") or {}

    def delivery(k: Any, value: str) -> Any:
        return asyncio.to_thread(lambda: state(k, target, value) == 1)

    # A keeper without the target fills the Secret; the gateways start from it.
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: asyncio.to_thread(k.writes), 20)
    advance_rollout(controlplane, path, updated=2)
    template = workload()["spec"]["template"]
    await asyncio.to_thread(k.terminate)

    # Turning the target on restarts nothing: the gateways read the Secret, so they run what it holds.
    k = keepers("keeper-1", f"--deliver={target}", "--delivery-period=2s")
    await wait_for(lambda: ADOPTED_ANNOTATION in (workload()["metadata"].get("annotations") or {}), 30)
    advance_rollout(controlplane, path, updated=2)  # the controller observed the annotation; no new pods
    await wait_for(lambda: delivery(k, "delivered"), 20)
    assert workload()["spec"]["template"] == template, "turning the target on rolled the gateways"

    # A rotation the Secret cannot take (immutable): the gateways are not rolled onto the license it still holds.
    frozen = controlplane.must("GET", secret_path)
    frozen["immutable"] = True
    controlplane.must("PUT", secret_path, frozen)
    rotated = konnect.rotate()
    assert rotated.license is not None
    fingerprint = rotated.license.fingerprint
    k.signal(signal.SIGHUP)
    await wait_for(lambda: asyncio.to_thread(k.metric, 'license_keeper_secret_state{state="immutable"}'), 30)
    await wait_for(lambda: delivery(k, "drift"), 20)
    assert workload()["spec"]["template"] == template, "rolled for a license the Secret does not hold"

    # The Secret is deleted; the keeper recreates it with the rotated license, and now the gateways roll for it.
    controlplane.must("DELETE", secret_path)
    await wait_for(lambda: template_annotations(workload()).get(FINGERPRINT_ANNOTATION) == fingerprint, 30)
    advance_rollout(controlplane, path, updated=2, old=1)
    await asyncio.sleep(3)  # more than a delivery period: an old pod still runs, so not delivered yet
    assert await delivery(k, "pending")
    advance_rollout(controlplane, path, updated=2)
    await wait_for(lambda: delivery(k, "delivered"), 20)

    events = [e async for e in admin_api.list(Event, namespace=namespace)]
    assert {"LicenseDelivered", "LicenseDeliveryDrift"} <= {e.reason for e in events}
    assert not leaks("\n".join(f"{e.reason} {e.message}" for e in events))
    assert f"adopted deployment {name}" in k.logs()
