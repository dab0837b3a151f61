"""license_keeper.konnect against the Konnect stand-in over real mutual TLS, plus the pure body parser."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import license_keeper
from license_keeper.konnect import (
    KonnectAuthFailed,
    KonnectClient,
    KonnectConfigError,
    KonnectFailure,
    KonnectInvalidResponse,
    KonnectResult,
    KonnectServerError,
    KonnectTimeout,
    KonnectUnreachable,
    LicenseFetched,
    NoLicense,
    _client_context,
    check_client_files,
    load_client_ssl_context,
    parse_licenses_body,
)
from license_keeper.license import LicenseRecord, parse_license
from license_keeper.testing.konnect import KonnectStandIn, StandInControl
from license_keeper.testing.licenses import make_document, make_record
from license_keeper.testing.tls import TLSMaterial
from tests.unit.conftest import client_for


def assert_no_secrets(result: KonnectResult, record: LicenseRecord) -> None:
    lic = parse_license(record.document)
    for text in (result.describe(), repr(result), str(result)):
        assert record.document not in text
        assert lic.license_key not in text
        assert lic.signature not in text
        assert lic.signature[-34:] not in text
    assert "\n" not in result.describe()


async def test_license_fetched(konnect: KonnectStandIn, konnect_client: KonnectClient) -> None:
    result = await konnect_client.fetch()
    assert isinstance(result, LicenseFetched), result.describe()
    assert result.kind == "ok"
    assert result.record == konnect.record
    assert result.record.source == "konnect"
    assert result.record.valid
    assert konnect.requests == 1
    assert konnect.requests_by_path[konnect.path] == 1
    assert konnect.record is not None
    assert_no_secrets(result, konnect.record)


async def test_user_agent(konnect: KonnectStandIn, konnect_client: KonnectClient) -> None:
    await konnect_client.fetch()
    assert konnect.user_agents == [f"license-keeper/{license_keeper.__version__}"]


@pytest.mark.parametrize(
    ("mode", "expected_type", "kind", "reason_part"),
    [
        ("not_found", NoLicense, "no_license", "404"),
        ("server_error", KonnectServerError, "server_error", "500"),
        ("unauthorized", KonnectAuthFailed, "auth", "401"),
        ("unexpected_status", KonnectInvalidResponse, "invalid_response", "418"),
        ("garbage", KonnectInvalidResponse, "invalid_response", "not valid JSON"),
        ("oversized", KonnectInvalidResponse, "invalid_response", "too large"),
        ("missing_fields", KonnectInvalidResponse, "invalid_response", "id is missing"),
    ],
)
async def test_modes(
    konnect: KonnectStandIn,
    konnect_client: KonnectClient,
    mode: str,
    expected_type: type,
    kind: str,
    reason_part: str,
) -> None:
    await konnect.set_mode(mode)
    result = await konnect_client.fetch()
    assert type(result) is expected_type, result.describe()
    assert result.kind == kind
    assert reason_part in result.describe()
    assert isinstance(result, KonnectFailure) == (kind not in ("ok", "no_license"))
    assert konnect.requests_by_mode[mode] == 1
    assert konnect.record is not None
    assert_no_secrets(result, konnect.record)


async def test_no_license_when_none_served(konnect: KonnectStandIn, konnect_client: KonnectClient) -> None:
    konnect.serve(None)
    assert isinstance(await konnect_client.fetch(), NoLicense)
    record = make_record(updated_at=1234)
    konnect.serve(record)
    result = await konnect_client.fetch()
    assert isinstance(result, LicenseFetched)
    assert result.record == record


async def test_other_paths_404(konnect: KonnectStandIn) -> None:
    tls = konnect.tls
    async with KonnectClient(
        konnect.address, "some-other-plane", tls.client_cert_file, tls.client_key_file, ca_file=tls.ca_file
    ) as other:
        assert isinstance(await other.fetch(), NoLicense)
    assert konnect.requests_by_path[konnect.path] == 0
    assert konnect.requests == 1


async def test_closed_port_is_unreachable_and_comes_back(
    konnect: KonnectStandIn, konnect_client: KonnectClient
) -> None:
    port = konnect.port
    await konnect.set_mode("closed")
    result = await konnect_client.fetch()
    assert isinstance(result, KonnectUnreachable), result.describe()
    assert result.kind == "unreachable"
    await konnect.set_mode("license")
    assert konnect.port == port
    assert isinstance(await konnect_client.fetch(), LicenseFetched)


async def test_black_hole_ends_at_timeout_and_shutdown_does_not_hang(tls_material: TLSMaterial) -> None:
    standin = KonnectStandIn(tls=tls_material, mode="blackhole")
    await standin.start()
    try:
        async with client_for(standin, total_timeout=1.0, connect_timeout=1.0) as c:
            started = time.monotonic()
            result = await c.fetch()
            elapsed = time.monotonic() - started
        assert isinstance(result, KonnectTimeout), result.describe()
        assert result.kind == "timeout"
        assert 0.9 <= elapsed <= 5.0
        assert standin.requests_by_mode["blackhole"] == 1
    finally:
        started = time.monotonic()
        await standin.stop()
        assert time.monotonic() - started < 3.0


async def test_slow_within_and_beyond_timeout(konnect: KonnectStandIn) -> None:
    await konnect.set_mode("slow")  # 0.3 s
    async with client_for(konnect, total_timeout=3.0) as patient:
        assert isinstance(await patient.fetch(), LicenseFetched)
    konnect.slow_seconds = 5.0
    async with client_for(konnect, total_timeout=0.5) as impatient:
        assert isinstance(await impatient.fetch(), KonnectTimeout)


async def test_size_cap(konnect: KonnectStandIn) -> None:
    assert konnect.record is not None
    body_size = len(json.dumps({"items": [{"payload": konnect.record.document, "updated_at": 1, "id": "x"}]}))
    async with client_for(konnect, max_body=body_size - 50) as small:
        result = await small.fetch()
        assert isinstance(result, KonnectInvalidResponse)
        assert "too large" in result.reason
    async with client_for(konnect, max_body=body_size + 500) as enough:
        assert isinstance(await enough.fetch(), LicenseFetched)


async def test_untrusted_client_certificate_is_auth_failure(
    konnect: KonnectStandIn, konnect_client: KonnectClient
) -> None:
    konnect.tls.rotate_client(trusted=False)
    result = await konnect_client.fetch()
    assert isinstance(result, KonnectAuthFailed), result.describe()
    assert result.kind == "auth"
    assert konnect.handshake_failures >= 1
    assert konnect.requests == 0


async def test_certificate_rotation_picked_up_without_new_client(
    konnect: KonnectStandIn, konnect_client: KonnectClient
) -> None:
    assert isinstance(await konnect_client.fetch(), LicenseFetched)
    first_serial = konnect.client_serials[-1]
    assert konnect_client.reloads == 1
    assert isinstance(await konnect_client.fetch(), LicenseFetched)
    assert konnect_client.reloads == 1  # unchanged files: no reload
    konnect.tls.rotate_client(trusted=False)
    assert isinstance(await konnect_client.fetch(), KonnectAuthFailed)
    konnect.tls.rotate_client(trusted=True)
    assert isinstance(await konnect_client.fetch(), LicenseFetched)
    assert konnect.client_serials[-1] != first_serial
    assert konnect_client.reloads == 3


async def test_rotated_invalid_pair_is_a_clear_auth_failure(
    konnect: KonnectStandIn, konnect_client: KonnectClient
) -> None:
    assert isinstance(await konnect_client.fetch(), LicenseFetched)
    key_pem = konnect.tls.client_key_file.read_text()
    other = TLSMaterial.create(konnect.tls.directory / "other")
    konnect.tls.client_key_file.write_text(other.client_key_file.read_text())  # key of another cert
    result = await konnect_client.fetch()
    assert isinstance(result, KonnectAuthFailed), result.describe()
    assert "does not match" in result.reason
    assert "PRIVATE KEY" not in result.describe()
    konnect.tls.client_key_file.write_text(key_pem)
    assert isinstance(await konnect_client.fetch(), LicenseFetched)


@pytest.mark.parametrize("load", [load_client_ssl_context, check_client_files])
def test_client_tls_file_errors(tls_material: TLSMaterial, tmp_path: Path, load: Callable[..., object]) -> None:
    """The start-up check fails exactly where the client's own context would, with the same message."""
    t = tls_material
    ctx = load_client_ssl_context(t.client_cert_file, t.client_key_file, t.ca_file)
    assert ctx.minimum_version.name == "TLSv1_2"
    assert ctx.check_hostname
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n")
    other = TLSMaterial.create(tmp_path / "other")
    cases = [
        (tmp_path / "missing.pem", t.client_key_file, t.ca_file, "cannot read"),
        (t.client_cert_file, garbage, t.ca_file, "not a valid PEM"),
        (t.client_cert_file, other.client_key_file, t.ca_file, "does not match"),
        (t.client_cert_file, t.client_key_file, tmp_path / "no-ca.pem", "CA file"),
    ]
    # The same without a CA file (Konnect's public CA through the system trust store, the default).
    cases += [(cert, key, None, part) for cert, key, ca, part in cases if ca == t.ca_file]
    for cert, key, ca, part in cases:
        with pytest.raises(KonnectConfigError) as info:
            load(cert, key, ca)
        with pytest.raises(KonnectConfigError) as same:
            load_client_ssl_context(cert, key, ca)
        assert str(info.value) == str(same.value)
        message = str(info.value)
        assert part in message
        assert "\n" not in message
        assert "BEGIN" not in message
        assert info.value.__cause__ is None


def test_the_start_up_check_leaves_the_system_trust_store_to_the_first_fetch(tls_material: TLSMaterial) -> None:
    t = tls_material
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert system > 0, "this test needs the system CA certificates (Debian: ca-certificates)"
    checked = _client_context(t.client_cert_file, t.client_key_file, None, system_trust=False)
    used = _client_context(t.client_cert_file, t.client_key_file, None, system_trust=True)
    assert checked.cert_store_stats()["x509_ca"] == 0
    assert used.cert_store_stats()["x509_ca"] == system
    assert checked.verify_mode == used.verify_mode == ssl.CERT_REQUIRED
    assert checked.check_hostname and used.check_hostname
    check_client_files(t.client_cert_file, t.client_key_file)  # no CA file: nothing to fail on but the pair


def test_address_must_be_https(tls_material: TLSMaterial) -> None:
    t = tls_material
    with pytest.raises(KonnectConfigError):
        KonnectClient("http://127.0.0.1:1", "cp", t.client_cert_file, t.client_key_file)
    with pytest.raises(KonnectConfigError):
        KonnectClient("https://127.0.0.1:1", "", t.client_cert_file, t.client_key_file)


DOC = make_document()
NOW = datetime.datetime(2030, 6, 15, 12, 0, tzinfo=datetime.UTC)
T_NOW = int(NOW.timestamp())


def body(item: dict | None = None, **top: object) -> bytes:
    data: dict[str, object] = {"items": [item]} if item is not None else {}
    data.update(top)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b"", "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (body(), "items is missing"),
        (body(items={}), "not a list"),
        (json.dumps({"items": []}).encode(), "items is empty"),
        (json.dumps({"items": ["x"]}).encode(), "items[0] is not an object"),
        (body({"updated_at": 5, "id": "i"}), "payload is missing"),
        (body({"payload": "", "updated_at": 5, "id": "i"}), "payload is missing or empty"),
        (body({"payload": DOC, "updated_at": 5}), "id is missing"),
        (body({"payload": DOC, "updated_at": 5, "id": ""}), "id is missing"),
        (body({"payload": DOC, "id": "i"}), "updated_at is missing"),
        (body({"payload": DOC, "updated_at": 0, "id": "i"}), "zero"),
        (body({"payload": DOC, "updated_at": "5", "id": "i"}), "not an integer"),
        (body({"payload": DOC, "updated_at": 5.5, "id": "i"}), "not an integer"),
        (body({"payload": DOC, "updated_at": True, "id": "i"}), "not an integer"),
        (body({"payload": '{"license": {}}', "updated_at": 5, "id": "i"}), "license payload: is missing"),
        (body({"payload": make_document(signature="zz" + "a" * 300), "updated_at": 5, "id": "i"}), "signature"),
        # issue 9 item 12: one range for updated_at (future beyond a day of skew, milliseconds)
        (body({"payload": DOC, "updated_at": T_NOW + 2 * 86400, "id": "i"}), "updated_at is in the future"),
        (body({"payload": DOC, "updated_at": T_NOW * 1000, "id": "i"}), "3000"),
        (body({"payload": DOC, "updated_at": -5, "id": "i"}), "zero or negative"),
        # issue 9 item 9: a lone surrogate escape (json.dumps writes "\ud800" for it)
        (body({"payload": DOC.replace("Example", "Ex\ud800ample"), "updated_at": 5, "id": "i"}), "document"),
        (body({"payload": DOC.replace("Example", "Ex\\ud800ample"), "updated_at": 5, "id": "i"}), "customer"),
        (body({"payload": DOC, "updated_at": 5, "id": "id-\udc00"}), "id is not valid Unicode"),
    ],
)
def test_parse_licenses_body_invalid(raw: bytes, reason_part: str) -> None:
    result = parse_licenses_body(raw, NOW)
    assert isinstance(result, KonnectInvalidResponse)
    assert reason_part in result.reason
    assert DOC not in result.describe()
    assert "aaaaaaaa" not in result.describe()


def test_parse_licenses_body_ok_uses_first_item() -> None:
    second = make_document()
    raw = json.dumps(
        {"items": [{"payload": DOC, "updated_at": 7, "id": "a"}, {"payload": second, "updated_at": 9, "id": "b"}]}
    ).encode()
    result = parse_licenses_body(raw, NOW)
    assert isinstance(result, LicenseFetched)
    assert result.record == LicenseRecord(document=DOC, id="a", updated_at=7)
    assert result.record.source == "konnect"


def test_cli_make_license_and_help() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-m", "license_keeper.testing.konnect", "make-license", "--expires", "2031-02-03"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    ).stdout
    assert parse_license(out.strip()).expiration_date.isoformat() == "2031-02-03"
    help_text = subprocess.run(
        [sys.executable, "-m", "license_keeper.testing.konnect", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    ).stdout
    for word in ("blackhole", "oversized", "/license/rotate", "--control-port", "/stats"):
        assert word in help_text


async def test_stand_in_in_another_process(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "license_keeper.testing.konnect",
        "serve",
        "--dir",
        str(tmp_path),
        "--control-port",
        "0",
        "--control-plane-id",
        "cp-1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        info = json.loads(line)
        assert info["control_plane_id"] == "cp-1"
        async with (
            KonnectClient(
                info["address"],
                "cp-1",
                Path(info["client_cert_file"]),
                Path(info["client_key_file"]),
                ca_file=Path(info["ca_file"]),
                total_timeout=5,
            ) as c,
            StandInControl(info["control_url"]) as control,
        ):
            first = await c.fetch()
            assert isinstance(first, LicenseFetched), first.describe()
            await control.set_mode("not_found")
            assert isinstance(await c.fetch(), NoLicense)
            await control.set_mode("license")
            rotated = await control.rotate()
            second = await c.fetch()
            assert isinstance(second, LicenseFetched)
            assert second.record.id == rotated["license_id"] != first.record.id
            assert second.record.updated_at > first.record.updated_at
            record = make_record(updated_at=42, id="mine")
            await control.put_license(record.document, record.id, record.updated_at)
            third = await c.fetch()
            assert isinstance(third, LicenseFetched) and third.record == record
            stats = await control.stats()
            assert stats["requests"] == 4
            assert stats["mode"] == "license"
            with pytest.raises(RuntimeError):
                await control.set_mode("no-such-mode")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


def test_a_lone_surrogate_in_an_answer_never_reaches_the_secret() -> None:
    """issue 9 item 9: it used to come back as LicenseFetched and crash the leader at Secret encode."""
    from license_keeper.policy import desired_secret

    for item in (
        {"payload": DOC.replace("Example", "Ex\ud800ample"), "updated_at": 5, "id": "i"},
        {"payload": DOC, "updated_at": 5, "id": "\ud800"},
    ):
        result = parse_licenses_body(body(item), NOW)
        assert isinstance(result, KonnectInvalidResponse), result
        assert result.kind == "invalid_response"
    ok = parse_licenses_body(body({"payload": DOC, "updated_at": 5, "id": "i"}), NOW)
    assert isinstance(ok, LicenseFetched)
    desired_secret(ok.record)  # encodes


def test_fetched_describe_is_the_one_rendering() -> None:
    from license_keeper.license import describe

    record = make_record(updated_at=5)
    assert LicenseFetched(record).describe() == f"Konnect served {describe(record)}"


# --- HTTPS_PROXY / NO_PROXY (issue 9 item 13) -----------------------------------------------------------


class ConnectProxy:
    """A tiny HTTP CONNECT proxy on loopback that records the targets it tunnelled to."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()


def _clear_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def test_https_proxy_from_the_environment_is_used(
    konnect: KonnectStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_proxy_env(monkeypatch)
    async with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        async with client_for(konnect) as c:
            result = await c.fetch()
        assert isinstance(result, LicenseFetched), result.describe()
        assert proxy.targets == [f"127.0.0.1:{konnect.port}"]


async def test_no_proxy_bypasses_the_proxy(konnect: KonnectStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_proxy_env(monkeypatch)
    async with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with client_for(konnect) as c:
            result = await c.fetch()
        assert isinstance(result, LicenseFetched), result.describe()
        assert proxy.targets == []


async def test_a_client_closed_while_its_context_loads_makes_no_session(
    konnect: KonnectStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The context is loaded in a thread; a close() meanwhile must not leave a session behind."""
    import threading

    import license_keeper.konnect as module

    entered, release = threading.Event(), threading.Event()
    real = module.load_client_ssl_context

    def slow(*args: object) -> ssl.SSLContext:
        entered.set()
        release.wait(10)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "load_client_ssl_context", slow)
    client = client_for(konnect)
    fetch = asyncio.create_task(client.fetch())
    assert await asyncio.to_thread(entered.wait, 10)
    await client.close()
    release.set()
    with pytest.raises(RuntimeError, match="closed"):
        await fetch
    assert client._session is None


# --- issue 21 item 2: the certificate and key inline, as KIC's manifests give them ---------------------------


async def test_a_client_from_kics_inline_certificate_and_key(
    konnect: KonnectStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from license_keeper.cli.common import konnect_client
    from license_keeper.config import load_settings

    tls = konnect.tls
    for name in list(os.environ):
        if name.startswith(("LICENSE_KEEPER_", "CONTROLLER_KONNECT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CONTROLLER_KONNECT_ADDRESS", konnect.address)
    monkeypatch.setenv("CONTROLLER_KONNECT_CONTROL_PLANE_ID", konnect.control_plane_id)
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_CERT", tls.client_cert_file.read_text())
    monkeypatch.setenv("CONTROLLER_KONNECT_TLS_CLIENT_KEY", tls.client_key_file.read_text())
    settings = load_settings(konnect_ca_file=str(tls.ca_file))
    assert "PRIVATE KEY" not in repr(settings)  # the key never shows in a settings dump
    client = konnect_client(settings)
    check_client_files(client.cert_file, client.key_file, tls.ca_file)
    async with client:
        result = await client.fetch()
    assert isinstance(result, LicenseFetched), result.describe()
    assert result.record == konnect.record
    for path in (client.cert_file, client.key_file):
        assert not str(path).startswith(str(tls.client_cert_file.parent))  # not the files on disk
