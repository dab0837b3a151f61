"""The stand-ins listen on another address when asked (a node address pods reach), with a certificate for it.

127.0.0.2 stands in for the node address: Linux routes all of 127.0.0.0/8 to loopback, so a test can bind
there without setup. Every connection verifies the server certificate against the stand-in's CA, names
included, so a passing request shows the certificate covers the host.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from license_keeper.konnect import LicenseFetched
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.tls import TLSMaterial
from tests.unit.conftest import client_for

HOST = "127.0.0.2"


def refuses(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_default_certificate_covers_loopback_only(tls_material: TLSMaterial) -> None:
    assert tls_material.server_hosts() == ["127.0.0.1", "localhost"]


def test_extra_hosts_are_added_once(tmp_path: Path) -> None:
    tls = TLSMaterial.create(tmp_path, hosts=[HOST, "gateway.test", "127.0.0.1"])
    assert tls.server_hosts() == ["127.0.0.1", HOST, "localhost", "gateway.test"]


def test_material_without_the_host_is_refused(tls_material: TLSMaterial) -> None:
    with pytest.raises(ValueError, match=r"does not cover 127\.0\.0\.2"):
        KonnectStandIn(tls=tls_material, host=HOST)
    # material made in tls_dir for the host is fine; loading it again for the same host too
    made = KongStandIn(tls_dir=tls_material.directory.parent / "fresh", host=HOST).tls
    assert HOST in made.server_hosts()
    assert KongStandIn(tls_dir=made.directory, host=HOST).tls.directory == made.directory


async def test_konnect_on_another_address(tmp_path: Path) -> None:
    async with KonnectStandIn(tls_dir=tmp_path / "tls", host=HOST) as konnect:
        assert konnect.address == f"https://{HOST}:{konnect.port}"
        async with client_for(konnect) as client:
            result = await client.fetch()
        assert isinstance(result, LicenseFetched), result.describe()
        assert refuses("127.0.0.1", konnect.port)


async def test_kong_on_another_address(tmp_path: Path) -> None:
    async with KongStandIn(tls_dir=tmp_path / "tls", host=HOST) as kong:
        assert kong.address == f"https://{HOST}:{kong.port}"
        ctx = ssl.create_default_context(cafile=str(kong.tls.ca_file))
        async with aiohttp.ClientSession() as s, s.get(kong.address + "/license/report", ssl=ctx) as r:
            assert r.status == 200
        assert refuses("127.0.0.1", kong.port)
        # the untrusted mode fails on trust, not on the name
        await kong.set_mode("tls_untrusted")
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="unable to get local issuer"):
            async with aiohttp.ClientSession() as s, s.get(kong.address + "/", ssl=ctx):
                pass


async def serve_info(*argv: str) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", *argv, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    return proc, json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))


@pytest.mark.parametrize(
    ("module", "path"),
    [("license_keeper.testing.konnect", None), ("license_keeper.testing.kong", "/license/report")],
)
async def test_serve_host_option(tmp_path: Path, module: str, path: str | None) -> None:
    proc, info = await serve_info(module, "serve", "--dir", str(tmp_path), "--host", HOST)
    try:
        assert info["address"].startswith(f"https://{HOST}:")
        ctx = ssl.create_default_context(cafile=info["ca_file"])
        ctx.load_cert_chain(info["client_cert_file"], info["client_key_file"])
        async with aiohttp.ClientSession() as s, s.get(info["address"] + (path or info["path"]), ssl=ctx) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


def test_serve_help_lists_host() -> None:
    for module in ("license_keeper.testing.konnect", "license_keeper.testing.kong"):
        out = subprocess.run(
            [sys.executable, "-m", module, "serve", "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "--host" in out


def test_tls_module_imports_without_trustme() -> None:
    # The runtime image has no trustme or cryptography: importing TLSMaterial must not need them.
    code = (
        "import sys\n"
        "for name in ('trustme', 'cryptography'):\n"
        "    sys.modules[name] = None\n"
        "from license_keeper.testing.tls import TLSMaterial\n"
        "print(TLSMaterial.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "TLSMaterial"
