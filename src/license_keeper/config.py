"""Settings for `license-keeper run`: flags, `LICENSE_KEEPER_*` environment variables and KIC's names.

Precedence: a flag on the command line, then ``LICENSE_KEEPER_<FLAG>``, then KIC's
``CONTROLLER_KONNECT_*`` name (so a keeper can be dropped next to an existing KIC configuration),
then the default.

Pure apart from pydantic-settings reading the environment for the flags: where the namespace comes
from when no flag names it (POD_NAMESPACE, the ServiceAccount file, the kubeconfig) is decided at the
edge, in the CLI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_KONNECT_ADDRESS",
    "MIN_DURATIONS",
    "ConfigError",
    "Settings",
    "load_settings",
    "parse_addr",
    "parse_duration",
]

DEFAULT_KONNECT_ADDRESS = "https://us.kic.api.konghq.com"

# Lower bounds (seconds) of the durations, checked when the flags are parsed. Polling faster than this
# only loads Konnect; a Lease renewed faster only loads the API server. The polling bounds may be
# lifted for test harnesses with LICENSE_KEEPER_ALLOW_SHORT_PERIODS=true (not a flag on purpose).
MIN_DURATIONS: dict[str, float] = {
    "polling_period": 10.0,
    "initial_polling_period": 1.0,
    "konnect_timeout": 1.0,
    "leader_elect_lease_duration": 2.0,
    "leader_elect_renew_deadline": 1.0,
    "leader_elect_retry_period": 0.5,
}
_SHORT_PERIODS_ALLOWED_FOR = frozenset({"polling_period", "initial_polling_period"})

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(ValueError):
    """A setting is missing or malformed. The message is one line, fit to print and exit."""


def parse_duration(value: str | float | int) -> float:
    """``"90"``, ``"90s"``, ``"5m"``, ``"12h"``, ``"7d"`` -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 5m, 12h, 7d)")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def parse_addr(value: str) -> tuple[str, int]:
    """``":8080"``, ``"0.0.0.0:8080"``, ``"[::1]:8080"`` -> (host, port); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not an address: {value!r} (use host:port or :port)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Everything `license-keeper run` needs. Field names are the flag names with `_` for `-`."""

    # An empty LICENSE_KEEPER_X (a chart value left blank) must not hide a set CONTROLLER_KONNECT_X.
    model_config = SettingsConfigDict(
        env_prefix="LICENSE_KEEPER_", populate_by_name=True, extra="forbid", env_ignore_empty=True
    )

    konnect_address: str = Field(
        DEFAULT_KONNECT_ADDRESS,
        validation_alias=_env("LICENSE_KEEPER_KONNECT_ADDRESS", "CONTROLLER_KONNECT_ADDRESS"),
    )
    konnect_control_plane_id: str = Field(
        "",
        validation_alias=_env(
            "LICENSE_KEEPER_KONNECT_CONTROL_PLANE_ID",
            "CONTROLLER_KONNECT_CONTROL_PLANE_ID",
        ),
    )
    konnect_tls_client_cert_file: Path | None = Field(
        None,
        validation_alias=_env(
            "LICENSE_KEEPER_KONNECT_TLS_CLIENT_CERT_FILE",
            "CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE",
        ),
    )
    konnect_tls_client_key_file: Path | None = Field(
        None,
        validation_alias=_env(
            "LICENSE_KEEPER_KONNECT_TLS_CLIENT_KEY_FILE",
            "CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE",
        ),
    )
    konnect_ca_file: Path | None = None
    konnect_timeout: float = 30.0

    controller_name: str = "kong"
    secret_name: str = ""
    namespace: str = ""
    kubeconfig: Path | None = None

    initial_polling_period: float = 60.0
    polling_period: float = 12 * 3600.0
    renew_before: float = 7 * 86400.0

    probe_addr: str = ":8081"
    metrics_addr: str = ":8080"
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    leader_elect: bool = True
    lease_name: str = ""
    leader_elect_lease_duration: float = 15.0
    leader_elect_renew_deadline: float = 10.0
    leader_elect_retry_period: float = 2.0

    # For test harnesses only (env LICENSE_KEEPER_ALLOW_SHORT_PERIODS): lifts the polling lower bounds.
    allow_short_periods: bool = False

    @field_validator(
        "konnect_timeout",
        "initial_polling_period",
        "polling_period",
        "renew_before",
        "leader_elect_lease_duration",
        "leader_elect_renew_deadline",
        "leader_elect_retry_period",
        mode="before",
    )
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("probe_addr", "metrics_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        parse_addr(v)
        return v

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("konnect_address")
    @classmethod
    def _https(cls, v: str) -> str:
        if not re.match(r"^https://[^/\s]+", v):
            raise ValueError("must be an https:// URL (Konnect speaks mutual TLS only)")
        return v.rstrip("/")

    @field_validator("controller_name", "secret_name", "lease_name", "namespace")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if v and not re.match(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$", v):
            raise ValueError("must be a lowercase DNS name (a-z, 0-9, '-', '.')")
        return v

    @model_validator(mode="after")
    def _lower_bounds(self) -> Settings:
        for name, least in MIN_DURATIONS.items():
            if self.allow_short_periods and name in _SHORT_PERIODS_ALLOWED_FOR:
                continue
            value = getattr(self, name)
            if value < least:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag}: must be at least {least:g}s, got {value:g}s")
        return self

    @model_validator(mode="after")
    def _leases(self) -> Settings:
        if not (self.leader_elect_lease_duration > self.leader_elect_renew_deadline > self.leader_elect_retry_period):
            raise ValueError(
                "leader election needs lease-duration > renew-deadline > retry-period "
                f"(got {self.leader_elect_lease_duration:g}s, {self.leader_elect_renew_deadline:g}s, "
                f"{self.leader_elect_retry_period:g}s)"
            )
        return self

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


def load_settings(**given: Any) -> Settings:
    """Settings from explicit values (flags; None means 'not given') over the environment."""
    values = {k: v for k, v in given.items() if v is not None}
    try:
        return Settings(**values)
    except ValidationError as e:
        raise ConfigError(_one_line(e)) from None


def _field_name(loc: str) -> str:
    """Errors on the aliased Konnect fields are located by the alias (an env name): name the flag."""
    for name, info in Settings.model_fields.items():
        if isinstance(info.validation_alias, AliasChoices) and loc in info.validation_alias.choices:
            return name
    return loc


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_input=False, include_url=False):
        loc = "-".join(_field_name(str(p)) for p in err["loc"]).replace("_", "-")
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"--{loc}: {msg}" if loc else msg)
    return "invalid settings: " + "; ".join(parts)
