"""A real Velero backs up and restores the keeper's namespace (tools/controlplane: velero, its AWS plugin,
versitygw as the bucket; testing.velero runs them in a network namespace of their own).

Judged by the audit log (who wrote the Secret, when) and by hashes of the Secret's data, never its content.
Velero writes as its own ServiceAccount, so its writes and the keeper's are told apart. The four scenarios
of docs/operations.md "Backups": disaster recovery with Konnect down; a restore with
`--existing-resource-policy=update` over a newer license, while the keeper runs and while it is down.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from license_keeper.license import LicenseRecord, describe
from license_keeper.policy import desired_secret
from license_keeper.testing.audit import AuditEntry
from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.velero import Outcome, VeleroStack, delete_namespace

from ..integration.test_chart_static import _render_in, only
from .conftest import SECRET, KeeperFactory, events_text, leaks, read_secret, ready, wait_for, writes

pytestmark = pytest.mark.timeout(300)

VELERO_USER = "system:serviceaccount:velero:velero"
WRITE_VERBS = {"create", "update", "patch", "delete"}
FIGURES: list[str] = []  # backup and restore times, printed at the end (BENCHMARKS.md)


@pytest.fixture(scope="session")
def velero(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeleroStack]:
    # Root only (a network namespace): elsewhere VeleroUnavailable fails the tests with one line, as the node
    # tests do; they never skip.
    with VeleroStack(controlplane, tmp_path_factory.mktemp("velero")) as stack:  # stopped on any failure too
        FIGURES.append("velero up: " + ", ".join(f"{k} {v:.2f} s" for k, v in stack.timings.items()))
        yield stack
    print("\n" + "\n".join(FIGURES))


@pytest.fixture
async def kong(tmp_path: Path) -> AsyncIterator[KongStandIn]:
    async with KongStandIn(tls_dir=tmp_path / "kong-tls") as gateway:
        yield gateway


# --- what to judge by ------------------------------------------------------------------------------------


def hashes_of(data: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in sorted(data.items())}


def secret_hashes(secret: Secret | None) -> dict[str, str]:
    raw = {k: base64.b64decode(v) for k, v in ((secret.data or {}) if secret else {}).items()}
    return hashes_of(raw)


def fp(record: LicenseRecord) -> str:
    assert record.license is not None
    return record.license.fingerprint


def expected(record: LicenseRecord) -> dict[str, str]:
    """What the Secret's data hashes to when it holds ``record``, as the keeper writes it."""
    return hashes_of(desired_secret(record).data)


async def holds(api: AsyncClient, namespace: str, record: LicenseRecord) -> bool:
    return secret_hashes(await read_secret(api, namespace)) == expected(record)


def secret_writes(cp: ControlPlane, namespace: str, since: float) -> list[AuditEntry]:
    entries = cp.audit_entries(since=since, namespace=namespace, resource="secrets")
    return [e for e in entries if e.name == SECRET and e.verb in WRITE_VERBS and e.ok]


async def says(api: AsyncClient, namespace: str, text: str) -> bool:
    return text in await events_text(api, namespace)


async def backup(velero: VeleroStack, namespace: str, tag: str) -> Outcome:
    out = await asyncio.to_thread(velero.backup, f"{tag}-{namespace}", [namespace])
    FIGURES.append(f"backup {out.name}: {out.phase} in {out.seconds:.2f} s, {out.items} items")
    assert out.completed and out.errors == 0, out
    return out


async def restore(velero: VeleroStack, of: Outcome, tag: str, *args: str) -> Outcome:
    out = await asyncio.to_thread(velero.restore, f"{tag}-{of.name}", of.name, *args)
    FIGURES.append(f"restore {out.name} {' '.join(args)}: {out.phase} in {out.seconds:.2f} s, {out.items} items")
    assert out.completed and out.errors == 0, out
    return out


async def newer_from_konnect(k: Any, konnect: KonnectStandIn, api: AsyncClient, namespace: str) -> LicenseRecord:
    """Konnect rotates; the running keeper stores the newer license."""
    newer = konnect.rotate()
    k.signal(signal.SIGHUP)
    await wait_for(lambda: holds(api, namespace, newer), 20)
    return newer


def restored_access(cp: ControlPlane, namespace: str, tmp_path: Path) -> Path:
    """A kubeconfig for the restored keeper ServiceAccount: Velero created it anew (a new uid), so the
    old one's tokens are void, as a pod's would be after a disaster."""
    token = cp.request_token(namespace, "license-keeper")
    path = tmp_path / "restored.kubeconfig"
    return cp.write_kubeconfig(path, token=token, user="license-keeper", namespace=namespace)


def own_by_a_configmap(cp: ControlPlane, namespace: str) -> None:
    """An ownerReference on the Secret, as an operator's or Helm's tooling may set: Velero drops it."""
    owner = cp.must("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    patch = {"metadata": {"ownerReferences": [ref]}}
    path = f"/api/v1/namespaces/{namespace}/secrets/{SECRET}"
    assert cp.request("PATCH", path, patch, content_type="application/merge-patch+json").status == 200


# --- 1. disaster recovery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("made_by", ["keeper", "chart"])
async def test_disaster_recovery_restores_a_secret_the_keeper_starts_ready_from(
    made_by: str,
    velero: VeleroStack,
    controlplane: ControlPlane,
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    kong: KongStandIn,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Back up the namespace; lose it; restore it with Konnect unreachable: the keeper is Ready from the
    restored Secret with no write, and the gateway gets the license."""
    if made_by == "chart":  # the chart's empty Secret, labelled by Helm and marked for adoption
        chart_secret = only(_render_in(namespace, {}), "Secret")
        assert "velero.io/exclude-from-backup" not in chart_secret["metadata"]["labels"]
        controlplane.must("POST", f"/api/v1/namespaces/{namespace}/secrets", chart_secret)
    assert konnect.record is not None
    record = konnect.record
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, record), 20)
    own_by_a_configmap(controlplane, namespace)
    before = await read_secret(admin_api, namespace)
    assert before is not None and "velero.io/exclude-from-backup" not in (before.metadata.labels or {})

    b = await backup(velero, namespace, "dr")
    k.kill()
    await asyncio.to_thread(delete_namespace, controlplane, namespace)
    assert await read_secret(admin_api, namespace) is None
    await konnect.set_mode("blackhole")
    since = time.time()
    r = await restore(velero, b, "dr")

    after = await read_secret(admin_api, namespace)
    assert after is not None and secret_hashes(after) == secret_hashes(before) == expected(record)
    assert after.metadata.uid != before.metadata.uid
    assert not after.metadata.ownerReferences  # Velero drops them; the keeper never needed them
    labels = after.metadata.labels or {}
    assert labels["velero.io/backup-name"] == b.name and labels["velero.io/restore-name"] == r.name
    assert after.metadata.annotations == before.metadata.annotations

    access = restored_access(controlplane, namespace, tmp_path)
    gateway = (f"--deliver=admin-api={kong.address}", f"--deliver-admin-ca-file={kong.tls.ca_file}")
    k2 = keepers("keeper-restored", *gateway, "--delivery-period=2s", kubeconfig=access)
    seconds = await ready(k2, timeout=15)
    delivered = await wait_for(lambda: kong.node.active()[1] == record.document, 60)
    FIGURES.append(
        f"dr ({made_by}): keeper Ready {seconds:.2f} s after start; gateway licensed {delivered:.1f} s later"
    )
    await asyncio.sleep(3)  # time for a write it should not make
    assert await writes(k2) == 0
    written = secret_writes(controlplane, namespace, since)
    # Velero's create (and its own patch after it); nobody else wrote the Secret
    assert written[0].verb == "create" and {e.username for e in written} == {VELERO_USER}, [e.brief() for e in written]
    loaded = f"Loaded {describe(record)} from the Secret at start (put there by Velero restore {r.name})"
    await wait_for(lambda: says(admin_api, namespace, loaded), 10)
    events = await events_text(admin_api, namespace)
    assert not leaks(events)


# --- 2. a restore over a newer license, the keeper running ----------------------------------------------------


async def test_update_restore_over_a_newer_license_is_undone_by_the_running_keeper(
    velero: VeleroStack,
    controlplane: ControlPlane,
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    namespace: str,
) -> None:
    assert konnect.record is not None
    older = konnect.record
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, older), 20)
    b = await backup(velero, namespace, "upd")
    newer = await newer_from_konnect(k, konnect, admin_api, namespace)

    since = time.time()
    r = await restore(velero, b, "upd", "--existing-resource-policy=update")
    await wait_for(lambda: holds(admin_api, namespace, newer), 30)
    written = secret_writes(controlplane, namespace, since)
    who = [e.username for e in written]
    keeper_user = f"system:serviceaccount:{namespace}:license-keeper"
    assert who == [VELERO_USER, keeper_user], [e.brief() for e in written]  # Velero's downgrade, the keeper's fix
    velero_at, fixed_at = (e.at for e in written)
    assert velero_at is not None and fixed_at is not None
    undone = (fixed_at - velero_at).total_seconds()
    FIGURES.append(f"update restore over a newer license undone by the running keeper in {undone:.2f} s")
    assert undone < 5
    await asyncio.sleep(3)  # and it stays: no write back and forth
    assert len(secret_writes(controlplane, namespace, since)) == 2
    replaced = f"RestoredLicenseReplaced Velero restore {r.name} put license {fp(older)}"
    await wait_for(lambda: says(admin_api, namespace, replaced), 10)  # Events are sent in the background
    events = await events_text(admin_api, namespace)
    assert not leaks(events)


async def test_default_restore_skips_an_existing_secret_and_still_reports_completed(
    velero: VeleroStack,
    controlplane: ControlPlane,
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    namespace: str,
) -> None:
    """Without --existing-resource-policy Velero leaves an existing Secret alone, newer license and all, and
    calls that Completed with a warning: a script that checks only the phase does not notice."""
    assert konnect.record is not None
    current = konnect.record
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, current), 20)
    b = await backup(velero, namespace, "skip")
    newer = await newer_from_konnect(k, konnect, admin_api, namespace)
    since = time.time()
    r = await restore(velero, b, "skip")
    assert r.warnings >= 1
    await asyncio.sleep(2)
    assert await holds(admin_api, namespace, newer)
    assert secret_writes(controlplane, namespace, since) == []


# --- 3. a restore while the keeper is down ---------------------------------------------------------------------


@pytest.mark.parametrize("konnect_up", [True, False], ids=["konnect-up", "konnect-down"])
async def test_update_restore_while_the_keeper_is_down(
    konnect_up: bool,
    velero: VeleroStack,
    controlplane: ControlPlane,
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    namespace: str,
) -> None:
    """At start the keeper takes the better of the restored Secret and Konnect; with Konnect down it keeps
    the restored license, and its Events say where that came from."""
    assert konnect.record is not None
    older = konnect.record
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, older), 20)
    b = await backup(velero, namespace, "down")
    newer = await newer_from_konnect(k, konnect, admin_api, namespace)
    assert k.terminate() == 0

    restored_at = time.time()
    r = await restore(velero, b, "down", "--existing-resource-policy=update")
    assert await holds(admin_api, namespace, older)  # Velero rolled the license back
    # It rolls the Lease back too (to the stopped keeper-0, long since renewed): the next keeper leads only
    # once that expires (15 s), so Konnect's newer license comes back after about that long.
    lease = controlplane.audit_entries(since=restored_at, namespace=namespace, resource="leases")
    assert [(e.username, e.verb) for e in lease if e.verb in WRITE_VERBS and e.ok] == [(VELERO_USER, "patch")]
    if not konnect_up:
        await konnect.set_mode("blackhole")
    since = time.time()
    k2 = keepers("keeper-1")
    await ready(k2, timeout=15)
    events = lambda: events_text(admin_api, namespace)  # noqa: E731
    loaded = f"Loaded {describe(older)} from the Secret at start (put there by Velero restore {r.name})"
    if konnect_up:
        took = await wait_for(lambda: holds(admin_api, namespace, newer), 60)
        FIGURES.append(f"keeper started after an update restore: Konnect's newer license back in {took:.1f} s")
        assert await writes(k2) == 1
        await wait_for(lambda: says(admin_api, namespace, f"RestoredLicenseReplaced Velero restore {r.name}"), 10)
    else:
        await wait_for(lambda: says(admin_api, namespace, "KonnectUnreachable"), 60)
        assert await holds(admin_api, namespace, older) and await writes(k2) == 0
        assert secret_writes(controlplane, namespace, since) == []
        assert f"keeping license {fp(older)}" in await events()
    await wait_for(lambda: says(admin_api, namespace, loaded), 10)
    assert not leaks(await events())
