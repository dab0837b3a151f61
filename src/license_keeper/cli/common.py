"""What every `license-keeper` command shares: option groups, settings, failing in one line, and the
edges to the cluster (namespace lookup, API client) and to Konnect."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ..config import DEFAULT_KONNECT_ADDRESS, DURATION_RANGES, ConfigError, Settings, format_duration, load_settings
from ..kube import Kube, KubeConfigError, KubeError
from .errors import EXIT_BAD, EXIT_EXPIRING, EXIT_UNKNOWN, EXIT_VALID, api_error_line, fail

if TYPE_CHECKING:
    from ..konnect import KonnectClient
    from ..store import StoreError

__all__ = [
    "EXIT_BAD",
    "EXIT_EXPIRING",
    "EXIT_UNKNOWN",
    "EXIT_VALID",
    "UnreadableInput",
    "api_client",
    "connect",
    "delivery_options",
    "duration_opt",
    "emit",
    "env_help",
    "fail",
    "fail_api",
    "fail_store",
    "konnect_client",
    "konnect_options",
    "load_json",
    "load_structured",
    "opt",
    "output_option",
    "read_capped",
    "resolve_namespace",
    "run_async",
    "secret_options",
    "settings_from",
    "started",
]

F = TypeVar("F", bound=Callable[..., Any])


def started() -> None:
    """The command has imported what it needs: collect garbage again (see ``__main__``).

    The objects made so far go to the permanent generation first, so the first collections do not
    walk all of them on the way to ready. Does nothing when the collector was never switched off
    (the CLI called in-process, as the tests do)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def env_help(flag: str, text: str, kic: str | None = None) -> str:
    env = "LICENSE_KEEPER_" + flag.upper().replace("-", "_")
    return f"{text} [env: {env}" + (f", {kic}" if kic else "") + "]"


def opt(flag: str, text: str, kic: str | None = None, **kw: Any) -> Callable[[F], F]:
    return click.option(f"--{flag}", default=None, help=env_help(flag, text, kic), **kw)


def duration_opt(flag: str, text: str) -> Callable[[F], F]:
    """A duration flag whose help states its default and range, both taken from the settings, so the
    help never disagrees with what `load_settings` accepts."""
    name = flag.replace("-", "_")
    least, most = DURATION_RANGES[name]
    default = getattr(Settings(), name)
    bounds = f"[default: {format_duration(default)}; range: {format_duration(least)} to {format_duration(most)}]"
    return opt(flag, f"{text}  {bounds}")


def secret_options(f: F) -> F:
    """Which cluster and where the Secret lives, as kubectl names them: shared by every command that
    talks to the API server."""
    for deco in reversed(
        [
            opt("kubeconfig", "Path to a kubeconfig; default in-cluster, else KUBECONFIG or ~/.kube/config."),
            opt("context", "The kubeconfig context to use instead of the current one."),
            click.option(
                "-n",
                "--namespace",
                default=None,
                help=env_help(
                    "namespace",
                    "Namespace of the Secret; default POD_NAMESPACE, the ServiceAccount's, or the kubeconfig "
                    "context's.",
                ),
            ),
            opt("controller-name", "Controller name; the Secret is <controller-name>-license.  [default: kong]"),
            opt(
                "secret-name",
                "Secret name, overriding <controller-name>-license. status and export may read KIC's "
                "konnect-license-<cp-id>; the keeper never writes it (run, sync and restore refuse it).",
            ),
        ]
    ):
        f = deco(f)
    return f


def konnect_options(f: F) -> F:
    for deco in reversed(
        [
            opt(
                "konnect-address",
                f"Konnect API address.  [default: {DEFAULT_KONNECT_ADDRESS}]",
                "CONTROLLER_KONNECT_ADDRESS",
            ),
            opt(
                "konnect-control-plane-id",
                "Konnect control plane ID (required).",
                "CONTROLLER_KONNECT_CONTROL_PLANE_ID",
            ),
            opt(
                "konnect-tls-client-cert-file",
                "Client certificate registered in Konnect (PEM, required).",
                "CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE",
            ),
            opt(
                "konnect-tls-client-key-file",
                "Key of that certificate (PEM, required).",
                "CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE",
            ),
            opt("konnect-ca-file", "CA bundle to verify Konnect with, instead of the system trust store."),
            duration_opt("konnect-timeout", "Timeout of one Konnect request (the leader's /healthz allows for it)."),
        ]
    ):
        f = deco(f)
    return f


def _no_empty(_: click.Context, __: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...] | None:
    # an absent repeatable flag must not hide LICENSE_KEEPER_DELIVER
    return value or None


def delivery_options(f: F) -> F:
    """Delivering the license to running gateways (docs/operations.md, "Delivery")."""
    for deco in reversed(
        [
            click.option(
                "--deliver",
                multiple=True,
                callback=_no_empty,
                help=env_help(
                    "deliver",
                    "Deliver the license to gateways: admin-api=https://HOST:8444, admin-svc=NAMESPACE/SERVICE[:PORT] "
                    "(every ready pod behind that admin Service), konglicense=NAME or restart=deployment/NAME (or "
                    "statefulset/NAME). Repeatable; the env value is comma-separated.",
                ),
            ),
            opt("deliver-admin-token-file", "File holding the Kong-Admin-Token for admin-api targets."),
            opt("deliver-admin-client-cert-file", "Client certificate (PEM) for admin-api targets."),
            opt("deliver-admin-client-key-file", "Key of that client certificate (PEM)."),
            opt("deliver-admin-ca-file", "CA bundle to verify admin-api targets, instead of the system trust store."),
            opt(
                "deliver-admin-tls-server-name",
                "admin-svc: the name gateway pods' certificates are verified against (a pod is reached at its "
                "address).  [default: <service>.<namespace>.svc]",
            ),
            duration_opt("deliver-admin-timeout", "Timeout of one Admin API request."),
            click.option(
                "--deliver-admin-trusted-network/--no-deliver-admin-trusted-network",
                default=None,
                help=env_help(
                    "deliver-admin-trusted-network",
                    "Allow sending the token or client certificate to plain http:// Admin APIs (the network to "
                    "the gateways is trusted); without it they are refused.  [default: off]",
                ),
            ),
            duration_opt("delivery-period", "Deliver to and check every target this often (repairs drift)."),
        ]
    ):
        f = deco(f)
    return f


FORMATS = ("text", "json", "yaml")


def output_option(*formats: str, default: str = "text", text: str = "Output format.") -> Callable[[F], F]:
    """`-o/--output`: always the format of what the command prints (kubectl's meaning), never a file."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(formats or FORMATS),
        default=default,
        show_default=True,
        help=text,
    )


def emit(report: Mapping[str, Any], output: str, text: Callable[[Mapping[str, Any]], str]) -> None:
    """Print ``report`` as JSON, YAML, or in words (``text``)."""
    if output == "json":
        click.echo(json.dumps(report, indent=2))
    elif output == "yaml":
        import yaml  # lightkube's dependency: already loaded by any command that talks to the cluster

        click.echo(yaml.safe_dump(dict(report), sort_keys=False, allow_unicode=True), nl=False)
    else:
        click.echo(text(report))


def settings_from(**given: Any) -> Settings:
    try:
        return load_settings(**given)
    except ConfigError as e:
        fail(str(e), EXIT_UNKNOWN)


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return 130


def api_client(settings: Settings) -> Kube:
    """Kubeconfig if given (flag or KUBECONFIG), in-cluster when running in a pod, else ~/.kube/config;
    its current context unless --context names another."""
    try:
        return Kube.from_kubeconfig(settings.kubeconfig, context=settings.context or None)
    except KubeConfigError as e:
        raise ConfigError(str(e)) from None


async def connect(settings: Settings) -> tuple[str, Kube]:
    """The namespace and an API client, or one clear line and exit 3 (could not check)."""
    try:
        kube = api_client(settings)
        return resolve_namespace(settings, kube), kube
    except ConfigError as e:
        fail(str(e), EXIT_UNKNOWN)


def fail_api(error: KubeError, kube: Kube, verb: str, what: str) -> NoReturn:
    """A failed API call: one line in kubectl's words, exit 3 (could not check)."""
    fail(api_error_line(error, kube.server, verb, what), EXIT_UNKNOWN)


def fail_store(error: StoreError, kube: Kube) -> NoReturn:
    """A failed Secret operation; the API failure behind it, when there is one, in kubectl's words."""
    if error.api_error is not None:
        fail_api(error.api_error, kube, error.verb, error.what)
    fail(str(error), EXIT_UNKNOWN)


def konnect_client(settings: Settings) -> KonnectClient:
    """The Konnect client from the settings; raises ConfigError/KonnectConfigError when incomplete."""
    from ..konnect import KonnectClient, pem_file

    settings.require_konnect()
    # the certificate and key as files, or given inline (KIC's CONTROLLER_KONNECT_TLS_CLIENT_CERT / _KEY)
    cert = settings.konnect_tls_client_cert_file or pem_file(settings.konnect_tls_client_cert, "cert")
    key = settings.konnect_tls_client_key_file or pem_file(settings.konnect_tls_client_key, "key")
    return KonnectClient(
        settings.konnect_address,
        settings.konnect_control_plane_id,
        cert,
        key,
        ca_file=settings.konnect_ca_file,
        total_timeout=settings.konnect_timeout,
    )


def resolve_namespace(settings: Settings, kube: Kube) -> str:
    """--namespace, else POD_NAMESPACE, else the ServiceAccount's namespace (in a pod), else the
    kubeconfig context's. The environment and files are read here, at the edge, so Settings stays a
    plain value."""
    namespace = settings.namespace or kube.default_namespace
    if not namespace:
        raise ConfigError(
            "no namespace: pass --namespace, set POD_NAMESPACE, run in a pod with a ServiceAccount, "
            "or set one in the kubeconfig context"
        )
    return namespace


MAX_INPUT_BYTES = 1024 * 1024  # a license document is a few KiB; a backup holds one document


class UnreadableInput(ConfigError):
    """The file could not be read at all: nothing was checked (exit 3), unlike a file that is no license."""


def read_capped(file: Path, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of ``file`` ('-' for stdin), at most ``limit``. Raises ConfigError with one line
    (UnreadableInput when it cannot be read)."""
    try:
        if str(file) == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            with open(file, "rb") as f:
                raw = f.read(limit + 1)
    except OSError as e:
        raise UnreadableInput(f"cannot read {file}: {e.strerror}") from None
    if len(raw) > limit:
        raise ConfigError(f"{file} is larger than {limit // 1024} KiB; not a license document or backup")
    return raw


def load_json(raw: bytes) -> Any:
    """JSON from strict UTF-8. ValueError (with a one-line reason) for anything else, deep nesting too."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError:
        raise ValueError("not JSON") from None


def load_structured(raw: bytes) -> Any:
    """JSON, else YAML (a backup `export -o yaml` wrote); ValueError with a one-line reason otherwise."""
    try:
        return load_json(raw)
    except ValueError as not_json:
        import yaml  # lightkube's dependency

        try:
            data = yaml.safe_load(raw)
        except (yaml.YAMLError, RecursionError):
            raise not_json from None
        if not isinstance(data, dict):  # a bare word is valid YAML but no document or backup
            raise not_json from None
        return data
