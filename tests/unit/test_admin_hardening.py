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
