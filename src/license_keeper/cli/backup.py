"""`export` and `restore`: the backup file format, reading it back, and writing private files."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..config import ConfigError
from ..license import LicenseRecord, UpdatedAtError, describe, parse_updated_at
from ..policy import deciding_rule, is_better, record_from_secret
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

__all__ = ["BACKUP_FORMAT", "export_", "restore", "write_private"]

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


def read_backup(path: Path, now: datetime | None = None) -> LicenseRecord:
    raw = read_capped(path)
    try:
        data = load_structured(raw)  # JSON, or the YAML `export -o yaml` writes
    except ValueError as e:
        raise ConfigError(f"{path} is not a license-keeper backup ({e})") from None
    if not isinstance(data, dict) or data.get("format") != BACKUP_FORMAT:
        raise ConfigError(f"{path} is not a license-keeper backup (format is not {BACKUP_FORMAT})")
    document, record_id = data.get("document"), data.get("id", "")
    if not isinstance(document, str) or not isinstance(record_id, str):
        raise ConfigError(f"{path}: backup lacks the license document or has a bad id")
    try:
        updated_at = parse_updated_at(data.get("updated_at", 0), now or datetime.now(UTC))
    except UpdatedAtError as e:
        raise ConfigError(f"{path}: backup {e}") from None
    record = LicenseRecord(document=document, id=record_id, updated_at=updated_at, source="backup")
    if not record.valid:
        raise ConfigError(f"{path}: {record.problem}")
    return record


@click.command(cls=KeeperCommand, epilog=exit_codes_epilog("restore"))
@secret_options
@click.option(
    "-f",
    "--file",
    "file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="Backup written by `export` (JSON or YAML); '-' reads stdin, e.g. from sops or age.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write even if the Secret holds a better license (a downgrade). "
    "A running keeper restores the better license it holds.",
)
@output_option()
def restore(file: Path, force: bool, output: str, **flags: Any) -> None:
    """Put a backed-up license into the Secret, through the selection policy.

    Refuses to replace a better license unless --force. Works with or without a running keeper;
    a running keeper sees the change through its watch and takes the restored license.
    """
    from ..policy import SecretState, manageable
    from ..store import SecretStore, StoreError

    settings = settings_from(**flags)
    try:
        record = read_backup(file)
    except ConfigError as e:
        fail(str(e), EXIT_UNKNOWN if isinstance(e, UnreadableInput) else EXIT_BAD)

    async def go() -> int:
        namespace, api = await connect(settings)
        what = f"Secret {namespace}/{settings.effective_secret_name}"
        try:
            store = SecretStore(api, namespace, settings.effective_secret_name)
            current = await store.read()
            now = datetime.now(UTC)
            in_secret = record_from_secret(current, now=now)
            if current.exists and not manageable(current):
                fail(f"{what} is not managed by license-keeper; left untouched")
            if in_secret is not None and is_better(in_secret, record, now) and not force:
                rule = deciding_rule(in_secret, record, now)
                fail(
                    f"{what} holds a better license ({describe(in_secret)}; decided by {rule}); "
                    "refusing to downgrade (use --force)"
                )
            outcome = await store.sync(record, now, snapshot=current, reason="restore", force=force)
        except StoreError as e:
            fail_store(e, api)
        finally:
            await api.close()
        if outcome.refused is SecretState.IMMUTABLE:
            fail(f"{what} is immutable; cannot restore into it")
        forced = outcome.wrote and in_secret is not None and is_better(in_secret, record, now)
        verb = "restored by force" if forced else "restored" if outcome.wrote else "already holds this license"
        report = {"secret": what.removeprefix("Secret "), "result": verb, "license": describe(record)}
        emit(report, output, lambda r: f"{what}: {r['result']} ({r['license']})")
        return 0

    sys.exit(run_async(go()))
