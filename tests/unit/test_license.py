"""license_keeper.license: parsing, structural validation, expiry maths, secrecy of reprs and errors."""

from __future__ import annotations

import datetime
import hashlib
import json
import traceback
from typing import Any

import pytest

from license_keeper.license import (
    MAX_UPDATED_AT,
    License,
    LicenseError,
    LicenseRecord,
    UpdatedAtError,
    describe,
    parse_license,
    parse_updated_at,
)
from license_keeper.testing.licenses import make_document, make_record

UTC = datetime.UTC
KEY = "00141000017ODj3AAG_a1V41000004wT0OEAU"
SIG = "deadbeef" * 40


def sample(**overrides: Any) -> dict[str, Any]:
    doc = json.loads(
        make_document(license_key=KEY, signature=SIG, creation_date="2017-07-20", expiration_date="2017-07-20")
    )
    for path, value in overrides.items():
        target = doc
        *parents, leaf = path.split(".")
        for p in parents:
            target = target[p]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    return doc


_DELETE = object()


def test_parses_reference_document() -> None:
    text = (
        '{"license":{"payload":{"admin_seats":"1","customer":"Example Company, Inc","dataplanes":"1",'
        '"license_creation_date":"2017-07-20","license_expiration_date":"2017-07-20",'
        '"license_key":"00141000017ODj3AAG_a1V41000004wT0OEAU","product_subscription":"Konnect Enterprise",'
        '"support_plan":"None"},"signature":"' + SIG + '","version":"1"}}'
    )
    lic = parse_license(text)
    assert lic.customer == "Example Company, Inc"
    assert lic.product == "Konnect Enterprise"
    assert lic.license_key == KEY
    assert lic.creation_date == datetime.date(2017, 7, 20)
    assert lic.expiration_date == datetime.date(2017, 7, 20)
    assert (lic.admin_seats, lic.dataplanes, lic.support_plan) == ("1", "1", "None")
    assert lic.signature == SIG
    assert lic.version == "1"
    assert lic.document == text
    assert parse_license(text.encode()) == lic


@pytest.mark.parametrize("version", ["1", 1])
def test_version_string_or_number(version: object) -> None:
    assert parse_license(json.dumps(sample(**{"license.version": version}))).version == "1"


def test_expiration_before_creation_is_allowed() -> None:
    doc = sample(**{"license.payload.license_creation_date": "2020-01-02"})
    lic = parse_license(json.dumps(doc))
    assert lic.expiration_date < lic.creation_date


MALFORMED: list[tuple[str, Any, str]] = [
    # (case id, document text or dict, field named in the error)
    ("not json", "{not json", "document"),
    ("empty text", "", "document"),
    ("json array", "[1, 2]", "document"),
    ("json string", '"hello"', "document"),
    ("no license", {"licence": {}}, "license"),
    ("license not object", {"license": "x"}, "license"),
    ("no payload", sample(**{"license.payload": _DELETE}), "payload"),
    ("payload list", sample(**{"license.payload": []}), "payload"),
    ("no customer", sample(**{"license.payload.customer": _DELETE}), "customer"),
    ("empty customer", sample(**{"license.payload.customer": ""}), "customer"),
    ("customer number", sample(**{"license.payload.customer": 7}), "customer"),
    ("seats number", sample(**{"license.payload.admin_seats": 1}), "admin_seats"),
    ("no dataplanes", sample(**{"license.payload.dataplanes": _DELETE}), "dataplanes"),
    ("no key", sample(**{"license.payload.license_key": _DELETE}), "license_key"),
    ("blank key", sample(**{"license.payload.license_key": "  "}), "license_key"),
    ("no product", sample(**{"license.payload.product_subscription": _DELETE}), "product_subscription"),
    ("no support plan", sample(**{"license.payload.support_plan": None}), "support_plan"),
    (
        "bad expiry",
        sample(**{"license.payload.license_expiration_date": "2017-13-01"}),
        "license_expiration_date",
    ),
    (
        "expiry wrong format",
        sample(**{"license.payload.license_expiration_date": "20/07/2017"}),
        "license_expiration_date",
    ),
    (
        "expiry compact",
        sample(**{"license.payload.license_expiration_date": "20170720"}),
        "license_expiration_date",
    ),
    ("no creation", sample(**{"license.payload.license_creation_date": _DELETE}), "license_creation_date"),
    ("feb 30", sample(**{"license.payload.license_creation_date": "2017-02-30"}), "license_creation_date"),
    ("no signature", sample(**{"license.signature": _DELETE}), "signature"),
    ("empty signature", sample(**{"license.signature": ""}), "signature"),
    ("signature not hex", sample(**{"license.signature": "xyz" + SIG}), "signature"),
    ("signature number", sample(**{"license.signature": 12}), "signature"),
    ("no version", sample(**{"license.version": _DELETE}), "version"),
    ("version bool", sample(**{"license.version": True}), "version"),
    ("version float", sample(**{"license.version": 1.5}), "version"),
    ("version empty", sample(**{"license.version": ""}), "version"),
]


@pytest.mark.parametrize(("doc", "field"), [(d, f) for _, d, f in MALFORMED], ids=[c for c, _, _ in MALFORMED])
def test_malformed_documents_name_the_field(doc: Any, field: str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(LicenseError) as info:
        parse_license(text)
    assert info.value.field == field
    assert str(info.value) == f"license {field}: {info.value.problem}"
    # never a value from the document, not even through the exception chain
    rendered = "".join(traceback.format_exception(info.value))
    for secret in (KEY, SIG, "Example Company"):
        assert secret not in rendered
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_bad_json_error_has_no_document_text() -> None:
    text = '{"license": {"payload": {"license_key": "' + KEY + '"'  # truncated
    with pytest.raises(LicenseError) as info:
        parse_license(text)
    rendered = "".join(traceback.format_exception(info.value))
    assert KEY not in rendered
    assert "JSONDecodeError" not in rendered


def test_invalid_utf8_bytes() -> None:
    with pytest.raises(LicenseError) as info:
        parse_license(b"\xff\xfe{")
    assert info.value.field == "document"


def lic_expiring(day: datetime.date) -> License:
    return parse_license(make_document(creation_date=day - datetime.timedelta(days=30), expiration_date=day))


def test_expires_at_is_end_of_expiration_day() -> None:
    lic = lic_expiring(datetime.date(2030, 12, 31))
    assert lic.expires_at == datetime.datetime(2031, 1, 1, tzinfo=UTC)
    assert lic.expires_at.tzinfo is not None
    last_second = datetime.datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert not lic.is_expired(last_second)
    assert lic.seconds_left(last_second) == 1.0
    assert lic.is_expired(datetime.datetime(2031, 1, 1, tzinfo=UTC))
    assert lic.seconds_left(datetime.datetime(2031, 1, 1, 1, tzinfo=UTC)) == -3600.0


def test_days_left() -> None:
    lic = lic_expiring(datetime.date(2030, 1, 10))
    assert lic.days_left(datetime.datetime(2030, 1, 1, tzinfo=UTC)) == 10.0
    assert lic.days_left(datetime.datetime(2030, 1, 1, 12, tzinfo=UTC)) == 9.5
    # another zone, same instant
    tz = datetime.timezone(datetime.timedelta(hours=2))
    assert lic.days_left(datetime.datetime(2030, 1, 1, 2, tzinfo=tz)) == 10.0


def test_fingerprint_is_sha256_prefix_of_document() -> None:
    text = make_document()
    lic = parse_license(text)
    assert lic.fingerprint == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert len(lic.fingerprint) == 16
    assert parse_license(make_document()).fingerprint != lic.fingerprint


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        # Kong: tonumber("0x" .. sub(sig, #sig-33, #sig)) -> the last 34 hex characters.
        # "ab"*50 then 30 zeros then "1000": last 34 chars are 30 zeros + "1000" = 0x1000 = 4096.
        ("ab" * 50 + "0" * 30 + "1000", 4096.0),
        # 100 'f's, then "f" + 32 zeros + "1": last 34 = f000...0001 = 15 * 16**33 + 1;
        # as a double the +1 is lost: 15 * 2**132 = 8.1660508546396...e40.
        ("f" * 100 + "0" * 32 + "1", 15 * 2.0**132),
        # if it were 33 characters the value would be 1; if 35, the extra 'f' adds 15 * 16**34.
        # A signature shorter than 34 characters is read whole: 0xff = 255.
        ("ff", 255.0),
        # upper-case hex is still hex: 0xABC = 2748
        ("0" * 40 + "ABC", 2748.0),
    ],
)
def test_kong_signature(signature: str, expected: float) -> None:
    lic = parse_license(make_document(signature=signature))
    assert lic.kong_signature == expected


def test_exported_signature_is_what_prometheus_reads_from_kong() -> None:
    """Kong prints the signature with %.14g: the keeper's copy must be that number, not the full double,
    or `kong_enterprise_license_signature != license_keeper_kong_license_signature` always holds."""
    lic = parse_license(make_document(signature="f" * 100 + "0123456789abcdef0123456789abcdef01"))
    printed_by_kong = float(f"{float(int(lic.signature[-34:], 16)):.14g}")
    assert lic.kong_signature != printed_by_kong  # the full double differs in its last digits
    assert lic.kong_signature_exported == printed_by_kong
    assert float(f"{lic.kong_signature_exported:.14g}") == lic.kong_signature_exported


def test_kong_expiry_and_grace_period_end() -> None:
    """Kong's expiry instant is noon UTC of the expiration date; the grace period ends 30 days later."""
    lic = parse_license(make_document(expiration_date="2027-03-10"))
    assert lic.kong_expires_at == datetime.datetime(2027, 3, 10, 12, tzinfo=datetime.UTC)
    assert lic.grace_period_ends_at == datetime.datetime(2027, 4, 9, 12, tzinfo=datetime.UTC)
    assert lic.kong_expires_at < lic.expires_at  # the keeper counts to the end of the day


def test_repr_and_str_hide_secrets() -> None:
    text = make_document(license_key=KEY, signature=SIG, expiration_date=datetime.date(2031, 3, 4))
    lic = parse_license(text)
    for rendered in (repr(lic), str(lic), f"{lic}"):
        assert KEY not in rendered
        assert SIG not in rendered
        assert SIG[-34:] not in rendered
        assert "2031-03-04" in rendered
        assert lic.fingerprint in rendered
        assert "Example Company, Inc" in rendered


def test_license_is_frozen() -> None:
    lic = parse_license(make_document())
    with pytest.raises(AttributeError):
        lic.customer = "x"  # type: ignore[misc]


def test_record_equality_ignores_source() -> None:
    doc = make_document()
    a = LicenseRecord(document=doc, id="i", updated_at=5, source="konnect")
    b = LicenseRecord(document=doc, id="i", updated_at=5, source="secret")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != LicenseRecord(document=doc, id="i", updated_at=6)
    assert a != LicenseRecord(document=doc, id="j", updated_at=5)
    assert a != LicenseRecord(document=make_document(), id="i", updated_at=5)


def test_record_valid_and_problem() -> None:
    good = make_record(updated_at=1)
    assert good.valid
    assert good.problem is None
    assert isinstance(good.license, License)
    bad = LicenseRecord(document='{"license": {}}', id="x", updated_at=1)
    assert not bad.valid
    assert bad.license is None
    assert bad.problem == "license payload: is missing"
    # caching the parse must not disturb equality or hashing
    assert bad == LicenseRecord(document='{"license": {}}', id="x", updated_at=1)
    assert hash(good) == hash(LicenseRecord(document=good.document, id=good.id, updated_at=1))


def test_record_repr_hides_document() -> None:
    rec = make_record(updated_at=1, license_key=KEY, signature=SIG, id="the-id")
    rendered = repr(rec)
    assert KEY not in rendered
    assert SIG not in rendered
    assert "document" not in rendered
    assert "the-id" in rendered


def test_factory_defaults_valid_for_a_year() -> None:
    lic = parse_license(make_document())
    today = datetime.datetime.now(UTC).date()
    assert lic.creation_date == today
    assert lic.expiration_date == today + datetime.timedelta(days=365)
    assert len(lic.signature) >= 256
    assert lic.license_key.startswith("0014") and "_" in lic.license_key


# --- lone surrogates (issue 9, item 9) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field"),
    [
        # the surrogate as a raw str (what json.loads of a Konnect body gives for "\ud800")
        (make_document().replace("Example Company", "Example \ud800Company"), "document"),
        # the escape inside the document text: the text encodes fine, a field inside does not
        (make_document(customer="Example \\ud800 Company").replace("\\\\", "\\"), "customer"),
    ],
)
def test_a_lone_surrogate_makes_the_document_invalid(document: str, field: str) -> None:
    with pytest.raises(LicenseError) as info:
        parse_license(document)
    assert info.value.field == field
    record = LicenseRecord(document=document, id="i", updated_at=1)
    assert not record.valid


def test_a_lone_surrogate_in_the_id_makes_the_record_invalid() -> None:
    record = make_record(updated_at=1, id="id-\udfff")
    assert not record.valid
    assert record.problem is not None and "id" in record.problem


# --- updated_at (issue 9, item 12) --------------------------------------------------------------------

NOW_2030 = datetime.datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
T_2030 = int(NOW_2030.timestamp())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1_700_000_000, 1_700_000_000),
        (0, 0),
        (T_2030, T_2030),
        (T_2030 + 86400, T_2030 + 86400),  # a day of clock skew is tolerated
        ("1700000000", 1_700_000_000),
        (b" 42\n", 42),
    ],
)
def test_parse_updated_at_accepts(raw: object, expected: int) -> None:
    assert parse_updated_at(raw, NOW_2030) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (True, "not an integer"),
        (1.5, "not an integer"),
        (1e9, "not an integer"),
        (-5, "negative"),
        ("-5", "not decimal digits"),
        ("1.5", "not decimal digits"),
        ("0x10", "not decimal digits"),
        ("²", "not decimal digits"),
        (b"\xff", "not decimal digits"),
        ("", "not decimal digits"),
        (None, "not an integer"),
        ([1], "not an integer"),
        (T_2030 + 86400 + 1, "future"),
        (T_2030 * 1000, "3000"),  # milliseconds
        ("9" * 5000, "3000"),  # beyond Python's int-from-string limit, and never a time
    ],
)
def test_parse_updated_at_rejects(raw: object, problem: str) -> None:
    with pytest.raises(UpdatedAtError, match=problem):
        parse_updated_at(raw, NOW_2030)


def test_parse_updated_at_without_now_has_only_the_fixed_range() -> None:
    assert parse_updated_at(T_2030 + 10 * 86400, None) == T_2030 + 10 * 86400
    assert parse_updated_at(MAX_UPDATED_AT, None) == MAX_UPDATED_AT
    with pytest.raises(UpdatedAtError):
        parse_updated_at(MAX_UPDATED_AT + 1, None)


# --- describe -------------------------------------------------------------------------------------------


def test_describe_names_fingerprint_expiry_and_updated_at_only() -> None:
    record = make_record(updated_at=7, id="the-id", customer="Secretive Customer", license_key=KEY, signature=SIG)
    text = describe(record)
    assert record.license is not None
    assert text == f"license {record.license.fingerprint} (expires {record.license.expiration_date}, updated_at 7)"
    for secret in ("Secretive", KEY, SIG[:16]):
        assert secret not in text
    assert describe(None) == "no license"
    assert describe(LicenseRecord(document="{}", id="", updated_at=0)) == "an invalid license"
