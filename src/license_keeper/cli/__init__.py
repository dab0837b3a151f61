"""`license-keeper`: the command group, `run` and `sync`.

The other commands live beside it: `status` and `validate` in ``status.py``, `export` and `restore`
(with the backup format) in ``backup.py``; what they share (options, settings, the edges to the
cluster and to Konnect) in ``common.py``.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

import click

from .. import __version__
from ..config import ConfigError, Settings, parse_addr
from ..policy import record_from_secret
from .backup import export_, restore
from .common import (
    EXIT_BAD,
    EXIT_VALID,
    api_client,
    connect,
    delivery_options,
    env_help,
    fail,
    konnect_client,
    konnect_options,
    opt,
    resolve_namespace,
    run_async,
    secret_options,
    settings_from,
    started,
)
from .status import status, validate

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="license-keeper")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Keeps the Kong Gateway Enterprise license from Konnect in a Kubernetes Secret.

    The Secret (<controller-name>-license) is readable by Kong (key `license`, for
    KONG_LICENSE_DATA) and by Kong Ingress Controller (keys `payload`, `id`, `updated_at`),
    so gateways start even while Konnect is down and the controller restarts.

    Every option also reads LICENSE_KEEPER_<OPTION> (upper-cased, '-' -> '_'); the Konnect
    options also read Kong Ingress Controller's CONTROLLER_KONNECT_* names. A flag wins over both.
    """
    if ctx.invoked_subcommand != "run":
        started()  # `run` says so itself, after importing the keeper


# --- run ------------------------------------------------------------------------------------------


@main.command()
@konnect_options
@secret_options
@delivery_options
@opt(
    "initial-polling-period",
    "Poll period while no valid license is held, or it expires within --renew-before.  [default: 1m]",
)
@opt("polling-period", "Regular poll period once a valid license is held.  [default: 12h]")
@opt("renew-before", "Poll at the initial period when the license expires within this.  [default: 7d]")
@opt(
    "resync-period",
    "Re-read the Secret this often even without watch events; /healthz fails after 3 periods without a "
    "fresh view of it.  [default: 1m]",
)
@opt("probe-addr", "Address for /healthz, /readyz and POST /sync.  [default: :8081]")
@opt("metrics-addr", "Address for Prometheus /metrics.  [default: :8080]")
@opt("log-format", "text or json.  [default: text]")
@opt("log-level", "debug, info, warning or error.  [default: info]")
@click.option(
    "--leader-elect/--no-leader-elect",
    default=None,
    help=env_help(
        "leader-elect",
        "Lease leader election; keep it on even with one replica (rolling upgrades run two).  [default: on]",
    ),
)
@opt("lease-name", "Lease name.  [default: <controller-name>-license-keeper]")
@opt("leader-elect-lease-duration", "How long a Lease is valid without renewal.  [default: 15s]")
@opt("leader-elect-renew-deadline", "The leader gives up (and exits) if it cannot renew within this.  [default: 10s]")
@opt("leader-elect-retry-period", "How often to try to acquire or renew.  [default: 2s]")
def run(**flags: Any) -> None:
    """Run the keeper: fetch from Konnect, persist to the Secret, serve probes and metrics.

    Durations take Go's syntax (90s, 5m, 1h30m, 300ms) and d for days (7d). Exits 0 on SIGTERM, 1 when the leader
    Lease was lost (the pod restarts clean), 2 on bad settings.
    """
    from ..agent import Keeper
    from ..konnect import KonnectConfigError, check_client_files
    from ..observe import setup_logging

    started()
    settings = settings_from(**flags)
    try:
        konnect = konnect_client(settings)
        assert settings.konnect_tls_client_cert_file and settings.konnect_tls_client_key_file
        # Fail at start, in one line, rather than on the first poll.
        check_client_files(
            settings.konnect_tls_client_cert_file, settings.konnect_tls_client_key_file, settings.konnect_ca_file
        )
        kube = api_client(settings)
        namespace = resolve_namespace(settings, kube)
    except (ConfigError, KonnectConfigError) as e:
        fail(str(e))
        return
    setup_logging(settings.log_format, settings.log_level)

    async def go() -> int:
        try:
            return await Keeper(settings, kube, namespace=namespace, konnect=konnect).run()
        finally:
            await kube.close()

    sys.exit(run_async(go()))


# --- sync -------------------------------------------------------------------------------------------


@main.command()
@opt("probe-addr", "Probe address of the running keeper to ask.  [default: 127.0.0.1:8081]")
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
        import urllib.error  # here, not at the top: `run` starts faster without urllib.request
        import urllib.request

        try:
            req = urllib.request.Request(f"http://{host}:{port}/sync", method="POST", data=b"")
            with urllib.request.urlopen(req, timeout=5) as r:
                click.echo(r.read().decode().strip())
                sys.exit(0)
        except urllib.error.HTTPError as e:
            fail(f"the keeper at {host}:{port} refused: {e.read().decode().strip()}")
        except (urllib.error.URLError, OSError):
            click.echo(f"no keeper answers at {host}:{port}; polling Konnect once from here", err=True)
    sys.exit(run_async(_sync_once(settings_from(**flags))))


async def _sync_once(settings: Settings) -> int:
    from ..konnect import KonnectConfigError, LicenseFetched
    from ..policy import choose
    from ..store import SecretStore, StoreError

    try:
        konnect = konnect_client(settings)
    except (ConfigError, KonnectConfigError) as e:
        fail(str(e))
    namespace, api = await connect(settings)
    try:
        async with konnect:
            result = await konnect.fetch()
        if not isinstance(result, LicenseFetched):
            fail(f"Konnect: {result.describe()}")
        store = SecretStore(api, namespace, settings.effective_secret_name)
        now = datetime.now(UTC)
        current = await store.read()
        held = choose(record_from_secret(current, now=now), [result.record], now)
        outcome = await store.sync(held, now, snapshot=current)
    except StoreError as e:
        fail(str(e))
        return EXIT_BAD
    finally:
        await api.close()
    if outcome.refused is not None:
        fail(f"the Secret is {outcome.refused.value}; left untouched")
    click.echo(
        f"Secret {namespace}/{settings.effective_secret_name}: "
        + (f"written ({outcome.wrote})" if outcome.wrote else "unchanged")
    )
    return EXIT_VALID


main.add_command(status)
main.add_command(validate)
main.add_command(export_)
main.add_command(restore)
