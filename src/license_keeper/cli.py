"""`license-keeper`: run the keeper, inspect the Secret, validate a license, back up and restore."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from . import __version__
from .config import ConfigError, Settings, load_settings, parse_addr, parse_duration
from .kube import Kube, KubeConfigError, KubeError
from .license import LicenseError, LicenseRecord, parse_license
from .policy import (
    LICENSE_KEYS,
    SecretSnapshot,
    is_better,
    license_state,
    record_from_secret,
    secret_state,
)

if TYPE_CHECKING:
    from .konnect import KonnectClient

F = TypeVar("F", bound=Callable[..., Any])

EXIT_VALID, EXIT_EXPIRING, EXIT_BAD = 0, 1, 2
BACKUP_FORMAT = "license-keeper/backup/v1"


def _fail(message: str, code: int = EXIT_BAD) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _env_help(flag: str, text: str, kic: str | None = None) -> str:
    env = "LICENSE_KEEPER_" + flag.upper().replace("-", "_")
    return f"{text} [env: {env}" + (f", {kic}" if kic else "") + "]"


def _opt(flag: str, text: str, kic: str | None = None, **kw: Any) -> Callable[[F], F]:
    return click.option(f"--{flag}", default=None, help=_env_help(flag, text, kic), **kw)


def secret_options(f: F) -> F:
    """Where the Secret lives: shared by every command that touches the cluster."""
    for deco in reversed(
        [
            _opt("kubeconfig", "Path to a kubeconfig; default in-cluster, else KUBECONFIG or ~/.kube/config."),
            _opt(
                "namespace",
                "Namespace of the Secret; default POD_NAMESPACE, the ServiceAccount's, or the kubeconfig's.",
            ),
            _opt("controller-name", "Controller name; the Secret is <controller-name>-license.  [default: kong]"),
            _opt(
                "secret-name",
                "Secret name, overriding <controller-name>-license (e.g. konnect-license-<cp-id> of KIC 3.5).",
            ),
        ]
    ):
        f = deco(f)
    return f


def konnect_options(f: F) -> F:
    for deco in reversed(
        [
            _opt(
                "konnect-address",
                "Konnect API address.  [default: https://us.kic.api.konghq.com]",
                "CONTROLLER_KONNECT_ADDRESS",
            ),
            _opt(
                "konnect-control-plane-id",
                "Konnect control plane ID (required).",
                "CONTROLLER_KONNECT_CONTROL_PLANE_ID",
            ),
            _opt(
                "konnect-tls-client-cert-file",
                "Client certificate registered in Konnect (PEM, required).",
                "CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE",
            ),
            _opt(
                "konnect-tls-client-key-file",
                "Key of that certificate (PEM, required).",
                "CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE",
            ),
            _opt("konnect-ca-file", "CA bundle to verify Konnect with, instead of the system trust store."),
            _opt("konnect-timeout", "Timeout of one Konnect request.  [default: 30s]"),
        ]
    ):
        f = deco(f)
    return f


def _settings(**given: Any) -> Settings:
    try:
        return load_settings(**given)
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable


def _run_async(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 130


async def api_client(settings: Settings) -> Kube:
    """Kubeconfig if given (flag or KUBECONFIG), in-cluster when running in a pod, else ~/.kube/config."""
    try:
        return Kube.from_kubeconfig(settings.kubeconfig)
    except KubeConfigError as e:
        raise ConfigError(str(e)) from None


async def connect(settings: Settings) -> tuple[str, Kube]:
    """The namespace and an API client, or one clear line and exit 2."""
    try:
        kube = await api_client(settings)
        return resolve_namespace(settings, kube), kube
    except ConfigError as e:
        _fail(str(e))


def konnect_client(settings: Settings) -> KonnectClient:
    """The Konnect client from the settings; raises ConfigError/KonnectConfigError when incomplete."""
    from .konnect import KonnectClient

    settings.require_konnect()
    assert settings.konnect_tls_client_cert_file and settings.konnect_tls_client_key_file
    return KonnectClient(
        settings.konnect_address,
        settings.konnect_control_plane_id,
        settings.konnect_tls_client_cert_file,
        settings.konnect_tls_client_key_file,
        ca_file=settings.konnect_ca_file,
        total_timeout=settings.konnect_timeout,
    )


def resolve_namespace(settings: Settings, kube: Kube) -> str:
    """--namespace, else POD_NAMESPACE, else the kubeconfig context's or the ServiceAccount's namespace."""
    try:
        return settings.effective_namespace()
    except ConfigError:
        return kube.default_namespace


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="license-keeper")
def main() -> None:
    """Keeps the Kong Gateway Enterprise license from Konnect in a Kubernetes Secret.

    The Secret (<controller-name>-license) is readable by Kong (key `license`, for
    KONG_LICENSE_DATA) and by Kong Ingress Controller (keys `payload`, `id`, `updated_at`),
    so gateways start even while Konnect is down and the controller restarts.

    Every option also reads LICENSE_KEEPER_<OPTION> (upper-cased, '-' -> '_'); the Konnect
    options also read Kong Ingress Controller's CONTROLLER_KONNECT_* names. A flag wins over both.
    """


# --- run ------------------------------------------------------------------------------------------


@main.command()
@konnect_options
@secret_options
@_opt(
    "initial-polling-period",
    "Poll period while no valid license is held, or it expires within --renew-before.  [default: 1m]",
)
@_opt("polling-period", "Regular poll period once a valid license is held.  [default: 12h]")
@_opt("renew-before", "Poll at the initial period when the license expires within this.  [default: 7d]")
@_opt("probe-addr", "Address for /healthz, /readyz and POST /sync.  [default: :8081]")
@_opt("metrics-addr", "Address for Prometheus /metrics.  [default: :8080]")
@_opt("log-format", "text or json.  [default: text]")
@_opt("log-level", "debug, info, warning or error.  [default: info]")
@click.option(
    "--leader-elect/--no-leader-elect",
    default=None,
    help=_env_help(
        "leader-elect",
        "Lease leader election; keep it on even with one replica (rolling upgrades run two).  [default: on]",
    ),
)
@_opt("lease-name", "Lease name.  [default: <controller-name>-license-keeper]")
@_opt("leader-elect-lease-duration", "How long a Lease is valid without renewal.  [default: 15s]")
@_opt("leader-elect-renew-deadline", "The leader gives up (and exits) if it cannot renew within this.  [default: 10s]")
@_opt("leader-elect-retry-period", "How often to try to acquire or renew.  [default: 2s]")
def run(**flags: Any) -> None:
    """Run the keeper: fetch from Konnect, persist to the Secret, serve probes and metrics.

    Durations take s, m, h, d suffixes (90s, 5m, 12h, 7d). Exits 0 on SIGTERM, 1 when the leader
    Lease was lost (the pod restarts clean), 2 on bad settings.
    """
    from .agent import Keeper
    from .konnect import KonnectConfigError, load_client_ssl_context
    from .observe import setup_logging

    settings = _settings(**flags)
    try:
        konnect = konnect_client(settings)
        assert settings.konnect_tls_client_cert_file and settings.konnect_tls_client_key_file
        # Fail at start, in one line, rather than on the first poll.
        load_client_ssl_context(
            settings.konnect_tls_client_cert_file, settings.konnect_tls_client_key_file, settings.konnect_ca_file
        )
        kube = Kube.from_kubeconfig(settings.kubeconfig)
        namespace = resolve_namespace(settings, kube)
    except (ConfigError, KonnectConfigError, KubeConfigError) as e:
        _fail(str(e))
        return
    setup_logging(settings.log_format, settings.log_level)

    async def go() -> int:
        try:
            return await Keeper(settings, kube, namespace=namespace, konnect=konnect).run()
        finally:
            await kube.close()

    sys.exit(_run_async(go()))


# --- status -----------------------------------------------------------------------------------------


def license_summary(record: LicenseRecord | None, now: datetime, renew_before: float) -> dict[str, Any]:
    if record is None:
        return {"state": "missing"}
    lic = record.license
    if lic is None:
        return {"state": "invalid", "problem": record.problem}
    days = lic.days_left(now)
    return {
        "state": license_state(record, now, renew_before),
        "customer": lic.customer,
        "product": lic.product,
        "expiration_date": lic.expiration_date.isoformat(),
        "days_left": round(days, 2),
        "id": record.id,
        "updated_at": record.updated_at,
        "updated_at_iso": datetime.fromtimestamp(record.updated_at, UTC).isoformat() if record.updated_at else None,
        "fingerprint": lic.fingerprint,
    }


def exit_code_for(state: str) -> int:
    return {"valid": EXIT_VALID, "expiring": EXIT_EXPIRING}.get(state, EXIT_BAD)


@main.command()
@secret_options
@_opt("renew-before", "Report 'expiring' (exit 1) when the license expires within this.  [default: 7d]")
@_opt("lease-name", "Lease to report the leader from.  [default: <controller-name>-license-keeper]")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status(output: str, **flags: Any) -> None:
    """Show the license in the Secret. Exit 0 valid, 1 expiring, 2 expired, missing, foreign or invalid."""
    from .election import read_holder
    from .store import SecretStore, StoreError

    settings = _settings(**flags)

    async def go() -> int:
        namespace, api = await connect(settings)
        try:
            store = SecretStore(api, namespace, settings.effective_secret_name)
            try:
                snapshot = await store.read()
            except StoreError as e:
                _fail(str(e))
            holder = None
            try:
                lease = await read_holder(api, namespace, settings.effective_lease_name)
                holder = lease.holder if lease is not None else None
            except KubeError:  # status must work with only Secret read access
                holder = None
        finally:
            await api.close()
        report = status_report(snapshot, settings, namespace, holder)
        if output == "json":
            click.echo(json.dumps(report, indent=2))
        else:
            click.echo(render_status(report))
        return exit_code_for(report["state"])

    sys.exit(_run_async(go()))


def status_report(snapshot: SecretSnapshot, settings: Settings, namespace: str, holder: str | None) -> dict[str, Any]:
    record = record_from_secret(snapshot)
    s_state = secret_state(snapshot)
    report: dict[str, Any] = {
        "secret": f"{namespace}/{settings.effective_secret_name}",
        "secret_state": s_state.value,
        "keys": sorted(k for k in snapshot.data if snapshot.data[k]) if snapshot.exists else [],
        "missing_keys": [k for k in LICENSE_KEYS if not snapshot.data.get(k)]
        if snapshot.exists
        else list(LICENSE_KEYS),
        "leader": holder,
        **license_summary(record, datetime.now(UTC), settings.renew_before),
    }
    if s_state.value == "foreign" and report["state"] in ("valid", "expiring"):
        report["note"] = "the Secret is not managed by license-keeper"
        report["state"] = "foreign"
    return report


def render_status(r: dict[str, Any]) -> str:
    rows = [
        ("Secret", r["secret"]),
        ("Secret state", r["secret_state"]),
        ("State", r["state"]),
        ("Customer", r.get("customer")),
        ("Product", r.get("product")),
        ("Expires", r.get("expiration_date")),
        ("Days left", r.get("days_left")),
        ("Updated at", f"{r.get('updated_at')} ({r.get('updated_at_iso')})" if r.get("updated_at") else None),
        ("License id", r.get("id")),
        ("Fingerprint", r.get("fingerprint")),
        ("Keys present", ", ".join(r["keys"]) or "(none)"),
        ("Keys missing", ", ".join(r["missing_keys"]) or "(none)"),
        ("Leader", r.get("leader") or "(unknown)"),
        ("Problem", r.get("problem")),
        ("Note", r.get("note")),
    ]
    return "\n".join(f"{k + ':':<14}{v}" for k, v in rows if v is not None)


# --- validate ---------------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@_opt("renew-before", "Report 'expiring' (exit 1) when the license expires within this.  [default: 7d]")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def validate(file: Path, output: str, renew_before: str | None) -> None:
    """Check a license document offline (structure and dates; the signature cannot be checked offline).

    FILE holds the document (the Konnect `payload`), a license-keeper backup, or '-' for stdin.
    Exit 0 valid, 1 expiring, 2 expired or invalid.
    """
    try:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as e:
        _fail(f"cannot read {file}: {e.strerror}")
        return
    renew_before = renew_before or os.environ.get("LICENSE_KEEPER_RENEW_BEFORE")  # as its --help says
    try:
        window = parse_duration(renew_before) if renew_before else 7 * 86400.0
    except ValueError as e:
        _fail(f"--renew-before: {e}")
        return
    document = raw.decode("utf-8", errors="replace")
    try:
        maybe_backup = json.loads(document)
        if isinstance(maybe_backup, dict) and maybe_backup.get("format") == BACKUP_FORMAT:
            document = str(maybe_backup.get("document", ""))
    except ValueError:
        pass
    try:
        parse_license(document)
    except LicenseError as e:
        summary: dict[str, Any] = {"state": "invalid", "problem": str(e)}
    else:
        summary = license_summary(
            LicenseRecord(document=document, id="", updated_at=0, source="file"), datetime.now(UTC), window
        )
        for k in ("id", "updated_at", "updated_at_iso"):
            summary.pop(k, None)
    if output == "json":
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo("\n".join(f"{k.replace('_', ' ').capitalize() + ':':<18}{v}" for k, v in summary.items()))
    sys.exit(exit_code_for(summary["state"]))


# --- sync -------------------------------------------------------------------------------------------


@main.command()
@_opt("probe-addr", "Probe address of the running keeper to ask.  [default: 127.0.0.1:8081]")
@click.option("--once", is_flag=True, help="Do not ask a running keeper: poll Konnect once and persist, here.")
@konnect_options
@secret_options
def sync(once: bool, probe_addr: str | None, **flags: Any) -> None:
    """Ask the running keeper to poll Konnect now (POST /sync on its probe address).

    When no keeper answers there (or with --once), poll Konnect once from here and persist the
    result to the Secret, through the same selection policy. Inside a pod:
    `kubectl exec deploy/license-keeper -- license-keeper sync`.
    """
    addr = probe_addr or os.environ.get("LICENSE_KEEPER_PROBE_ADDR") or "127.0.0.1:8081"
    if not once:
        host, port = parse_addr(addr)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        try:
            req = urllib.request.Request(f"http://{host}:{port}/sync", method="POST", data=b"")
            with urllib.request.urlopen(req, timeout=5) as r:
                click.echo(r.read().decode().strip())
                sys.exit(0)
        except urllib.error.HTTPError as e:
            _fail(f"the keeper at {host}:{port} refused: {e.read().decode().strip()}")
        except (urllib.error.URLError, OSError):
            click.echo(f"no keeper answers at {host}:{port}; polling Konnect once from here", err=True)
    sys.exit(_run_async(_sync_once(_settings(**flags))))


async def _sync_once(settings: Settings) -> int:
    from .konnect import KonnectConfigError, LicenseFetched
    from .policy import choose
    from .store import SecretStore, StoreError

    try:
        konnect = konnect_client(settings)
    except (ConfigError, KonnectConfigError) as e:
        _fail(str(e))
    namespace, api = await connect(settings)
    try:
        async with konnect:
            result = await konnect.fetch()
        if not isinstance(result, LicenseFetched):
            _fail(f"Konnect: {result.describe()}")
        store = SecretStore(api, namespace, settings.effective_secret_name)
        now = datetime.now(UTC)
        current = await store.read()
        held = choose(record_from_secret(current), [result.record], now)
        outcome = await store.sync(held, now, snapshot=current)
    except StoreError as e:
        _fail(str(e))
        return EXIT_BAD
    finally:
        await api.close()
    if outcome.refused is not None:
        _fail(f"the Secret is {outcome.refused.value}; left untouched")
    click.echo(
        f"Secret {namespace}/{settings.effective_secret_name}: "
        + (f"written ({outcome.wrote})" if outcome.wrote else "unchanged")
    )
    return EXIT_VALID


# --- export and restore ----------------------------------------------------------------------------


@main.command(name="export")
@secret_options
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Backup file to write (mode 0600).",
)
def export_(output: Path, **flags: Any) -> None:
    """Write the license held in the Secret, with its metadata, to a JSON backup file.

    The file holds the license itself: keep it like a Secret.
    """
    from .store import SecretStore, StoreError

    settings = _settings(**flags)

    async def go() -> int:
        namespace, api = await connect(settings)
        try:
            snapshot = await SecretStore(api, namespace, settings.effective_secret_name).read()
        except StoreError as e:
            _fail(str(e))
        finally:
            await api.close()
        record = record_from_secret(snapshot)
        if record is None or not record.valid:
            _fail(f"Secret {namespace}/{settings.effective_secret_name} holds no valid license to export")
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
        write_private(output, json.dumps(backup, indent=2) + "\n")
        click.echo(f"wrote {output} ({describe_short(record)})")
        click.echo("warning: this file holds the license; store it like a Secret", err=True)
        return 0

    sys.exit(_run_async(go()))


def describe_short(record: LicenseRecord) -> str:
    lic = record.license
    assert lic is not None
    return f"license {lic.fingerprint}, expires {lic.expiration_date.isoformat()}"


def write_private(path: Path, text: str) -> None:
    """Create the file 0600 from the start: no window in which another user can read it."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def read_backup(path: Path) -> LicenseRecord:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path} is not a license-keeper backup (not JSON)") from None
    if not isinstance(data, dict) or data.get("format") != BACKUP_FORMAT:
        raise ConfigError(f"{path} is not a license-keeper backup (format is not {BACKUP_FORMAT})")
    try:
        record = LicenseRecord(
            document=str(data["document"]),
            id=str(data.get("id", "")),
            updated_at=int(data.get("updated_at", 0)),
            source="backup",
        )
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: backup lacks the license document or has a bad updated_at") from None
    if not record.valid:
        raise ConfigError(f"{path}: {record.problem}")
    return record


@main.command()
@secret_options
@click.option(
    "-f",
    "--file",
    "file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Backup written by `export`.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write even if the Secret holds a better license (a downgrade). "
    "A running keeper restores the better license it holds.",
)
def restore(file: Path, force: bool, **flags: Any) -> None:
    """Put a backed-up license into the Secret, through the selection policy.

    Refuses to replace a better license unless --force. Works with or without a running keeper;
    a running keeper sees the change through its watch and takes the restored license.
    """
    from .policy import SecretState, desired_secret, may_write
    from .store import SecretStore, StoreError

    settings = _settings(**flags)
    try:
        record = read_backup(file)
    except ConfigError as e:
        _fail(str(e))
        return

    async def go() -> int:
        namespace, api = await connect(settings)
        what = f"Secret {namespace}/{settings.effective_secret_name}"
        try:
            store = SecretStore(api, namespace, settings.effective_secret_name)
            current = await store.read()
            in_secret = record_from_secret(current)
            now = datetime.now(UTC)
            if current.exists and not may_write(current):
                _fail(f"{what} is not managed by license-keeper; left untouched")
            if in_secret is not None and is_better(in_secret, record, now) and not force:
                _fail(
                    f"{what} holds a better license ({describe_short(in_secret)}); refusing to downgrade (use --force)"
                )
            if force and in_secret is not None and in_secret != record:
                await (
                    store.create(desired_secret(record))
                    if not current.exists
                    else store.update(current, desired_secret(record))
                )
                click.echo(f"{what}: restored by force ({describe_short(record)})")
                return 0
            outcome = await store.sync(record, now, snapshot=current, reason="restore")
        except StoreError as e:
            _fail(str(e))
            return EXIT_BAD
        finally:
            await api.close()
        if outcome.refused is SecretState.IMMUTABLE:
            _fail(f"{what} is immutable; cannot restore into it")
        click.echo(
            f"{what}: "
            + ("restored" if outcome.wrote else "already holds this license")
            + f" ({describe_short(record)})"
        )
        return 0

    sys.exit(_run_async(go()))


def entry() -> None:  # pragma: no cover - console script alias
    main()


if __name__ == "__main__":  # pragma: no cover
    main()
