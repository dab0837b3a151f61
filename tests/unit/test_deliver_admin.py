"""The Admin API target and the Deliverer against the Kong stand-in (real TLS, real HTTP)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from license_keeper.deliver import (
    AdminApiOptions,
    AdminApiTarget,
    Deliverer,
    DeliveryCollector,
    delivery_event,
    render_reports,
)
from license_keeper.delivery import DeliveryState, TargetReport, license_row_id, parse_target
from license_keeper.license import LicenseRecord
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.licenses import make_document, make_record
from license_keeper.testing.tls import TLSMaterial

D = DeliveryState
TOKEN = "t0ken-for-kong"
OURS = license_row_id("kong", "kong-license")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
async def kong(tls_material: TLSMaterial) -> AsyncIterator[KongStandIn]:
    async with KongStandIn(tls=tls_material, token=TOKEN) as standin:
        yield standin


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def target_for(
    kong: KongStandIn, token_file: Path | None, clock: Clock | None = None, **opts: object
) -> AdminApiTarget:
    options = AdminApiOptions(token_file=token_file, ca_file=kong.tls.ca_file, timeout=2.0, **opts)
    return AdminApiTarget(parse_target(f"admin-api={kong.address}"), OURS, options, clock=clock or Clock())


def record(**kw: object) -> LicenseRecord:
    return make_record(updated_at=1, **kw)


def no_secrets(text: str, rec: LicenseRecord) -> None:
    lic = rec.license
    assert lic is not None
    for secret in (lic.license_key, lic.signature, rec.document, TOKEN):
        assert secret not in text


async def test_delivers_once_then_converged_and_rotates_in_place(kong: KongStandIn, token_file: Path) -> None:
    foreign = make_document(expiration_date="2026-01-01")
    kong.node.upsert(str(uuid.uuid4()), {"payload": foreign}, now=1)
    target = target_for(kong, token_file)
    first = record()
    lic = first.license
    assert lic is not None
    report = await target.deliver(lic)
    assert (report.state, report.wrote) == (D.DELIVERED, True)
    assert ("PUT", f"/licenses/{OURS}") in kong.writes()
    again = await target.deliver(lic)
    assert (again.state, again.wrote) == (D.DELIVERED, False)
    assert len(kong.writes()) == 1, "same payload: nothing written"
    second = record()
    assert second.license is not None
    rotated = await target.deliver(second.license)
    assert (rotated.state, rotated.wrote) == (D.DELIVERED, True)
    assert [m for m, _ in kong.writes()] == ["PUT", "PUT"], "never DELETE or POST"
    assert len(kong.node.rows) == 2 and kong.node.rows[OURS].payload == second.document
    assert any(r.payload == foreign for r in kong.node.rows.values()), "a row we did not write stays"
    assert kong.tokens_seen and all(t == TOKEN for t in kong.tokens_seen)


async def test_same_payload_under_another_id_is_left_alone(kong: KongStandIn, token_file: Path) -> None:
    rec = record()
    kong.node.upsert(str(uuid.uuid4()), {"payload": rec.document}, now=1)
    assert rec.license is not None
    report = await target_for(kong, token_file).deliver(rec.license)
    assert (report.state, report.wrote) == (D.DELIVERED, False)
    assert kong.writes() == []


async def test_paginates(kong: KongStandIn, token_file: Path) -> None:
    doc = make_document()
    rec = record(document=doc)
    for i in range(1001):
        kong.node.upsert(str(uuid.UUID(int=i + 1)), {"payload": f'{doc[:-2]}, "n": {i}}}}}'}, now=1)
    kong.node.upsert(str(uuid.UUID(int=5000)), {"payload": doc}, now=1)  # sorts last: on page 2
    assert rec.license is not None
    report = await target_for(kong, token_file).deliver(rec.license)
    assert report.wrote is False and kong.writes() == []
    assert sum(1 for m, p in kong.requests if m == "GET" and p == "/licenses") >= 2


async def test_env_license_hides_licenses_drift_after_grace(kong: KongStandIn, token_file: Path) -> None:
    clock = Clock()
    target = target_for(kong, token_file, clock)
    kong.node.env_license = make_document(expiration_date="2027-01-01")
    rec = record()
    assert rec.license is not None
    report = await target.deliver(rec.license)
    assert (report.state, report.wrote) == (D.PENDING, True)
    clock.now += 600
    report = await target.check(rec.license)
    assert report.state is D.DRIFT and "KONG_LICENSE_DATA > license.json > KONG_LICENSE_PATH > DB" in report.reason
    kong.node.env_license = None
    assert (await target.check(rec.license)).state is D.DELIVERED


async def test_dbless_is_unsupported(tls_material: TLSMaterial) -> None:
    async with KongStandIn(tls=tls_material, database="off") as kong:
        rec = record()
        assert rec.license is not None
        target = target_for(kong, None)
        report = await target.deliver(rec.license)
        assert report.state is D.UNSUPPORTED and "405" in report.reason
        assert (await target.check(rec.license)).state is D.UNSUPPORTED
        kong.node.env_license = rec.document  # the gateway got it some other way (its env)
        assert (await target.check(rec.license)).state is D.DELIVERED


async def test_hybrid_control_plane_reaches_data_planes(tls_material: TLSMaterial) -> None:
    async with (
        KongStandIn(tls=tls_material, role="control_plane") as cp,
        KongStandIn(tls=tls_material, role="data_plane", database="off") as dp,
    ):
        cp.attach(dp)
        rec = record()
        assert rec.license is not None
        assert (await target_for(cp, None).deliver(rec.license)).state is D.DELIVERED
        # the DP, asked as a target of its own (read-only), runs it too
        assert (await target_for(dp, None).check(rec.license)).state is D.DELIVERED


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("html", "not JSON (text/html)"),
        ("server_error", "HTTP 500"),
        ("bad_gateway", "HTTP 502"),
        ("unauthorized", "HTTP 401"),
        ("forbidden", "HTTP 403"),
        ("stall", "timed out after 2 s"),
        ("closed", "unreachable"),
        ("tls_untrusted", "TLS: server certificate not trusted"),
    ],
)
async def test_bad_answers_give_a_clear_error(
    kong: KongStandIn, token_file: Path, mode: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rec = record()
    assert rec.license is not None
    await kong.set_mode(mode)
    deliverer = Deliverer([target_for(kong, token_file)])
    (report,) = await deliverer.deliver(rec)
    assert report.state is D.ERROR and words in report.reason, report.reason
    no_secrets(report.reason + caplog.text, rec)


async def test_wrong_token_and_missing_client_cert(tls_material: TLSMaterial, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    rec = record()
    assert rec.license is not None
    async with KongStandIn(tls=tls_material, token=TOKEN, require_client_cert=True) as kong:
        good = tmp_path / "good"
        good.write_text(TOKEN)
        no_cert = await target_for(kong, good).deliver(rec.license)
        assert no_cert.state is D.ERROR, no_cert.reason
        with_cert = {"client_cert_file": tls_material.client_cert_file, "client_key_file": tls_material.client_key_file}
        bad_token = await target_for(kong, wrong, **with_cert).deliver(rec.license)
        assert bad_token.state is D.ERROR and "401" in bad_token.reason
        ok = await target_for(kong, good, **with_cert).deliver(rec.license)
        assert ok.state is D.DELIVERED
        missing = await target_for(kong, tmp_path / "absent", **with_cert).deliver(rec.license)
        assert missing.state is D.ERROR and "credentials" in missing.reason


async def test_deliverer_metrics_events_render_and_loop(kong: KongStandIn, token_file: Path) -> None:
    events: list[tuple[str, str, bool]] = []

    def on_report(prev: TargetReport | None, cur: TargetReport) -> None:
        ev = delivery_event(prev, cur)
        if ev:
            events.append(ev)

    target = target_for(kong, token_file)
    deliverer = Deliverer([target], on_report=on_report)
    registry = CollectorRegistry()
    registry.register(DeliveryCollector(deliverer))
    held: list[LicenseRecord | None] = [None]
    stop = asyncio.Event()
    loop = asyncio.create_task(deliverer.run_periodic(lambda: held[0], stop, period=600, retry_base=0.05))
    await asyncio.sleep(0.3)
    assert deliverer.reports()[0].state is D.PENDING  # nothing held yet
    held[0] = record()
    deliverer.kick()
    for _ in range(100):
        await asyncio.sleep(0.05)
        if deliverer.reports()[0].state is D.DELIVERED:
            break
    text = generate_latest(registry).decode()
    label = f'target="admin-api={kong.address}"'
    assert f'license_keeper_delivery_state{{state="delivered",{label}}} 1.0' in text
    assert f'license_keeper_delivery_state{{state="drift",{label}}} 0.0' in text
    assert f"license_keeper_delivery_last_success_timestamp_seconds{{{label}}}" in text
    await kong.set_mode("server_error")
    deliverer.kick()
    for _ in range(100):
        await asyncio.sleep(0.05)
        if deliverer.reports()[0].state is D.ERROR:
            break
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert [e[0] for e in events] == ["LicenseDelivered", "LicenseDeliveryDrift"]
    assert events[1][2] is True
    assert "HTTP 500" in render_reports(deliverer.reports())
    assert render_reports([]) == "delivery: no targets configured"
    rec = held[0]
    assert rec is not None
    no_secrets(generate_latest(registry).decode() + render_reports(deliverer.reports()) + repr(events), rec)


def test_deliverer_from_settings(token_file: Path) -> None:
    from license_keeper.config import load_settings
    from license_keeper.deliver import deliverer_from_settings

    settings = load_settings(
        deliver=("admin-api=https://kong:8444",), deliver_admin_token_file=token_file, secret_name="kong-license"
    )
    deliverer = deliverer_from_settings(settings, None, namespace="kong")
    (target,) = deliverer.targets
    assert isinstance(target, AdminApiTarget)
    assert target.row_id == OURS and target.options.token_file == token_file and target.options.timeout == 10.0
    assert target.options.grace == 120.0
    short = load_settings(
        deliver=("admin-api=https://kong:8444",),
        delivery_period="5s",
        environ={"LICENSE_KEEPER_ALLOW_SHORT_PERIODS": "1"},
    )
    (fast,) = deliverer_from_settings(short, None, namespace="kong").targets
    assert isinstance(fast, AdminApiTarget) and fast.options.grace == 5.0
    assert deliverer_from_settings(load_settings(), None, namespace="kong").targets == []
    with pytest.raises(ValueError, match="needs a Kubernetes client"):
        deliverer_from_settings(load_settings(deliver=("konglicense=kl",)), None, namespace="kong")
