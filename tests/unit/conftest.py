"""Fixtures for unit tests of the Konnect client: TLS material and an in-process Konnect stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from license_keeper.konnect import KonnectClient
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.tls import TLSMaterial


@pytest.fixture
def tls_material(tmp_path: Path) -> TLSMaterial:
    return TLSMaterial.create(tmp_path / "tls")


@pytest.fixture
async def konnect(tls_material: TLSMaterial) -> AsyncIterator[KonnectStandIn]:
    async with KonnectStandIn(tls=tls_material, slow_seconds=0.3) as standin:
        yield standin


def client_for(standin: KonnectStandIn, **kwargs: object) -> KonnectClient:
    tls = standin.tls
    kwargs.setdefault("total_timeout", 5.0)
    return KonnectClient(
        standin.address,
        standin.control_plane_id,
        tls.client_cert_file,
        tls.client_key_file,
        ca_file=tls.ca_file,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
async def konnect_client(konnect: KonnectStandIn) -> AsyncIterator[KonnectClient]:
    async with client_for(konnect) as c:
        yield c
