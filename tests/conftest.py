"""Fixtures shared by all tests: one real control plane per session, a fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig

from license_keeper.kube import Kube
from license_keeper.testing.controlplane import ControlPlane, ServiceAccountAccess


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"))
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def namespace(controlplane: ControlPlane) -> str:
    # No kube-controller-manager runs, so namespaces are never deleted: each test gets a new one.
    return controlplane.create_namespace(f"t-{uuid.uuid4().hex[:10]}")


def client_for(kubeconfig: Path) -> AsyncClient:
    """A plain lightkube client on a kubeconfig: the tests' own view of the API server."""
    return AsyncClient(KubeConfig.from_file(str(kubeconfig)), trust_env=False)


@pytest.fixture
async def admin_api(controlplane: ControlPlane) -> AsyncIterator[AsyncClient]:
    """The cluster admin, for setting up and inspecting what the keeper is tested against."""
    api = client_for(controlplane.admin_kubeconfig)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def admin_kube(controlplane: ControlPlane) -> AsyncIterator[Kube]:
    """The cluster admin as the keeper's own ``Kube``, for keeper code run with full rights."""
    kube = Kube.from_kubeconfig(controlplane.admin_kubeconfig)
    try:
        yield kube
    finally:
        await kube.close()


ServiceAccountFactory = Callable[[Iterable[Mapping[str, Any]]], ServiceAccountAccess]


@pytest.fixture
def service_account(controlplane: ControlPlane, namespace: str) -> ServiceAccountFactory:
    """Make a ServiceAccount in the test's namespace bound to exactly the given RBAC rules."""
    count = 0

    def make(rules: Iterable[Mapping[str, Any]], name: str | None = None) -> ServiceAccountAccess:
        nonlocal count
        count += 1
        return controlplane.service_account(namespace, name or f"sa-{count}", rules)

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Anything that touches the control plane is marked, so `-m 'not controlplane'` selects the fast tests.
    for item in items:
        if "controlplane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.controlplane)
