"""kong_model's Kong 3.15 rules without a valid license (REFERENCE §9, Kong EE's license_helpers.lua): the
expiry instant, the daily log lines, the read-only Admin API and its exceptions, the in-memory licenses."""

from __future__ import annotations

import calendar
import uuid

import pytest

from license_keeper.license import parse_license
from license_keeper.testing.kong_model import (
    DAY,
    KongNode,
    added_license_warning,
    expiration_time,
    license_notice,
    unlicensed_writable,
)
from license_keeper.testing.licenses import make_document

DOC = make_document(expiration_date="2027-01-31")
LIC = parse_license(DOC)
EXPIRES = calendar.timegm((2027, 1, 31, 12, 0, 0))  # Lua's os.time{year, month, day}: hour 12
CONTACT = "Please contact <support@konghq.com> to renew your license."


def test_expiry_instant_is_noon_of_the_date() -> None:
    assert expiration_time(LIC) == EXPIRES


WILL_EXPIRE = f"The Kong Enterprise license will expire on 2027-01-31. {CONTACT}"
EXPIRED = f"The Kong Enterprise license expired on 2027-01-31. {CONTACT}"


def grace(days: int) -> str:
    return f"Your license is expired. You have {days} days left in the renewal grace period. {CONTACT}"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (EXPIRES - 90 * DAY, None),
        (EXPIRES - 90 * DAY + 1, ("warn", WILL_EXPIRE)),
        (EXPIRES - 30 * DAY, ("warn", WILL_EXPIRE)),
        (EXPIRES - 30 * DAY + 1, ("error", WILL_EXPIRE)),
        (EXPIRES, ("error", WILL_EXPIRE)),
        (EXPIRES + 1, ("crit", grace(29))),
        (EXPIRES + 5 * DAY, ("crit", grace(25))),
        (EXPIRES + 30 * DAY - 1, ("crit", grace(0))),
        (EXPIRES + 30 * DAY, ("crit", EXPIRED)),
        (EXPIRES + 400 * DAY, ("crit", EXPIRED)),
    ],
)
def test_daily_notice(now: int, expected: tuple[str, str] | None) -> None:
    assert license_notice(LIC, now) == expected


def test_added_license_warning() -> None:
    assert added_license_warning(LIC, EXPIRES - 1) is None
    assert added_license_warning(LIC, EXPIRES + DAY) == "The license being added is expired"
    assert added_license_warning(LIC, EXPIRES + 30 * DAY) == (
        "The license being added is expired; some functionality may not be available"
    )


@pytest.mark.parametrize(
    ("env", "now", "state"),
    [
        (None, EXPIRES, "missing"),
        ("not a license", EXPIRES, "invalid"),
        ('{"license": {}}', EXPIRES, "invalid"),
        (DOC, EXPIRES - 1, "valid"),
        (DOC, EXPIRES, "grace"),
        (DOC, EXPIRES + 30 * DAY - 1, "grace"),
        (DOC, EXPIRES + 30 * DAY, "expired"),
    ],
)
def test_license_state(env: str | None, now: int, state: str) -> None:
    assert KongNode(env_license=env).license_state(now) == state


def test_a_rejected_signature_is_invalid() -> None:
    node = KongNode(env_license=DOC, rejected_signatures=frozenset({LIC.signature}))
    assert node.license_state(EXPIRES - DAY) == "invalid"


@pytest.mark.parametrize(
    "path",
    ["/licenses", f"/licenses/{uuid.uuid4()}", "/keyring/recover", "/keyring/import", "/keyring/import/raw"],
)
def test_writable_without_a_license(path: str) -> None:
    assert unlicensed_writable(path)
    assert KongNode().refuse_unlicensed("POST", path, EXPIRES) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["/services", "/routes/r1", "/config", "/keyring", "/keyring/generate", "/"])
def test_other_writes_are_refused_until_licensed(method: str, path: str) -> None:
    refused = KongNode().refuse_unlicensed(method, path, EXPIRES)
    assert refused is not None
    assert (refused.status, refused.body) == (403, {"message": "Enterprise license missing or expired"})
    assert KongNode().refuse_unlicensed("GET", path, EXPIRES) is None
    licensed = KongNode(env_license=DOC)
    assert licensed.refuse_unlicensed(method, path, EXPIRES - 1) is None  # valid
    assert licensed.refuse_unlicensed(method, path, EXPIRES + DAY) is None  # grace period
    assert licensed.refuse_unlicensed(method, path, EXPIRES + 30 * DAY) is not None  # past it


def test_in_memory_licenses_run_in_place_of_the_env_license() -> None:
    node = KongNode(database="off", env_license="garbage", in_memory_licenses=True)
    assert node.writable
    assert node.active() == ("env", "garbage")
    answer = node.licenses_call("POST", None, {"payload": DOC}, 100)
    assert answer.status == 201
    assert node.active() == ("config", DOC)
    assert node.license_state(EXPIRES - 1) == "valid"
    assert node.licenses_call("DELETE", answer.body["id"] if answer.body else "", None, 101).status == 204
    assert node.active() == ("env", "garbage")
    # a plain DB-less node still answers 405 and keeps the env license first
    assert KongNode(database="off").licenses_call("POST", None, {"payload": DOC}, 100).status == 405


def test_report_names_the_deployment_and_the_host() -> None:
    report = KongNode(database="off", env_license=DOC).report(1, "gateway-7d9f")
    assert report["deployment_info"] == {"type": "dbless"}
    assert report["system_info"] == {"hostname": "gateway-7d9f"}
    assert report["license"] == {"license_key": LIC.license_key, "license_expiration_date": "2027-01-31"}
    assert KongNode().report(1)["deployment_info"] == {"type": "traditional"}
    assert KongNode(role="data_plane", database="off").report(1)["deployment_info"] == {"type": "hybrid"}
