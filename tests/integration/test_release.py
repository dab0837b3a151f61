"""The release pipeline's pieces (tools/release/release.py, `make release`), each on its own.

The version rules, the chart's values pinned to the released image, the digest helm reports and the SBOM are
checked without a registry; the chart's way through a real registry (CNCF Distribution on 127.0.0.1 over TLS
from a test CA): packaged, pushed with helm, signed with a cosign key pair, verified, and refused when the tag
is moved to an unsigned chart or checked with another key. The whole release, image included, installed on a
node: tests/node/test_release.py.

    tools/controlplane/build.sh helm registry cosign
    .venv/bin/python -m pytest -q tests/integration/test_release.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from license_keeper import __version__
from license_keeper.testing.registry import Registry, registry_config

from .test_chart_static import tool

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "cd" * 32
REFUSED = r"(?i)unauthorized|authentication required|401|credential not found"  # how each tool says it


def _load_release() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lk_release", REPO / "tools" / "release" / "release.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["lk_release"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


release = _load_release()


# ------------------------------------------------------------------------------------------ the version
def _tree(tmp_path: Path, version: str, chart_version: str, app_version: str) -> tuple[Path, Path]:
    (tmp_path / "src" / "license_keeper").mkdir(parents=True)
    (tmp_path / "src" / "license_keeper" / "__init__.py").write_text(f'__version__ = "{version}"\n')
    chart = tmp_path / "chart"
    chart.mkdir()
    chart_yaml = f'apiVersion: v2\nname: x\nversion: {chart_version}\nappVersion: "{app_version}"\n'
    (chart / "Chart.yaml").write_text(chart_yaml)
    return tmp_path, chart


def test_the_version_is_the_package_version_and_the_chart_follows() -> None:
    assert release.release_version(None) == __version__
    assert release.release_version(__version__) == __version__


def test_a_version_other_than_the_package_version_is_refused(tmp_path: Path) -> None:
    repo, chart = _tree(tmp_path, "1.2.0", "1.2.0", "1.2.0")
    assert release.release_version(None, repo, chart) == "1.2.0"
    with pytest.raises(release.ReleaseError, match=r"VERSION=1\.3\.0 but src/license_keeper/__init__\.py says 1\.2\.0"):
        release.release_version("1.3.0", repo, chart)


@pytest.mark.parametrize(("chart_version", "app_version"), [("1.1.0", "1.2.0"), ("1.2.0", "1.1.0")])
def test_a_chart_that_disagrees_is_refused(tmp_path: Path, chart_version: str, app_version: str) -> None:
    repo, chart = _tree(tmp_path, "1.2.0", chart_version, app_version)
    with pytest.raises(release.ReleaseError, match=r"both must be 1\.2\.0"):
        release.release_version(None, repo, chart)


@pytest.mark.parametrize("bad", ["", "https://registry.example.com", "registry.example.com/x@y", "a b"])
def test_registry_must_be_a_host_and_path(bad: str) -> None:
    with pytest.raises(release.ReleaseError, match="REGISTRY must be"):
        release._registry(bad)
    assert release._registry("registry.example.com/kong/") == "registry.example.com/kong"


# ------------------------------------------------------------------------------------------ the chart's values
def test_pin_image_sets_registry_repository_and_digest_and_keeps_the_rest() -> None:
    original = (REPO / "charts" / "license-keeper" / "values.yaml").read_text()
    pinned = release.pin_image(original, "10.255.255.7:5000/kong", "license-keeper", DIGEST)
    before, after = yaml.safe_load(original), yaml.safe_load(pinned)
    assert after["image"] == {**before["image"], "registry": "10.255.255.7:5000/kong",
                              "repository": "license-keeper", "digest": DIGEST}  # fmt: skip
    assert {k: v for k, v in after.items() if k != "image"} == {k: v for k, v in before.items() if k != "image"}
    # only those three lines changed: every comment is kept
    changed = [(a, b) for a, b in zip(original.splitlines(), pinned.splitlines(), strict=True) if a != b]
    assert len(changed) == 3 and all(b.startswith(("  registry:", "  repository:", "  digest:")) for _, b in changed)


def test_pin_image_refuses_what_it_cannot_pin() -> None:
    with pytest.raises(release.ReleaseError, match="not an image digest"):
        release.pin_image('image:\n  registry: ""\n', "r", "x", "latest")
    with pytest.raises(release.ReleaseError, match="lacks digest"):
        release.pin_image('image:\n  registry: ""\n  repository: x\nother:\n  digest: ""\n', "r", "x", DIGEST)
    with pytest.raises(release.ReleaseError, match="no top-level image"):
        release.pin_image("replicaCount: 2\n", "r", "x", DIGEST)


def test_helm_push_digest() -> None:
    out = f"Pushed: 127.0.0.1:5000/charts/license-keeper:0.1.0\nDigest: {DIGEST}\n"
    assert release.helm_push_digest(out) == DIGEST
    with pytest.raises(release.ReleaseError, match="no digest"):
        release.helm_push_digest("Error: unexpected status from HEAD request")


# ------------------------------------------------------------------------------------------ the SBOM
def _lock_names(lock: Path) -> set[str]:
    names = set()
    for line in lock.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            names.add(line.split("==")[0].strip().lower().replace("_", "-"))
    return names


def test_the_sbom_lists_exactly_the_runtime_lock(tmp_path: Path) -> None:
    settings = release.Settings(registry="registry.example.com/kong", version=__version__, key="k", public_key="p",
                                dist=tmp_path)  # fmt: skip
    tools = release.Tools(helm="", cosign="", podman="", build_image="",
                          cyclonedx=str(Path(sys.executable).parent / "cyclonedx-py"))  # fmt: skip
    with release.Release(settings, tools) as r:
        sbom = r.sbom(DIGEST)
    bom = json.loads(sbom.read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    root = bom["metadata"]["component"]
    assert (root["name"], root["version"], root["type"]) == ("license-keeper", __version__, "application")
    assert root["purl"].startswith(f"pkg:oci/license-keeper@sha256%3A{'cd' * 32}")
    components = {c["name"].lower().replace("_", "-"): c for c in bom["components"]}
    assert set(components) == _lock_names(REPO / "requirements.lock")
    for c in components.values():
        assert c["purl"] == f"pkg:pypi/{c['name']}@{c['version']}"
        assert any(h["alg"] == "SHA-256" for ref in c["externalReferences"] for h in ref.get("hashes", []))


# ------------------------------------------------------------------------------------------ a real registry
def test_registry_config_serves_tls_on_one_address(tmp_path: Path) -> None:
    config = registry_config(tmp_path / "storage", "10.255.255.7:5000", tmp_path / "c.pem", tmp_path / "k.pem")
    assert config["http"] == {"addr": "10.255.255.7:5000", "headers": {"X-Content-Type-Options": ["nosniff"]},
                              "tls": {"certificate": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem"),
                                      "minimumtls": "tls1.2"}}  # fmt: skip
    assert "auth" not in config


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    tool("registry", "registry")  # a missing binary fails with the command that builds it
    with Registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    out: dict[str, Path] = {}
    for name in ("release", "other"):
        (d / name).mkdir()
        subprocess.run([tool("cosign", "cosign"), "generate-key-pair"], cwd=d / name, check=True, capture_output=True,
                       env={**os.environ, "COSIGN_PASSWORD": "test-only"})  # fmt: skip
        out[name] = d / name / "cosign.key"
    return out


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Releases made by a test, their scratch files removed at its end."""
    made: list[Any] = []
    yield made
    for r in made:
        r.close()


def _release(registry: Registry, keys: dict[str, Path], dist: Path, closing: list[Any], key: str = "release") -> Any:
    settings = release.Settings(
        registry=registry.address, version=__version__, key=str(keys["release"]),
        public_key=str(keys[key].with_suffix(".pub")), registry_ca=str(registry.ca_file), dist=dist,
    )  # fmt: skip
    tools = release.Tools(helm=tool("helm", "helm"), cosign=tool("cosign", "cosign"), podman="", build_image="",
                          cyclonedx="")  # fmt: skip
    closing.append(release.Release(settings, tools))
    return closing[-1]


@pytest.mark.controlplane  # the registry, helm and cosign built by tools/controlplane/build.sh
def test_the_chart_through_a_real_registry(
    registry: Registry, keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: list[Any]
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "test-only")
    r = _release(registry, keys, tmp_path / "dist", closing)
    package = r.package_chart(DIGEST)
    with tarfile.open(package) as tar:
        chart = yaml.safe_load(tar.extractfile("license-keeper/Chart.yaml").read())  # type: ignore[union-attr]
        values = yaml.safe_load(tar.extractfile("license-keeper/values.yaml").read())  # type: ignore[union-attr]
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__)
    assert values["image"] | {"pullPolicy": None} == {"registry": registry.address, "repository": "license-keeper",
                                                      "tag": "", "digest": DIGEST, "pullPolicy": None}  # fmt: skip

    digest = r.push_chart(package)
    assert registry.manifest_digest("charts/license-keeper", __version__) == digest
    r.sign_chart(digest)
    r.verify_chart(digest)  # raises when it does not verify
    assert any(t.endswith(".sig") and digest.split(":")[1] in t for t in registry.tags("charts/license-keeper"))

    with pytest.raises(release.ReleaseError, match="no matching signatures"):
        _release(registry, keys, tmp_path / "dist", closing, key="other").verify_chart(digest)

    # The version's tag moved to a chart nobody signed: its digest has no signature.
    other_dist = tmp_path / "other"
    other = _release(registry, keys, other_dist, closing).package_chart("sha256:" + "ef" * 32)
    moved = r.push_chart(other)
    assert moved != digest and registry.manifest_digest("charts/license-keeper", __version__) == moved
    with pytest.raises(release.ReleaseError, match=r"no signatures found|no matching signatures"):
        r.verify_chart(moved)
    shutil.rmtree(other_dist)


@pytest.mark.controlplane
@pytest.mark.image  # podman pushes an image
def test_one_auth_file_logs_podman_helm_and_cosign_in(
    keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: list[Any]
) -> None:
    """A registry that wants credentials (htpasswd): REGISTRY_AUTH_FILE, one Docker-style config.json, serves
    podman (REGISTRY_AUTH_FILE), helm (HELM_REGISTRY_CONFIG) and cosign (DOCKER_CONFIG); without it, refused."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `apt-get install podman runc` (.ci/run does)", pytrace=False)
    monkeypatch.setenv("COSIGN_PASSWORD", "test-only")
    podman = str(REPO / "tools" / "image" / "podman.sh")
    local = f"localhost/license-keeper-auth-test:{os.getpid()}"
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        tar.add(REPO / "README.md", arcname="README.md")
    subprocess.run([podman, "import", "--quiet", str(layer), local], check=True, capture_output=True)
    try:
        with Registry(tmp_path / "registry", users={"releaser": "test-only-password"}) as registry:
            auth = registry.auth_config(tmp_path / "config.json")
            cyclonedx = str(Path(sys.executable).parent / "cyclonedx-py")
            tools = release.Tools(helm=tool("helm", "helm"), cosign=tool("cosign", "cosign"), podman=podman,
                                  build_image="", cyclonedx=cyclonedx)  # fmt: skip

            def releaser(auth_file: Path | None) -> Any:
                settings = release.Settings(
                    registry=registry.address, version=__version__, key=str(keys["release"]),
                    public_key=str(keys["release"].with_suffix(".pub")), registry_ca=str(registry.ca_file),
                    auth_file=str(auth_file) if auth_file else None, dist=tmp_path / "dist",
                )  # fmt: skip
                closing.append(release.Release(settings, tools))
                return closing[-1]

            anonymous = releaser(None)
            with pytest.raises(release.ReleaseError, match=REFUSED):
                anonymous.push_image(local)

            r = releaser(auth)
            digest = r.push_image(local)
            assert registry.manifest_digest("license-keeper", __version__) == digest
            sbom = r.sbom(digest)
            r.sign_image(digest, sbom)
            r.verify_image(digest)
            package = r.package_chart(digest)
            with pytest.raises(release.ReleaseError, match=REFUSED):
                anonymous.push_chart(package)
            chart_digest = r.push_chart(package)
            r.sign_chart(chart_digest)
            r.verify_chart(chart_digest)
            with pytest.raises(release.ReleaseError, match=REFUSED):
                anonymous.verify_chart(chart_digest)
    finally:
        subprocess.run([podman, "rmi", "--force", local], check=False, capture_output=True)
