"""The `license-keeper` command line, in process with click's CliRunner (no cluster needed here)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from license_keeper.cli import common, main
from license_keeper.cli.backup import BACKUP_FORMAT, write_private
from license_keeper.config import ConfigError, load_settings
from license_keeper.testing.keeper import clean_environ
from license_keeper.testing.licenses import make_document

TODAY = datetime.datetime.now(datetime.UTC).date()
CUSTOMER = "Ochre Pangolin Shipping AG"

# Every variable that could change what a command does is unset, so results do not depend on the shell.
CLEAN_ENV: dict[str, str | None] = {k: None for k in os.environ.keys() - clean_environ().keys()}


def invoke(*args: str, env: dict[str, str] | None = None, input: str | bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={**CLEAN_ENV, **(env or {})}, input=input, terminal_width=200)


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_one_line_error(result: Result, *needles: str, code: int = 2) -> str:
    """One `error:` line and the exit code: 2 for a bad license or a refusal, 3 for could not check."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_main_help_names_the_environment_convention() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    text = flat(result.output)
    for name in ("LICENSE_KEEPER_", "CONTROLLER_KONNECT_"):
        assert name in text
    for command in ("run", "status", "validate", "sync", "export", "restore"):
        assert command in text


HELP_ENV = {
    "run": [
        "LICENSE_KEEPER_KONNECT_ADDRESS",
        "CONTROLLER_KONNECT_ADDRESS",
        "CONTROLLER_KONNECT_CONTROL_PLANE_ID",
        "CONTROLLER_KONNECT_TLS_CLIENT_CERT_FILE",
        "CONTROLLER_KONNECT_TLS_CLIENT_KEY_FILE",
        "LICENSE_KEEPER_POLLING_PERIOD",
        "LICENSE_KEEPER_INITIAL_POLLING_PERIOD",
        "LICENSE_KEEPER_RENEW_BEFORE",
        "LICENSE_KEEPER_NAMESPACE",
        "LICENSE_KEEPER_SECRET_NAME",
        "LICENSE_KEEPER_LEADER_ELECT",
        "LICENSE_KEEPER_LEADER_ELECT_LEASE_DURATION",
        "LICENSE_KEEPER_PROBE_ADDR",
        "LICENSE_KEEPER_METRICS_ADDR",
    ],
    "status": ["LICENSE_KEEPER_KUBECONFIG", "LICENSE_KEEPER_NAMESPACE", "LICENSE_KEEPER_RENEW_BEFORE"],
    "validate": ["LICENSE_KEEPER_RENEW_BEFORE"],
    "sync": ["CONTROLLER_KONNECT_CONTROL_PLANE_ID", "LICENSE_KEEPER_NAMESPACE", "LICENSE_KEEPER_CONTEXT"],
    "export": ["LICENSE_KEEPER_NAMESPACE", "LICENSE_KEEPER_SECRET_NAME", "LICENSE_KEEPER_KUBECONFIG"],
    "restore": ["LICENSE_KEEPER_NAMESPACE", "LICENSE_KEEPER_SECRET_NAME", "LICENSE_KEEPER_KUBECONFIG"],
}


@pytest.mark.parametrize("command", list(HELP_ENV))
def test_subcommand_help_names_env_vars(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    for name in HELP_ENV[command]:
        assert name in text, name


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--polling-period=abc"], "--polling-period: not a duration"),
        (["--initial-polling-period=0s"], "--initial-polling-period: duration must be positive"),
        (["--polling-period=5s"], "--polling-period: must be at least 10s"),
        (["--initial-polling-period=100ms"], "--initial-polling-period: must be at least 1s"),
        (["--probe-addr=8081"], "--probe-addr: not an address"),
        (["--log-level=loud"], "--log-level:"),
        (["--konnect-address=http://konnect.example"], "--konnect-address: must be an https:// URL"),
        (["--leader-elect-lease-duration=5s"], "lease-duration > renew-deadline > retry-period"),
        (["--namespace=x"], "missing required setting(s): --konnect-control-plane-id"),
    ],
)
def test_run_with_bad_settings_exits_3_with_one_line(args: list[str], needle: str) -> None:
    assert_one_line_error(invoke("run", *args), needle, code=3)


def test_run_reads_bad_settings_from_the_environment_too() -> None:
    result = invoke("run", env={"LICENSE_KEEPER_POLLING_PERIOD": "often"})
    assert_one_line_error(result, "--polling-period: not a duration", code=3)


def test_resolve_namespace_looks_at_flag_env_pod_then_kubeconfig(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In a pod, lightkube's in-cluster config carries the ServiceAccount's namespace as the context's."""
    from license_keeper.kube import Kube

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("LICENSE_KEEPER_NAMESPACE", raising=False)

    def kubeconfig(namespace: str | None) -> Path:
        path = tmp_path / f"kubeconfig-{namespace}"
        context = f"{{cluster: k, user: u, namespace: {namespace}}}" if namespace else "{cluster: k, user: u}"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"contexts: [{{name: c, context: {context}}}]\n"
            "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {}}]\n"
        )
        return path

    without = Kube.from_kubeconfig(kubeconfig(None))
    with pytest.raises(ConfigError, match="no namespace: pass --namespace, set POD_NAMESPACE"):
        common.resolve_namespace(load_settings(), without)
    kube = Kube.from_kubeconfig(kubeconfig("from-kubeconfig"))
    assert common.resolve_namespace(load_settings(), kube) == "from-kubeconfig"
    monkeypatch.setenv("POD_NAMESPACE", "from-pod")
    assert common.resolve_namespace(load_settings(), kube) == "from-pod"
    assert common.resolve_namespace(load_settings(), without) == "from-pod"
    monkeypatch.setenv("LICENSE_KEEPER_NAMESPACE", "from-env")
    assert common.resolve_namespace(load_settings(), kube) == "from-env"
    assert common.resolve_namespace(load_settings(namespace="from-flag"), kube) == "from-flag"


def test_a_missing_kubeconfig_is_one_clear_line(tmp_path: Path) -> None:
    from license_keeper.kube import Kube, KubeConfigError

    with pytest.raises(KubeConfigError, match=r"cannot load Kubernetes credentials from .*nope"):
        Kube.from_kubeconfig(tmp_path / "nope")


def _konnect_args(cert: Path, key: Path) -> list[str]:
    return [
        "--namespace=x",
        "--konnect-control-plane-id=cp",
        f"--konnect-tls-client-cert-file={cert}",
        f"--konnect-tls-client-key-file={key}",
    ]


def test_run_with_a_missing_cert_file_exits_3_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    assert_one_line_error(invoke("run", *_konnect_args(missing, missing)), str(missing), "cannot read", code=3)


def test_run_with_an_unreadable_cert_file_exits_3_with_one_line(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (a chmod 000 file can).
    unreadable = tmp_path / "cert-dir"
    unreadable.mkdir()
    assert_one_line_error(invoke("run", *_konnect_args(unreadable, unreadable)), str(unreadable), code=3)


def test_run_with_a_garbage_cert_exits_3_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    line = assert_one_line_error(invoke("run", *_konnect_args(bad, bad)), "not a valid PEM", code=3)
    assert "not base64" not in line


# --- validate --------------------------------------------------------------------------------------


def document(days: int, **kw: object) -> str:
    fields: dict[str, object] = {
        "customer": CUSTOMER,
        "creation_date": TODAY - datetime.timedelta(days=400),
        "expiration_date": TODAY + datetime.timedelta(days=days),
        **kw,
    }
    return make_document(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("days", "args", "code", "state"),
    [
        (200, [], 0, "valid"),
        (3, [], 1, "expiring"),
        (20, ["--renew-before=30d"], 1, "expiring"),
        (20, ["--renew-before=1d"], 0, "valid"),
        (-1, [], 2, "expired"),
    ],
)
def test_validate_exit_codes(tmp_path: Path, days: int, args: list[str], code: int, state: str) -> None:
    f = tmp_path / "license.json"
    f.write_text(document(days))
    result = invoke("validate", str(f), "-o", "json", *args)
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["state"] == state


def test_validate_reads_renew_before_from_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "license.json"
    f.write_text(document(20))
    assert invoke("validate", str(f)).exit_code == 0
    assert invoke("validate", str(f), env={"LICENSE_KEEPER_RENEW_BEFORE": "30d"}).exit_code == 1
    assert invoke("validate", str(f), "--renew-before=1d", env={"LICENSE_KEEPER_RENEW_BEFORE": "30d"}).exit_code == 0


def test_validate_a_backup_file_and_stdin(tmp_path: Path) -> None:
    doc = document(200)
    backup = tmp_path / "backup.json"
    backup.write_text(json.dumps({"format": BACKUP_FORMAT, "id": "i", "updated_at": 1, "document": doc}))
    result = invoke("validate", str(backup), "-o", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)["state"] == "valid"
    result = invoke("validate", "-", input=doc)
    assert result.exit_code == 0 and "valid" in result.stdout


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"", "document"),
        (b"   \n", "document"),
        (b"{not json", "document"),
        (b"\xff\xfe\x00\x01", "document"),
        (b"[1, 2, 3]", "document"),
        (b'{"license": "nope"}', "license"),
        (document(200, expiration_date="2031-02-30").encode(), "license_expiration_date"),
        (document(200, signature="zz-not-hex").encode(), "signature"),
        (document(200).replace(CUSTOMER, "").encode(), "customer"),
        (json.dumps({"format": BACKUP_FORMAT, "id": "i"}).encode(), "document"),
    ],
)
def test_validate_malformed_input_names_the_field_not_the_value(tmp_path: Path, content: bytes, field: str) -> None:
    f = tmp_path / "license.json"
    f.write_bytes(content)
    for output in ("text", "json"):
        result = invoke("validate", str(f), "-o", output)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert field in result.stdout
        for value in (CUSTOMER, "2031-02-30", "zz-not-hex"):
            assert value not in result.output
    summary = json.loads(invoke("validate", str(f), "-o", "json").stdout)
    assert summary["state"] == "invalid" and set(summary) - {"hint"} == {"state", "problem"}


def test_validate_missing_file_and_bad_window(tmp_path: Path) -> None:
    assert_one_line_error(invoke("validate", str(tmp_path / "absent.json")), "cannot read", code=3)
    f = tmp_path / "license.json"
    f.write_text(document(200))
    assert_one_line_error(invoke("validate", str(f), "--renew-before=soon"), "--renew-before", code=3)
    assert_one_line_error(
        invoke("validate", str(f), "--renew-before=1000d"), "--renew-before: must be at most 730d", code=3
    )


def test_restore_of_a_file_that_is_neither_a_backup_nor_a_license_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "license.json"
    f.write_text(json.dumps({"format": "something/else", "document": document(200)}))
    assert_one_line_error(invoke("restore", "-f", str(f), "--namespace=x"), "not a license-keeper backup")
    f.write_text(json.dumps({"hello": "world"}))
    assert_one_line_error(invoke("restore", "-f", str(f), "--namespace=x"), "license: is missing")
    f.write_text(json.dumps({"format": BACKUP_FORMAT, "document": document(200, signature="zz")}))
    line = assert_one_line_error(invoke("restore", "-f", str(f), "--namespace=x"), "signature")
    assert CUSTOMER not in line


# --- issue 21 item 1: restore takes Kong's license file as validate does ----------------------------------


def test_restore_reads_a_kong_license_file_as_support_sends_it(tmp_path: Path) -> None:
    """It used to refuse the raw document (`not a license-keeper backup`) that `validate` accepts."""
    from license_keeper.cli.backup import read_license_file

    doc = document(335)
    f = tmp_path / "license.json"
    f.write_text(doc + "\n")  # as a file from Kong support ends
    record = read_license_file(f)
    assert record.document == doc
    assert (record.id, record.updated_at) == ("", 0)  # no Konnect metadata: the restore's time ranks it
    assert record.valid


FILES: dict[str, bytes] = {
    "raw document": document(200).encode(),
    "raw document with a newline": (document(200) + "\n").encode(),
    "raw document, CRLF and spaces": (" " + document(200) + "\r\n").encode(),
    "backup": json.dumps({"format": BACKUP_FORMAT, "id": "i", "updated_at": 1, "document": document(200)}).encode(),
    "expired raw document": document(-3).encode(),
    "backup without document": json.dumps({"format": BACKUP_FORMAT, "id": "i"}).encode(),
    "other format": json.dumps({"format": "x/y", "document": document(200)}).encode(),
    "bad signature": document(200, signature="zz").encode(),
    "not JSON": b"{nope",
    "latin-1": document(200, customer="Zürich AG").replace("\\u00fc", "ü").encode("latin-1"),
    "empty": b"",
    "a JSON list": b"[]",
}


@pytest.mark.parametrize("name", list(FILES))
def test_validate_and_restore_accept_the_same_files(tmp_path: Path, name: str) -> None:
    """One reader: whatever `validate` calls a license (valid, expiring or expired), `restore` reads too."""
    from license_keeper.cli.backup import read_license_file

    f = tmp_path / "file.json"
    f.write_bytes(FILES[name])
    summary = json.loads(invoke("validate", str(f), "-o", "json").stdout)
    try:
        record = read_license_file(f)
    except ConfigError as e:
        assert summary["state"] == "invalid", (name, str(e))
        assert CUSTOMER not in str(e)
    else:
        assert summary["state"] != "invalid", name
        assert record.license is not None and summary["fingerprint"] == record.license.fingerprint


# --- files (issue 9 item 8) ------------------------------------------------------------------------------


def test_write_private_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    """`export` used to open a fixed `.NAME.tmp` with O_TRUNC, following a symlink planted there."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "backup.json"
    (tmp_path / ".backup.json.tmp").symlink_to(victim)
    write_private(out, '{"secret": true}\n')
    assert victim.read_text() == "precious\n"
    assert not out.is_symlink() and out.read_text() == '{"secret": true}\n'
    assert out.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / ".backup.json.tmp").is_symlink()  # left alone, not used
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("victim", "backup.json", ".backup.json.tmp")]
    assert leftovers == []


def test_write_private_replaces_a_symlink_at_the_target_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "backup.json"
    out.symlink_to(victim)
    write_private(out, "new\n")
    assert victim.read_text() == "precious\n"
    assert not out.is_symlink() and out.read_text() == "new\n"


NESTED = b"[" * 100_000 + b"]" * 100_000


def _backup(tmp_path: Path, **fields: object) -> Path:
    f = tmp_path / "backup.json"
    f.write_text(json.dumps({"format": BACKUP_FORMAT, "id": "i", "updated_at": 1, "document": document(200), **fields}))
    return f


def test_restore_of_deeply_nested_json_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "nested.json"
    f.write_bytes(NESTED)
    assert_one_line_error(invoke("restore", "-f", str(f), "--namespace=x"), "license document: is not valid JSON")


def test_validate_of_deeply_nested_json_is_invalid_with_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "nested.json"
    f.write_bytes(NESTED)
    result = invoke("validate", str(f), "-o", "json")
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout) == {"state": "invalid", "problem": "license document: is not valid JSON"}


def test_validate_refuses_a_latin1_file(tmp_path: Path) -> None:
    """It used to decode with errors='replace' and report such a file valid."""
    f = tmp_path / "license.json"
    text = document(200, customer="Zürich Shipping AG").replace("\\u00fc", "ü")
    assert "ü" in text
    f.write_bytes(text.encode("latin-1"))
    assert invoke("validate", "-", input=text.encode("utf-8")).exit_code == 0  # the same in UTF-8 is fine
    result = invoke("validate", str(f), "-o", "json")
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout) == {"state": "invalid", "problem": "license document: is not valid UTF-8"}


def test_oversized_input_is_refused_before_parsing(tmp_path: Path) -> None:
    f = _backup(tmp_path, padding="x" * (1024 * 1024))
    assert_one_line_error(invoke("restore", "-f", str(f), "--namespace=x"), "larger than 1024 KiB")
    assert_one_line_error(invoke("validate", str(f)), "larger than 1024 KiB")


@pytest.mark.parametrize(
    ("updated_at", "problem"),
    [
        (True, "not an integer"),
        (1.5, "not an integer"),
        (-5, "negative"),
        (int(datetime.datetime.now(datetime.UTC).timestamp()) + 3 * 86400, "future"),
        (int(datetime.datetime.now(datetime.UTC).timestamp()) * 1000, "3000"),
    ],
)
def test_restore_checks_updated_at_with_the_one_parser(tmp_path: Path, updated_at: object, problem: str) -> None:
    f = _backup(tmp_path, updated_at=updated_at)
    assert_one_line_error(invoke("restore", "-f", str(f), "--namespace=x"), "updated_at", problem)


def test_restore_of_a_backup_with_a_lone_surrogate_is_a_clear_error(tmp_path: Path) -> None:
    f = _backup(tmp_path, id="\udc80")
    assert_one_line_error(invoke("restore", "-f", str(f), "--namespace=x"), "license id: is not valid Unicode")


def test_run_help_lists_delivery_options() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    for flag in ("--deliver ", "--deliver-admin-token-file", "--deliver-admin-ca-file", "--delivery-period"):
        assert flag in result.output
    assert "LICENSE_KEEPER_DELIVER]" in result.output


# Every duration flag of each command (issue 26: --help states every bound).
DURATION_FLAGS = {
    "run": [
        "konnect-timeout",
        "initial-polling-period",
        "polling-period",
        "renew-before",
        "resync-period",
        "deliver-admin-timeout",
        "delivery-period",
        "leader-elect-lease-duration",
        "leader-elect-renew-deadline",
        "leader-elect-retry-period",
    ],
    "sync": ["konnect-timeout"],
    "status": ["renew-before", "deliver-admin-timeout", "delivery-period"],
    "validate": ["renew-before"],
}


@pytest.mark.parametrize("command", list(DURATION_FLAGS))
def test_help_states_the_range_of_every_duration_flag(command: str) -> None:
    from license_keeper.config import DURATION_RANGES, Settings, format_duration

    text = flat(invoke(command, "--help").output)
    for flag in DURATION_FLAGS[command]:
        name = flag.replace("-", "_")
        least, most = DURATION_RANGES[name]
        default = format_duration(getattr(Settings(), name))
        # the option's own help text: from its flag to its environment variable
        own = text.split(f"--{flag} ")[1].split(f"[env: LICENSE_KEEPER_{name.upper()}")[0]
        assert f"[default: {default}; range: {format_duration(least)} to {format_duration(most)}]" in own, flag


# --- Kong's terms in status and validate -------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "words"),
    [
        (200, ["no notice from the gateways yet", "WARN from 90 days"]),
        (60, ["WARN line daily (below 90 days left)"]),
        (20, ["ERR line daily (below 30 days left)", "enter the 30-day grace period on"]),
        (-3, ["expired on", "in the 30-day grace period", "Admin API turns read-only on"]),
        (-40, ["grace period ended on", "Admin API is read-only"]),
    ],
)
def test_validate_says_what_kong_does_and_when(tmp_path: Path, days: int, words: list[str]) -> None:
    f = tmp_path / "license.json"
    f.write_text(document(days))
    report = json.loads(invoke("validate", str(f), "-o", "json").stdout)
    expires = TODAY + datetime.timedelta(days=days)
    grace_end = (expires + datetime.timedelta(days=30)).isoformat()
    assert report["grace_period_end"] == f"{grace_end}T12:00:00+00:00"
    for w in words:
        assert w in report["kong"], report["kong"]
    if days > -30:  # the dates Kong acts on: the expiration date, then 30 days later
        assert grace_end in report["kong"]
    text = invoke("validate", str(f)).stdout
    assert f"Kong:             {report['kong']}" in text


# --- issue 21 item 2: one story for --secret-name and KIC's Secret ------------------------------------------


@pytest.mark.parametrize("command", ["run", "restore", "sync"])
def test_writing_commands_refuse_kics_secret_in_one_line(tmp_path: Path, command: str) -> None:
    """KIC (and Kong Operator) rewrite konnect-license-<cp-id> after every Konnect fetch: a keeper writing it
    would be a second writer, and adopting it would not change that. Reading it (status, export) is fine."""
    f = tmp_path / "license.json"
    f.write_text(document(200))
    extra = {"run": [], "restore": ["-f", str(f)], "sync": ["--once"]}[command]
    konnect = [
        "--konnect-control-plane-id=cp",
        f"--konnect-tls-client-cert-file={f}",
        f"--konnect-tls-client-key-file={f}",
    ]
    args = [
        command,
        *extra,
        "--namespace=kong",
        "--secret-name=konnect-license-0a1b",
        *(konnect if command != "restore" else []),
    ]
    # a setting refused before anything is read: "could not check" (3) for run and sync; restore reads its file
    # first, and refusing it there is a refusal (2)
    line = assert_one_line_error(invoke(*args), "konnect-license-0a1b", code=2 if command == "restore" else 3)
    assert "adopt" not in line
    assert "kong-license" in line  # what to use instead


def test_secret_name_help_tells_one_story() -> None:
    for command in ("run", "restore", "status", "export"):
        text = flat(invoke(command, "--help").output)
        help_line = text[text.index("--secret-name") :][:400]
        assert "konnect-license-" in help_line, command
        assert "never" in help_line  # the keeper never writes KIC's Secret
