"""One real node for the session: the chart installed by helm, the keeper and gateways as pods.

Where this machine cannot run a node (no root, no cgroups, packages missing) every test here fails with the
one line that says why: they never skip, in CI least of all. Everything the node made is removed at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.netguard import NodeUnavailable
from license_keeper.testing.node import CACHE, Node
from license_keeper.testing.pods import (
    GATEWAY_IMAGE,
    KEEPER_IMAGE,
    RELEASE,
    Cluster,
    ImageBuildError,
    build_images,
)

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
        n.import_images([KEEPER_IMAGE, GATEWAY_IMAGE])
        FIGURES["keeper and gateway images built and imported"] = round(time.monotonic() - started, 2)
    except (NodeUnavailable, ImageBuildError) as e:
        n.stop()
        pytest.fail(f"node tests cannot run: {e}", pytrace=False)
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def cluster(node: Node, tmp_path: Path) -> Iterator[Cluster]:
    ns = f"n-{uuid.uuid4().hex[:8]}"
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}  # as a hardened cluster enforces it
    node.cp.must("POST", "/api/v1/namespaces", {"metadata": {"name": ns, "labels": restricted}})
    c = Cluster(node, ns, tmp_path)
    yield c
    c.helm("uninstall", RELEASE, "--wait", "--timeout=60s", check=False)
    node.cp.request("DELETE", f"/api/v1/namespaces/{ns}")  # the controller-manager deletes what is in it


@pytest.fixture
async def konnect(node: Node, tmp_path: Path) -> AsyncIterator[KonnectStandIn]:
    """The Konnect stand-in where pods reach it: the node's address, in its certificate too."""
    async with KonnectStandIn(tls_dir=tmp_path / "konnect-tls", host=node.node_ip) as standin:
        yield standin



