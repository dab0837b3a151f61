"""The keeper as a real process, under its least-privilege ServiceAccount, on the real control plane."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import signal
import subprocess
import sys
import time

import pytest
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from license_keeper.policy import MANAGED_BY_LABEL
from license_keeper.testing.controlplane import ControlPlane, ServiceAccountAccess
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import make_record

from .conftest import SECRET, KeeperFactory, events_text, leaks, metrics, read_secret, ready, wait_for, writes

FAST = ("--polling-period=300ms", "--initial-polling-period=300ms")


def payload(secret: Secret | None) -> str | None:
    if secret is None or not secret.data or "payload" not in secret.data:
        return None
    return base64.b64decode(secret.data["payload"]).decode()


async def holds(api: AsyncClient, namespace: str, document: str) -> bool:
    return payload(await read_secret(api, namespace)) == document


async def test_restart_during_konnect_outage_is_ready_from_the_secret(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    assert konnect.record is not None
    first = keepers("keeper-0")
    await ready(first)
    await wait_for(lambda: holds(admin_api, namespace, konnect.record.document), 20)
    stored = await read_secret(admin_api, namespace)
    assert stored is not None
    assert set(stored.data) == {"payload", "id", "updated_at", "license"}
    assert base64.b64decode(stored.data["license"]).decode() == konnect.record.document
    assert base64.b64decode(stored.data["id"]).decode() == konnect.record.id
    assert base64.b64decode(stored.data["updated_at"]).decode() == str(konnect.record.updated_at)
    assert stored.metadata.labels[MANAGED_BY_LABEL] == "license-keeper"
    await wait_for(lambda: writes(first), 5)
    assert (await metrics(first))['license_keeper_secret_writes_total{reason="create"}'] == 1

    await konnect.set_mode("blackhole")
    first.kill()
    second = keepers("keeper-1")
    seconds = await ready(second, timeout=10)
    print(f"\nready {seconds:.2f} s after restart with Konnect black-holed")
    assert seconds < 5.0
    m = await metrics(second)
    assert m['license_keeper_license_state{state="valid"}'] == 1
    assert m[f'license_keeper_license_info{{fingerprint="{konnect.record.license.fingerprint}",source="secret"}}'] == 1
    # Give it time to take the Lease over and call the black hole: still nothing written.
    await asyncio.sleep(20)
    assert await writes(second) == 0
    after = await read_secret(admin_api, namespace)
    assert after is not None and after.metadata.resourceVersion == stored.metadata.resourceVersion
    assert konnect.requests_by_mode.get("blackhole", 0) >= 1
    assert not leaks(await events_text(admin_api, namespace))


async def test_unchanged_license_never_rewrites_the_secret(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    k = keepers("keeper-0", "--polling-period=20ms", "--initial-polling-period=20ms", "--no-leader-elect")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, konnect.record.document), 20)
    version = (await read_secret(admin_api, namespace)).metadata.resourceVersion
    start = konnect.requests
    await wait_for(lambda: konnect.requests - start >= 200, 120)
    assert (await read_secret(admin_api, namespace)).metadata.resourceVersion == version
    m = await metrics(k)
    assert m['license_keeper_konnect_requests_total{result="ok"}'] >= 200
    assert await writes(k) == 1


async def test_konnect_cannot_downgrade_and_a_newer_license_is_one_write(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    now = int(time.time())
    today = datetime.date.today()
    current = make_record(updated_at=now, expiration_date=today + datetime.timedelta(days=200))
    konnect.serve(current)
    k = keepers("keeper-0", *FAST, "--no-leader-elect")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, current.document), 20)
    version = (await read_secret(admin_api, namespace)).metadata.resourceVersion

    older = make_record(updated_at=now - 3600, expiration_date=today + datetime.timedelta(days=900))
    expired = make_record(
        updated_at=now + 3600,
        creation_date=today - datetime.timedelta(days=400),
        expiration_date=today - datetime.timedelta(days=2),
    )
    for worse in (older, expired):
        konnect.serve(worse)
        seen = konnect.requests
        await wait_for(lambda s=seen: konnect.requests >= s + 3, 20)
        assert (await read_secret(admin_api, namespace)).metadata.resourceVersion == version
    assert await writes(k) == 1

    newer = make_record(updated_at=now + 60, expiration_date=today + datetime.timedelta(days=365))
    konnect.serve(newer)
    await wait_for(lambda: holds(admin_api, namespace, newer.document), 20)
    seen = konnect.requests
    await wait_for(lambda: konnect.requests >= seen + 5, 20)
    m = await metrics(k)
    assert m['license_keeper_secret_writes_total{reason="rotate"}'] == 1
    assert await writes(k) == 2


async def test_deleted_secret_is_recreated_and_a_corrupted_one_repaired(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    k = keepers("keeper-0")  # the default 12 h period: repairs come from the watch, not from polling
    await ready(k)
    document = konnect.record.document
    await wait_for(lambda: holds(admin_api, namespace, document), 20)
    await konnect.set_mode("server_error")  # Konnect down: only the held license can repair the Secret

    await admin_api.delete(Secret, SECRET, namespace=namespace)
    took = await wait_for(lambda: holds(admin_api, namespace, document), 10)
    print(f"\nrecreated {took:.2f} s after deletion")

    await admin_api.patch(
        Secret,
        SECRET,
        {"data": {"payload": base64.b64encode(b'{"license": "garbage"}').decode()}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await wait_for(lambda: holds(admin_api, namespace, document), 10)
    worse = make_record(updated_at=1, expiration_date=datetime.date.today() + datetime.timedelta(days=3))
    await admin_api.patch(
        Secret,
        SECRET,
        {"data": {k: base64.b64encode(v).decode() for k, v in {"payload": worse.document.encode()}.items()}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await wait_for(lambda: holds(admin_api, namespace, document), 10)
    m = await metrics(k)
    assert m['license_keeper_secret_writes_total{reason="recreate"}'] == 1
    assert m['license_keeper_secret_writes_total{reason="repair"}'] >= 1
    text = await events_text(admin_api, namespace)
    assert "SecretRecreated" in text and "SecretRepaired" in text
    assert not leaks(text)


async def test_an_operator_restored_newer_license_is_taken(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, konnect.record.document), 20)
    newer = make_record(updated_at=konnect.record.updated_at + 100)
    await admin_api.patch(
        Secret,
        SECRET,
        {
            "data": {
                "payload": base64.b64encode(newer.document.encode()).decode(),
                "license": base64.b64encode(newer.document.encode()).decode(),
                "id": base64.b64encode(newer.id.encode()).decode(),
                "updated_at": base64.b64encode(str(newer.updated_at).encode()).decode(),
            }
        },
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    key = f'license_keeper_license_info{{fingerprint="{newer.license.fingerprint}",source="secret"}}'
    await wait_for(lambda: asyncio.to_thread(lambda: k.metric(key) == 1), 10)
    await asyncio.sleep(1)
    assert await holds(admin_api, namespace, newer.document)  # not overwritten by the older Konnect one


async def test_foreign_secret_is_left_alone_until_adopted(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    foreign = await admin_api.create(
        Secret(
            metadata=ObjectMeta(name=SECRET, labels={"owner": "someone-else"}),
            data={"license": base64.b64encode(b"not a license").decode()},
        ),
        namespace=namespace,
    )
    k = keepers("keeper-0", *FAST)
    await wait_for(lambda: asyncio.to_thread(lambda: k.metric('license_keeper_secret_state{state="foreign"}') == 1), 30)
    await wait_for(lambda: konnect.requests >= 3, 30)
    assert (await read_secret(admin_api, namespace)).metadata.resourceVersion == foreign.metadata.resourceVersion
    assert "ForeignSecret" in await events_text(admin_api, namespace)
    assert await writes(k) == 0

    await admin_api.patch(
        Secret,
        SECRET,
        {"metadata": {"annotations": {"license-keeper.io/adopt": "true"}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await wait_for(lambda: holds(admin_api, namespace, konnect.record.document), 15)
    adopted = await read_secret(admin_api, namespace)
    assert adopted.metadata.labels["owner"] == "someone-else"  # other people's labels survive


async def test_sigterm_exits_zero_and_sighup_polls(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    k = keepers("keeper-0", "--no-leader-elect")
    await ready(k)
    await wait_for(lambda: konnect.requests >= 1, 10)
    before = konnect.requests
    assert await asyncio.to_thread(k.healthy)
    k.signal(signal.SIGHUP)
    await wait_for(lambda: konnect.requests > before, 10)
    assert await asyncio.to_thread(k.terminate) == 0


async def test_keeper_identity_cannot_delete_or_read_other_secrets(
    keeper_access: ServiceAccountAccess, admin_api: AsyncClient, namespace: str, controlplane: ControlPlane
) -> None:
    await admin_api.create(Secret(metadata=ObjectMeta(name="other")), namespace=namespace)
    await admin_api.create(Secret(metadata=ObjectMeta(name=SECRET)), namespace=namespace)
    checks = {
        ("get", SECRET): True,
        ("update", SECRET): False,  # never replaced whole: the keeper's writes are merge patches
        ("patch", SECRET): True,
        ("watch", SECRET): True,
        ("delete", SECRET): False,
        ("get", "other"): False,
        ("list", ""): False,
    }
    for (verb, name), allowed in checks.items():
        review = controlplane.must(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": keeper_access.username,
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                    "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": "secrets", "name": name},
                },
            },
        )
        assert review["status"]["allowed"] is allowed, (verb, name)
    resp = controlplane.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{SECRET}", token=keeper_access.token)
    assert resp.status == 403


async def test_status_reports_the_secret(
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    namespace: str,
    controlplane: ControlPlane,
) -> None:
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, konnect.record.document), 20)
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "license_keeper",
            "status",
            "-o",
            "json",
            f"--kubeconfig={controlplane.admin_kubeconfig}",
            f"--namespace={namespace}",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["state"] == "valid"
    assert report["fingerprint"] == konnect.record.license.fingerprint
    assert report["keys"] == ["id", "license", "payload", "updated_at"]
    assert report["leader"] == "keeper-0"
    assert not leaks(out.stdout.replace(konnect.record.license.fingerprint, ""))


async def _sync_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "license_keeper", "sync", *args], capture_output=True, text=True
    )


async def test_sync_once_polls_konnect_from_here_without_a_keeper(
    konnect: KonnectStandIn,
    admin_api: AsyncClient,
    namespace: str,
    keeper_access: ServiceAccountAccess,
) -> None:
    """`sync --once` asks no keeper (tests/e2e/test_sync.py asks the leader): it polls Konnect itself and
    persists through the policy."""
    konnect_flags = [
        f"--konnect-address={konnect.address}",
        f"--konnect-control-plane-id={konnect.control_plane_id}",
        f"--konnect-tls-client-cert-file={konnect.tls.client_cert_file}",
        f"--konnect-tls-client-key-file={konnect.tls.client_key_file}",
        f"--konnect-ca-file={konnect.tls.ca_file}",
        f"--kubeconfig={keeper_access.kubeconfig}",
        "-n",
        namespace,
    ]
    out = await _sync_cli("--once", *konnect_flags)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("polled Konnect: wrote the Secret (create): license "), out.stdout
    assert await holds(admin_api, namespace, konnect.record.document)
    again = await _sync_cli("--once", "-o", "json", *konnect_flags)
    assert again.returncode == 0 and json.loads(again.stdout)["outcome"] == "unchanged"
    await konnect.set_mode("server_error")
    failed = await _sync_cli("--once", *konnect_flags)
    assert failed.returncode == 2 and failed.stderr.startswith("error: Konnect: ")
    assert not leaks(out.stdout + out.stderr + again.stdout + failed.stderr)


async def test_konnect_without_a_license_keeps_the_held_one(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    k = keepers("keeper-0", *FAST, "--no-leader-elect")
    await ready(k)
    await wait_for(lambda: holds(admin_api, namespace, konnect.record.document), 20)
    version = (await read_secret(admin_api, namespace)).metadata.resourceVersion
    await konnect.set_mode("not_found")
    await wait_for(
        lambda: asyncio.to_thread(lambda: k.metric('license_keeper_konnect_requests_total{result="no_license"}') >= 3),
        20,
    )
    assert (await read_secret(admin_api, namespace)).metadata.resourceVersion == version
    assert await asyncio.to_thread(k.ready)
    assert "no license for this control plane" in k.logs()


async def test_immutable_secret_gets_a_clear_state_and_no_retry_loop(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    old = make_record(updated_at=1, expiration_date=datetime.date.today() + datetime.timedelta(days=30))
    await admin_api.create(
        Secret(
            metadata=ObjectMeta(name=SECRET, labels={MANAGED_BY_LABEL: "license-keeper"}),
            immutable=True,
            data={"payload": base64.b64encode(old.document.encode()).decode()},
        ),
        namespace=namespace,
    )
    k = keepers("keeper-0", *FAST, "--no-leader-elect")
    await wait_for(
        lambda: asyncio.to_thread(lambda: k.metric('license_keeper_secret_state{state="immutable"}') == 1), 30
    )
    start = konnect.requests
    await wait_for(lambda: konnect.requests >= start + 10, 30)
    assert await writes(k) == 0
    assert payload(await read_secret(admin_api, namespace)) == old.document
    assert "SecretImmutable" in await events_text(admin_api, namespace)
    # One error line for the condition, not one per poll.
    assert k.logs().count("immutable") <= 2


@pytest.mark.controlplane
async def test_the_demo_runs_end_to_end() -> None:
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "license_keeper.testing.demo"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "Secret writes by the new keeper: 0; resourceVersion unchanged: True" in out.stdout
    assert "Secret writes: 1 (rotate)" in out.stdout
    assert "the running gateway runs the rotated license" in out.stdout
    assert 'license_keeper_delivery_state{state="drift"} = 1' in out.stdout
    assert out.stdout.count("proves:") == 5
