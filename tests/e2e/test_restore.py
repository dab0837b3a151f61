"""Issue 21: the expiry runbook's restore on a live control plane, with real keeper processes.

An operator's restore (Kong's license file as support sends it, or a backup) ranks from the moment of the
restore: it stays until Konnect serves a license updated after it, whichever replica leads, and the keeper
says so in an Event. `--force` is the only way to write a worse license, and it is not undone either.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time
from pathlib import Path

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event, Secret

from license_keeper.kube import Kube
from license_keeper.license import LicenseRecord
from license_keeper.store import SecretStore
from license_keeper.testing.controlplane import ServiceAccountAccess
from license_keeper.testing.keeper import KeeperProcess
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import make_record

from .conftest import SECRET, KeeperFactory, read_secret, ready, wait_for, writes
from .test_backup import cli

FAST = ("--polling-period=300ms", "--initial-polling-period=300ms")
TODAY = datetime.datetime.now(datetime.UTC).date()
RESTORED_AT = "license-keeper.io/restored-at"
RESTORED_BY = "license-keeper.io/restored-by"


def lic(updated_at: int, days: int) -> LicenseRecord:
    return make_record(
        updated_at=updated_at,
        creation_date=TODAY - datetime.timedelta(days=30),
        expiration_date=TODAY + datetime.timedelta(days=days),
    )


def document_of(secret: Secret | None) -> str | None:
    if secret is None or not secret.data or "license" not in secret.data:
        return None
    return base64.b64decode(secret.data["license"]).decode()


async def holds(api: AsyncClient, namespace: str, record: LicenseRecord) -> bool:
    secret = await read_secret(api, namespace)
    return document_of(secret) == record.document and base64.b64decode(secret.data["payload"]).decode() == (
        record.document
    )


def holding(k: KeeperProcess, record: LicenseRecord) -> bool:
    assert record.license is not None
    fingerprint = record.license.fingerprint
    return any(
        key.startswith("license_keeper_license_info{") and f'fingerprint="{fingerprint}"' in key and v == 1
        for key, v in k.metrics().items()
    )


async def events(api: AsyncClient, namespace: str) -> list[Event]:
    return [e async for e in api.list(Event, namespace=namespace)]


async def leader_of(keepers: list[KeeperProcess]) -> KeeperProcess:
    async def find() -> KeeperProcess | None:
        for k in keepers:
            if k.exited() is None and await asyncio.to_thread(k.metric, "license_keeper_leader") == 1:
                return k
        return None

    await wait_for(find, 30)
    found = await find()
    assert found is not None
    return found


async def polls(konnect: KonnectStandIn, n: int) -> None:
    """Let the leader ask Konnect ``n`` more times."""
    seen = konnect.requests
    await wait_for(lambda: konnect.requests >= seen + n, 30)


def license_file(directory: Path, record: LicenseRecord, form: str) -> Path:
    """Kong's license file as support sends it (the document and a newline), or it wrapped in the backup
    format without Konnect metadata (id and updated_at unknown)."""
    path = directory / f"{form}.json"
    if form == "kong-file":
        path.write_text(record.document + "\n")
    else:
        path.write_text(
            json.dumps({"format": "license-keeper/backup/v1", "id": "", "updated_at": 0, "document": record.document})
        )
    return path


FORMS = pytest.mark.parametrize("form", ["kong-file", "backup"])


async def two_keepers_holding(
    keepers: KeeperFactory, konnect: KonnectStandIn, api: AsyncClient, namespace: str
) -> list[KeeperProcess]:
    replicas = [keepers("keeper-0", *FAST), keepers("keeper-1", *FAST)]
    for k in replicas:
        await ready(k)
    assert konnect.record is not None
    await wait_for(lambda: holds(api, namespace, konnect.record), 20)
    return replicas


@FORMS
async def test_the_expiry_runbook_restore_of_kongs_license_file_sticks_on_two_replicas(
    form: str,
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    keeper_access: ServiceAccountAccess,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Konnect still serves the license that is about to expire; Kong support sent a renewed one by mail.
    expiring = lic(int(time.time()) - 3600, days=5)
    konnect.serve(expiring)
    replicas = await two_keepers_holding(keepers, konnect, admin_api, namespace)
    renewed = lic(0, days=335)
    out = await cli("restore", "-f", str(license_file(tmp_path, renewed, form)), access=keeper_access)
    assert out.returncode == 0, out.stderr
    assert "restored" in out.stdout and "by force" not in out.stdout
    restored = await read_secret(admin_api, namespace)
    assert document_of(restored) == renewed.document
    assert restored is not None and restored.metadata.annotations is not None
    assert RESTORED_AT in restored.metadata.annotations
    assert restored.metadata.annotations[RESTORED_BY]  # who did it
    writes_before = [await writes(k) for k in replicas]

    # Both replicas take it from the Secret; the leader keeps asking Konnect, which serves the old license.
    for k in replicas:
        await wait_for(lambda k=k: asyncio.to_thread(holding, k, renewed), 10)
    await polls(konnect, 10)
    after = await read_secret(admin_api, namespace)
    assert after is not None and after.metadata.resourceVersion == restored.metadata.resourceVersion
    assert [await writes(k) for k in replicas] == writes_before

    # The keeper says so, naming the restore (fingerprints and dates only).
    assert renewed.license is not None
    said = [e for e in await events(admin_api, namespace) if e.reason == "LicenseRestored"]
    assert said, "no LicenseRestored Event"
    assert any(renewed.license.fingerprint in (e.message or "") for e in said)
    assert all(e.type == "Normal" for e in said)

    # The other replica takes over: it does not put Konnect's license back either.
    leader = await leader_of(replicas)
    leader.kill()
    survivor = next(k for k in replicas if k is not leader)
    await wait_for(lambda: asyncio.to_thread(survivor.metric, "license_keeper_leader"), 30)
    await polls(konnect, 10)
    final = await read_secret(admin_api, namespace)
    assert final is not None and final.metadata.resourceVersion == restored.metadata.resourceVersion
    assert await writes(survivor) == writes_before[replicas.index(survivor)]


@FORMS
async def test_a_forced_downgrade_is_not_undone(
    form: str,
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    keeper_access: ServiceAccountAccess,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    konnect.serve(lic(int(time.time()) - 3600, days=335))
    replicas = await two_keepers_holding(keepers, konnect, admin_api, namespace)
    shorter = lic(0, days=10)
    path = license_file(tmp_path, shorter, form)
    out = await cli("restore", "-f", str(path), "--force", access=keeper_access)
    assert out.returncode == 0, out.stderr
    assert "by force" in out.stdout
    forced = await read_secret(admin_api, namespace)
    assert document_of(forced) == shorter.document
    writes_before = [await writes(k) for k in replicas]
    for k in replicas:
        await wait_for(lambda k=k: asyncio.to_thread(holding, k, shorter), 10)
    await polls(konnect, 10)
    after = await read_secret(admin_api, namespace)
    assert after is not None and forced is not None
    assert after.metadata.resourceVersion == forced.metadata.resourceVersion  # not put back a second later
    assert [await writes(k) for k in replicas] == writes_before
    assert shorter.license is not None
    warned = [
        e
        for e in await events(admin_api, namespace)
        if e.reason == "LicenseRestored" and shorter.license.fingerprint in (e.message or "")
    ]
    assert warned and all(e.type == "Warning" for e in warned), [(e.type, e.message) for e in warned]


@FORMS
async def test_a_worse_license_is_refused_without_force(
    form: str,
    konnect: KonnectStandIn,
    keeper_access: ServiceAccountAccess,
    admin_kube: Kube,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    current = lic(int(time.time()) - 3600, days=335)
    outcome = await SecretStore(admin_kube, namespace, SECRET).sync(current)
    assert outcome.wrote
    before = await read_secret(admin_api, namespace)
    out = await cli("restore", "-f", str(license_file(tmp_path, lic(0, days=10), form)), access=keeper_access)
    assert out.returncode == 2
    assert "refusing to downgrade" in out.stderr and "later_expiration" in out.stderr and "--force" in out.stderr
    # An expired license over an unexpired one: no keeper would keep it, so not even --force writes it.
    expired = license_file(tmp_path, lic(0, days=-2), form)
    for force in ([], ["--force"]):
        out = await cli("restore", "-f", str(expired), *force, access=keeper_access)
        assert out.returncode == 2
        assert "expired" in out.stderr and "unexpired" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    after = await read_secret(admin_api, namespace)
    assert before is not None and after is not None
    assert after.metadata.resourceVersion == before.metadata.resourceVersion


async def test_a_konnect_license_updated_after_the_restore_replaces_it(
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    keeper_access: ServiceAccountAccess,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    konnect.serve(lic(int(time.time()) - 3600, days=5))
    replicas = await two_keepers_holding(keepers, konnect, admin_api, namespace)
    renewed = lic(0, days=335)
    out = await cli("restore", "-f", str(license_file(tmp_path, renewed, "kong-file")), access=keeper_access)
    assert out.returncode == 0, out.stderr
    restored = await read_secret(admin_api, namespace)
    assert restored is not None and restored.metadata.annotations is not None
    restored_at = datetime.datetime.fromisoformat(restored.metadata.annotations[RESTORED_AT]).timestamp()

    # Konnect gets a license, but one updated before the restore: the restore stays.
    konnect.serve(lic(int(restored_at) - 60, days=400))
    await polls(konnect, 10)
    assert await holds(admin_api, namespace, renewed)

    # Konnect serves a license updated after the restore: the keeper writes it once, marker gone.
    await asyncio.sleep(1.1)
    newer = lic(int(time.time()), days=365)
    assert newer.updated_at > restored_at
    leader = await leader_of(replicas)
    before = await writes(leader)
    konnect.serve(newer)
    await wait_for(lambda: holds(admin_api, namespace, newer), 20)
    replaced = await read_secret(admin_api, namespace)
    assert replaced is not None
    assert RESTORED_AT not in (replaced.metadata.annotations or {})
    assert RESTORED_BY not in (replaced.metadata.annotations or {})
    await polls(konnect, 5)
    assert await writes(leader) == before + 1
    final = await read_secret(admin_api, namespace)
    assert final is not None and final.metadata.resourceVersion == replaced.metadata.resourceVersion
    assert replaced.metadata.name == SECRET
