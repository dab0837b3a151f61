"""Keeper processes against the real control plane and the Konnect stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Event, Secret

from license_keeper.testing.controlplane import ControlPlane, ServiceAccountAccess
from license_keeper.testing.keeper import KeeperProcess, KonnectEndpoint, keeper_rules
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import leaks

SECRET = "kong-license"
LEASE = "kong-license-keeper"


@pytest.fixture
async def konnect(tmp_path: Path) -> AsyncIterator[KonnectStandIn]:
    async with KonnectStandIn(tls_dir=tmp_path / "konnect-tls") as standin:
        yield standin


@pytest.fixture
def keeper_access(controlplane: ControlPlane, namespace: str) -> ServiceAccountAccess:
    return controlplane.service_account(namespace, "license-keeper", keeper_rules(SECRET, LEASE))


KeeperFactory = Callable[..., KeeperProcess]


@pytest.fixture
def keepers(
    keeper_access: ServiceAccountAccess, konnect: KonnectStandIn, namespace: str, tmp_path: Path
) -> Iterator[KeeperFactory]:
    """Start keeper processes under the restricted ServiceAccount (through another kubeconfig, e.g. a
    fault proxy's, when given); all are killed at the end and their logs searched for license text."""
    started: list[KeeperProcess] = []

    def make(name: str = "keeper-0", *args: str, start: bool = True, kubeconfig: Path | None = None) -> KeeperProcess:
        k = KeeperProcess(
            kubeconfig=kubeconfig or keeper_access.kubeconfig,
            namespace=namespace,
            konnect=KonnectEndpoint.of(konnect),
            workdir=tmp_path / "keepers",
            name=name,
            args=args,
        )
        started.append(k)
        return k.start() if start else k

    yield make
    for k in started:
        k.kill()
    for k in started:
        found = leaks(k.logs())
        assert not found, f"{k.name} logged license material: {found}"


async def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> float:
    """Poll a (sync or async) predicate without blocking the loop the stand-in runs on."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def ready(k: KeeperProcess, timeout: float = 30.0) -> float:
    return await asyncio.to_thread(k.wait_ready, timeout)


async def metrics(k: KeeperProcess) -> dict[str, float]:
    return await asyncio.to_thread(k.metrics)


async def writes(k: KeeperProcess) -> float:
    return await asyncio.to_thread(k.writes)


async def read_secret(api: AsyncClient, namespace: str) -> Secret | None:
    try:
        return await api.get(Secret, SECRET, namespace=namespace)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise


async def events_text(api: AsyncClient, namespace: str) -> str:
    return "\n".join([f"{e.reason} {e.message}" async for e in api.list(Event, namespace=namespace)])


@pytest.fixture(scope="session", autouse=True)
def no_license_material_in_any_event(controlplane: ControlPlane) -> Iterator[None]:
    """After the whole suite: every Event in every namespace is free of license text, keys, signatures."""
    yield
    resp = controlplane.request("GET", "/api/v1/events")
    assert resp.status == 200
    text = "\n".join(f"{e.get('reason')} {e.get('message')}" for e in resp.body.get("items", []))
    assert "LicenseStored" in text  # the suite did produce Events to scan
    found = leaks(text)
    assert not found, f"Events carry license material: {found}"
