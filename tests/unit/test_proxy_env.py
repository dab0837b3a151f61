"""Which of the keeper's HTTP clients honour HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY.

docs/operations.md ("Behind an egress proxy") states it; these tests pin it:

- the Konnect client honours them (aiohttp ``trust_env=True``; tested in test_konnect.py with a CONNECT proxy),
  but only an http:// proxy URL: an https:// one is ignored and Konnect is reached directly (below);
- the Kubernetes client (lightkube, both its typed and its raw connections) ignores them: the API server is
  always reached directly, in a pod and from a workstation alike (kubectl would use the proxy);
- the Kong Admin API client (delivery targets) ignores them: gateways are reached directly.

Each test first shows that a client which does honour the environment goes to the stand-in proxy, so a
client that started honouring it would fail here.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx2 as httpx
import pytest
from lightkube.config.kubeconfig import KubeConfig
from lightkube.resources.core_v1 import Secret

from license_keeper.kube import Kube
from license_keeper.testing.konnect import KonnectStandIn
from tests.unit.conftest import client_for

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")

SECRET = {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "kong-license", "namespace": "kong"}}


class Recorder:
    """A plain HTTP server on loopback that answers every request with ``body`` and records the request
    lines it got. As the proxy it records absolute-form lines (``GET http://host/...``) or CONNECTs."""

    def __init__(self, status: str, body: dict[str, object]) -> None:
        self.status = status
        self.body = json.dumps(body).encode()
        self.lines: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Recorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                self.lines.append(head.split(b"\r\n", 1)[0].decode())
                writer.write(
                    f"HTTP/1.1 {self.status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(self.body)}\r\n\r\n".encode()
                    + self.body
                )
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> object:
    """Every proxy variable (both spellings) cleared; the test sets the ones it wants."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def _point_every_variable_at(monkeypatch: pytest.MonkeyPatch, proxy: str) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
        monkeypatch.setenv(name.lower(), proxy)


def _kubeconfig(server: str) -> KubeConfig:
    return KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "kong"}}],
            "current-context": "x",
        }
    )


async def test_a_client_that_honours_the_environment_goes_to_the_stand_in_proxy(
    proxy_env: pytest.MonkeyPatch,
) -> None:
    """The control: the set-up below detects a proxied request."""
    async with Recorder("200 OK", SECRET) as server, Recorder("502 Bad Gateway", {}) as proxy:
        _point_every_variable_at(proxy_env, proxy.url)
        async with httpx.AsyncClient(trust_env=True) as client:
            answer = await client.get(f"{server.url}/api/v1/namespaces/kong/secrets/kong-license")
        assert answer.status_code == 502
        assert proxy.lines and proxy.lines[0].startswith(f"GET {server.url}/")
        assert server.lines == []


async def test_the_kubernetes_client_ignores_the_proxy_variables(proxy_env: pytest.MonkeyPatch) -> None:
    """In a pod the API server is reached directly whatever HTTPS_PROXY says, so NO_PROXY need not name it;
    from a workstation behind a proxy the CLI does not use it either (unlike kubectl)."""
    async with Recorder("200 OK", SECRET) as server, Recorder("502 Bad Gateway", {}) as proxy:
        _point_every_variable_at(proxy_env, proxy.url)
        kube = Kube(_kubeconfig(server.url).get(), timeout=5)
        try:
            typed = await kube.get(Secret, "kong-license", namespace="kong")
            raw = await kube.request("GET", "/api/v1/namespaces/kong/secrets/kong-license", what="get Secret")
        finally:
            await kube.close()
        assert typed is not None and typed.metadata.name == "kong-license"
        assert raw["metadata"]["name"] == "kong-license"
        assert proxy.lines == []
        assert [line.split(" ")[0] for line in server.lines] == ["GET", "GET"]


async def test_the_admin_api_client_ignores_the_proxy_variables(proxy_env: pytest.MonkeyPatch) -> None:
    """Delivery targets (admin-api, admin-svc) reach the gateways directly."""
    from license_keeper.adminapi import AdminApiOptions, AdminSession, Credentials
    from license_keeper.delivery import parse_admin_url

    async with Recorder("200 OK", {"data": [], "next": None}) as server, Recorder("502 Bad Gateway", {}) as proxy:
        _point_every_variable_at(proxy_env, proxy.url)
        # The control for aiohttp: a session that trusts the environment goes to the proxy.
        async with aiohttp.ClientSession(trust_env=True) as trusting, trusting.get(f"{server.url}/licenses") as answer:
            assert answer.status == 502
        assert proxy.lines and server.lines == []
        proxy.lines.clear()
        async with AdminSession(AdminApiOptions(timeout=5), Credentials(token=None, context=None)) as session:
            rows = await session.rows(parse_admin_url(server.url))
        assert rows == []
        assert proxy.lines == []
        assert [line.split(" ")[0] for line in server.lines] == ["GET"]


async def test_the_konnect_client_ignores_an_https_proxy_url_and_goes_direct(
    konnect: KonnectStandIn, proxy_env: pytest.MonkeyPatch
) -> None:
    """aiohttp tunnels through http:// proxies only; an https:// proxy URL is dropped (with a warning) and the
    request goes to Konnect directly. docs/operations.md says to give an http:// URL."""
    from license_keeper.konnect import LicenseFetched

    async with Recorder("502 Bad Gateway", {}) as proxy:
        proxy_env.setenv("HTTPS_PROXY", proxy.url.replace("http://", "https://"))
        async with client_for(konnect) as c:
            result = await c.fetch()
        assert isinstance(result, LicenseFetched), result.describe()
        assert proxy.lines == []
