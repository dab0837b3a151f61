"""The lock files match pyproject.toml and each other (offline: no resolver, no index).

requirements.lock pins pyproject's runtime dependencies and everything they pull in (the image, the bench
runtime); requirements-dev.lock pins those same versions plus the test tools (`make dev`);
build-requirements.lock pins the build-system. `make lock` regenerates all three; these checks fail when
pyproject changed and a lock did not, when the locks disagree, or when a lock was edited by hand into an
inconsistent state.
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
        parents = {canonicalize_name(v.split(" ")[0]) for v in pin.via if v != source and not v.startswith("-c ")}
        assert parents <= set(pins), f"{name} is pinned for {pin.via}, which the lock does not hold"
        assert pin.via or name in wanted, f"{name} is pinned for nothing"


def test_requirements_lock_matches_pyprojects_runtime_dependencies() -> None:
    check(REPO / "requirements.lock", PYPROJECT["project"]["dependencies"], "license-keeper (pyproject.toml)")


def test_build_requirements_lock_matches_pyprojects_build_system() -> None:
    check(REPO / "build-requirements.lock", PYPROJECT["build-system"]["requires"], None)


def dev_requirements() -> list[str]:
    """pyproject's runtime dependencies, its dev extra and the extras the dev extra names of the project."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    own = canonicalize_name(PYPROJECT["project"]["name"])
    wanted = list(PYPROJECT["project"]["dependencies"])
    for r in extras["dev"]:
        req = Requirement(r)
        if canonicalize_name(req.name) == own:
            wanted += [x for extra in req.extras for x in extras[extra]]
        else:
            wanted.append(r)
    return wanted


def test_requirements_dev_lock_matches_pyprojects_dev_extra() -> None:
    check(REPO / "requirements-dev.lock", dev_requirements(), "license-keeper (pyproject.toml)")


@pytest.mark.parametrize("other", ["requirements.lock", "build-requirements.lock"])
def test_the_dev_lock_pins_what_the_image_and_the_build_run(other: str) -> None:
    """What the tests prove and what users run are the same versions: every package the dev lock shares
    with the runtime (or build) lock is pinned to the same version with the same hashes."""
    _, dev = parse(REPO / "requirements-dev.lock")
    _, pins = parse(REPO / other)
    if other == "requirements.lock":
        assert set(pins) <= set(dev), f"requirements-dev.lock lacks {sorted(set(pins) - set(dev))}: run `make lock`"
    differ = sorted(
        f"{n}: {pins[n].version} vs {dev[n].version}"
        for n in set(pins) & set(dev)
        if (pins[n].version, sorted(pins[n].hashes)) != (dev[n].version, sorted(dev[n].hashes))
    )
    assert not differ, f"{other} and requirements-dev.lock differ: {differ}: run `make lock`"


LOCKED_INSTALL = re.compile(r"pip install (?P<flags>[^\n]*?)-r (?P<lock>[\w.-]+\.lock)")


def locked_installs(text: str) -> dict[str, str]:
    return {m["lock"]: m["flags"] for m in LOCKED_INSTALL.finditer(text)}


@pytest.mark.parametrize("name", ["requirements.lock", "build-requirements.lock"])
def test_the_image_installs_exactly_the_locks(name: str) -> None:
    """Hashes, binaries only, and --no-deps: pip resolves nothing, so no upstream release changes the image."""
    text = (REPO / "Dockerfile").read_text()
    flags = locked_installs(text)[name].split()
    assert {"--no-deps", "--require-hashes"} <= set(flags) and "--only-binary" in flags, flags
    assert "pip check" in text
    assert f"!{name}" in (REPO / ".dockerignore").read_text()


def test_make_dev_and_the_bench_runtime_install_exactly_the_locks() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^PIP_LOCKED :=.*--no-deps --require-hashes", makefile, re.M)
    assert "$(PIP_LOCKED) -r requirements-dev.lock -r build-requirements.lock" in makefile
    assert "-e '.[dev]'" not in makefile and "pip install --quiet --upgrade" not in makefile
    assert "pip check" in makefile
    runtime = (REPO / "bench" / "runtime.sh").read_text()
    assert re.search(r"--no-deps --require-hashes \\\n\s*-r requirements\.lock", runtime)
    assert "pip check" in runtime
