"""Settings for `license-keeper run`: flags, `LICENSE_KEEPER_*` environment variables and KIC's names.

Precedence: a flag on the command line, then ``LICENSE_KEEPER_<FLAG>``, then KIC's
``CONTROLLER_KONNECT_*`` name (so a keeper can be dropped next to an existing KIC configuration),
then the default.

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

from .delivery import TargetSpec, parse_target

__all__ = ["DEFAULT_KONNECT_ADDRESS", "ConfigError", "Settings", "load_settings", "parse_addr", "parse_duration"]

DEFAULT_KONNECT_ADDRESS = "https://us.kic.api.konghq.com"

# Lower bounds (seconds) of the durations, checked when the flags are parsed. Polling faster than this
# only loads Konnect; a Lease renewed faster only loads the API server. The polling bounds may be
# lifted for test harnesses with LICENSE_KEEPER_ALLOW_SHORT_PERIODS=true (not a flag on purpose).
MIN_DURATIONS: dict[str, float] = {
    "polling_period": 10.0,
    "initial_polling_period": 1.0,
    "resync_period": 5.0,
    "konnect_timeout": 1.0,
    "leader_elect_lease_duration": 2.0,
    "leader_elect_renew_deadline": 1.0,
    "leader_elect_retry_period": 0.5,
}
_SHORT_PERIODS_ALLOWED_FOR = frozenset({"polling_period", "initial_polling_period"})

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


ENV_PREFIX = "LICENSE_KEEPER_"
# KIC's names for the Konnect settings, read after ours, so a keeper can run next to KIC's configuration.
KIC_ENV = {
    "konnect_address": "CONTROLLER_KONNECT_ADDRESS",
    "konnect_control_plane_id": "CONTROLLER_KONNECT_CONTROL_PLANE_ID",
    "konnect_tls_client_cert_file": "CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE",
    "konnect_tls_client_key_file": "CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE",
}
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Everything `license-keeper run` needs. Field names are the flag names with `_` for `-`."""

    konnect_address: str = DEFAULT_KONNECT_ADDRESS
    konnect_control_plane_id: str = ""
    konnect_tls_client_cert_file: Path | None = None
    konnect_tls_client_key_file: Path | None = None
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

    leader_elect: bool = True
    lease_name: str = ""
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0

    # For test harnesses only (env LICENSE_KEEPER_ALLOW_SHORT_PERIODS): lifts the polling lower bounds.
    allow_short_periods: bool = False

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
                ("--konnect-tls-client-cert-file", self.konnect_tls_client_cert_file),
                ("--konnect-tls-client-key-file", self.konnect_tls_client_key_file),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)}")


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


# --- from flags and environment ---------------------------------------------------------------------------


def _raw_value(name: str, given: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """A flag, then LICENSE_KEEPER_<NAME>, then KIC's name; empty variables count as unset (a chart
    value left blank must not hide a set CONTROLLER_KONNECT_X). None: take the default."""
    if given.get(name) is not None:
        return given[name]
    for env in (ENV_PREFIX + name.upper(), KIC_ENV.get(name)):
        if env and environ.get(env, "").strip():
            return environ[env]
    return None


def _cross_checks(s: Settings) -> list[str]:
    problems = []
    for name, least in MIN_DURATIONS.items():
        if s.allow_short_periods and name in _SHORT_PERIODS_ALLOWED_FOR:
            continue
        value = getattr(s, name)
        if value < least:
            problems.append(f"{_flag(name)}: must be at least {least:g}s, got {value:g}s")
    if not (s.leader_elect_lease_duration > s.leader_elect_renew_deadline > s.leader_elect_retry_period):
        problems.append(
            "leader election needs lease-duration > renew-deadline > retry-period "
            f"(got {s.leader_elect_lease_duration:g}s, {s.leader_elect_renew_deadline:g}s, "
            f"{s.leader_elect_retry_period:g}s)"
        )
    if bool(s.deliver_admin_client_cert_file) != bool(s.deliver_admin_client_key_file):
        problems.append("--deliver-admin-client-cert-file and --deliver-admin-client-key-file go together")
    return problems


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def load_settings(*, environ: Mapping[str, str] | None = None, **given: Any) -> Settings:
    """Settings from explicit values (flags; None means 'not given') over the environment.

    Every problem is reported at once, in one line that names the flag.
    """
    environ = os.environ if environ is None else environ
    problems = [f"{_flag(name)}: unknown setting" for name in given if name not in _FIELDS]
    values: dict[str, Any] = {}
    for name, spec in _FIELDS.items():
        raw = _raw_value(name, given, environ)
        if raw is None:
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else None
        try:
            values[name] = _parser(name, default)(raw)
        except ValueError as e:
            problems.append(f"{_flag(name)}: {e}")
    if not problems:
        settings = Settings(**values)
        problems = _cross_checks(settings)
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    return settings
