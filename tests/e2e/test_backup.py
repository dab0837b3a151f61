"""Backup, restore and offline validation with the real `license-keeper` CLI, as the keeper's ServiceAccount.

Each command runs as its own process (`python -m license_keeper ...`) in a worker thread, so the
Konnect stand-in, which lives on the test's event loop, keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from license_keeper.cli.backup import BACKUP_FORMAT
from license_keeper.kube import Kube
from license_keeper.license import LicenseRecord
from license_keeper.policy import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from license_keeper.store import SecretStore
from license_keeper.testing.controlplane import ServiceAccountAccess
from license_keeper.testing.keeper import clean_environ
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import make_document, make_record

from .conftest import SECRET, KeeperFactory, leaks, read_secret, ready, wait_for, writes

TODAY = datetime.datetime.now(datetime.UTC).date()
CUSTOMER = "Saffron Narwhal Freight Inc"


def lic(updated_at: int, days: int = 365) -> LicenseRecord:
    return make_record(
        updated_at=updated_at,
        customer=CUSTOMER,
        creation_date=TODAY - datetime.timedelta(days=400),
        expiration_date=TODAY + datetime.timedelta(days=days),
    )


async def cli(*args: str, access: ServiceAccountAccess | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_environ()
    cluster = [f"--kubeconfig={access.kubeconfig}", f"--namespace={access.namespace}"] if access else []
    command = [sys.executable, "-m", "license_keeper", *args, *cluster]
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=env, timeout=60)


def data_of(secret: Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def assert_gateway_ready(secret: Secret | None, record: LicenseRecord) -> None:
    """What Kong's chart (key `license`) and KIC 3.5 (payload/id/updated_at) read."""
    assert secret is not None
    data = data_of(secret)
    assert data == {
        "license": record.document,
        "payload": record.document,
        "id": record.id,
        "updated_at": str(record.updated_at),
    }
    assert secret.metadata.labels[MANAGED_BY_LABEL] == MANAGED_BY_VALUE


async def store_as_admin(admin_kube: Kube, admin_api: AsyncClient, namespace: str, record: LicenseRecord) -> Secret:
    outcome = await SecretStore(admin_kube, namespace, SECRET).sync(record)
    assert outcome.wrote
    secret = await read_secret(admin_api, namespace)
    assert secret is not None
    return secret


def assert_no_license_text(text: str, record: LicenseRecord) -> None:
    assert record.document not in text
    assert CUSTOMER not in text
    assert record.license is not None
    assert record.license.license_key not in text and record.license.signature[:32] not in text
    assert not leaks(text.replace(record.license.fingerprint, ""))


async def test_export_writes_a_private_backup(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    record = lic(1_718_000_000)
    await store_as_admin(admin_kube, admin_api, namespace, record)
    backup = tmp_path / "backup.json"
    out = await cli("export", "--file", str(backup), access=keeper_access)
    assert out.returncode == 0, out.stderr
    assert "warning" in out.stderr.lower() and "holds the license" in out.stderr
    assert_no_license_text(out.stdout + out.stderr, record)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    content = json.loads(backup.read_text())
    assert content["format"] == BACKUP_FORMAT == "license-keeper/backup/v1"
    assert content["document"] == record.document
    assert content["id"] == record.id and content["updated_at"] == record.updated_at
    assert content["secret"] == f"{namespace}/{SECRET}"
    assert record.license is not None
    assert content["fingerprint"] == record.license.fingerprint
    assert content["expiration_date"] == record.license.expiration_date.isoformat()


async def test_export_over_an_existing_readable_file_leaves_it_private(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    await store_as_admin(admin_kube, admin_api, namespace, lic(1_718_000_000))
    backup = tmp_path / "backup.json"
    backup.write_text("old")
    backup.chmod(0o644)
    out = await cli("export", "--file", str(backup), access=keeper_access)
    assert out.returncode == 3 and "exists; pass --overwrite" in out.stderr
    assert backup.read_text() == "old"
    out = await cli("export", "--file", str(backup), "--overwrite", access=keeper_access)
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600


async def test_export_of_a_missing_secret_fails(keeper_access: ServiceAccountAccess, tmp_path: Path) -> None:
    backup = tmp_path / "backup.json"
    out = await cli("export", "--file", str(backup), access=keeper_access)
    assert out.returncode == 2
    assert "holds no valid license" in out.stderr and "Traceback" not in out.stderr
    assert not backup.exists()


def assert_one_error_line(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    """"Could not check" (3: the file cannot be written) and one `error:` line (exit 1 means "expiring")."""
    assert out.returncode == 3, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


async def test_export_into_a_missing_directory_is_one_error_line(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    """Issue 26 item 2: a missing directory printed a traceback and exited 1, the code `status` uses
    for "expiring"."""
    record = lic(1_718_000_000)
    await store_as_admin(admin_kube, admin_api, namespace, record)
    backup = tmp_path / "no-such-dir" / "backup.json"
    out = await cli("export", "--file", str(backup), access=keeper_access)
    assert_one_error_line(out, f"cannot write {backup}", "No such file or directory")
    assert_no_license_text(out.stdout + out.stderr, record)
    assert not backup.parent.exists()


async def test_export_that_fails_while_writing_leaves_nothing_half_written(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    """A write that fails half way (the disk fills up: here a file size limit, EFBIG) leaves the old
    backup as it was and no temporary file beside it, and says so in one line."""
    import resource

    record = lic(1_718_000_000)
    await store_as_admin(admin_kube, admin_api, namespace, record)
    backups = tmp_path / "backups"
    backups.mkdir()
    backup = backups / "backup.json"
    backup.write_text("the previous backup\n")

    def small_files() -> None:  # in the child: writes past 512 bytes fail (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

    command = [sys.executable, "-m", "license_keeper", "export", "--file", str(backup), "--overwrite"]
    command += [f"--kubeconfig={keeper_access.kubeconfig}", f"--namespace={keeper_access.namespace}"]
    out = await asyncio.to_thread(
        subprocess.run,
        command,
        capture_output=True,
        text=True,
        env=clean_environ() | {"PYTHONDONTWRITEBYTECODE": "1"},
        timeout=60,
        preexec_fn=small_files,
    )
    assert_one_error_line(out, f"cannot write {backup}", "too large")
    assert_no_license_text(out.stdout + out.stderr, record)
    assert backup.read_text() == "the previous backup\n"
    assert sorted(p.name for p in backups.iterdir()) == ["backup.json"]


async def test_restore_into_a_missing_secret_creates_it(
    keeper_access: ServiceAccountAccess, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    record = lic(1_718_000_000)
    backup = tmp_path / "backup.json"
    backup.write_text(
        json.dumps(
            {"format": BACKUP_FORMAT, "id": record.id, "updated_at": record.updated_at, "document": record.document}
        )
    )
    assert await read_secret(admin_api, namespace) is None
    out = await cli("restore", "-f", str(backup), access=keeper_access)
    assert out.returncode == 0, out.stderr
    assert "restored" in out.stdout
    assert_no_license_text(out.stdout + out.stderr, record)
    assert_gateway_ready(await read_secret(admin_api, namespace), record)

    again = await cli("restore", "-f", str(backup), access=keeper_access)
    assert again.returncode == 0 and "already holds this license" in again.stdout


async def test_restore_refuses_to_downgrade_unless_forced(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    older, newer = lic(1_600_000_000), lic(1_700_000_000)
    await store_as_admin(admin_kube, admin_api, namespace, older)
    backup = tmp_path / "older.json"
    out = await cli("export", "--file", str(backup), access=keeper_access)
    assert out.returncode == 0, out.stderr

    current = await store_as_admin(admin_kube, admin_api, namespace, newer)
    out = await cli("restore", "-f", str(backup), access=keeper_access)
    assert out.returncode == 2
    assert "refusing to downgrade" in out.stderr and "--force" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert_no_license_text(out.stdout + out.stderr, older)
    untouched = await read_secret(admin_api, namespace)
    assert untouched is not None and untouched.metadata.resourceVersion == current.metadata.resourceVersion
    assert_gateway_ready(untouched, newer)

    out = await cli("restore", "-f", str(backup), "--force", access=keeper_access)
    assert out.returncode == 0, out.stderr
    assert "by force" in out.stdout
    assert_gateway_ready(await read_secret(admin_api, namespace), older)


async def test_restore_leaves_a_foreign_secret_alone(
    keeper_access: ServiceAccountAccess, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    foreign = await admin_api.create(
        Secret(metadata=ObjectMeta(name=SECRET), data={"license": base64.b64encode(b"x").decode()}),
        namespace=namespace,
    )
    record = lic(1_700_000_000)
    backup = tmp_path / "backup.json"
    backup.write_text(
        json.dumps(
            {"format": BACKUP_FORMAT, "id": record.id, "updated_at": record.updated_at, "document": record.document}
        )
    )
    for extra in ([], ["--force"]):
        out = await cli("restore", "-f", str(backup), *extra, access=keeper_access)
        assert out.returncode == 2 and "not managed by license-keeper" in out.stderr
    after = await read_secret(admin_api, namespace)
    assert after is not None and after.metadata.resourceVersion == foreign.metadata.resourceVersion


async def test_validate_backups_and_documents(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    record = lic(1_718_000_000, days=365)
    await store_as_admin(admin_kube, admin_api, namespace, record)
    backup = tmp_path / "backup.json"
    assert (await cli("export", "--file", str(backup), access=keeper_access)).returncode == 0
    raw = tmp_path / "license.json"
    raw.write_text(record.document)
    expired = tmp_path / "expired.json"
    expired.write_text(
        make_document(
            customer=CUSTOMER,
            creation_date=TODAY - datetime.timedelta(days=800),
            expiration_date=TODAY - datetime.timedelta(days=1),
        )
    )
    assert record.license is not None
    invalid = tmp_path / "invalid.json"
    invalid.write_text(make_document(customer=CUSTOMER, expiration_date="2031-13-01"))

    for path in (backup, raw):
        out = await cli("validate", str(path))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "valid" in out.stdout and record.license.fingerprint in out.stdout
        out = await cli("validate", str(path), "--renew-before=400d")
        assert out.returncode == 1 and "expiring" in out.stdout
    out = await cli("validate", str(expired))
    assert out.returncode == 2 and "expired" in out.stdout
    for output in ("text", "json"):
        out = await cli("validate", str(invalid), "-o", output)
        assert out.returncode == 2
        assert "license_expiration_date" in out.stdout  # the field ...
        assert "2031-13-01" not in out.stdout + out.stderr  # ... never the value
        assert CUSTOMER not in out.stdout + out.stderr


async def test_restore_drill_konnect_down_secret_deleted_keeper_killed(
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    keeper_access: ServiceAccountAccess,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    record = konnect.record
    assert record is not None
    first = keepers("keeper-0")
    await ready(first)
    await wait_for(lambda: _holds(admin_api, namespace, record), 20)

    backup = tmp_path / "drill-backup.json"
    out = await cli("export", "--file", str(backup), access=keeper_access)
    assert out.returncode == 0, out.stderr

    # The bad day: Konnect fails, the Secret is deleted, and the only keeper dies before recreating it.
    await konnect.set_mode("server_error")
    first.kill()
    await admin_api.delete(Secret, SECRET, namespace=namespace)
    await asyncio.sleep(1)
    assert await read_secret(admin_api, namespace) is None  # nothing brought it back

    out = await cli("restore", "-f", str(backup), access=keeper_access)
    assert out.returncode == 0, out.stderr
    restored = await read_secret(admin_api, namespace)
    assert_gateway_ready(restored, record)
    assert restored is not None

    second = keepers("keeper-1")
    seconds = await ready(second, timeout=10)
    print(f"\nready {seconds:.2f} s after start from the restored Secret, Konnect failing")
    assert seconds < 5.0
    assert await writes(second) == 0
    # Once it leads and has asked the failing Konnect, it still has written nothing.
    failed_before = konnect.requests_by_mode.get("server_error", 0)
    await wait_for(lambda: asyncio.to_thread(lambda: second.metric("license_keeper_leader") == 1), 40)
    await wait_for(lambda: konnect.requests_by_mode.get("server_error", 0) > failed_before, 30)
    assert await writes(second) == 0
    after = await read_secret(admin_api, namespace)
    assert after is not None and after.metadata.resourceVersion == restored.metadata.resourceVersion


async def _holds(api: AsyncClient, namespace: str, record: LicenseRecord) -> bool:
    secret = await read_secret(api, namespace)
    return secret is not None and data_of(secret).get("license") == record.document


async def test_a_running_keeper_picks_up_a_restored_newer_license(
    keepers: KeeperFactory,
    konnect: KonnectStandIn,
    keeper_access: ServiceAccountAccess,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    # updated_at is checked against the clock (at most a day ahead), so both are relative to now.
    served = lic(updated_at=int(time.time()) - 7200, days=200)
    konnect.serve(served)
    k = keepers("keeper-0", "--polling-period=300ms", "--initial-polling-period=300ms")
    await ready(k)
    await wait_for(lambda: _holds(admin_api, namespace, served), 20)

    newer = lic(updated_at=served.updated_at + 3600, days=400)
    backup = tmp_path / "newer.json"
    backup.write_text(
        json.dumps(
            {
                "format": "license-keeper/backup/v1",
                "id": newer.id,
                "updated_at": newer.updated_at,
                "document": newer.document,
            }
        )
    )
    backup.chmod(0o600)
    out = await cli("restore", "-f", str(backup), access=keeper_access)
    assert out.returncode == 0, out.stderr
    key = f'license_keeper_license_info{{fingerprint="{newer.license.fingerprint}",source="secret"}}'
    await wait_for(lambda: asyncio.to_thread(lambda: k.metric(key) == 1), 10)
    # The keeper now holds the restored license; Konnect's older one does not overwrite it.
    seen = konnect.requests
    await wait_for(lambda: konnect.requests >= seen + 5, 20)
    assert await _holds(admin_api, namespace, newer)
    assert await writes(k) == 1  # only its own first create; the restore was the CLI's write


async def cli_piped(first: list[str], second: list[str], access: ServiceAccountAccess) -> tuple[str, str, int]:
    """`license-keeper FIRST | license-keeper SECOND`, both as ``access``."""
    one = await cli(*first, access=access)
    assert one.returncode == 0, one.stderr
    env = clean_environ()
    cluster = [f"--kubeconfig={access.kubeconfig}", f"--namespace={access.namespace}"]
    command = [sys.executable, "-m", "license_keeper", *second, *cluster]
    two = await asyncio.to_thread(
        subprocess.run, command, input=one.stdout, capture_output=True, text=True, env=env, timeout=60
    )
    return one.stdout + one.stderr, two.stdout + two.stderr, two.returncode


async def test_export_to_stdout_in_yaml_pipes_into_restore(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    """`export --file -` writes the backup alone to stdout (for sops or age), `-o yaml` in YAML, and
    `restore -f -` reads it back from stdin."""
    record = lic(1_718_000_000)
    await store_as_admin(admin_kube, admin_api, namespace, record)
    out = await cli("export", "--file", "-", "-o", "yaml", access=keeper_access)
    assert out.returncode == 0, out.stderr
    backup = yaml.safe_load(out.stdout)
    assert backup["format"] == BACKUP_FORMAT and backup["document"] == record.document
    assert "wrote the backup to stdout" in out.stderr and "holds the license" in out.stderr
    assert_no_license_text(out.stderr, record)

    # The YAML backup restores a deleted Secret ...
    await admin_api.delete(Secret, SECRET, namespace=namespace)
    yaml_file = tmp_path / "backup.yaml"
    yaml_file.write_text(out.stdout)
    done = await cli("restore", "-f", str(yaml_file), "-o", "json", access=keeper_access)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "restored"
    assert_gateway_ready(await read_secret(admin_api, namespace), record)
    # ... and a JSON one goes through a pipe.
    exported, restored, code = await cli_piped(["export", "--file", "-"], ["restore", "-f", "-"], keeper_access)
    assert code == 0 and "already holds this license" in restored, restored
    assert json.loads(exported.split("\nwrote the backup")[0])["document"] == record.document


async def test_status_speaks_json_and_yaml_alike(
    keeper_access: ServiceAccountAccess, admin_kube: Kube, admin_api: AsyncClient, namespace: str
) -> None:
    await store_as_admin(admin_kube, admin_api, namespace, lic(1_718_000_000))
    as_json = await cli("status", "-o", "json", access=keeper_access)
    as_yaml = await cli("status", "-o", "yaml", access=keeper_access)
    assert as_json.returncode == as_yaml.returncode == 0, as_json.stderr + as_yaml.stderr
    left, right = json.loads(as_json.stdout), yaml.safe_load(as_yaml.stdout)
    for report in (left, right):
        report.pop("days_left")  # moves between the two calls
    assert left == right and left["state"] == "valid"
