"""Start-up of the `license-keeper` command: the cyclic collector is off while the command imports what
it needs and back on (with the start-up objects frozen) before it does its work."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from license_keeper.cli.common import started
from license_keeper.testing.keeper import clean_environ
from license_keeper.testing.licenses import make_document

# Runs the command as the console script does, then reports the collector's state at exit.
PROBE = """
import atexit, gc, sys
atexit.register(lambda: print(f"gc-enabled={gc.isenabled()} frozen={gc.get_freeze_count()}"))
from license_keeper.__main__ import main
sys.argv = ["license-keeper", *sys.argv[1:]]
main()
"""


def command(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", PROBE, *args]
    return subprocess.run(command, capture_output=True, text=True, env=clean_environ(), timeout=60, check=False)


def collector_at_exit(result: subprocess.CompletedProcess[str]) -> tuple[bool, int]:
    line = [x for x in result.stdout.splitlines() if x.startswith("gc-enabled=")][-1]
    enabled, frozen = (part.split("=")[1] for part in line.split())
    return enabled == "True", int(frozen)


def test_a_command_collects_again_after_start_up(tmp_path: Path) -> None:
    doc = tmp_path / "license.json"
    doc.write_text(make_document())
    result = command("validate", str(doc))
    assert result.returncode == 0, result.stderr
    enabled, frozen = collector_at_exit(result)
    assert enabled
    assert frozen > 10_000  # the modules, classes and functions made while importing


def test_run_collects_again_once_it_has_imported_the_keeper() -> None:
    # `run` without Konnect settings stops at the settings, after the keeper's imports.
    result = command("run")
    assert result.returncode == 3, (result.stdout, result.stderr)  # bad settings: could not start
    assert "konnect" in result.stderr.lower()
    enabled, frozen = collector_at_exit(result)
    assert enabled
    assert frozen > 10_000


@pytest.mark.parametrize("was_enabled", [True, False])
def test_started_only_undoes_what_start_up_did(was_enabled: bool) -> None:
    """In process (the CLI under CliRunner, as the tests call it) the collector is on: nothing is frozen."""
    before = gc.get_freeze_count()
    try:
        if not was_enabled:
            gc.disable()
        started()
        assert gc.isenabled()
        assert (gc.get_freeze_count() > before) is (not was_enabled)
    finally:
        gc.unfreeze()  # back into the collected generations, as they were before this test
        gc.enable()
