"""license_keeper.config: durations, addresses, and where each setting comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from license_keeper.config import ConfigError, load_settings, parse_addr, parse_duration

ENV_PREFIXES = ("LICENSE_KEEPER_", "CONTROLLER_KONNECT_", "KONNECT_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees only the variables it sets itself."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES) or name in ("POD_NAMESPACE", "POLLING_PERIOD"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("12h", 43200.0),
        ("7d", 604800.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 30s ", 30.0),
        (90, 90.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


# Go's time.ParseDuration syntax (Kong's and Kubernetes' tools write durations so), plus days and bare seconds.
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400.0),
        ("5m30s", 330.0),
        ("2h45m30.5s", 9930.5),
        ("1d12h", 129600.0),
        ("1m500ms", 60.5),
        ("1500us", 0.0015),
        ("1500\u00b5s", 0.0015),
        ("2000000000ns", 2.0),
        (".5h", 1800.0),
        ("1.h", 3600.0),
    ],
)
def test_parse_duration_takes_go_syntax(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_go_durations_in_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LICENSE_KEEPER_POLLING_PERIOD", "1h30m")
    settings = load_settings(renew_before="6d12h")
    assert (settings.polling_period, settings.renew_before) == (5400.0, 561600.0)


@pytest.mark.parametrize(
    "bad", ["", "abc", "5x", "s", "5 minutes", "1e3", "-5s", "+5s", "5m 30s", "1h30", "h1", ".s", "nan", "inf", "True"]
)
def test_parse_duration_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("nonpositive", ["0", "0s", "0ms", "0.0h", 0, 0.0, -1, -0.5])
def test_parse_duration_rejects_zero_and_negative(nonpositive: str | float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        parse_duration(nonpositive)


def test_parse_duration_rejects_bool() -> None:
    with pytest.raises(ValueError):
        parse_duration(True)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (":8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:9402", ("127.0.0.1", 9402)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:8081", ("::1", 8081)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("bad", ["8080", "host:", ":", ":abc", ":65536", ":-1", ""])
def test_parse_addr_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not an address"):
        parse_addr(bad)


def test_defaults() -> None:
    s = load_settings()
    assert s.konnect_address == "https://us.kic.api.konghq.com"
    assert (s.initial_polling_period, s.polling_period, s.renew_before) == (60.0, 43200.0, 604800.0)
    assert (s.leader_elect_lease_duration, s.leader_elect_renew_deadline, s.leader_elect_retry_period) == (
        15.0,
        10.0,
        2.0,
    )
    assert s.leader_elect is True
    assert (s.probe_addr, s.metrics_addr, s.log_format, s.log_level) == (":8081", ":8080", "text", "info")
    assert s.konnect_timeout == 30.0


KONNECT_FIELDS = [
    ("konnect_address", "KONNECT_ADDRESS", "https://{}.example"),
    ("konnect_control_plane_id", "KONNECT_CONTROL_PLANE_ID", "cp-{}"),
    ("konnect_tls_client_cert_file", "KONNECT_TLS_CLIENT_CERT_FILE", "/certs/{}.crt"),
    ("konnect_tls_client_key_file", "KONNECT_TLS_CLIENT_KEY_FILE", "/certs/{}.key"),
]


def _value(field: str, raw: str) -> object:
    return Path(raw) if field.endswith("_file") else raw


@pytest.mark.parametrize(("field", "suffix", "fmt"), KONNECT_FIELDS)
def test_precedence_flag_then_ours_then_kic_then_default(
    monkeypatch: pytest.MonkeyPatch, field: str, suffix: str, fmt: str
) -> None:
    default = getattr(load_settings(), field)
    # An unprefixed variable of the same name is nobody's setting for us.
    monkeypatch.setenv(suffix, fmt.format("bare"))
    assert getattr(load_settings(), field) == default

    monkeypatch.setenv(f"CONTROLLER_{suffix}", fmt.format("kic"))
    assert getattr(load_settings(), field) == _value(field, fmt.format("kic"))

    monkeypatch.setenv(f"LICENSE_KEEPER_{suffix}", fmt.format("ours"))
    assert getattr(load_settings(), field) == _value(field, fmt.format("ours"))

    assert getattr(load_settings(**{field: fmt.format("flag")}), field) == _value(field, fmt.format("flag"))
    # None means "flag not given": the environment still applies.
    assert getattr(load_settings(**{field: None}), field) == _value(field, fmt.format("ours"))


@pytest.mark.parametrize(
    ("field", "env", "raw", "parsed"),
    [
        ("polling_period", "LICENSE_KEEPER_POLLING_PERIOD", "6h", 21600.0),
        ("initial_polling_period", "LICENSE_KEEPER_INITIAL_POLLING_PERIOD", "30s", 30.0),
        ("renew_before", "LICENSE_KEEPER_RENEW_BEFORE", "14d", 14 * 86400.0),
        ("leader_elect", "LICENSE_KEEPER_LEADER_ELECT", "false", False),
        ("log_format", "LICENSE_KEEPER_LOG_FORMAT", "JSON", "json"),
        ("controller_name", "LICENSE_KEEPER_CONTROLLER_NAME", "edge", "edge"),
        ("metrics_addr", "LICENSE_KEEPER_METRICS_ADDR", "127.0.0.1:9402", "127.0.0.1:9402"),
    ],
)
def test_prefixed_env_and_flag(monkeypatch: pytest.MonkeyPatch, field: str, env: str, raw: str, parsed: object) -> None:
    monkeypatch.setenv(env, raw)
    assert getattr(load_settings(), field) == parsed
    flag_value = {"polling_period": "1h", "initial_polling_period": "2m", "renew_before": "1d"}.get(field)
    if flag_value:
        assert getattr(load_settings(**{field: flag_value}), field) == parse_duration(flag_value)


def test_kic_env_is_read_for_konnect_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_POLLING_PERIOD", "1s")
    assert load_settings().polling_period == 43200.0


@pytest.mark.parametrize(
    ("given", "env", "flag"),
    [
        ({"polling_period": "abc"}, {}, "--polling-period"),
        ({}, {"LICENSE_KEEPER_POLLING_PERIOD": "abc"}, "--polling-period"),
        ({"initial_polling_period": "0s"}, {}, "--initial-polling-period"),
        ({"renew_before": "-1d"}, {}, "--renew-before"),
        ({"konnect_timeout": "soon"}, {}, "--konnect-timeout"),
        ({"probe_addr": "8081"}, {}, "--probe-addr"),
        ({"metrics_addr": ":99999"}, {}, "--metrics-addr"),
        ({"log_level": "loud"}, {}, "--log-level"),
        ({"log_format": "xml"}, {}, "--log-format"),
        ({"konnect_address": "http://plain.example"}, {}, "--konnect-address"),
        ({}, {"CONTROLLER_KONNECT_ADDRESS": "http://plain.example"}, "--konnect-address"),
        ({}, {"LICENSE_KEEPER_KONNECT_ADDRESS": "ftp://x"}, "--konnect-address"),
        ({"namespace": "Not_A_Name"}, {}, "--namespace"),
        ({"secret_name": "UPPER"}, {}, "--secret-name"),
        ({}, {"LICENSE_KEEPER_LEADER_ELECT": "maybe"}, "--leader-elect"),
        ({"no_such_flag": "1"}, {}, "--no-such-flag"),
    ],
)
def test_config_errors_are_one_line_and_name_the_flag(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, str], env: dict[str, str], flag: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings(**given)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("invalid settings: ")
    assert f"{flag}:" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_several_errors_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(polling_period="x", probe_addr="y")
    message = str(info.value)
    assert "\n" not in message
    assert "--polling-period:" in message and "--probe-addr:" in message


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "ok"),
    [
        ("15s", "10s", "2s", True),
        ("3s", "2s", "500ms", True),
        ("10s", "10s", "2s", False),
        ("5s", "10s", "2s", False),
        ("15s", "2s", "2s", False),
        ("15s", "10s", "11s", False),
    ],
)
def test_lease_durations_must_be_ordered(lease: str, renew: str, retry: str, ok: bool) -> None:
    kw = {
        "leader_elect_lease_duration": lease,
        "leader_elect_renew_deadline": renew,
        "leader_elect_retry_period": retry,
    }
    if ok:
        s = load_settings(**kw)
        assert s.leader_elect_lease_duration > s.leader_elect_renew_deadline > s.leader_elect_retry_period
    else:
        with pytest.raises(ConfigError, match=r"lease-duration > renew-deadline > retry-period") as info:
            load_settings(**kw)
        assert "\n" not in str(info.value)


def test_secret_and_lease_names() -> None:
    s = load_settings()
    assert (s.effective_secret_name, s.effective_lease_name) == ("kong-license", "kong-license-keeper")
    s = load_settings(controller_name="edge")
    assert (s.effective_secret_name, s.effective_lease_name) == ("edge-license", "edge-license-keeper")
    s = load_settings(controller_name="edge", secret_name="konnect-license-abc", lease_name="my-lease")
    assert (s.effective_secret_name, s.effective_lease_name) == ("konnect-license-abc", "my-lease")


# --- lower bounds (issue 9 item 13) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "flag", "least"),
    [
        ({"polling_period": "9s"}, "--polling-period", "10s"),
        ({"polling_period": "300ms"}, "--polling-period", "10s"),
        ({"initial_polling_period": "500ms"}, "--initial-polling-period", "1s"),
        ({"konnect_timeout": "100ms"}, "--konnect-timeout", "1s"),
        (
            {
                "leader_elect_lease_duration": "1500ms",
                "leader_elect_renew_deadline": "1s",
                "leader_elect_retry_period": "500ms",
            },
            "--leader-elect-lease-duration",
            "2s",
        ),
        ({"leader_elect_retry_period": "100ms"}, "--leader-elect-retry-period", "500ms"),
    ],
)
def test_durations_have_lower_bounds(given: dict[str, str], flag: str, least: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**given)
    message = str(info.value)
    assert "\n" not in message
    assert f"{flag}: must be at least {least}" in message


def test_the_lower_bounds_themselves_are_accepted() -> None:
    s = load_settings(polling_period="10s", initial_polling_period="1s", konnect_timeout="1s")
    assert (s.polling_period, s.initial_polling_period, s.konnect_timeout) == (10.0, 1.0, 1.0)


def test_test_harnesses_may_poll_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LICENSE_KEEPER_ALLOW_SHORT_PERIODS", "true")
    s = load_settings(polling_period="20ms", initial_polling_period="20ms")
    assert s.polling_period == s.initial_polling_period == 0.02
    with pytest.raises(ConfigError, match="--leader-elect-retry-period: must be at least"):
        load_settings(leader_elect_retry_period="10ms")  # only the polling bounds are lifted


# --- ranges (issue 26 item 3) ---------------------------------------------------------------------------

# Each duration at the top of its range, with the other durations moved so the cross-checks still hold.
_AT_MOST = {
    "leader_elect_lease_duration": {"leader_elect_renew_deadline": "10s", "leader_elect_retry_period": "2s"},
    "leader_elect_renew_deadline": {"leader_elect_lease_duration": "10m", "leader_elect_retry_period": "2s"},
    "leader_elect_retry_period": {"leader_elect_lease_duration": "10m", "leader_elect_renew_deadline": "5m"},
}


def _durations() -> list[str]:
    import dataclasses

    from license_keeper.config import Settings

    return [f.name for f in dataclasses.fields(Settings) if f.type == "float"]


def test_every_duration_has_a_range() -> None:
    from license_keeper.config import DURATION_RANGES

    assert set(_durations()) == set(DURATION_RANGES)
    for name, (least, most) in DURATION_RANGES.items():
        assert 0 < least < most, name


@pytest.mark.parametrize("name", _durations())
def test_every_duration_has_an_upper_bound_checked_in_one_line(name: str) -> None:
    from license_keeper.config import DURATION_RANGES, format_duration

    _, most = DURATION_RANGES[name]
    fits = load_settings(**{name: format_duration(most), **_AT_MOST.get(name, {})})
    assert getattr(fits, name) == most
    flag = "--" + name.replace("_", "-")
    with pytest.raises(ConfigError) as info:
        load_settings(**{name: f"{most + 1:.0f}s", **_AT_MOST.get(name, {})})
    message = str(info.value)
    assert "\n" not in message
    assert f"{flag}: must be at most {format_duration(most)}, got {format_duration(most + 1)}" in message


def test_a_lease_duration_beyond_int32_is_refused_at_start() -> None:
    """Issue 26 item 3: a Lease duration beyond what leaseDurationSeconds (int32) holds passed the
    settings, and then the API server rejected every Lease write, so no replica ever led."""
    too_long = f"{2**31}s"
    with pytest.raises(ConfigError, match=r"--leader-elect-lease-duration: must be at most 10m"):
        load_settings(leader_elect_lease_duration=too_long)


def test_a_konnect_timeout_beyond_the_poll_loops_patience_is_refused() -> None:
    """Issue 26 item 1: --konnect-timeout had no upper bound."""
    with pytest.raises(ConfigError, match=r"--konnect-timeout: must be at most 5m, got 10m"):
        load_settings(konnect_timeout="10m")


def test_short_periods_for_test_harnesses_keep_their_upper_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LICENSE_KEEPER_ALLOW_SHORT_PERIODS", "true")
    assert load_settings(delivery_period="2s").delivery_period == 2.0
    with pytest.raises(ConfigError, match="--polling-period: must be at most 7d"):
        load_settings(polling_period="8d")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (1.0, "1s"), (1.5, "1.5s"), (90.0, "90s"), (300.0, "5m"), (5400.0, "90m"), (604800.0, "7d")],
)
def test_format_duration(seconds: float, text: str) -> None:
    from license_keeper.config import format_duration

    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_nan_is_out_of_every_range() -> None:
    from license_keeper.config import duration_problem

    assert duration_problem("konnect_timeout", float("nan")) is not None


def test_settings_read_no_namespace_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "from-pod")
    s = load_settings()
    assert s.namespace == ""
    assert not hasattr(s, "effective_namespace")  # the lookup lives at the edge (cli.resolve_namespace)


def test_require_konnect() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings().require_konnect()
    assert str(info.value).startswith(
        "missing required setting(s): --konnect-control-plane-id, --konnect-tls-client-cert-file, "
        "--konnect-tls-client-key-file"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(konnect_control_plane_id="cp", konnect_tls_client_cert_file="/c").require_konnect()
    assert str(info.value).startswith("missing required setting(s): --konnect-tls-client-key-file")
    complete = load_settings(
        konnect_control_plane_id="cp", konnect_tls_client_cert_file="/c", konnect_tls_client_key_file="/k"
    )
    complete.require_konnect()  # does not raise
    assert complete.konnect_tls_client_key_file == Path("/k")


def test_require_konnect_accepts_kic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_CONTROL_PLANE_ID", "cp")
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE", "/c")
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE", "/k")
    s = load_settings()
    s.require_konnect()
    assert (s.konnect_control_plane_id, s.konnect_tls_client_cert_file) == ("cp", Path("/c"))


def test_konnect_address_trailing_slash_is_trimmed() -> None:
    assert load_settings(konnect_address="https://eu.kic.api.konghq.com/").konnect_address == (
        "https://eu.kic.api.konghq.com"
    )


def test_an_empty_prefixed_variable_does_not_hide_kics_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LICENSE_KEEPER_KONNECT_ADDRESS", "")
    monkeypatch.setenv("CONTROLLER_KONNECT_ADDRESS", "https://eu.kic.api.konghq.com")
    assert load_settings().konnect_address == "https://eu.kic.api.konghq.com"


# --- delivery targets -----------------------------------------------------------------------------------


def test_no_delivery_targets_by_default() -> None:
    s = load_settings()
    assert s.deliver == [] and s.delivery_targets() == []
    assert s.delivery_period == 600.0 and s.deliver_admin_timeout == 10.0


def test_deliver_from_env_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LICENSE_KEEPER_DELIVER", "admin-api=https://kong-cp:8444/, konglicense=kong ,restart=deployment/gw"
    )
    monkeypatch.setenv("LICENSE_KEEPER_DELIVERY_PERIOD", "5m")
    s = load_settings()
    assert s.deliver == ["admin-api=https://kong-cp:8444", "konglicense=kong", "restart=deployment/gw"]
    assert [t.kind for t in s.delivery_targets()] == ["admin-api", "konglicense", "restart"]
    assert s.delivery_period == 300.0
    # a flag wins over the environment
    assert load_settings(deliver=("restart=statefulset/kong",)).deliver == ["restart=statefulset/kong"]


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (("admin-api=kong:8444",), "http(s)://"),
        (("konglicense=Bad",), "lowercase DNS"),
        (("restart=daemonset/x",), "deployment/<name>"),
        (("konglicense=a", "konglicense=a"), "twice"),
        (("nope=x",), "unknown delivery target"),
    ],
)
def test_bad_delivery_targets_fail_in_one_line(given: tuple[str, ...], words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(deliver=given)
    assert "--deliver" in str(exc.value) and words in str(exc.value) and "\n" not in str(exc.value)


def test_admin_client_cert_needs_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_settings(deliver_admin_client_cert_file=tmp_path / "c.pem")


def test_the_operations_guide_states_every_default_and_range() -> None:
    """docs/operations.md ("Settings and their bounds") says what load_settings enforces."""
    from license_keeper.config import DURATION_RANGES, Settings, format_duration

    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for name, (least, most) in DURATION_RANGES.items():
        flag = "--" + name.replace("_", "-")
        default = format_duration(getattr(Settings(), name))
        rows = [line for line in guide.splitlines() if line.startswith(f"| `{flag}` |")]
        assert len(rows) == 1, flag
        cells = [cell.strip() for cell in rows[0].split("|")]
        assert cells[3:5] == [f"`{default}`", f"`{format_duration(least)}` to `{format_duration(most)}`"], rows[0]


# --- issue 21 item 2: every Konnect setting KIC reads, with KIC's meaning ----------------------------------
#
# Facts from Kong Ingress Controller's source (Kong/kubernetes-ingress-controller, main at 1fa68f8, Aug 2026:
# internal/cmd/rootcmd/config/cli.go, the "Konnect" flags and the deprecated --konnect-runtime-group-id; env
# binding in internal/cmd/rootcmd/env.go: CONTROLLER_ + the flag upper-cased, '-' -> '_', flags win).
# flag -> (Go type, KIC's default)
KIC_KONNECT_FLAGS: dict[str, tuple[str, str]] = {
    "konnect-sync-enabled": ("bool", "false"),
    "konnect-licensing-enabled": ("bool", "false"),
    "konnect-license-storage-enabled": ("bool", "true"),
    "konnect-initial-license-polling-period": ("duration", "1m0s"),
    "konnect-license-polling-period": ("duration", "12h0m0s"),
    "konnect-control-plane-id": ("string", ""),
    "konnect-address": ("string", "https://us.kic.api.konghq.com"),
    "konnect-tls-client-cert": ("string", ""),
    "konnect-tls-client-cert-file": ("string", ""),
    "konnect-tls-client-key": ("string", ""),
    "konnect-tls-client-key-file": ("string", ""),
    "konnect-upload-config-period": ("duration", "30s"),
    "konnect-config-sync-concurrency": ("int", "4"),
    "konnect-refresh-node-period": ("duration", "1m0s"),
    "konnect-disable-consumers-sync": ("bool", "false"),
    "konnect-runtime-group-id": ("string", ""),  # deprecated: "Use --konnect-control-plane-id instead."
}


def kic_env(flag: str) -> str:
    return "CONTROLLER_" + flag.upper().replace("-", "_")


def test_the_keeper_knows_every_konnect_setting_kic_reads() -> None:
    from license_keeper.config import KIC_KONNECT_SETTINGS

    assert set(KIC_KONNECT_SETTINGS) == {kic_env(flag) for flag in KIC_KONNECT_FLAGS}


def test_a_kic_environment_with_every_konnect_setting_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of KIC's settings set to a value KIC accepts (Go spellings included): nothing is refused."""
    values = {
        "konnect-sync-enabled": "T",
        "konnect-licensing-enabled": "TRUE",
        "konnect-license-storage-enabled": "0",
        "konnect-initial-license-polling-period": "1m30s",
        "konnect-license-polling-period": "6h0m0s",
        "konnect-control-plane-id": "cp-1",
        "konnect-address": "https://eu.kic.api.konghq.com",
        "konnect-tls-client-cert": "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        "konnect-tls-client-key": "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n",
        "konnect-upload-config-period": "45s",
        "konnect-config-sync-concurrency": "4",
        "konnect-refresh-node-period": "2m",
        "konnect-disable-consumers-sync": "true",
    }
    for flag, value in values.items():
        monkeypatch.setenv(kic_env(flag), value)
    s = load_settings()
    s.require_konnect()
    assert s.konnect_control_plane_id == "cp-1"
    assert s.konnect_address == "https://eu.kic.api.konghq.com"
    assert s.initial_polling_period == 90.0 and s.polling_period == 6 * 3600.0
    assert s.konnect_tls_client_cert.startswith("-----BEGIN CERTIFICATE-----")
    assert s.konnect_tls_client_key.startswith("-----BEGIN PRIVATE KEY-----")
    assert s.konnect_tls_client_cert_file is None and s.konnect_tls_client_key_file is None
    assert s.kic_licensing_enabled is True and s.kic_license_storage_enabled is False


def test_kics_konnect_manifest_runs_the_keeper(monkeypatch: pytest.MonkeyPatch) -> None:
    """KIC's Konnect manifests (config/components/konnect/manager.yaml) and the Kong chart: the control plane
    id from a ConfigMap, the certificate and key inline from the Secret konnect-client-tls."""
    monkeypatch.setenv("CONTROLLER_KONNECT_CONTROL_PLANE_ID", "cp-2")
    monkeypatch.setenv("CONTROLLER_KONNECT_SYNC_ENABLED", "true")
    monkeypatch.setenv("CONTROLLER_KONNECT_LICENSING_ENABLED", "true")
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_CERT", "-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_KEY", "-----BEGIN PRIVATE KEY-----\n")
    load_settings().require_konnect()  # it used to say: missing required setting(s)


def test_the_deprecated_runtime_group_id_is_the_control_plane_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_RUNTIME_GROUP_ID", "rg-1")
    assert load_settings().konnect_control_plane_id == "rg-1"
    monkeypatch.setenv("CONTROLLER_KONNECT_CONTROL_PLANE_ID", "rg-1")
    assert load_settings().konnect_control_plane_id == "rg-1"
    monkeypatch.setenv("CONTROLLER_KONNECT_CONTROL_PLANE_ID", "cp-other")
    with pytest.raises(ConfigError, match="CONTROLLER_KONNECT_RUNTIME_GROUP_ID"):
        load_settings()  # two different ids: KIC would silently take one of them
    monkeypatch.setenv("LICENSE_KEEPER_KONNECT_CONTROL_PLANE_ID", "ours")
    assert load_settings().konnect_control_plane_id == "ours"  # ours wins over KIC's names, as always


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("1m0s", 60.0), ("12h0m0s", 43200.0), ("1h30m", 5400.0), ("90s", 90.0), ("1.5h", 5400.0), ("2m500ms", 120.5)],
)
def test_kics_polling_periods_are_go_durations(monkeypatch: pytest.MonkeyPatch, raw: str, seconds: float) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_LICENSE_POLLING_PERIOD", raw)
    monkeypatch.setenv("CONTROLLER_KONNECT_INITIAL_LICENSE_POLLING_PERIOD", raw)
    s = load_settings()
    assert s.polling_period == s.initial_polling_period == seconds


@pytest.mark.parametrize("raw", ["7d", "90", "soon", "-1m", "1m-5s"])
def test_a_duration_kic_refuses_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_LICENSE_POLLING_PERIOD", raw)
    with pytest.raises(ConfigError, match="CONTROLLER_KONNECT_LICENSE_POLLING_PERIOD"):
        load_settings()


def test_kics_polling_periods_come_after_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_LICENSE_POLLING_PERIOD", "6h")
    monkeypatch.setenv("LICENSE_KEEPER_POLLING_PERIOD", "3h")
    assert load_settings().polling_period == 3 * 3600.0
    assert load_settings(polling_period="1h").polling_period == 3600.0


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("t", True), ("True", True), ("F", False), ("false", False)])
def test_kics_switches_are_go_booleans(monkeypatch: pytest.MonkeyPatch, raw: str, value: bool) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_LICENSING_ENABLED", raw)
    assert load_settings().kic_licensing_enabled is value


def test_a_switch_kic_refuses_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_LICENSE_STORAGE_ENABLED", "yes")
    with pytest.raises(ConfigError, match="CONTROLLER_KONNECT_LICENSE_STORAGE_ENABLED"):
        load_settings()


def test_inline_certificate_and_file_exclude_each_other_as_in_kic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_CERT", "PEM")
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE", "/c")
    with pytest.raises(ConfigError, match="only one allowed"):
        load_settings()
    # our own setting wins over KIC's pair as a whole
    monkeypatch.setenv("LICENSE_KEEPER_KONNECT_TLS_CLIENT_CERT_FILE", "/ours.crt")
    s = load_settings()
    assert s.konnect_tls_client_cert_file == Path("/ours.crt") and s.konnect_tls_client_cert == ""
    assert load_settings(konnect_tls_client_cert_file="/flag.crt").konnect_tls_client_cert_file == Path("/flag.crt")


def test_a_certificate_without_a_key_is_refused_as_in_kic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_CONTROL_PLANE_ID", "cp")
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_CERT", "PEM")
    with pytest.raises(ConfigError, match="--konnect-tls-client-key-file"):
        load_settings().require_konnect()


def test_kics_settings_that_do_not_apply_are_named_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLLER_KONNECT_SYNC_ENABLED", "true")
    monkeypatch.setenv("CONTROLLER_KONNECT_UPLOAD_CONFIG_PERIOD", "30s")
    notes = " ".join(load_settings().kic_notes())
    assert "CONTROLLER_KONNECT_SYNC_ENABLED" in notes and "CONTROLLER_KONNECT_UPLOAD_CONFIG_PERIOD" in notes


# --- issue 21 item 2: the keeper never writes KIC's Secret ------------------------------------------------


def test_run_refuses_kics_secret_name() -> None:
    with pytest.raises(ConfigError, match="konnect-license-") as info:
        load_settings(secret_name="konnect-license-0a1b").require_own_secret()
    assert "adopt" not in str(info.value)
    load_settings(secret_name="konnect-license-0a1b")  # reading it (status, export) is fine
    load_settings(secret_name="kong-license").require_own_secret()
