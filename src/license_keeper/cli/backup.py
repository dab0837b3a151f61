"""`export` and `restore`: the backup file format, reading it (or Kong's license file) back, and writing
private files."""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import secrets
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..config import ConfigError
from ..kube import Kube, KubeError
from ..license import LicenseRecord, UpdatedAtError, describe, format_restored_at, parse_updated_at
from ..policy import record_from_secret
from .common import (
    EXIT_BAD,
    EXIT_UNKNOWN,
    UnreadableInput,
    connect,
    emit,
    fail,
    fail_store,
    load_structured,
    output_option,
    read_capped,
    run_async,
    secret_options,
    settings_from,
)
from .errors import KeeperCommand, exit_codes_epilog

__all__ = ["BACKUP_FORMAT", "export_", "license_from_bytes", "read_license_file", "restore", "write_private"]

BACKUP_FORMAT = "license-keeper/backup/v1"


@click.command(name="export", cls=KeeperCommand, epilog=exit_codes_epilog("export"))
@secret_options
@click.option(
    "-f",
    "--file",
    "file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="Backup file to write (mode 0600); '-' writes it to stdout, e.g. straight into sops or age.",
)
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists (without it, an existing FILE is an error).")
@output_option("json", "yaml", default="json", text="Format of the backup.")
def export_(file: Path, overwrite: bool, output: str, **flags: Any) -> None:
    """Write the license held in the Secret, with its metadata, to a backup file (`restore` reads it).

    The backup holds the license itself: keep it like a Secret.
    """
    from ..store import SecretStore, StoreError

    settings = settings_from(**flags)
    to_stdout = str(file) == "-"
    if not to_stdout and not overwrite and os.path.lexists(file):  # say so before asking the cluster
        fail(f"{file} exists; pass --overwrite to replace it", EXIT_UNKNOWN)

    async def go() -> int:
        namespace, api = await connect(settings)
        try:
            snapshot = await SecretStore(api, namespace, settings.effective_secret_name).read()
        except StoreError as e:
            fail_store(e, api)
        finally:
            await api.close()
        record = record_from_secret(snapshot, now=datetime.now(UTC))
        if record is None or not record.valid:
            fail(f"Secret {namespace}/{settings.effective_secret_name} holds no valid license to export")
        assert record is not None and record.license is not None
        backup = {
            "format": BACKUP_FORMAT,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "secret": f"{namespace}/{settings.effective_secret_name}",
            "id": record.id,
            "updated_at": record.updated_at,
            "expiration_date": record.license.expiration_date.isoformat(),
            "fingerprint": record.license.fingerprint,
            "document": record.document,
        }
        text = backup_text(backup, output)
        if to_stdout:
            click.echo(text, nl=False)
        else:
            _write_backup(file, text, overwrite=overwrite)
        # With '-' stdout carries the backup alone: the words go to stderr.
        click.echo(f"wrote {'the backup to stdout' if to_stdout else file} ({describe(record)})", err=to_stdout)
        click.echo("warning: the backup holds the license; store it like a Secret", err=True)
        return 0

    sys.exit(run_async(go()))


def backup_text(backup: dict[str, Any], output: str) -> str:
    if output == "yaml":
        import yaml  # lightkube's dependency

        # One line per value, however long: the document is a JSON string and stays byte for byte.
        return str(yaml.safe_dump(backup, sort_keys=False, allow_unicode=True, width=2**31))
    return json.dumps(backup, indent=2) + "\n"


def _write_backup(file: Path, text: str, *, overwrite: bool) -> None:
    try:
        write_private(file, text, overwrite=overwrite)
    except FileExistsError:  # created since the check at start
        fail(f"{file} exists; pass --overwrite to replace it", EXIT_UNKNOWN)
    except OSError as e:
        fail(f"cannot write {file}: {e.strerror}", EXIT_UNKNOWN)


def write_private(path: Path, text: str, *, overwrite: bool = True) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (0600) from the first byte.

    The temporary file has a unique name and is created with O_EXCL|O_NOFOLLOW, so a file or symlink
    planted beside the target is never opened, followed or truncated; it is fsynced before the rename
    over ``path`` (which replaces a symlink at ``path`` itself, never its target). Without
    ``overwrite`` it is linked into place instead, which fails with FileExistsError if ``path`` exists.
    """
    directory = path.parent
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 16 collisions of 64 random bits
        raise OSError(errno.EEXIST, "cannot create a unique temporary file", str(directory))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory is synced; not every filesystem allows it.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def license_from_bytes(raw: bytes, now: datetime) -> LicenseRecord:
    """The license in a file: a license-keeper backup, or Kong's license file itself (the JSON document,
    as Kong support sends it and as KONG_LICENSE_DATA holds it). The one reader of `validate` and `restore`.

    A backup brings Konnect's id and updated_at; a license file has none (empty id, updated_at 0).
    Raises ConfigError with one line naming the field, never a value. The record may be expired.
    """
    try:
        text = raw.decode("utf-8")  # strict: a Latin-1 file is not a license Kong would accept
    except UnicodeDecodeError:
        raise ConfigError("license document: is not valid UTF-8") from None
    try:
        data = load_structured(raw)  # JSON, or the YAML `export -o yaml` writes
    except ValueError:
        data = None  # parse_license names the problem below
    record_id, updated_at = "", 0
    if isinstance(data, dict) and "format" in data:
        if data.get("format") != BACKUP_FORMAT:
            raise ConfigError(f"not a license-keeper backup (format is not {BACKUP_FORMAT}) nor a license document")
        document, record_id = data.get("document"), data.get("id", "")
        if not isinstance(document, str):
            raise ConfigError("license document: is missing from the backup")
        if not isinstance(record_id, str):
            raise ConfigError("backup has a bad id")
        try:
            updated_at = parse_updated_at(data.get("updated_at", 0), now)
        except UpdatedAtError as e:
            raise ConfigError(f"backup {e}") from None
        text = document
    record = LicenseRecord(document=text.strip(), id=record_id, updated_at=updated_at, source="file")
    if not record.valid:
        raise ConfigError(str(record.problem))
    return record


def read_license_file(path: Path, now: datetime | None = None) -> LicenseRecord:
    """``license_from_bytes`` of a file ('-' for stdin); the error names the file."""
    raw = read_capped(path)
    try:
        return license_from_bytes(raw, now or datetime.now(UTC))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


async def who_restores(api: Kube) -> str:
    """Who runs the restore, for the Secret's restored-by: the API server's name for the caller
    (SelfSubjectReview, which every authenticated user may create), else the local user and host."""
    try:
        review = await api.request(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            what="create SelfSubjectReview",
            timeout=10.0,
        )
        name = ((review.get("status") or {}).get("userInfo") or {}).get("username")
        if isinstance(name, str) and name.strip():
            return _printable(name)
    except (KubeError, ValueError):
        pass
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return _printable(f"{user}@{socket.gethostname()}")


def _printable(text: str) -> str:
    return "".join(c for c in text if c.isprintable())[:253]


@click.command(cls=KeeperCommand, epilog=exit_codes_epilog("restore"))
@secret_options
@click.option(
    "-f",
    "--file",
    "file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="Kong's license file (the JSON document, as Kong support sends it) or a backup written by `export` "
    "(JSON or YAML); '-' reads stdin, e.g. from sops or age.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write even a worse license than the Secret's (one that expires earlier). It stays until Konnect "
    "serves a license updated after the restore. An expired license is never written over an unexpired one.",
)
@output_option()
def restore(file: Path, force: bool, output: str, **flags: Any) -> None:
    """Put a license into the Secret: an operator's restore, which ranks from the moment of the restore.

    The license stays until Konnect serves a license updated after the restore: a running keeper takes
    it from the Secret, keeps it against Konnect's older license and says so in a LicenseRestored Event.
    Refuses a worse license than the Secret's (expired, or expiring earlier) unless --force.
    Works with or without a running keeper.
    """
    from ..policy import SecretState, as_restored, foreign_advice, manageable, restore_downgrade
    from ..store import SecretStore, StoreError

    settings = settings_from(**flags)
    try:
        settings.require_own_secret()
        record = read_license_file(file)
    except ConfigError as e:
        fail(str(e), EXIT_UNKNOWN if isinstance(e, UnreadableInput) else EXIT_BAD)

    async def go() -> int:
        namespace, api = await connect(settings)
        name = settings.effective_secret_name
        what = f"Secret {namespace}/{name}"
        try:
            store = SecretStore(api, namespace, name)
            current = await store.read()
            now = datetime.now(UTC)
            in_secret = record_from_secret(current, now=now)
            if current.exists and not manageable(current):
                fail(foreign_advice(current, name))
            if in_secret is not None and in_secret.valid and in_secret.document == record.document:
                click.echo(f"{what}: already holds this license ({describe(in_secret)})")
                return 0
            worse_by = restore_downgrade(in_secret, record, now)
            if worse_by == "unexpired":
                fail(
                    f"{what} holds an unexpired license ({describe(in_secret)}) and the file's has expired "
                    "(decided by unexpired); no keeper keeps an expired license over an unexpired one, "
                    "so not even --force writes it"
                )
            if worse_by is not None and not force:
                fail(
                    f"{what} holds a better license ({describe(in_secret)}; decided by {worse_by}); "
                    "refusing to downgrade (use --force)"
                )
            restored = as_restored(record, at=int(now.timestamp()), by=await who_restores(api))
            outcome = await store.sync(restored, now, snapshot=current, reason="restore", force=True)
        except StoreError as e:
            fail_store(e, api)
        finally:
            await api.close()
        if outcome.refused is SecretState.IMMUTABLE:
            fail(f"{what} is immutable; cannot restore into it")
        if outcome.refused is SecretState.FOREIGN:
            fail(foreign_advice(outcome.snapshot, name))
        verb = "restored by force" if worse_by is not None else "restored"
        at = format_restored_at(restored.restored_at)
        secret = what.removeprefix("Secret ")
        report = {"secret": secret, "result": verb, "license": describe(record), "restored_at": at}
        emit(
            report,
            output,
            lambda r: f"{what}: {r['result']} ({r['license']}) at {r['restored_at']}; "
            "it stays until Konnect serves a license updated after that",
        )
        return 0

    sys.exit(run_async(go()))
