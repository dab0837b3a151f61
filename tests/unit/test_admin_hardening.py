"""The Kong Admin API client's hardening (issue 22 §3): each test here failed on main before its fix."""

from __future__ import annotations

from pathlib import Path

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
