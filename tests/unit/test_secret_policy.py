"""license_keeper.policy, the Secret part: what the Secret holds, what it should hold, whether to write."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from license_keeper.license import MAX_UPDATED_AT, LicenseRecord
from license_keeper.policy import (
    ADOPT_ANNOTATION,
    EXPIRATION_ANNOTATION,
    FINGERPRINT_ANNOTATION,
    LICENSE_KEYS,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RESTORED_AT_ANNOTATION,
    RESTORED_BY_ANNOTATION,
    DesiredSecret,
    SecretSnapshot,
    SecretState,
    WriteAction,
    WritePlan,
    as_restored,
    choose,
    content_matches,
    data_matches,
    desired_secret,
    manageable,
    merged_secret_fields,
    plan_write,
    record_from_secret,
    secret_state,
    velero_restore_name,
)
from license_keeper.testing.licenses import make_document, make_record

PROPS = settings(max_examples=1000, deadline=None)
OURS = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
KIC_LABELS = {"konghq.com/managed-by": "kong-ingress-controller"}

HELD = make_record(updated_at=1_700_000_000, id="held-id", source="konnect")
OTHER = make_record(updated_at=1_600_000_000, id="other-id", source="konnect")
GARBAGE = b'{"license": "garbage"}'


def snap(
    data: dict[str, bytes] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    *,
    immutable: bool = False,
) -> SecretSnapshot:
    return SecretSnapshot(
        exists=True, data=data or {}, labels=labels or {}, annotations=annotations or {}, immutable=immutable
    )


def kic_data(r: LicenseRecord) -> dict[str, bytes]:
    return {"payload": r.document.encode(), "id": r.id.encode(), "updated_at": str(r.updated_at).encode()}


def full_data(r: LicenseRecord) -> dict[str, bytes]:
    return {**kic_data(r), "license": r.document.encode()}


def written(r: LicenseRecord, **extra: Any) -> SecretSnapshot:
    """Exactly what the keeper would have written for ``r``."""
    d = desired_secret(r)
    base = SecretSnapshot(exists=True, data=dict(d.data), labels=dict(d.labels), annotations=dict(d.annotations))
    return dataclasses.replace(base, **extra)


NON_UTF8 = b"\xff\xfe\x00garbage\xc3"


# name: (snapshot, manageable, secret_state, record_from_secret, plan_write(snapshot, HELD))
CASES: dict[str, tuple[SecretSnapshot, bool, SecretState, LicenseRecord | str | None, WritePlan]] = {
    "missing": (
        SecretSnapshot.missing(),
        True,
        SecretState.MISSING,
        None,
        WritePlan(WriteAction.CREATE, "create"),
    ),
    "ours, current": (written(HELD), True, SecretState.PRESENT, HELD, WritePlan(WriteAction.NONE)),
    "ours, older license": (
        written(OTHER),
        True,
        SecretState.PRESENT,
        OTHER,
        WritePlan(WriteAction.UPDATE, "rotate"),
    ),
    "empty, pre-created by a chart": (snap(), True, SecretState.MISSING, None, WritePlan(WriteAction.UPDATE, "create")),
    "empty values, pre-created": (
        snap({"license": b"", "payload": b""}, {"helm.sh/chart": "kong"}),
        True,
        SecretState.MISSING,
        None,
        WritePlan(WriteAction.UPDATE, "create"),
    ),
    "foreign": (
        snap({"license": b"someone's"}, {"owner": "them"}),
        False,
        SecretState.FOREIGN,
        "invalid",
        WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN),
    ),
    "foreign holding a valid license": (
        snap(full_data(OTHER)),
        False,
        SecretState.FOREIGN,
        OTHER,
        WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN),
    ),
    "foreign, adopt annotation": (
        snap({"license": b"someone's"}, {"owner": "them"}, {ADOPT_ANNOTATION: "true"}),
        True,
        SecretState.INVALID,
        "invalid",
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "adopt annotation, case and spaces": (
        snap(full_data(OTHER), annotations={ADOPT_ANNOTATION: " True "}),
        True,
        SecretState.PRESENT,
        OTHER,
        WritePlan(WriteAction.UPDATE, "rotate"),
    ),
    "adopt annotation not 'true'": (
        snap(full_data(OTHER), annotations={ADOPT_ANNOTATION: "yes"}),
        False,
        SecretState.FOREIGN,
        OTHER,
        WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN),
    ),
    "KIC 3.5's Secret (its label, its keys)": (
        snap(kic_data(OTHER), KIC_LABELS),
        False,
        SecretState.FOREIGN,
        OTHER,
        WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN),
    ),
    "ours, immutable, other content": (
        written(OTHER, immutable=True),
        True,
        SecretState.IMMUTABLE,
        OTHER,
        WritePlan(WriteAction.REFUSE, refusal=SecretState.IMMUTABLE),
    ),
    # issue 9 item 13: holding the right license already, immutability is harmless (no critical alert)
    "ours, immutable, already the held license": (
        written(HELD, immutable=True),
        True,
        SecretState.PRESENT,
        HELD,
        WritePlan(WriteAction.NONE),
    ),
    # immutability freezes data only: our annotations can still be written
    "ours, immutable, held license, stale annotations": (
        written(HELD, immutable=True, annotations={EXPIRATION_ANNOTATION: "1999-01-01"}),
        True,
        SecretState.PRESENT,
        HELD,
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "empty and immutable": (
        snap(immutable=True),
        True,
        SecretState.IMMUTABLE,
        None,
        WritePlan(WriteAction.REFUSE, refusal=SecretState.IMMUTABLE),
    ),
    # issue 9 item 5: the `license` key is read too, so a good one survives a corrupt payload
    "ours, corrupt payload, good license key": (
        snap({**full_data(HELD), "payload": GARBAGE}, OURS),
        True,
        SecretState.PRESENT,
        HELD,
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, corrupt payload and license": (
        snap({**full_data(HELD), "payload": GARBAGE, "license": GARBAGE}, OURS),
        True,
        SecretState.INVALID,
        "invalid",
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, payload not JSON at all": (
        snap({"payload": b"{not json", "id": b"x", "updated_at": b"1"}, OURS),
        True,
        SecretState.INVALID,
        "invalid",
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, only payload (id and updated_at missing)": (
        snap({"payload": HELD.document.encode()}, OURS),
        True,
        SecretState.PRESENT,
        LicenseRecord(document=HELD.document, id="", updated_at=0),
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, KIC-only keys (payload, id, updated_at), same license": (
        snap(kic_data(HELD), OURS, desired_secret(HELD).annotations),
        True,
        SecretState.PRESENT,
        HELD,
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, KIC-only keys, older license": (
        snap(kic_data(OTHER), OURS),
        True,
        SecretState.PRESENT,
        OTHER,
        WritePlan(WriteAction.UPDATE, "rotate"),
    ),
    "ours, Kong-only key (license)": (
        snap({"license": HELD.document.encode()}, OURS),
        True,
        SecretState.PRESENT,
        LicenseRecord(document=HELD.document, id="", updated_at=0),
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, Kong-only key holding another license": (
        snap({"license": OTHER.document.encode()}, OURS),
        True,
        SecretState.PRESENT,
        LicenseRecord(document=OTHER.document, id="", updated_at=0),
        WritePlan(WriteAction.UPDATE, "rotate"),
    ),
    "ours, non-UTF-8 payload and license": (
        snap({"payload": NON_UTF8, "license": NON_UTF8, "id": b"x", "updated_at": b"5"}, OURS),
        True,
        SecretState.INVALID,
        "invalid",
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, non-UTF-8 payload, good license key": (
        snap({**full_data(HELD), "payload": NON_UTF8}, OURS),
        True,
        SecretState.PRESENT,
        HELD,
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
    "ours, label missing but annotations ours (label removed by hand)": (
        snap(full_data(HELD), annotations=desired_secret(HELD).annotations),
        False,
        SecretState.FOREIGN,
        HELD,
        WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN),
    ),
    "ours, stale annotations": (
        written(HELD, annotations={EXPIRATION_ANNOTATION: "1999-01-01", FINGERPRINT_ANNOTATION: "0" * 16}),
        True,
        SecretState.PRESENT,
        HELD,
        WritePlan(WriteAction.UPDATE, "repair"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_secret_table(case: str) -> None:
    s, writable, state, record, plan = CASES[case]
    assert manageable(s) is writable
    assert secret_state(s, HELD) is state
    got = record_from_secret(s)
    if record == "invalid":
        assert got is not None and not got.valid
    else:
        assert got == record
        if got is not None:
            assert got.source == "secret"
    assert plan_write(s, HELD) == plan


def test_missing_after_it_existed_is_a_recreate() -> None:
    assert plan_write(SecretSnapshot.missing(), HELD, existed_before=True) == WritePlan(WriteAction.CREATE, "recreate")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("held", [None, LicenseRecord(document="{}", id="x", updated_at=9)], ids=["none", "invalid"])
def test_nothing_to_write_without_a_valid_license(case: str, held: LicenseRecord | None) -> None:
    assert plan_write(CASES[case][0], held) == WritePlan(WriteAction.NONE)


@pytest.mark.parametrize(
    ("updated_at", "expected"),
    [
        (b"1700000000", 1_700_000_000),
        (b" 42\n", 42),
        (b"", 0),
        (b"-5", 0),
        (b"1.5", 0),
        (b"0x10", 0),
        (b"soon", 0),
        (b"\xff", 0),
        ("²".encode(), 0),  # str.isdigit() says yes, int() says no
        ("١٢".encode(), 0),  # Arabic-Indic digits: not what KIC writes
        (b"9" * 5000, 0),  # beyond Python's int-from-string limit
    ],
)
def test_updated_at_is_read_leniently_and_never_raises(updated_at: bytes, expected: int) -> None:
    s = snap({"payload": HELD.document.encode(), "id": b"i", "updated_at": updated_at}, OURS)
    record = record_from_secret(s)
    assert record is not None and record.updated_at == expected
    assert plan_write(s, HELD).action is WriteAction.UPDATE


def test_desired_secret_refuses_an_invalid_license() -> None:
    with pytest.raises(ValueError, match="invalid license") as info:
        desired_secret(LicenseRecord(document='{"license": {"payload": {"customer": "Leaky"}}}', id="", updated_at=1))
    assert "Leaky" not in str(info.value)


def test_desired_secret_layout() -> None:
    d = desired_secret(HELD)
    assert HELD.license is not None
    assert tuple(d.data) == LICENSE_KEYS
    assert d.data["payload"] == d.data["license"] == HELD.document.encode()
    assert d.data["id"] == b"held-id"
    assert d.data["updated_at"] == b"1700000000"
    assert d.labels == OURS
    assert d.annotations == {
        EXPIRATION_ANNOTATION: HELD.license.expiration_date.isoformat(),
        FINGERPRINT_ANNOTATION: hashlib.sha256(HELD.document.encode()).hexdigest()[:16],
    }


def test_content_matches() -> None:
    d = desired_secret(HELD)
    assert not content_matches(SecretSnapshot.missing(), d)
    assert content_matches(written(HELD), d)
    extra = written(HELD, labels={**OURS, "team": "edge"}, annotations={**d.annotations, "note": "x"})
    extra = dataclasses.replace(extra, data={**extra.data, "other": b"kept"})
    assert content_matches(extra, d)  # other people's keys, labels and annotations are not ours to compare
    for key in d.data:
        broken = dataclasses.replace(written(HELD), data={**d.data, key: b"changed"})
        assert not content_matches(broken, d), key


def test_merged_secret_fields_keeps_others_and_overrides_ours() -> None:
    s = snap(
        {"payload": b"old", "ca.crt": b"theirs"},
        {MANAGED_BY_LABEL: "helm", "team": "edge"},
        {"meta.helm.sh/release-name": "kong", FINGERPRINT_ANNOTATION: "stale"},
    )
    d = desired_secret(HELD)
    merged = merged_secret_fields(s, d)
    assert merged.data == {"ca.crt": b"theirs", **d.data}
    assert merged.labels == {"team": "edge", **OURS}
    assert merged.annotations == {"meta.helm.sh/release-name": "kong", **d.annotations}
    assert isinstance(merged, DesiredSecret)


# --- properties ------------------------------------------------------------------------------------

printable = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
    lambda t: t.strip() != ""
)


@st.composite
def valid_records(draw: st.DrawFn) -> LicenseRecord:
    created = draw(st.dates(datetime.date(2015, 1, 1), datetime.date(2040, 1, 1)))
    expires = created + datetime.timedelta(days=draw(st.integers(-30, 3000)))
    document = make_document(
        customer=draw(printable),
        product=draw(printable),
        creation_date=created,
        expiration_date=expires,
        license_key=draw(printable),
        signature=draw(st.text("0123456789abcdefABCDEF", min_size=1, max_size=80)),
        version=draw(st.one_of(st.just("1"), st.integers(0, 5))),
    )
    record = LicenseRecord(
        document=document,
        id=draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)),
        updated_at=draw(st.integers(0, MAX_UPDATED_AT)),  # the one accepted range
        source=draw(st.sampled_from(["konnect", "secret", "backup", "file"])),
    )
    if draw(st.booleans()):  # an operator's restore (issue 21): its marker must survive the round trip too
        record = as_restored(record, at=draw(st.integers(1, MAX_UPDATED_AT)), by=draw(st.text(max_size=20)))
    return record


others = st.dictionaries(
    st.text("abcdefghijklmnopqrstuvwxyz./-", min_size=1, max_size=12).filter(lambda k: k not in LICENSE_KEYS),
    st.text(max_size=10),
    max_size=3,
)


@PROPS
@given(
    record=valid_records(),
    extra_labels=others,
    extra_annotations=others,
    immutable=st.booleans(),
    existed_before=st.booleans(),
)
def test_no_write_when_the_secret_already_holds_it(
    record: LicenseRecord,
    extra_labels: dict[str, str],
    extra_annotations: dict[str, str],
    immutable: bool,
    existed_before: bool,
) -> None:
    assert record.valid
    d = desired_secret(record)
    s = SecretSnapshot(
        exists=True,
        data={**{k: v.encode() for k, v in extra_labels.items()}, **d.data},
        labels={**extra_labels, **d.labels},
        annotations={**extra_annotations, **d.annotations},
        immutable=immutable,
        resource_version="7",
    )
    assert plan_write(s, record, existed_before=existed_before) == WritePlan(WriteAction.NONE)
    # immutable or not: it holds the right license, so no alert (issue 9 item 13)
    assert secret_state(s) is secret_state(s, record) is SecretState.PRESENT
    # and it reads back as the very same record
    assert record_from_secret(s) == record


@PROPS
@given(record=valid_records(), other_source=st.sampled_from(["konnect", "secret", "backup", "restore", ""]))
def test_desired_secret_never_depends_on_source(record: LicenseRecord, other_source: str) -> None:
    assert desired_secret(record) == desired_secret(dataclasses.replace(record, source=other_source))


@PROPS
@given(record=valid_records(), id=st.text(max_size=20), updated_at=st.integers(0, 2**40))
def test_annotations_derive_from_the_document_only(record: LicenseRecord, id: str, updated_at: int) -> None:
    """... and the restore's mark, which is not Konnect's metadata (issue 21)."""
    same_document = dataclasses.replace(record, id=id, updated_at=updated_at, source="backup")
    a = desired_secret(record).annotations
    assert a == desired_secret(same_document).annotations
    assert record.license is not None
    assert a[EXPIRATION_ANNOTATION] == record.license.expiration_date.isoformat()
    assert a[FINGERPRINT_ANNOTATION] == record.license.fingerprint


snapshot_data = st.dictionaries(
    st.sampled_from([*LICENSE_KEYS, "other"]),
    st.one_of(st.binary(max_size=40), st.sampled_from([HELD.document.encode(), b"1700000000", "²".encode()])),
    max_size=5,
)


@PROPS
@given(
    data=snapshot_data,
    labels=st.sampled_from([{}, OURS, KIC_LABELS]),
    annotations=st.sampled_from([{}, {ADOPT_ANNOTATION: "true"}]),
    immutable=st.booleans(),
    held=st.sampled_from([None, HELD, OTHER]),
)
def test_any_secret_content_is_classified_without_raising(
    data: dict[str, bytes],
    labels: dict[str, str],
    annotations: dict[str, str],
    immutable: bool,
    held: LicenseRecord | None,
) -> None:
    s = snap(data, labels, annotations, immutable=immutable)
    state = secret_state(s)
    plan = plan_write(s, held)
    if state is SecretState.FOREIGN:
        assert plan.action in (WriteAction.NONE, WriteAction.REFUSE)
    if plan.action is WriteAction.UPDATE:
        assert manageable(s)
        assert held is not None
        if s.immutable:  # an immutable Secret's data is never changed, only our labels/annotations
            assert data_matches(s, desired_secret(held))
        # carrying the plan out leaves nothing more to do
        assert held is not None
        d = merged_secret_fields(s, desired_secret(held))
        after = SecretSnapshot(exists=True, data=d.data, labels=d.labels, annotations=d.annotations)
        assert plan_write(after, held) == WritePlan(WriteAction.NONE)


def test_an_adopted_helm_secret_keeps_helms_label_and_needs_no_write_for_it() -> None:
    from license_keeper.policy import (
        ADOPT_ANNOTATION,
        MANAGED_BY_LABEL,
        SecretSnapshot,
        WriteAction,
        desired_secret,
        merged_secret_fields,
        plan_write,
    )
    from license_keeper.testing.licenses import make_record

    record = make_record(updated_at=1_700_000_000)
    desired = desired_secret(record)
    helm_owned = SecretSnapshot(
        exists=True,
        data=dict(desired.data),
        labels={MANAGED_BY_LABEL: "Helm"},
        annotations={**desired.annotations, ADOPT_ANNOTATION: "true"},
    )
    assert plan_write(helm_owned, record).action == WriteAction.NONE
    assert merged_secret_fields(helm_owned, desired).labels[MANAGED_BY_LABEL] == "Helm"
    not_adopted = SecretSnapshot(
        exists=True,
        data=dict(desired.data),
        labels={MANAGED_BY_LABEL: "license-keeper"},
        annotations=dict(desired.annotations),
    )
    assert plan_write(not_adopted, record).action == WriteAction.NONE
    assert merged_secret_fields(not_adopted, desired).labels[MANAGED_BY_LABEL] == "license-keeper"


# --- issue 9 item 5: both keys are read, the better document wins, `license` is never downgraded ----

TODAY = datetime.date.today()
NOW = datetime.datetime.now(datetime.UTC)


def expiring(days: int, **kw: Any) -> LicenseRecord:
    return make_record(
        updated_at=1_700_000_000,
        id="the-id",
        creation_date=TODAY - datetime.timedelta(days=400),
        expiration_date=TODAY + datetime.timedelta(days=days),
        **kw,
    )


def keys(payload: LicenseRecord, license: LicenseRecord) -> SecretSnapshot:
    return snap({**full_data(payload), "license": license.document.encode()}, OURS)


def sync_once(s: SecretSnapshot, held: LicenseRecord | None) -> tuple[LicenseRecord | None, WritePlan]:
    """What SecretStore.sync decides: the best of held and the Secret, then the plan for it."""
    best = choose(held, [record_from_secret(s, now=NOW)], NOW)
    return best, plan_write(s, best)


def test_a_better_document_in_the_license_key_is_kept() -> None:
    short, long = expiring(30), expiring(300)
    s = keys(payload=short, license=long)
    assert record_from_secret(s, now=NOW) == LicenseRecord(
        document=long.document, id="the-id", updated_at=1_700_000_000
    )
    # the keeper holds the payload's license (from Konnect, same id and updated_at)
    best, plan = sync_once(s, short)
    assert best is not None and best.document == long.document
    assert plan == WritePlan(WriteAction.UPDATE, "repair")
    assert desired_secret(best).data["license"] == long.document.encode()  # never downgraded


def test_an_expired_license_key_is_replaced_by_a_valid_payload() -> None:
    expired, good = expiring(-3), expiring(100)
    s = keys(payload=good, license=expired)
    assert record_from_secret(s, now=NOW) == good
    best, plan = sync_once(s, good)
    assert best == good and plan == WritePlan(WriteAction.UPDATE, "repair")
    assert desired_secret(good).data["license"] == good.document.encode()


def test_the_choice_between_keys_does_not_depend_on_which_key_holds_which() -> None:
    a, b = expiring(50), expiring(50)  # equal rank, different content
    first = record_from_secret(keys(payload=a, license=b), now=NOW)
    second = record_from_secret(keys(payload=b, license=a), now=NOW)
    assert first is not None and first == second


def test_without_a_held_license_the_better_key_is_loaded_at_start() -> None:
    s = snap(
        {"payload": GARBAGE, "license": HELD.document.encode(), "id": b"held-id", "updated_at": b"1700000000"}, OURS
    )
    assert record_from_secret(s) == HELD
    assert choose(None, [record_from_secret(s)], NOW) == HELD


# --- issue 9 item 12: the Secret's updated_at is read with the one parser and range -----------------


@pytest.mark.parametrize(
    ("updated_at", "expected"),
    [
        (str(int(NOW.timestamp())).encode(), int(NOW.timestamp())),
        (str(int(NOW.timestamp()) + 3 * 86400).encode(), 0),  # from the future: would beat Konnect forever
        (str(int(NOW.timestamp()) * 1000).encode(), 0),  # milliseconds
    ],
)
def test_the_secrets_updated_at_is_bounded_by_now(updated_at: bytes, expected: int) -> None:
    s = snap({"payload": HELD.document.encode(), "id": b"i", "updated_at": updated_at}, OURS)
    record = record_from_secret(s, now=NOW)
    assert record is not None and record.updated_at == expected


# --- issue 9 item 13: an immutable Secret holding the right license is present -------------------------


def test_an_immutable_secret_with_the_right_license_is_present_and_needs_no_write() -> None:
    s = written(HELD, immutable=True)
    assert secret_state(s) is SecretState.PRESENT
    assert secret_state(s, HELD) is SecretState.PRESENT
    assert plan_write(s, HELD) == WritePlan(WriteAction.NONE)
    # holding another license, the keeper cannot store it: that is the immutable state (and the alert)
    assert secret_state(s, OTHER) is SecretState.IMMUTABLE
    assert plan_write(s, OTHER) == WritePlan(WriteAction.REFUSE, refusal=SecretState.IMMUTABLE)
    # an immutable Secret with only part of our keys cannot be completed
    partial = snap(kic_data(HELD), OURS, immutable=True)
    assert secret_state(partial) is SecretState.IMMUTABLE


# --- issue 21 item 1: an operator's restore is marked in the Secret, and the mark is read back ------------

RESTORE_TIME = int(NOW.timestamp()) - 3600
RESTORED = as_restored(OTHER, at=RESTORE_TIME, by="system:serviceaccount:kong:ops")


def test_a_restore_is_written_with_its_marker_and_read_back() -> None:
    assert RESTORED.restored_at == RESTORE_TIME and RESTORED.restored_by == "system:serviceaccount:kong:ops"
    assert RESTORED.document == OTHER.document and RESTORED.id == OTHER.id and RESTORED.updated_at == OTHER.updated_at
    d = desired_secret(RESTORED)
    stamp = datetime.datetime.fromtimestamp(RESTORE_TIME, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert d.annotations[RESTORED_AT_ANNOTATION] == stamp
    assert d.annotations[RESTORED_BY_ANNOTATION] == "system:serviceaccount:kong:ops"
    assert d.data == desired_secret(OTHER).data  # the keys Kong and KIC's format hold are unchanged
    back = record_from_secret(written(RESTORED), now=NOW)
    assert back == RESTORED
    assert back is not None and (back.restored_at, back.restored_by) == (RESTORE_TIME, RESTORED.restored_by)
    assert plan_write(written(RESTORED), RESTORED) == WritePlan(WriteAction.NONE)


def test_the_marker_counts_only_for_the_document_it_was_written_with() -> None:
    s = written(RESTORED)
    # someone put another license into the keys by hand and left the annotations
    edited = dataclasses.replace(s, data=full_data(HELD))
    back = record_from_secret(edited, now=NOW)
    assert back is not None and back.document == HELD.document
    assert back.restored_at == 0 and back.restored_by == ""


@pytest.mark.parametrize(
    "stamp",
    [
        "yesterday",
        "2030-13-01T00:00:00Z",
        str(RESTORE_TIME),
        (NOW + datetime.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),  # from the future: would pin it forever
        "",
    ],
)
def test_a_malformed_or_future_restore_time_is_no_marker(stamp: str) -> None:
    s = written(RESTORED)
    s = dataclasses.replace(s, annotations={**s.annotations, RESTORED_AT_ANNOTATION: stamp})
    back = record_from_secret(s, now=NOW)
    assert back is not None and back.document == OTHER.document
    assert back.restored_at == 0


def test_a_newer_license_replaces_the_restore_and_its_marker() -> None:
    s = written(RESTORED)
    newer = make_record(updated_at=RESTORE_TIME + 60, id="newer")
    assert choose(record_from_secret(s, now=NOW), [newer], NOW) is newer
    plan = plan_write(s, newer)
    assert plan == WritePlan(WriteAction.UPDATE, "rotate")
    d = merged_secret_fields(s, desired_secret(newer))
    assert RESTORED_AT_ANNOTATION not in d.annotations and RESTORED_BY_ANNOTATION not in d.annotations
    after = SecretSnapshot(exists=True, data=d.data, labels=d.labels, annotations=d.annotations)
    assert plan_write(after, newer) == WritePlan(WriteAction.NONE)
    assert record_from_secret(after, now=NOW) == newer


def test_a_stale_marker_beside_the_held_license_is_removed() -> None:
    """The held license, unrestored, in a Secret that still carries a marker for it: the marker goes."""
    s = written(RESTORED)
    held = OTHER
    assert not content_matches(s, desired_secret(held))
    assert plan_write(s, held).action is WriteAction.UPDATE


# --- issue 21 item 2: KIC's and Kong Operator's license Secret is never the keeper's -----------------------


def test_kics_secret_is_foreign_even_with_the_adopt_annotation() -> None:
    """KIC (and Kong Operator) rewrite it after every Konnect fetch: adopting it would make two writers."""
    kic = snap(kic_data(OTHER), KIC_LABELS, {ADOPT_ANNOTATION: "true"})
    assert not manageable(kic)
    assert secret_state(kic) is SecretState.FOREIGN
    assert plan_write(kic, HELD) == WritePlan(WriteAction.REFUSE, refusal=SecretState.FOREIGN)
    operator = snap(kic_data(OTHER), {**KIC_LABELS, "konghq.com/secret": "true"}, {ADOPT_ANNOTATION: "true"})
    assert not manageable(operator)


# --- a Secret that Velero restored ---------------------------------------------------------------------

VELERO_LABELS = {"velero.io/backup-name": "nightly", "velero.io/restore-name": "nightly-20261206"}


@pytest.mark.parametrize("base", [OURS, {"app.kubernetes.io/managed-by": "Helm"}])
def test_a_velero_restored_secret_is_still_ours_and_holds_what_it_should(base: dict[str, str]) -> None:
    """Velero adds its two labels and drops ownerReferences (the snapshot has none to read): the Secret is
    still the keeper's, and holding the same license it needs no write."""
    desired = desired_secret(HELD)
    annotations = {**desired.annotations} if base == OURS else {**desired.annotations, ADOPT_ANNOTATION: "true"}
    restored = snap(desired.data, {**base, **VELERO_LABELS}, annotations)
    assert manageable(restored)
    assert secret_state(restored, held=HELD) == SecretState.PRESENT
    assert plan_write(restored, HELD, existed_before=True) == WritePlan(WriteAction.NONE)
    assert velero_restore_name(restored) == "nightly-20261206"


def test_restored_by_only_names_a_velero_restore() -> None:
    assert velero_restore_name(snap(kic_data(HELD), OURS)) is None
    assert velero_restore_name(SecretSnapshot.missing()) is None
    assert velero_restore_name(snap(labels={"velero.io/restore-name": ""})) is None
