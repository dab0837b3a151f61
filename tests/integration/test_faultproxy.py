"""The fault proxy against the real API server: every mode as a plain client sees it."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.faultproxy import FaultProxy, Rule

from ..conftest import ServiceAccountFactory


@pytest.fixture
def proxy(controlplane: ControlPlane, tmp_path: Path) -> Iterator[FaultProxy]:
    with FaultProxy(controlplane.server, controlplane.ca_file, tls_dir=tmp_path / "proxy-tls") as p:
        yield p


@pytest.fixture
async def http(proxy: FaultProxy, controlplane: ControlPlane) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_file))
    async with aiohttp.ClientSession(
        base_url=proxy.address,
        connector=aiohttp.TCPConnector(ssl=ctx),
        headers={"Authorization": f"Bearer {controlplane.admin_token}"},
        timeout=aiohttp.ClientTimeout(total=20),
    ) as session:
        yield session


def secret(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "data": {"k": "dg=="}}


async def test_pass_forwards_the_clients_authorization(
    http: aiohttp.ClientSession,
    proxy: FaultProxy,
    controlplane: ControlPlane,
    namespace: str,
    service_account: ServiceAccountFactory,
) -> None:
    since = time.time() - 1
    async with http.post(f"/api/v1/namespaces/{namespace}/secrets", json=secret("via-proxy")) as r:
        assert r.status == 201
    sa = service_account([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    headers = {"Authorization": f"Bearer {sa.token}"}
    async with http.get(f"/api/v1/namespaces/{namespace}/secrets/via-proxy", headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["metadata"]["name"] == "via-proxy"
    async with http.delete(f"/api/v1/namespaces/{namespace}/secrets/via-proxy", headers=headers) as r:
        assert r.status == 403  # the API server judged the ServiceAccount, not some proxy identity
    seen = [(e.verb, e.username, e.code) for e in controlplane.audit_entries(since=since, namespace=namespace)]
    assert seen == [
        ("create", "license-keeper-admin", 201),
        ("get", sa.username, 200),
        ("delete", sa.username, 403),
    ]
    assert proxy.stats()["requests"] == {"pass": 3}


async def _watch(http: aiohttp.ClientSession, namespace: str) -> aiohttp.ClientResponse:
    resp = await http.get(
        f"/api/v1/namespaces/{namespace}/secrets",
        params={"watch": "true", "fieldSelector": "metadata.name=w", "timeoutSeconds": "60"},
        timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
    )
    assert resp.status == 200
    return resp


async def test_a_watch_streams_through_and_cut_breaks_it_mid_stream(
    http: aiohttp.ClientSession, proxy: FaultProxy, controlplane: ControlPlane, namespace: str
) -> None:
    resp = await _watch(http, namespace)
    controlplane.must("POST", f"/api/v1/namespaces/{namespace}/secrets", secret("w"))
    event = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "w")
    assert await asyncio.to_thread(proxy.cut) >= 1
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await asyncio.wait_for(resp.content.read(), 5)
    resp.release()
    # The proxy's loop drops a cut connection from its set a moment later (another thread).
    for _ in range(40):
        if proxy.open_connections() == 0:
            break
        await asyncio.sleep(0.05)
    assert proxy.open_connections() == 0


async def test_the_proxy_closes_the_upstream_watch_when_the_client_goes(
    http: aiohttp.ClientSession, proxy: FaultProxy, namespace: str
) -> None:
    resp = await _watch(http, namespace)
    assert proxy.open_connections() == 1
    resp.close()  # drops the connection, as a killed process would
    for _ in range(50):
        if not proxy.open_connections():
            break
        await asyncio.sleep(0.1)
    assert proxy.open_connections() == 0


async def test_cut_after_bytes_breaks_only_the_selected_requests(
    http: aiohttp.ClientSession, proxy: FaultProxy, controlplane: ControlPlane, namespace: str
) -> None:
    controlplane.must("POST", f"/api/v1/namespaces/{namespace}/secrets", secret("w"))
    proxy.set_mode("cut_after", bytes=20, watch=True)
    async with http.get(f"/api/v1/namespaces/{namespace}/secrets/w") as r:  # not a watch: passes
        assert r.status == 200 and (await r.json())["metadata"]["name"] == "w"
    resp = await _watch(http, namespace)  # headers arrive, then 20 bytes of the ADDED event, then a reset
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await asyncio.wait_for(resp.content.read(), 5)
    resp.release()
    proxy.set_mode("cut_after", bytes=0)
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.get(f"/api/v1/namespaces/{namespace}/secrets/w") as r:
            await r.read()
    assert proxy.stats()["requests"] == {"pass": 1, "cut_after": 2}


async def test_stall_never_answers_until_cut(http: aiohttp.ClientSession, proxy: FaultProxy, namespace: str) -> None:
    proxy.set_mode("stall")
    with pytest.raises(TimeoutError):
        async with http.get(f"/api/v1/namespaces/{namespace}/secrets", timeout=aiohttp.ClientTimeout(total=1)):
            pass
    proxy.set_mode("pass")
    async with http.get(f"/api/v1/namespaces/{namespace}/secrets") as r:
        assert r.status == 200


async def test_delay_holds_each_request(http: aiohttp.ClientSession, proxy: FaultProxy, namespace: str) -> None:
    proxy.set_mode("delay", seconds=0.6)
    start = time.monotonic()
    async with http.get(f"/api/v1/namespaces/{namespace}/secrets") as r:
        assert r.status == 200
    assert time.monotonic() - start >= 0.6


async def test_error_answers(http: aiohttp.ClientSession, proxy: FaultProxy, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/secrets"
    proxy.set_mode("503")
    async with http.get(path) as r:
        assert r.status == 503 and await r.read() == b""
    proxy.set_mode("502")
    async with http.get(path) as r:
        assert r.status == 502 and r.content_type == "text/html" and b"<html>" in await r.read()
    proxy.set_mode("429", retry_after=3)
    async with http.get(path) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "3"
        assert (await r.json())["reason"] == "TooManyRequests"
    proxy.set_mode("reset")
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.get(path):
            pass


async def test_partition_cuts_open_connections_and_refuses_new_ones(
    http: aiohttp.ClientSession, proxy: FaultProxy, namespace: str
) -> None:
    resp = await _watch(http, namespace)
    await asyncio.to_thread(proxy.set_mode, "partition")
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await asyncio.wait_for(resp.content.read(), 5)
    resp.release()
    with pytest.raises((aiohttp.ClientConnectionError, ConnectionError)):
        async with http.get(f"/api/v1/namespaces/{namespace}/secrets", timeout=aiohttp.ClientTimeout(total=5)):
            pass
    proxy.set_mode("pass")
    async with http.get(f"/api/v1/namespaces/{namespace}/secrets") as r:
        assert r.status == 200


async def test_rules_select_by_method_and_path(http: aiohttp.ClientSession, proxy: FaultProxy, namespace: str) -> None:
    proxy.set_rules([Rule("503", methods=frozenset({"POST"}), path=r"/events$")])
    event = {
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Secret", "name": "x", "namespace": namespace},
        "reason": "Test",
        "message": "m",
        "type": "Normal",
    }
    async with http.post(f"/api/v1/namespaces/{namespace}/events", json=event) as r:
        assert r.status == 503
    async with http.post(f"/api/v1/namespaces/{namespace}/secrets", json=secret("s")) as r:
        assert r.status == 201
    async with http.get(f"/api/v1/namespaces/{namespace}/events") as r:
        assert r.status == 200


def test_a_sync_client_through_the_proxy(proxy: FaultProxy, controlplane: ControlPlane, namespace: str) -> None:
    ctx = ssl.create_default_context(cafile=str(proxy.ca_file))

    def get() -> int:
        req = urllib.request.Request(f"{proxy.address}/api/v1/namespaces/{namespace}/secrets")
        req.add_header("Authorization", f"Bearer {controlplane.admin_token}")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return e.code

    assert get() == 200
    proxy.set_mode("503", methods={"GET"})
    assert get() == 503
    proxy.set_mode("pass")
    assert get() == 200


def test_kubeconfig_through_the_proxy(
    proxy: FaultProxy, controlplane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    path = proxy.write_kubeconfig(tmp_path / "kc", token=controlplane.admin_token, user="admin", namespace=namespace)
    other = controlplane.write_kubeconfig(
        tmp_path / "kc2", token="t", user="u", server=proxy.address, ca_file=proxy.ca_file
    )
    for p in (path, other):
        cluster = json.loads(p.read_text())["clusters"][0]["cluster"]
        assert cluster == {"server": proxy.address, "certificate-authority": str(proxy.ca_file)}


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "license_keeper.testing.faultproxy", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "partition" in out.stdout and "cut_after" in out.stdout
