"""The image's lock files match pyproject.toml (offline: no resolver, no index).

requirements.lock pins pyproject's runtime dependencies and everything they pull in; build-requirements.lock
pins its build-system. `make lock` regenerates both; these checks fail when pyproject changed and the
lock did not, or when a lock was edited by hand into an inconsistent state.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")


@dataclass
class Pin:
    version: str
    marker: str | None
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def parse(path: Path) -> tuple[str, dict[str, Pin]]:
    """(header, {canonical name: Pin}) from uv's/pip-compile's annotated output."""
    text = path.read_text()
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if m := ENTRY.match(line):
            current = pins.setdefault(canonicalize_name(m["name"]), Pin(m["version"], m["marker"]))
        elif current and stripped.startswith("--hash="):
            current.hashes.append(stripped.removeprefix("--hash=").rstrip(" \\"))
        elif current and stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            if rest:
                current.via.append(rest)
        elif current and stripped.startswith("#   "):
            current.via.append(stripped.removeprefix("#").strip())
    return text.split("\n", 2)[1], pins


def check(lock: Path, requires: list[str], source: str | None) -> None:
    """``source``: the annotation of a direct requirement; None when direct ones carry none (stdin input)."""
    header, pins = parse(lock)
    assert "make lock" in header, f"{lock.name} was not written by `make lock`"
    wanted = {canonicalize_name(Requirement(r).name): Requirement(r) for r in requires}
    missing = sorted(set(wanted) - set(pins))
    assert not missing, f"{lock.name} lacks {missing}: run `make lock`"
    for name, req in wanted.items():
        assert req.specifier.contains(pins[name].version, prereleases=True), (
            f"{lock.name} pins {name}=={pins[name].version}, pyproject wants {req}: run `make lock`"
        )
    direct = {n for n, p in pins.items() if (source in p.via if source else not p.via)}
    assert direct == set(wanted), f"{lock.name}'s direct pins {sorted(direct)} != {sorted(wanted)}: run `make lock`"
    for name, pin in pins.items():
        assert pin.hashes and all(h.startswith("sha256:") for h in pin.hashes), f"{name}: no sha256 hashes"
        parents = {canonicalize_name(v.split(" ")[0]) for v in pin.via if v != source}
        assert parents <= set(pins), f"{name} is pinned for {pin.via}, which the lock does not hold"
        assert pin.via or name in wanted, f"{name} is pinned for nothing"


def test_requirements_lock_matches_pyprojects_runtime_dependencies() -> None:
    check(REPO / "requirements.lock", PYPROJECT["project"]["dependencies"], "license-keeper (pyproject.toml)")


def test_build_requirements_lock_matches_pyprojects_build_system() -> None:
    check(REPO / "build-requirements.lock", PYPROJECT["build-system"]["requires"], None)


@pytest.mark.parametrize("name", ["requirements.lock", "build-requirements.lock"])
def test_the_image_installs_from_the_locks_with_hashes(name: str) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(rf"--require-hashes --only-binary :all: -r {re.escape(name)}", text)
    assert f"!{name}" in (REPO / ".dockerignore").read_text()
