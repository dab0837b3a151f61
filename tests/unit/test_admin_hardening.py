"""The Kong Admin API client's hardening (issue 22 §3): each test here failed on main before its fix."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from license_keeper.deliver import AdminApiOptions, AdminApiTarget
from license_keeper.delivery import DeliveryState, license_row_id, parse_target
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.licenses import make_record
from license_keeper.testing.tls import TLSMaterial

D = DeliveryState
TOKEN = "t0ken-for-kong"
OURS = license_row_id("kong", "kong-license")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


# --- 1. an upper-case scheme must not turn certificate verification off --------------------------------------


@pytest.mark.parametrize("scheme", ["HTTPS", "Https", "hTTps"])
async def test_an_upper_case_scheme_still_verifies_the_certificate(
    tls_material: TLSMaterial, token_file: Path, scheme: str
) -> None:
    rec = make_record(updated_at=1)
    assert rec.license is not None
    async with KongStandIn(tls=tls_material, token=TOKEN, mode="tls_untrusted") as kong:
        url = kong.address.replace("https", scheme, 1)
        options = AdminApiOptions(token_file=token_file, ca_file=tls_material.ca_file, timeout=2.0)
        target = AdminApiTarget(parse_target(f"admin-api={url}"), OURS, options)
        report = await target.deliver(rec.license)
        assert report.state is D.ERROR and "not trusted" in report.reason, report.reason
        assert kong.tokens_seen == [] and kong.writes() == [], "the token or the license reached an untrusted server"


def test_admin_urls_are_parsed_once_and_normalised() -> None:
    assert parse_target("admin-api=HTTPS://Kong-Admin.Example:8444/").value == "https://kong-admin.example:8444"
    assert parse_target("admin-api=HTTP://[::1]:8001").value == "http://[::1]:8001"
    for bad in ("admin-api=ftp://kong:21", "admin-api=https://", "admin-api=https://kong:99999", "admin-api=kong:8444"):
        with pytest.raises(ValueError):
            parse_target(bad)


# --- 2. a token or client certificate never goes out in clear, unless the network is declared trusted ---------


def test_credentials_with_a_plain_http_target_are_refused_at_start(token_file: Path, tls_material: TLSMaterial) -> None:
    from license_keeper.config import ConfigError, load_settings

    cert = {
        "deliver_admin_client_cert_file": tls_material.client_cert_file,
        "deliver_admin_client_key_file": tls_material.client_key_file,
    }
    for creds in ({"deliver_admin_token_file": token_file}, cert):
        with pytest.raises(ConfigError, match="in clear"):
            load_settings(deliver=("admin-api=HTTP://kong:8001",), environ={}, **creds)
        trusted = load_settings(
            deliver=("admin-api=http://kong:8001",), deliver_admin_trusted_network=True, environ={}, **creds
        )
        assert trusted.deliver_admin_trusted_network is True
    # https, or http without credentials: fine as before
    load_settings(deliver=("admin-api=https://kong:8444",), deliver_admin_token_file=token_file, environ={})
    load_settings(deliver=("admin-api=http://kong:8001",), environ={})


async def test_the_target_itself_never_sends_a_token_over_plain_http(token_file: Path) -> None:
    from license_keeper.testing.gateway import Gateway

    rec = make_record(updated_at=1)
    assert rec.license is not None
    async with Gateway(rec.document, hostname="gw") as gateway:
        assert gateway.address is not None
        spec = parse_target(f"admin-api={gateway.address}")
        refused = await AdminApiTarget(spec, OURS, AdminApiOptions(token_file=token_file, timeout=2.0)).check(
            rec.license
        )
        assert refused.state is D.ERROR and "in clear" in refused.reason, refused.reason
        assert gateway.requests == 0, "a request went out"
        trusted = AdminApiOptions(token_file=token_file, timeout=2.0, trusted_network=True)
        assert (await AdminApiTarget(spec, OURS, trusted).check(rec.license)).state is D.DELIVERED


# --- 5. the delivery period and the Admin API timeout have lower bounds ---------------------------------------


@pytest.mark.parametrize(
    ("flag", "value"), [("delivery_period", "1ms"), ("delivery_period", "5s"), ("deliver_admin_timeout", "1ms")]
)
def test_delivery_durations_have_lower_bounds(flag: str, value: str) -> None:
    from license_keeper.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="must be at least"):
        load_settings(environ={}, **{flag: value})


def test_test_harnesses_may_shorten_the_delivery_period_but_not_below_a_floor() -> None:
    from license_keeper.config import ConfigError, load_settings

    short = {"LICENSE_KEEPER_ALLOW_SHORT_PERIODS": "true"}
    assert load_settings(environ=short, delivery_period="2s").delivery_period == 2.0
    with pytest.raises(ConfigError, match="must be at least"):
        load_settings(environ=short, delivery_period="1ms")


# --- 3. TLS contexts: built once per configuration, off the event loop -----------------------------------------


def closed_ports(count: int) -> list[int]:
    """Ports nothing listens on (bound, then closed): connections to them are refused at once."""
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LoopStalls:
    """The longest time the event loop did not run a 5 ms ticker (a stalled loop starves Leases and probes)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.longest = max(self.longest, loop.time() - before - 0.005)

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_tls_contexts_are_built_once_per_configuration_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from license_keeper.deliver import Deliverer

    built: list[bool] = []  # per context built: on the event loop's thread?
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    options = AdminApiOptions(timeout=5.0)  # the system trust store, as most installations verify
    targets = [
        AdminApiTarget(parse_target(f"admin-api=https://127.0.0.1:{port}"), OURS, options) for port in closed_ports(100)
    ]
    deliverer = Deliverer(targets)
    rec = make_record(updated_at=1)
    async with LoopStalls() as stalls:
        for _ in range(2):
            reports = await deliverer.deliver(rec)
            reasons = {r.reason.split(": ", 1)[1] for r in reports}
            assert reasons == {"unreachable (cannot connect)"}, reasons
    assert stalls.longest < 0.25, f"the event loop stalled for {stalls.longest:.2f} s"
    assert len(built) <= 1, f"{len(built)} TLS contexts built for one configuration"
    assert not any(built), "a TLS context was built on the event loop"


# --- 4. what a hostile Admin API answers cannot grow the keeper's memory without bound --------------------------


def peak_rss_reset() -> int:
    """Reset the process' peak RSS (Linux clear_refs 5); returns the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_field("VmRSS")


def rss_field(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(name)


async def test_hostile_license_pages_do_not_grow_memory_without_bound() -> None:
    from aiohttp import web

    # ~8 MiB of empty rows per page (just under the old per-answer cap), three pages
    page = b'{"data":[' + b"{}," * (8 * 1024 * 1024 // 3 - 16) + b'{}],"next":"/licenses?offset=%d"}'
    served: list[int] = []

    async def licenses(request: web.Request) -> web.StreamResponse:
        served.append(len(page))
        body = page % len(served) if len(served) < 3 else page.replace(b'"/licenses?offset=%d"', b"null")
        return web.Response(body=body, content_type="application/json")

    rec = make_record(updated_at=1)
    assert rec.license is not None

    async def report(request: web.Request) -> web.StreamResponse:
        lic = rec.license
        assert lic is not None
        body = {"license": {"license_key": "other", "license_expiration_date": lic.expiration_date.isoformat()}}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/licenses", licenses)
    app.router.add_get("/license/report", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        target = AdminApiTarget(parse_target(f"admin-api=http://127.0.0.1:{port}"), OURS, AdminApiOptions(timeout=30))
        gc.collect()
        before = peak_rss_reset()
        report_ = await target.check(rec.license)
        grew = rss_field("VmHWM") - before
    finally:
        await runner.cleanup()
    assert grew < 64 * 1024 * 1024, f"one round grew the peak RSS by {grew / 2**20:.0f} MiB"
    assert report_.state is D.ERROR, report_.reason


# --- delivery writes are fenced by "still leading", as the Secret's are ----------------------------------------


async def test_a_replica_that_no_longer_leads_writes_nothing_to_the_admin_api(
    tls_material: TLSMaterial, token_file: Path
) -> None:
    from license_keeper.deliver import Deliverer

    rec = make_record(updated_at=1)
    async with KongStandIn(tls=tls_material, token=TOKEN) as kong:
        options = AdminApiOptions(token_file=token_file, ca_file=tls_material.ca_file, timeout=2.0)
        target = AdminApiTarget(parse_target(f"admin-api={kong.address}"), OURS, options)
        (report,) = await Deliverer([target], may_write=lambda: False).deliver(rec)
        assert kong.writes() == [], "a replica that lost the Lease wrote to /licenses"
        assert report.state is D.PENDING and "not the leader" in report.reason and not report.wrote
        (report,) = await Deliverer([target], may_write=lambda: True).deliver(rec)
        assert report.wrote and len(kong.writes()) == 1


# --- strings from an Admin API (row ids, dates) are bounded and printable in reasons, logs and Events -----------


def test_admin_api_strings_are_bounded_in_reasons() -> None:
    from license_keeper.delivery import ReportedLicense, diagnose_admin, diagnose_konglicense

    rec = make_record(updated_at=1)
    assert rec.license is not None
    other = make_record(updated_at=2)
    assert other.license is not None
    hostile = "x" * 100_000 + "\nFAKE LOG LINE level=error"
    rows = [{"id": hostile, "payload": other.document, "created_at": 1, "updated_at": 9}]
    runs_other = ReportedLicense(other.license.license_key, other.license.expiration_date.isoformat())
    reasons = [
        diagnose_admin(rec.license, rows, runs_other, OURS, wrote_at=None, now=1e9)[1],
        diagnose_admin(rec.license, [], ReportedLicense("k", hostile), OURS, wrote_at=None, now=1e9)[1],
    ]
    status = {"controllers": [{"conditions": [{"type": "Programmed", "status": "False", "reason": hostile}]}]}
    obj = {"metadata": {"name": "k", "generation": 1}, "rawLicenseString": rec.document, "status": status}
    reasons.append(diagnose_konglicense(obj, rec.document, "k", wrote_at=None, now=1e9)[1])
    for reason in reasons:
        assert len(reason) < 600 and "\n" not in reason and "FAKE" not in reason, reason[:200]
