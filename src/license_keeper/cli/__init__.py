"""`license-keeper`: the command group and `run`.

The other commands live beside it: `status` and `validate` in ``status.py``, `sync` in ``sync.py``,
`export` and `restore` (with the backup format) in ``backup.py``; what they share (options, settings,
the edges to the cluster and to Konnect) in ``common.py``; exit codes and error lines in ``errors.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from ..config import ConfigError
from .backup import export_, restore
from .common import (
    EXIT_UNKNOWN,
    api_client,
    delivery_options,
    duration_opt,
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
from .errors import KeeperGroup, exit_codes_epilog
from .status import status, validate
from .sync import sync

__all__ = ["main"]


@click.group(
    cls=KeeperGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog=exit_codes_epilog(),
)
@click.version_option(__version__, prog_name="license-keeper")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Keeps the Kong Gateway Enterprise license from Konnect in a Kubernetes Secret.

    Gateways read the Secret (<controller-name>-license, key `license`) as KONG_LICENSE_DATA,
    so they start even while Konnect is down and the controller restarts. It is not KIC's
    license Secret (konnect-license-<cp-id>), which the keeper never writes.

    Every option also reads LICENSE_KEEPER_<OPTION> (upper-cased, '-' -> '_'); the Konnect
    options also read Kong Ingress Controller's CONTROLLER_KONNECT_* names. A flag wins over both.
    Commands that talk to the API server take kubectl's -n/--namespace, --context and --kubeconfig;
    -o/--output is always the output format (text, json, yaml), never a file.
    """
    if ctx.invoked_subcommand != "run":
        started()  # `run` says so itself, after importing the keeper


# --- run ------------------------------------------------------------------------------------------


@main.command(epilog=exit_codes_epilog("run"))
@konnect_options
@secret_options
@delivery_options
@duration_opt(
    "initial-polling-period",
    "Poll period while no valid license is held, or it expires within --renew-before.",
)
@duration_opt("polling-period", "Regular poll period once a valid license is held.")
@duration_opt("renew-before", "Poll at the initial period when the license expires within this.")
@duration_opt(
    "resync-period",
    "Re-read the Secret this often even without watch events; /healthz fails after 3 periods without a "
    "fresh view of it.",
)
@opt("probe-addr", "Address for /healthz, /livez and /readyz.  [default: :8081]")
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
@duration_opt("leader-elect-lease-duration", "How long a Lease is valid without renewal.")
@duration_opt("leader-elect-renew-deadline", "The leader gives up (and exits) if it cannot renew within this.")
@duration_opt("leader-elect-retry-period", "How often to try to acquire or renew.")
def run(**flags: Any) -> None:
    """Run the keeper: fetch from Konnect, persist to the Secret, serve probes and metrics.

    Durations take Go's syntax (90s, 5m, 1h30m, 300ms) and d for days (7d); each must lie in the range its
    help states, and lease-duration > renew-deadline > retry-period. The leader answers poll requests made
    on the Secret (`license-keeper sync`).
    """
    from ..agent import Keeper
    from ..konnect import KonnectConfigError, check_client_files
    from ..observe import setup_logging

    started()
    settings = settings_from(**flags)
    try:
        settings.require_own_secret()
        konnect = konnect_client(settings)
        # Fail at start, in one line, rather than on the first poll.
        check_client_files(konnect.cert_file, konnect.key_file, settings.konnect_ca_file)
        kube = api_client(settings)
        namespace = resolve_namespace(settings, kube)
    except (ConfigError, KonnectConfigError) as e:
        fail(str(e), EXIT_UNKNOWN)
    setup_logging(settings.log_format, settings.log_level)

    async def go() -> int:
        try:
            return await Keeper(settings, kube, namespace=namespace, konnect=konnect).run()
        finally:
            await kube.close()

    sys.exit(run_async(go()))


main.add_command(status)
main.add_command(validate)
main.add_command(sync)
main.add_command(export_)
main.add_command(restore)
