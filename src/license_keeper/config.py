"""Settings for `license-keeper run`: flags, `LICENSE_KEEPER_*` environment variables and KIC's names.

Precedence: a flag on the command line, then ``LICENSE_KEEPER_<FLAG>``, then KIC's
``CONTROLLER_KONNECT_*`` name (so a keeper can be dropped next to an existing KIC configuration),
then the default. Every Konnect setting KIC reads is known here (``KIC_KONNECT_SETTINGS``) and read with
KIC's meaning and KIC's spelling of values (Go durations, Go booleans, the certificate and key inline or
as files); the ones the keeper has no use for are accepted and named at start.

Pure: ``load_settings`` takes the environment as an argument (``os.environ`` by default) and turns
every value into a typed field with one check per field, then a few checks across fields. Where the
namespace comes from when no flag names it (POD_NAMESPACE, the ServiceAccount, the kubeconfig) is
decided at the edge, in the CLI.

Plain dataclasses rather than pydantic-settings: a dozen checks do not need a validation framework,
and importing pydantic costs the keeper 13 MiB of its 55 MiB memory budget (BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .delivery import TargetSpec, parse_admin_url, parse_target
from .policy import KIC_SECRET_PREFIX

__all__ = [
    "DEFAULT_KONNECT_ADDRESS",
    "DURATION_RANGES",
    "KIC_KONNECT_SETTINGS",
    "ConfigError",
    "KicSetting",
    "Settings",
    "duration_problem",
    "format_duration",
    "load_settings",
    "parse_addr",
    "parse_duration",
    "parse_go_bool",
    "parse_go_duration",
]

DEFAULT_KONNECT_ADDRESS = "https://us.kic.api.konghq.com"

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0

# The range (seconds, both ends included) of every duration, checked when the flags are parsed. Below
# it: polling faster only loads Konnect, a Lease renewed faster only loads the API server. Above it: a
# Konnect request longer than the poll loop's stall bound is meant to allow, a Lease too long to fail
# over in reasonable time (and, far beyond, too long for leaseDurationSeconds, an int32), a Secret view
# or delivery check too rare to notice anything. The lower bounds of the periods may be lifted for
# test harnesses with LICENSE_KEEPER_ALLOW_SHORT_PERIODS=true (not a flag on purpose).
DURATION_RANGES: dict[str, tuple[float, float]] = {
    "konnect_timeout": (1.0, 5 * MINUTE),
    "initial_polling_period": (1.0, DAY),
    "polling_period": (10.0, 7 * DAY),
    "renew_before": (HOUR, 730 * DAY),
    "resync_period": (5.0, HOUR),
    # A delivery round gives each target 2 minutes: room for four Admin API requests at the longest.
    "deliver_admin_timeout": (1.0, 30.0),
    # A round asks every gateway (every pod of an admin Service): more often only loads them and the keeper.
    "delivery_period": (30.0, DAY),
    "leader_elect_lease_duration": (2.0, 10 * MINUTE),
    "leader_elect_renew_deadline": (1.0, 5 * MINUTE),
    "leader_elect_retry_period": (0.5, MINUTE),
}
# What LICENSE_KEEPER_ALLOW_SHORT_PERIODS lowers, and to what (0: no bound). Never below a floor for the
# delivery period: "1ms" would be hundreds of rounds a second.
_SHORT_PERIOD_FLOORS: dict[str, float] = {"polling_period": 0.0, "initial_polling_period": 0.0, "delivery_period": 1.0}

# Go's time.ParseDuration syntax (what kubectl, KIC and Helm users write: `1h30m`, `300ms`), plus `d` for
# days and a bare number for seconds. Units: ns, us (or µs), ms, s, m, h, d.
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h|d)"
_BARE_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")
_GO_DURATION = re.compile(rf"^(?:{_NUMBER}{_UNIT})+$")
_DURATION_PART = re.compile(rf"({_NUMBER})({_UNIT})")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


class ConfigError(ValueError):
    """A setting is missing or malformed. The message is one line, fit to print and exit."""


def parse_duration(value: str | float | int) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"1h30m"``, ``"12h"``, ``"7d"`` -> seconds (Go's syntax, plus days)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = _duration_seconds(str(value).strip())
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as the flags spell them: 7d, 12h, 5m, 30s, 1.5s, 500ms."""
    for unit, size in (("d", DAY), ("h", HOUR), ("m", MINUTE)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


def duration_problem(name: str, seconds: float, *, allow_short: bool = False) -> str | None:
    """Why ``seconds`` is out of the range of the duration ``name`` (a Settings field), or None."""
    least, most = DURATION_RANGES[name]
    if allow_short and name in _SHORT_PERIOD_FLOORS:
        least = _SHORT_PERIOD_FLOORS[name]
    if not seconds >= least:  # written so that NaN fails too
        return f"must be at least {format_duration(least)}, got {format_duration(seconds)}"
    if not seconds <= most:
        return f"must be at most {format_duration(most)}, got {format_duration(seconds)}"
    return None


def _duration_seconds(text: str) -> float:
    if _BARE_SECONDS.match(text):
        return float(text)
    if not _GO_DURATION.match(text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 5m, 1h30m, 12h, 7d)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text))


def parse_addr(value: str) -> tuple[str, int]:
    """``":8080"``, ``"0.0.0.0:8080"``, ``"[::1]:8080"`` -> (host, port); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not an address: {value!r} (use host:port or :port)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# KIC's durations are Go's: a sequence of decimal numbers, each with a unit (ns us µs ms s m h), e.g. 1m0s,
# 1h30m, 1.5h; "0" alone; no days, no bare numbers. Its booleans are Go's strconv.ParseBool.
_GO_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_TRUE, _GO_FALSE = {"1", "t", "T", "TRUE", "true", "True"}, {"0", "f", "F", "FALSE", "false", "False"}


def parse_go_duration(value: str) -> float:
    """A Go duration (time.ParseDuration), as KIC reads its polling periods -> seconds (must be positive)."""
    text = str(value)
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        raise ValueError(f"duration must be positive, got {value!r}")
    seconds, pos = 0.0, 0
    while pos < len(body):
        m = _GO_DURATION_PART.match(body, pos)
        if not m:
            break
        seconds += float(m.group(1)) * _GO_UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError(f"not a Go duration: {value!r} (KIC's form, e.g. 90s, 1m0s, 12h, 1h30m)")
    if text.startswith("-") or seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def parse_go_bool(value: str) -> bool:
    """A Go boolean (strconv.ParseBool), as KIC reads its switches."""
    if value in _GO_TRUE | _GO_FALSE:
        return value in _GO_TRUE
    raise ValueError(f"not a Go boolean: {value!r} (KIC takes 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)")


ENV_PREFIX = "LICENSE_KEEPER_"


@dataclass(frozen=True)
class KicSetting:
    """One Konnect setting of Kong Ingress Controller, as KIC reads it, and what the keeper does with it."""

    kind: str  # KIC's Go type: string, bool, duration, int
    meaning: str  # KIC's meaning (its flag's help)
    keeper: str = ""  # the keeper's setting that takes the value; "" when the keeper does not use it
    why_not: str = ""  # when not used: why, in the words of the line logged at start


_KIC_SYNC = "KIC's configuration sync to Konnect, which the keeper does not do"

# Every CONTROLLER_KONNECT_* variable KIC reads (its --konnect-* flags; Kong/kubernetes-ingress-controller
# internal/cmd/rootcmd/config/cli.go). docs/interfaces.md lists the same, and a test keeps them in step.
KIC_KONNECT_SETTINGS: dict[str, KicSetting] = {
    "CONTROLLER_KONNECT_ADDRESS": KicSetting("string", "Base address of Konnect API", "--konnect-address"),
    "CONTROLLER_KONNECT_CONTROL_PLANE_ID": KicSetting(
        "string", "ID of the Konnect control plane", "--konnect-control-plane-id"
    ),
    "CONTROLLER_KONNECT_RUNTIME_GROUP_ID": KicSetting(
        "string", "the deprecated name of the control plane ID", "--konnect-control-plane-id"
    ),
    "CONTROLLER_KONNECT_TLS_CLIENT_CERT": KicSetting(
        "string", "Konnect TLS client certificate (PEM, inline)", "LICENSE_KEEPER_KONNECT_TLS_CLIENT_CERT"
    ),
    "CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE": KicSetting(
        "string", "Konnect TLS client certificate file path", "--konnect-tls-client-cert-file"
    ),
    "CONTROLLER_KONNECT_TLS_CLIENT_KEY": KicSetting(
        "string", "Konnect TLS client key (PEM, inline)", "LICENSE_KEEPER_KONNECT_TLS_CLIENT_KEY"
    ),
    "CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE": KicSetting(
        "string", "Konnect TLS client key file path", "--konnect-tls-client-key-file"
    ),
    "CONTROLLER_KONNECT_INITIAL_LICENSE_POLLING_PERIOD": KicSetting(
        "duration", "Polling period before the first license is retrieved", "--initial-polling-period"
    ),
    "CONTROLLER_KONNECT_LICENSE_POLLING_PERIOD": KicSetting(
        "duration", "Polling period after the first license is retrieved", "--polling-period"
    ),
    "CONTROLLER_KONNECT_LICENSING_ENABLED": KicSetting(
        "bool",
        "KIC retrieves licenses from Konnect and pushes them to its gateways, overriding licenses provided "
        "via the environment",
        why_not="the keeper always fetches from Konnect; when true, KIC's gateways run KIC's license over "
        "KONG_LICENSE_DATA once KIC has synced (docs/operations.md, Which license a gateway runs)",
    ),
    "CONTROLLER_KONNECT_LICENSE_STORAGE_ENABLED": KicSetting(
        "bool",
        "KIC stores the fetched license in its own Secret konnect-license-<control-plane-id>",
        why_not="that Secret is KIC's; the keeper writes only its own (--secret-name) and never KIC's",
    ),
    "CONTROLLER_KONNECT_SYNC_ENABLED": KicSetting(
        "bool", "synchronize data plane configuration with a Konnect control plane", why_not=_KIC_SYNC
    ),
    "CONTROLLER_KONNECT_UPLOAD_CONFIG_PERIOD": KicSetting(
        "duration", "period of uploading Kong configuration", why_not=_KIC_SYNC
    ),
    "CONTROLLER_KONNECT_CONFIG_SYNC_CONCURRENCY": KicSetting(
        "int", "concurrent requests to Konnect when syncing configuration", why_not=_KIC_SYNC
    ),
    "CONTROLLER_KONNECT_REFRESH_NODE_PERIOD": KicSetting(
        "duration", "period of uploading the status of KIC and its gateways", why_not=_KIC_SYNC
    ),
    "CONTROLLER_KONNECT_DISABLE_CONSUMERS_SYNC": KicSetting(
        "bool", "disable synchronization of consumers with Konnect", why_not=_KIC_SYNC
    ),
}

# The keeper's settings KIC's names feed, in KIC's order of preference (the runtime group id is the
# control plane id's deprecated name: both set to different ids is an error, not a silent pick).
KIC_ENV: dict[str, tuple[str, ...]] = {
    "konnect_address": ("CONTROLLER_KONNECT_ADDRESS",),
    "konnect_control_plane_id": ("CONTROLLER_KONNECT_CONTROL_PLANE_ID", "CONTROLLER_KONNECT_RUNTIME_GROUP_ID"),
    "konnect_tls_client_cert_file": ("CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE",),
    "konnect_tls_client_key_file": ("CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE",),
    "konnect_tls_client_cert": ("CONTROLLER_KONNECT_TLS_CLIENT_CERT",),
    "konnect_tls_client_key": ("CONTROLLER_KONNECT_TLS_CLIENT_KEY",),
    "initial_polling_period": ("CONTROLLER_KONNECT_INITIAL_LICENSE_POLLING_PERIOD",),
    "polling_period": ("CONTROLLER_KONNECT_LICENSE_POLLING_PERIOD",),
    "kic_licensing_enabled": ("CONTROLLER_KONNECT_LICENSING_ENABLED",),
    "kic_license_storage_enabled": ("CONTROLLER_KONNECT_LICENSE_STORAGE_ENABLED",),
}
# The client certificate and key: a file or the PEM itself, never both from one source (as in KIC).
_TLS_PAIRS = (
    ("konnect_tls_client_cert_file", "konnect_tls_client_cert", "client certificate"),
    ("konnect_tls_client_key_file", "konnect_tls_client_key", "client key"),
)
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Everything `license-keeper run` needs. Field names are the flag names with `_` for `-`."""

    konnect_address: str = DEFAULT_KONNECT_ADDRESS
    konnect_control_plane_id: str = ""
    konnect_tls_client_cert_file: Path | None = None
    konnect_tls_client_key_file: Path | None = None
    # The same as PEM text, from the environment only (LICENSE_KEEPER_KONNECT_TLS_CLIENT_CERT or KIC's
    # CONTROLLER_KONNECT_TLS_CLIENT_CERT, as KIC's manifests set them from a Secret): never a flag, so key
    # material is never on a command line. Never logged.
    konnect_tls_client_cert: str = field(default="", repr=False)
    konnect_tls_client_key: str = field(default="", repr=False)
    konnect_ca_file: Path | None = None
    konnect_timeout: float = 30.0

    controller_name: str = "kong"
    secret_name: str = ""
    namespace: str = ""
    kubeconfig: Path | None = None
    context: str = ""  # a kubeconfig context other than the current one (kubectl's --context)

    initial_polling_period: float = 60.0
    polling_period: float = 12 * 3600.0
    renew_before: float = 7 * 86400.0
    # The Secret is re-read this often even without watch events; /healthz fails after 3 periods
    # without a fresh view of it (no watch event and no successful read).
    resync_period: float = 60.0

    probe_addr: str = ":8081"
    metrics_addr: str = ":8080"
    log_format: str = "text"
    log_level: str = "info"

    # Delivery to running gateways (none by default): --deliver admin-api=URL | konglicense=NAME |
    # restart=deployment/NAME (repeatable; LICENSE_KEEPER_DELIVER is comma-separated).
    deliver: list[str] = field(default_factory=list)
    deliver_admin_token_file: Path | None = None
    deliver_admin_client_cert_file: Path | None = None
    deliver_admin_client_key_file: Path | None = None
    deliver_admin_ca_file: Path | None = None
    deliver_admin_timeout: float = 10.0
    delivery_period: float = 600.0
    # A Kong-Admin-Token or client certificate goes to a plain http:// Admin API only when this says the
    # network between the keeper and the gateways is trusted (otherwise: refused at start, and per pod).
    deliver_admin_trusted_network: bool = False
    # admin-svc: the name a gateway pod's certificate is verified against (it is reached at its address);
    # empty: the admin Service's DNS name, <service>.<namespace>.svc.
    deliver_admin_tls_server_name: str = ""

    leader_elect: bool = True
    lease_name: str = ""
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0

    # For test harnesses only (env LICENSE_KEEPER_ALLOW_SHORT_PERIODS): lifts the polling lower bounds and
    # lowers the delivery period's to 1 s.
    allow_short_periods: bool = False

    # What KIC's configuration next to the keeper says (its CONTROLLER_KONNECT_* only; None: not set), and
    # which of KIC's Konnect settings were set at all: for the lines logged at start (kic_notes).
    kic_licensing_enabled: bool | None = field(default=None, metadata={"kic_only": True})
    kic_license_storage_enabled: bool | None = field(default=None, metadata={"kic_only": True})
    kic_settings_present: tuple[str, ...] = field(default=(), metadata={"kic_only": True})

    def delivery_targets(self) -> list[TargetSpec]:
        return [parse_target(label) for label in self.deliver]

    # derived values
    @property
    def effective_secret_name(self) -> str:
        return self.secret_name or f"{self.controller_name}-license"

    @property
    def effective_lease_name(self) -> str:
        return self.lease_name or f"{self.controller_name}-license-keeper"

    def require_konnect(self) -> None:
        """The Konnect settings `run` and `sync` cannot do without."""
        missing = [
            flag
            for flag, value in (
                ("--konnect-control-plane-id", self.konnect_control_plane_id),
                ("--konnect-tls-client-cert-file", self.konnect_tls_client_cert_file or self.konnect_tls_client_cert),
                ("--konnect-tls-client-key-file", self.konnect_tls_client_key_file or self.konnect_tls_client_key),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                f"missing required setting(s): {', '.join(missing)} (each also LICENSE_KEEPER_<NAME> or KIC's "
                "CONTROLLER_KONNECT_<NAME>; the certificate and key may be PEM text in "
                "CONTROLLER_KONNECT_TLS_CLIENT_CERT / _KEY, as KIC's manifests set them)"
            )

    def require_own_secret(self) -> None:
        """`run`, `sync --once` and `restore` write the Secret: never KIC's (or Kong Operator's) own."""
        name = self.effective_secret_name
        if name.startswith(KIC_SECRET_PREFIX):
            raise ConfigError(
                f"--secret-name {name}: that is Kong Ingress Controller's (and Kong Operator's) own license Secret "
                f"({KIC_SECRET_PREFIX}<control-plane-id>), rewritten after every Konnect fetch; the keeper never "
                "writes it: use the keeper's own Secret (default kong-license); status and export may read this one"
            )

    def kic_notes(self) -> list[str]:
        """One line per KIC setting the keeper was given and does not use, and what KIC's licensing switch
        means for the gateways; names and switches only, never a value."""
        notes = []
        for name in self.kic_settings_present:
            setting = KIC_KONNECT_SETTINGS[name]
            if not setting.keeper:
                notes.append(f"{name} (KIC: {setting.meaning}) is not used by the keeper: {setting.why_not}")
        if self.kic_licensing_enabled and any(t.kind == "konglicense" for t in self.delivery_targets()):
            notes.append(
                "CONTROLLER_KONNECT_LICENSING_ENABLED is true: KIC turns its KongLicense controller off, so a "
                "konglicense delivery target reaches no gateway of that KIC"
            )
        return notes


# --- one parser per kind of value ------------------------------------------------------------------------


def _text(value: Any) -> str:
    return str(value)


def _path(value: Any) -> Path:
    return Path(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return text

    return parse


def _dns_name(value: Any) -> str:
    text = str(value)
    if text and not _DNS_NAME.match(text):
        raise ValueError("must be a lowercase DNS name (a-z, 0-9, '-', '.')")
    return text


def _addr(value: Any) -> str:
    parse_addr(str(value))
    return str(value)


def _https(value: Any) -> str:
    text = str(value)
    if not re.match(r"^https://[^/\s]+", text):
        raise ValueError("must be an https:// URL (Konnect speaks mutual TLS only)")
    return text.rstrip("/")


def _targets(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value or [])
    specs = [parse_target(str(item)) for part in items for item in str(part).split(",") if item.strip()]
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ValueError("the same delivery target is given twice")
    return labels


def _parser(name: str, default: Any) -> Callable[[Any], Any]:
    special: dict[str, Callable[[Any], Any]] = {
        "konnect_address": _https,
        "log_format": _choice("text", "json"),
        "log_level": _choice("debug", "info", "warning", "error"),
        "probe_addr": _addr,
        "metrics_addr": _addr,
        "deliver": _targets,
        **dict.fromkeys(("controller_name", "secret_name", "lease_name", "namespace"), _dns_name),
    }
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return _bool
    if isinstance(default, float):
        return parse_duration
    return _path if name.endswith(("_file", "kubeconfig")) else _text


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TLS_FIELDS = frozenset(name for pair in _TLS_PAIRS for name in pair[:2])


# --- from flags and environment ---------------------------------------------------------------------------


def _env(environ: Mapping[str, str], name: str) -> str | None:
    # Empty variables count as unset: a chart value left blank must not hide a set CONTROLLER_KONNECT_X.
    value = environ.get(name, "")
    return value if value.strip() else None


def _raw_value(name: str, given: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[Any, str]:
    """A flag, then LICENSE_KEEPER_<NAME>, then KIC's name(s): (raw value, where from: "" for a flag or the
    variable's name). (None, ""): take the default. Settings only KIC sets are read from KIC's names only."""
    if given.get(name) is not None:
        return given[name], ""
    names = KIC_ENV.get(name, ())
    if not _FIELDS[name].metadata.get("kic_only"):
        names = (ENV_PREFIX + name.upper(), *names)
    for env in names:
        value = _env(environ, env)
        if value is not None:
            return value, env
    return None, ""


def _kic_parser(name: str, default: Any) -> Callable[[Any], Any]:
    """KIC's reading of a value that came from one of KIC's names (Go's spellings), before our checks."""
    if isinstance(default, float):
        return parse_go_duration
    if name.startswith("kic_") and name.endswith("_enabled"):
        return parse_go_bool
    return _text


def _tls_pairs(given: Mapping[str, Any], environ: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """The client certificate and key, each from the first source (flag, ours, KIC's) that sets it as a
    file or inline; one source setting both is refused, as KIC refuses it."""
    chosen: dict[str, Any] = {}
    for file_name, inline_name, what in _TLS_PAIRS:
        layers = [
            ("flags", given.get(file_name), given.get(inline_name)),
            (
                ENV_PREFIX + "*",
                _env(environ, ENV_PREFIX + file_name.upper()),
                _env(environ, ENV_PREFIX + inline_name.upper()),
            ),
            ("CONTROLLER_*", _env(environ, KIC_ENV[file_name][0]), _env(environ, KIC_ENV[inline_name][0])),
        ]
        for source, file_value, inline_value in layers:
            if file_value is None and inline_value is None:
                continue
            if file_value is not None and inline_value is not None:
                problems.append(
                    f"{_flag(file_name)}: both {what} and {what} file specified ({source}), only one allowed"
                )
            elif file_value is not None:
                chosen[file_name] = _path(file_value)
            else:
                chosen[inline_name] = str(inline_value)
            break
    return chosen


def _control_plane_conflict(given: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """KIC's two names for the control plane id, both set and different, while no setting of ours wins."""
    if given.get("konnect_control_plane_id") is not None or _env(environ, ENV_PREFIX + "KONNECT_CONTROL_PLANE_ID"):
        return None
    current, deprecated = (_env(environ, n) for n in KIC_ENV["konnect_control_plane_id"])
    if current is not None and deprecated is not None and current.strip() != deprecated.strip():
        return (
            "--konnect-control-plane-id: CONTROLLER_KONNECT_CONTROL_PLANE_ID and CONTROLLER_KONNECT_RUNTIME_GROUP_ID "
            "(its deprecated name) name different control planes; set one"
        )
    return None


def _cross_checks(s: Settings) -> list[str]:
    problems = []
    for name in DURATION_RANGES:
        problem = duration_problem(name, getattr(s, name), allow_short=s.allow_short_periods)
        if problem is not None:
            problems.append(f"{_flag(name)}: {problem}")
    if not (s.leader_elect_lease_duration > s.leader_elect_renew_deadline > s.leader_elect_retry_period):
        problems.append(
            "leader election needs lease-duration > renew-deadline > retry-period "
            f"(got {s.leader_elect_lease_duration:g}s, {s.leader_elect_renew_deadline:g}s, "
            f"{s.leader_elect_retry_period:g}s)"
        )
    if bool(s.deliver_admin_client_cert_file) != bool(s.deliver_admin_client_key_file):
        problems.append("--deliver-admin-client-cert-file and --deliver-admin-client-key-file go together")
    plain = [label for label in s.deliver if sends_credentials_in_clear(s, label)]
    if plain:
        problems.append(
            f"{', '.join(plain)}: the Admin API token or client certificate would be sent in clear (plain http://); "
            "use https://, or --deliver-admin-trusted-network if the network to the gateways is trusted"
        )
    return problems


def has_admin_credentials(s: Settings) -> bool:
    return s.deliver_admin_token_file is not None or s.deliver_admin_client_cert_file is not None


def sends_credentials_in_clear(s: Settings, label: str) -> bool:
    """An admin-api target on plain http:// that would get the token or client certificate, untrusted."""
    spec = parse_target(label)
    return (
        spec.kind == "admin-api"
        and not parse_admin_url(spec.value).tls
        and has_admin_credentials(s)
        and not s.deliver_admin_trusted_network
    )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_settings(*, environ: Mapping[str, str] | None = None, **given: Any) -> Settings:
    """Settings from explicit values (flags; None means 'not given') over the environment.

    Every problem is reported at once, in one line that names the flag.
    """
    environ = os.environ if environ is None else environ
    problems = [
        f"{_flag(name)}: unknown setting"
        for name in given
        if name not in _FIELDS or _FIELDS[name].metadata.get("kic_only")
    ]
    values: dict[str, Any] = _tls_pairs(given, environ, problems)
    conflict = _control_plane_conflict(given, environ)
    if conflict:
        problems.append(conflict)
    for name, spec in _FIELDS.items():
        if name in _TLS_FIELDS or name == "kic_settings_present":
            continue
        raw, source = _raw_value(name, given, environ)
        if raw is None:
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else None
        try:
            # A value from KIC's name is first read as KIC reads it (a Go duration, a Go boolean), then
            # checked as ours; the settings only KIC has are KIC's reading alone.
            if source.startswith("CONTROLLER_"):
                raw = _kic_parser(name, default)(raw)
            values[name] = raw if spec.metadata.get("kic_only") else _parser(name, default)(raw)
        except ValueError as e:
            label = source if spec.metadata.get("kic_only") else _flag(name)
            origin = f" (from {source})" if source.startswith("CONTROLLER_") and label != source else ""
            problems.append(f"{label}: {e}{origin}")
    values["kic_settings_present"] = tuple(n for n in KIC_KONNECT_SETTINGS if _env(environ, n) is not None)
    if not problems:
        settings = Settings(**values)
        problems = _cross_checks(settings)
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    return settings
