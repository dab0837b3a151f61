"""The container image's recipe, without a container engine: build the wheel and install it with the
locked, hash-checked dependencies into a fresh virtualenv as the Dockerfile's builder stage does, and start
its entry point. (tests/image/ builds and runs the real image where podman is installed.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

from tests.unit.test_lock import locked_installs, parse

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


def newer_releases(pins: dict[str, str], into: Path) -> Path:
    """A local index (a --find-links directory) offering a release of every locked package far newer than
    the lock pins, as PyPI does the day after an upstream release. The wheels are empty but valid."""
    into.mkdir()
    for name in pins:
        dist = f"{name.replace('-', '_')}-999.0.0"
        with zipfile.ZipFile(into / f"{dist}-py3-none-any.whl", "w") as whl:
            whl.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 999.0.0\n")
            whl.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            whl.writestr(f"{dist}.dist-info/RECORD", "")
    return into


def test_the_lock_installs_as_the_image_installs_it_though_the_index_has_newer_releases(tmp_path: Path) -> None:
    """The regression: an upstream release after `make lock` broke every install (pip resolved lightkube's
    `httpx2[http2,ws]` to the new release and refused it for want of a hash). Installed with the Dockerfile's
    own flags, the lock installs exactly as pinned, whatever the index offers, and pip check passes."""
    _, pins = parse(REPO / "requirements.lock")
    flags = locked_installs((REPO / "Dockerfile").read_text())["requirements.lock"].split()
    index = newer_releases({n: p.version for n, p in pins.items()}, tmp_path / "index")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "install", *flags, "--find-links", str(index), "-r", str(REPO / "requirements.lock")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True, check=True)
    installed = {canonicalize_name(d["name"]): d["version"] for d in json.loads(listed.stdout)}
    wanted = {n for n, p in pins.items() if p.marker is None or Marker(p.marker).evaluate()}
    assert {n: installed.get(n) for n in wanted} == {n: pins[n].version for n in wanted}

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(REPO)],
        check=True,
    )
    (wheel,) = wheels.glob("license_keeper-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "license_keeper/cli/__init__.py" in names and "license_keeper/testing/konnect.py" in names
    assert not any(n.startswith("tests/") for n in names)
    subprocess.run([*pip, "install", "--quiet", "--no-deps", str(wheel)], check=True)
    out = subprocess.run([str(venv / "bin" / "license-keeper"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("run", "status", "validate", "sync", "export", "restore"):
        assert command in out.stdout
    run_help = subprocess.run(
        [str(venv / "bin" / "license-keeper"), "run", "--help"], capture_output=True, text=True, check=True
    )
    assert "CONTROLLER_KONNECT_ADDRESS" in run_help.stdout
