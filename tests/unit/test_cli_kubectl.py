"""The CLI shaped like kubectl and cmctl (issue 21 #3), in process: flags, formats, exit codes, error lines.

The API server here is an address nobody listens on (nothing is faked): whatever needs a real one is in
tests/e2e/test_sync.py and tests/e2e/test_backup.py.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import click
import pytest
import yaml
from click.testing import Result

from license_keeper.cli import main
from license_keeper.cli.backup import BACKUP_FORMAT

from .test_cli import document, invoke

REPO = Path(__file__).resolve().parents[2]
INTERFACES = REPO / "docs" / "interfaces.md"
API_COMMANDS = ("run", "status", "sync", "export", "restore")
ALL_COMMANDS = (*API_COMMANDS, "validate")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(tmp_path: Path, servers: dict[str, str], current: str, namespace: str = "kong") -> Path:
    """A kubeconfig with one context per server (named after the context), no credentials."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": current,
                "contexts": [
                    {"name": n, "context": {"cluster": n, "user": "u", "namespace": namespace}} for n in servers
                ],
                "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
                "users": [{"name": "u", "user": {}}],
            }
        )
    )
    return path


def one_error_line(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --- exit codes: one table in code, --help and docs ----------------------------------------------------


def documented_exit_codes() -> dict[int, str]:
    text = INTERFACES.read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\d)` \| (.+?) \|$", section, re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def test_exit_codes_are_one_table_in_code_help_and_docs() -> None:
    from license_keeper.cli.errors import COMMAND_EXIT_CODES, EXIT_CODES, EXIT_UNKNOWN

    assert EXIT_UNKNOWN == 3
    assert documented_exit_codes() == EXIT_CODES
    main_help = " ".join(invoke("--help").output.split())
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {meaning}" in main_help
    assert set(COMMAND_EXIT_CODES) == set(ALL_COMMANDS)
    for command in ALL_COMMANDS:
        text = " ".join(invoke(command, "--help").output.split())
        assert "Exit codes:" in text, command
        for code, meaning in COMMAND_EXIT_CODES[command].items():
            assert f"{code} {meaning}" in text, (command, code)
            assert code == 1 or code in EXIT_CODES  # only `run` uses 1 in its own sense (exit on a lost Lease)
        assert EXIT_UNKNOWN in COMMAND_EXIT_CODES[command], command


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--bogus"],
        ["status", "-o", "xml"],
        ["sync", "--timeout=soon", "-n", "x"],
        ["export", "-n", "x"],  # --file is required
        ["validate"],
        ["nonsense"],
        ["restore", "-n", "x"],
        ["status", "--renew-before=soon", "-n", "x"],
        ["run", "--polling-period=often"],
    ],
)
def test_a_bad_flag_is_could_not_check_3_not_2(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 3, (result.exit_code, result.output)
    assert "Traceback" not in result.output


def test_an_unreadable_file_is_3_and_an_invalid_one_2(tmp_path: Path) -> None:
    assert one_error_line(invoke("validate", str(tmp_path / "absent.json")), 3)
    assert one_error_line(invoke("restore", "-f", str(tmp_path / "absent.json"), "-n", "x"), 3)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert invoke("validate", str(bad)).exit_code == 2
    assert one_error_line(invoke("restore", "-f", str(bad), "-n", "x"), 2)


def test_no_kubeconfig_is_3_in_one_line(tmp_path: Path) -> None:
    backup = json.dumps({"format": BACKUP_FORMAT, "id": "i", "updated_at": 1, "document": document(200)})
    for command in (["status"], ["sync"], ["export", "-f", str(tmp_path / "b.json")], ["restore", "-f", "-"]):
        args = [*command, f"--kubeconfig={tmp_path / 'nope'}", "-n", "x"]
        line = one_error_line(invoke(*args, input=backup), 3)
        assert "cannot load Kubernetes credentials" in line and "nope" in line


# --- kubectl's cluster flags on every command that talks to the API server --------------------------------


@pytest.mark.parametrize("command", API_COMMANDS)
def test_every_api_command_takes_kubectls_cluster_flags(command: str) -> None:
    params = {p.name: p for p in main.commands[command].params}
    assert set(params["namespace"].opts) == {"-n", "--namespace"}
    assert params["context"].opts == ["--context"] and params["kubeconfig"].opts == ["--kubeconfig"]


def test_an_unreachable_server_is_3_naming_server_and_secret_once(tmp_path: Path) -> None:
    server = f"https://127.0.0.1:{closed_port()}"
    config = kubeconfig(tmp_path, {"only": server}, "only")
    line = one_error_line(invoke("status", f"--kubeconfig={config}"), 3)
    assert line.count(server) == 1 and line.count("Secret kong/kong-license") == 1, line
    assert line == f"error: unable to connect to the server {server} (ConnectError): get Secret kong/kong-license"


def test_context_picks_the_server_and_its_namespace(tmp_path: Path) -> None:
    current, other = f"https://127.0.0.1:{closed_port()}", f"https://127.0.0.2:{closed_port()}"
    config = kubeconfig(tmp_path, {"current": current, "other": other}, "current", namespace="edge")
    line = one_error_line(invoke("status", f"--kubeconfig={config}", "--context", "other"), 3)
    assert other in line and current not in line and "Secret edge/kong-license" in line
    line = one_error_line(invoke("status", f"--kubeconfig={config}", "--context", "absent"), 3)
    assert "Context 'absent' not found" in line
    env = {"LICENSE_KEEPER_CONTEXT": "other", "LICENSE_KEEPER_KUBECONFIG": str(config)}
    assert other in one_error_line(invoke("export", "-f", str(tmp_path / "b.json"), env=env), 3)


# --- -o is the format, everywhere --------------------------------------------------------------------------


def test_output_is_a_format_everywhere_and_never_a_file() -> None:
    for name, command in main.commands.items():
        for param in command.params:
            if "-o" in getattr(param, "opts", []):
                assert isinstance(param.type, click.Choice), name
                assert set(param.type.choices) <= {"text", "json", "yaml"}, name
    with_output = {n for n, c in main.commands.items() if any("-o" in getattr(p, "opts", []) for p in c.params)}
    assert with_output == {"status", "validate", "sync", "export", "restore"}


def test_export_writes_to_file_and_o_is_its_format(tmp_path: Path) -> None:
    result = invoke("export", "-o", str(tmp_path / "backup.json"), "-n", "x")
    assert result.exit_code == 3 and "'json', 'yaml'" in result.output
    params = {p.name: p for p in main.commands["export"].params}
    assert set(params["file"].opts) == {"-f", "--file"} and params["overwrite"].is_flag


def test_export_does_not_overwrite_without_overwrite(tmp_path: Path) -> None:
    existing = tmp_path / "backup.json"
    existing.write_text("precious\n")
    config = kubeconfig(tmp_path, {"only": f"https://127.0.0.1:{closed_port()}"}, "only")
    line = one_error_line(invoke("export", "--file", str(existing), f"--kubeconfig={config}"), 3)
    assert "exists; pass --overwrite" in line
    assert existing.read_text() == "precious\n"
    # with --overwrite it gets as far as the (unreachable) server
    line = one_error_line(invoke("export", "--file", str(existing), "--overwrite", f"--kubeconfig={config}"), 3)
    assert "unable to connect" in line and existing.read_text() == "precious\n"


@pytest.mark.parametrize("days", [200, 3, -1])
def test_validate_yaml_and_json_say_the_same(tmp_path: Path, days: int) -> None:
    f = tmp_path / "license.json"
    f.write_text(document(days))
    as_json, as_yaml = invoke("validate", str(f), "-o", "json"), invoke("validate", str(f), "-o", "yaml")
    assert as_json.exit_code == as_yaml.exit_code
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)


# --- validate's hints ------------------------------------------------------------------------------------


def test_validate_hints_at_kics_payload_shape(tmp_path: Path) -> None:
    doc = document(200)
    f = tmp_path / "kic.json"
    f.write_text(json.dumps({"payload": doc, "id": "x", "updated_at": 1}))
    result = invoke("validate", str(f), "-o", "json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["state"] == "invalid" and "jq -r .payload" in report["hint"]
    assert doc not in result.output
    f.write_text(json.dumps({"items": [{"payload": doc}]}))
    assert ".items[0].payload" in json.loads(invoke("validate", str(f), "-o", "json").stdout)["hint"]


def test_validate_hints_at_a_byte_order_mark(tmp_path: Path) -> None:
    f = tmp_path / "bom.json"
    f.write_bytes(b"\xef\xbb\xbf" + document(200).encode())
    result = invoke("validate", str(f))
    assert result.exit_code == 2
    assert "byte-order mark" in result.stdout and "Hint:" in result.stdout
    f.write_bytes(document(200).encode("utf-16"))
    report = json.loads(invoke("validate", str(f), "-o", "json").stdout)
    assert report["state"] == "invalid" and "UTF-16" in report["hint"]


def test_write_private_without_overwrite_never_replaces_and_leaves_nothing(tmp_path: Path) -> None:
    """The check before asking the cluster can race with another writer: the write itself refuses too."""
    from license_keeper.cli.backup import write_private

    target = tmp_path / "backup.json"
    write_private(target, "first\n", overwrite=False)
    assert target.read_text() == "first\n" and target.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        write_private(target, "second\n", overwrite=False)
    assert target.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["backup.json"]
