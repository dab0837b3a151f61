"""One real node for the session: the chart installed by helm, the keeper and gateways as pods.

The keeper's image reaches the node as users get it: the session runs the release pipeline (`make release`'s
tools/release/release.py) against a real registry (CNCF Distribution, ``testing.registry``) on the node's own
address with TLS from a test CA, and the node's containerd pulls the keeper from there by the released digest.
The gateway test image is built and imported (it is no release). Where this machine cannot run a node (no
root, no cgroups, packages missing) every test here fails with the one line that says why: they never skip, in
CI least of all. Everything the node and the registry made is removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from license_keeper import __version__
from license_keeper.testing.controlplane import ControlPlaneError, binary
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.netguard import NodeUnavailable
from license_keeper.testing.node import CACHE, Node
from license_keeper.testing.pods import (
    GATEWAY_IMAGE,
    RELEASE,
    Cluster,
    ImageBuildError,
    build_images,
)
from license_keeper.testing.registry import Registry, RegistryError

# Figures the scenarios measure (seconds), printed after the run and kept in the cache for BENCHMARKS.md.
FIGURES: dict[str, float] = {}
FIGURES_FILE = CACHE / "node-figures.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()) or "node" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.node)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("node figures")
    for what, seconds in FIGURES.items():
        terminalreporter.write_line(f"{seconds:8.2f}  {what}")
    FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(FIGURES, indent=2))


# --- the node and its images ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("node"))
    try:
        n.start()
        FIGURES.update({f"node start: {k}": v for k, v in n.timings.items()})
        started = time.monotonic()
        build_images()
        n.import_images([GATEWAY_IMAGE])  # the keeper's image comes from the registry (`released`)
        FIGURES["keeper and gateway images built, gateway imported"] = round(time.monotonic() - started, 2)
    except (NodeUnavailable, ImageBuildError) as e:
        n.stop()
        pytest.fail(f"node tests cannot run: {e}", pytrace=False)
    try:
        yield n
    finally:
        n.stop()


# --- the release in a registry the node pulls from ---------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
KEY_PASSWORD = "node-tests-only"


@dataclass(frozen=True)
class Released:
    """What `make release` pushed and signed (dist/release-<version>.json), and how to reach and trust it."""

    registry: Registry
    version: str
    image: str  # <registry>/license-keeper@sha256:…
    image_digest: str
    chart: str  # oci://<registry>/charts/license-keeper
    chart_digest: str
    sbom: Path
    key: Path
    public_key: Path
    seconds: dict[str, float]

    @property
    def keeper_image(self) -> dict[str, Any]:
        """The chart's image values for the released image (what the released chart has as its default)."""
        return {"registry": self.registry.address, "repository": "license-keeper", "tag": "",
                "digest": self.image_digest, "pullPolicy": "IfNotPresent"}  # fmt: skip


def cosign_tool() -> str:
    try:
        return str(binary("cosign", "cosign"))
    except ControlPlaneError as e:
        pytest.fail(f"node tests cannot run: {e}", pytrace=False)


@pytest.fixture(scope="session")
def released(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    """The release pipeline run against a registry on the node's address, which the node's containerd trusts."""
    work = tmp_path_factory.mktemp("release")
    registry = Registry(work / "registry", host=node.node_ip)
    try:
        registry.start()
    except RegistryError as e:
        registry.stop()
        pytest.fail(f"node tests cannot run: {e}", pytrace=False)
    try:
        node.trust_registry(registry.address, registry.ca_file)
        env = {**os.environ, "COSIGN_PASSWORD": KEY_PASSWORD}
        subprocess.run([cosign_tool(), "generate-key-pair"], cwd=work, env=env, check=True, capture_output=True)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(REPO / "tools" / "release" / "release.py"), "--registry", registry.address,
             "--registry-ca", str(registry.ca_file), "--key", str(work / "cosign.key"), "--dist", str(work / "dist")],
            env=env, capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"the release failed: {done.stderr.strip()[-2000:]}", pytrace=False)
        FIGURES["release (make release: image built, pushed, SBOM, chart, signed, verified)"] = round(
            time.monotonic() - started, 2
        )
        info = json.loads((work / "dist" / f"release-{__version__}.json").read_text())
        FIGURES.update({f"release: {step}": seconds for step, seconds in info["seconds"].items() if step != "total"})
        yield Released(
            registry=registry, version=info["version"], image=info["image"], image_digest=info["image_digest"],
            chart=info["chart"], chart_digest=info["chart_digest"], sbom=Path(info["sbom"]),
            key=work / "cosign.key", public_key=work / "cosign.pub", seconds=info["seconds"],
        )  # fmt: skip
    finally:
        registry.stop()


@pytest.fixture
def cluster(node: Node, released: Released, tmp_path: Path) -> Iterator[Cluster]:
    ns = f"n-{uuid.uuid4().hex[:8]}"
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}  # as a hardened cluster enforces it
    node.cp.must("POST", "/api/v1/namespaces", {"metadata": {"name": ns, "labels": restricted}})
    c = Cluster(node, ns, tmp_path, keeper_image=released.keeper_image)
    yield c
    c.helm("uninstall", RELEASE, "--wait", "--timeout=60s", check=False)
    node.cp.request("DELETE", f"/api/v1/namespaces/{ns}")  # the controller-manager deletes what is in it


@pytest.fixture
async def konnect(node: Node, tmp_path: Path) -> AsyncIterator[KonnectStandIn]:
    """The Konnect stand-in where pods reach it: the node's address, in its certificate too."""
    async with KonnectStandIn(tls_dir=tmp_path / "konnect-tls", host=node.node_ip) as standin:
        yield standin
