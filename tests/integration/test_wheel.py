"""The container image's recipe, without a container engine: build the wheel and install it with the
locked, hash-checked dependencies into a fresh virtualenv as the Dockerfile's builder stage does, and start
its entry point. (tests/image/ builds and runs the real image where podman is installed.)"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dockerfile_installs_the_wheel_and_runs_the_entry_point_as_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert not text.startswith("# syntax"), "a syntax line makes BuildKit fetch a frontend image"
    assert "pip wheel --quiet --no-deps" in text
    assert re.search(r"pip install --quiet --no-deps /tmp/wheels/license_keeper-\*\.whl", text)
    # the virtualenv is copied, never installed through a bind mount (stale layers under buildah's cache)
    assert "--mount=type=bind" not in text
    assert "COPY --from=builder /opt/license-keeper /opt/license-keeper" in text
    final = text.rsplit("\nFROM ", 1)[1]
    assert "PIP_" not in final and "HOME" not in final
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'ENTRYPOINT ["/opt/license-keeper/bin/license-keeper"]' in text


def test_wheel_builds_and_its_entry_point_starts_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(REPO)],
        check=True,
    )
    (wheel,) = wheels.glob("license_keeper-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "license_keeper/cli/__init__.py" in names and "license_keeper/testing/konnect.py" in names
    assert not any(n.startswith("tests/") for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet"]
    subprocess.run(
        [*pip, "--require-hashes", "--only-binary", ":all:", "-r", str(REPO / "requirements.lock")], check=True
    )
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    out = subprocess.run([str(venv / "bin" / "license-keeper"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("run", "status", "validate", "sync", "export", "restore"):
        assert command in out.stdout
    run_help = subprocess.run(
        [str(venv / "bin" / "license-keeper"), "run", "--help"], capture_output=True, text=True, check=True
    )
    assert "CONTROLLER_KONNECT_ADDRESS" in run_help.stdout
