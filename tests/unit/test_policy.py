"""license_keeper.policy: which license is better. A table of named cases plus hypothesis properties."""

from __future__ import annotations

import dataclasses
import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from license_keeper.license import LicenseRecord
from license_keeper.policy import choose, deciding_rule, is_better, order_key, rank, restore_downgrade
from license_keeper.testing.licenses import make_document, make_record

UTC = datetime.UTC
NOW = datetime.datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
TODAY = NOW.date()


def day(offset: int) -> datetime.date:
    return TODAY + datetime.timedelta(days=offset)


def rec(
    updated_at: int,
    expires: int,
    *,
    id: str = "id",
    sig: str = "ab" * 40,
    source: str = "konnect",
    restored_at: int = 0,
    restored_by: str = "",
) -> LicenseRecord:
    record = make_record(
        updated_at=updated_at,
        id=id,
        source=source,
        signature=sig,
        license_key="K",
        creation_date=day(-400),
        expiration_date=day(expires),
    )
    if not restored_at:
        return record
    return dataclasses.replace(record, restored_at=restored_at, restored_by=restored_by)


INVALID = LicenseRecord(document="{not json", id="bad", updated_at=10**9)
INVALID_DATE = LicenseRecord(document=make_document(expiration_date="2030-02-31"), id="bad2", updated_at=10**9)


# --- named cases ---------------------------------------------------------------------------------------

CASES = [
    # (name, held, candidates, index of expected: "held" / int into candidates / None)
    ("nothing at all", None, [], "held"),
    ("only None candidates", None, [None, None], "held"),
    ("first license is taken", None, [rec(1, 30)], 0),
    ("invalid never taken when nothing held", None, [INVALID, INVALID_DATE], "held"),
    ("invalid never replaces valid", rec(1, 30), [INVALID], "held"),
    ("invalid held is kept when nothing valid arrives", INVALID, [INVALID_DATE, None], "held"),
    ("valid replaces invalid held", INVALID, [rec(1, -5)], 0),
    ("expired valid replaces invalid held", INVALID, [rec(1, -500)], 0),
    ("unexpired beats expired even with older updated_at", rec(100, -1), [rec(5, 10, id="n")], 0),
    ("expired never replaces unexpired even if newer", rec(5, 10), [rec(100, -1, id="n")], "held"),
    ("newer updated_at wins", rec(5, 300), [rec(6, 30, id="n")], 0),
    ("older updated_at loses even with later expiry", rec(6, 30), [rec(5, 300, id="n")], "held"),
    ("same updated_at, later expiration wins", rec(5, 30), [rec(5, 31, id="n")], 0),
    ("same updated_at, earlier expiration loses", rec(5, 31), [rec(5, 30, id="n")], "held"),
    ("identical record keeps held", rec(5, 30), [rec(5, 30, source="secret")], "held"),
    ("both expired: newer updated_at wins", rec(5, -10), [rec(6, -20, id="n")], 0),
    ("expires today is still unexpired", rec(100, -1), [rec(1, 0, id="n")], 0),
    ("best of several", rec(1, 30), [rec(2, 30, id="x"), rec(4, 20, id="y"), rec(3, 90, id="z")], 1),
]


@pytest.mark.parametrize(("held", "candidates", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_named_cases(held: LicenseRecord | None, candidates: list[LicenseRecord | None], expected: object) -> None:
    result = choose(held, candidates, NOW)
    if expected == "held":
        assert result is held
    else:
        assert isinstance(expected, int)
        assert result is candidates[expected]


def test_tie_between_candidates_is_order_independent() -> None:
    a = rec(5, 30, id="a", sig="aa" * 40)
    b = rec(5, 30, id="b", sig="bb" * 40)
    c = rec(5, 30, id="c", sig="cc" * 40)
    first = choose(None, [a, b, c], NOW)
    assert first in (a, b, c)
    for order in ([c, b, a], [b, a, c], [b, c, a]):
        assert choose(None, order, NOW) == first


def test_is_better_is_strict() -> None:
    a = rec(5, 30)
    assert not is_better(a, a, NOW)
    assert not is_better(None, None, NOW)
    assert not is_better(INVALID, None, NOW)
    assert is_better(a, None, NOW)
    assert is_better(a, INVALID, NOW)
    assert not is_better(a, rec(6, 30), NOW)


def test_rank_and_deciding_rule() -> None:
    assert rank(None, NOW) == rank(INVALID, NOW)
    assert rank(rec(1, -1), NOW) > rank(INVALID, NOW)
    assert rank(rec(1, 1), NOW) > rank(rec(99, -1), NOW)
    assert deciding_rule(rec(1, 1), INVALID, NOW) == "valid"
    assert deciding_rule(rec(1, 1), rec(99, -1), NOW) == "unexpired"
    assert deciding_rule(rec(2, 1), rec(1, 9), NOW) == "newer_updated_at"
    assert deciding_rule(rec(1, 2), rec(1, 1), NOW) == "later_expiration"
    assert deciding_rule(rec(1, 1, id="x"), rec(1, 1, id="y"), NOW) == "content"
    assert deciding_rule(rec(1, 1), rec(1, 1, source="secret"), NOW) is None


# --- properties ----------------------------------------------------------------------------------------

_valid_records = st.builds(
    rec,
    updated_at=st.integers(0, 4),
    expires=st.integers(-3, 3),
    id=st.sampled_from(["a", "b", "c"]),
    sig=st.sampled_from(["ab" * 40, "cd" * 40]),
    source=st.sampled_from(["konnect", "secret", "backup"]),
    # an operator's restore (issue 21): most records have none; the rest rank from the restore's time
    restored_at=st.sampled_from([0, 0, 0, 2, 3, 5]),
    restored_by=st.sampled_from(["", "ops", "system:serviceaccount:kong:keeper"]),
)
_invalid_records = st.builds(
    LicenseRecord,
    document=st.sampled_from(["", "{not json", "[]", '{"license": {}}', make_document(signature="zz")]),
    id=st.sampled_from(["a", "x"]),
    updated_at=st.integers(0, 10**10),
    source=st.sampled_from(["konnect", "secret"]),
)
records = st.one_of(_valid_records, _valid_records, _invalid_records, st.none())
candidate_lists = st.lists(records, max_size=6)
nows = st.sampled_from([NOW, NOW + datetime.timedelta(days=1, hours=-12), NOW - datetime.timedelta(days=2)])


def _valid(r: LicenseRecord | None) -> bool:
    return r is not None and r.valid


@settings(max_examples=1000, deadline=None)
@given(held=records, candidates=candidate_lists, now=nows)
def test_never_replaced_by_worse(held: LicenseRecord | None, candidates: list, now: datetime.datetime) -> None:
    result = choose(held, candidates, now)
    assert rank(result, now) >= rank(held, now)
    assert result is held or any(result is c for c in candidates)
    # and the choice is maximal: nothing offered is strictly better than it
    assert not any(is_better(c, result, now) for c in [held, *candidates])


@settings(max_examples=1000, deadline=None)
@given(held=records, candidates=candidate_lists, now=nows)
def test_never_replaced_by_equal(held: LicenseRecord | None, candidates: list, now: datetime.datetime) -> None:
    result = choose(held, candidates, now)
    if result is not held:
        assert order_key(result, now) > order_key(held, now)
        assert is_better(result, held, now)
        assert result != held  # an equal record never replaces the held one (no churn)


@settings(max_examples=1000, deadline=None)
@given(held=records, candidates=candidate_lists, now=nows, data=st.data())
def test_deterministic_and_order_independent(
    held: LicenseRecord | None, candidates: list, now: datetime.datetime, data: st.DataObject
) -> None:
    result = choose(held, candidates, now)
    again = choose(held, list(candidates), now)
    shuffled = data.draw(st.permutations(candidates))
    other = choose(held, shuffled, now)
    assert again is result
    assert other == result
    # full identity of the choice, including the non-compared source field
    assert (getattr(other, "source", None), getattr(other, "id", None)) == (
        getattr(result, "source", None),
        getattr(result, "id", None),
    )


@settings(max_examples=1000, deadline=None)
@given(held=records, candidates=candidate_lists, now=nows)
def test_invalid_never_wins_over_valid(held: LicenseRecord | None, candidates: list, now: datetime.datetime) -> None:
    result = choose(held, candidates, now)
    if any(_valid(r) for r in [held, *candidates]):
        assert _valid(result)
    if result is not held:
        assert _valid(result)


@settings(max_examples=1000, deadline=None)
@given(held=records, candidates=candidate_lists, now=nows)
def test_unexpired_beats_expired(held: LicenseRecord | None, candidates: list, now: datetime.datetime) -> None:
    result = choose(held, candidates, now)
    offered = [r for r in [held, *candidates] if _valid(r)]
    if any(not r.license.is_expired(now) for r in offered):
        assert result is not None and result.license is not None
        assert not result.license.is_expired(now)


# --- a total order (issue 9 item 11) --------------------------------------------------------------------


def test_equal_rank_different_content_is_decided_by_content_whoever_holds_which() -> None:
    a = rec(5, 30, id="a", sig="ab" * 40)
    b = rec(5, 30, id="b", sig="cd" * 40)
    assert rank(a, NOW) == rank(b, NOW) and a != b
    assert choose(a, [b], NOW) == choose(b, [a], NOW)
    assert is_better(a, b, NOW) != is_better(b, a, NOW)


def _write_round(secret: LicenseRecord | None, held: LicenseRecord) -> tuple[LicenseRecord, bool]:
    """One writer's turn, as SecretStore.sync decides it: take the better, write if it differs."""
    best = choose(held, [secret], NOW)
    assert best is not None
    return best, best != secret


def test_two_writers_with_equally_ranked_licenses_converge() -> None:
    """They used to write back and forth forever: ties went to the held license."""
    replica_a = rec(5, 30, id="a", sig="ab" * 40)
    replica_b = rec(5, 30, id="b", sig="cd" * 40)
    secret: LicenseRecord | None = None
    writes = 0
    for _ in range(10):
        replica_a, wrote = _write_round(secret, replica_a)
        if wrote:
            secret, writes = replica_a, writes + 1
        replica_b, wrote = _write_round(secret, replica_b)
        if wrote:
            secret, writes = replica_b, writes + 1
    assert replica_a == replica_b == secret
    assert writes <= 2


@settings(max_examples=500, deadline=None)
@given(a=records, b=records, now=nows)
def test_is_better_is_antisymmetric_and_total_on_valid_records(
    a: LicenseRecord | None, b: LicenseRecord | None, now: datetime.datetime
) -> None:
    assert not (is_better(a, b, now) and is_better(b, a, now))
    if _valid(a) and _valid(b) and not is_better(a, b, now) and not is_better(b, a, now):
        assert a == b  # only equal records tie


@settings(max_examples=500, deadline=None)
@given(a=records, b=records, c=records, now=nows)
def test_is_better_is_transitive(
    a: LicenseRecord | None, b: LicenseRecord | None, c: LicenseRecord | None, now: datetime.datetime
) -> None:
    if is_better(a, b, now) and is_better(b, c, now):
        assert is_better(a, c, now)
    if not is_better(b, a, now) and not is_better(c, b, now):
        assert not is_better(c, a, now)


@settings(max_examples=500, deadline=None)
@given(offered=st.lists(records, min_size=1, max_size=6), now=nows, data=st.data())
def test_choose_does_not_depend_on_who_holds_what(
    offered: list[LicenseRecord | None], now: datetime.datetime, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(offered))
    first = choose(offered[0], offered[1:], now)
    second = choose(shuffled[0], shuffled[1:], now)
    if any(_valid(r) for r in offered):
        assert first == second
        assert _valid(first)


# --- an operator's restore ranks from the moment of the restore (issue 21 item 1) -------------------------
#
# Konnect's updated_at of the license the keeper holds: 1000. The operator restores at 2000 (restored_at).

KONNECT = rec(1000, 30, id="konnect", sig="aa" * 40)
RESTORE_CASES = [
    # (name, held, candidates, expected: "held" or an index into candidates)
    ("a restored license that runs longer beats Konnect's older one", KONNECT, [rec(0, 330, restored_at=2000)], 0),
    ("the restore ranks from its own time, not the file's old updated_at", KONNECT, [rec(5, 330, restored_at=2000)], 0),
    ("Konnect's license older than the restore does not replace it", rec(0, 330, restored_at=2000), [KONNECT], "held"),
    ("Konnect's license updated after the restore replaces it", rec(0, 330, restored_at=2000), [rec(3000, 30)], 0),
    (
        "a forced worse restore is not undone by Konnect's older license",
        rec(0, 10, restored_at=2000),
        [KONNECT],
        "held",
    ),
    ("a forced worse restore gives way to Konnect's newer license", rec(0, 10, restored_at=2000), [rec(2001, 9)], 0),
    ("a restored license that expired gives way to an unexpired one", rec(0, -1, restored_at=2000), [KONNECT], 0),
    ("a later restore beats an earlier one", rec(0, 330, restored_at=2000), [rec(0, 30, restored_at=2500)], 0),
    (
        "the same document restored is better than it unrestored",
        KONNECT,
        [dataclasses.replace(KONNECT, restored_at=2000)],
        0,
    ),
]


@pytest.mark.parametrize(
    ("held", "candidates", "expected"), [c[1:] for c in RESTORE_CASES], ids=[c[0] for c in RESTORE_CASES]
)
def test_restore_cases(held: LicenseRecord | None, candidates: list[LicenseRecord | None], expected: object) -> None:
    result = choose(held, candidates, NOW)
    if expected == "held":
        assert result is held
    else:
        assert isinstance(expected, int)
        assert result is candidates[expected]


def test_the_restore_time_is_what_the_newer_updated_at_rule_compares() -> None:
    restored = rec(0, 330, restored_at=2000)
    assert deciding_rule(restored, KONNECT, NOW) == "newer_updated_at"
    assert deciding_rule(rec(3000, 30), restored, NOW) == "newer_updated_at"
    # same time on both sides: the rule after it decides
    assert deciding_rule(rec(0, 40, restored_at=1000), KONNECT, NOW) == "later_expiration"


RESTORE_DOWNGRADES = [
    # (name, in the Secret, the operator's file, the rule that makes the file worse, or None)
    ("into an empty Secret", None, rec(0, 30), None),
    ("over an invalid license", INVALID, rec(0, -3), None),
    ("a license that runs 11 months longer", rec(1000, 5), rec(0, 335), None),
    ("the same expiry, other content", rec(1000, 30, sig="cd" * 40), rec(0, 30), None),
    ("a shorter license than the Secret's", rec(1000, 335), rec(0, 5), "later_expiration"),
    ("an expired license over an unexpired one", rec(1000, 5), rec(0, -1), "unexpired"),
    ("an expired license over a more expired one", rec(1000, -9), rec(0, -1), None),
    ("an older Konnect updated_at does not make a file worse", rec(1000, 30), rec(1, 31), None),
    (
        "an older backup of a license expiring the same day",
        rec(1000, 30),
        rec(900, 30, sig="cd" * 40),
        "newer_updated_at",
    ),
    ("a newer backup of a license expiring the same day", rec(900, 30), rec(1000, 30, sig="cd" * 40), None),
    ("over a restored license expiring the same day", rec(0, 30, restored_at=2000), rec(900, 30, sig="cd" * 40), None),
]


@pytest.mark.parametrize(
    ("current", "candidate", "rule"), [c[1:] for c in RESTORE_DOWNGRADES], ids=[c[0] for c in RESTORE_DOWNGRADES]
)
def test_restore_downgrade(current: LicenseRecord | None, candidate: LicenseRecord, rule: str | None) -> None:
    assert restore_downgrade(current, candidate, NOW) == rule


_times = st.integers(0, 4000)


@settings(max_examples=500, deadline=None)
@given(
    restored_at=st.integers(1, 4000),
    konnect_at=_times,
    restored_days=st.integers(-3, 400),
    konnect_days=st.integers(-3, 400),
)
def test_a_restore_stays_until_konnect_serves_a_license_updated_after_it(
    restored_at: int, konnect_at: int, restored_days: int, konnect_days: int
) -> None:
    restored = rec(0, restored_days, id="r", sig="ab" * 40, restored_at=restored_at, restored_by="ops")
    served = rec(konnect_at, konnect_days, id="k", sig="cd" * 40)
    result = choose(restored, [served], NOW)
    restored_expired = restored_days < 0
    served_expired = konnect_days < 0
    if restored_expired != served_expired:
        # unexpired beats expired, whatever the times
        assert result is (served if restored_expired else restored)
    elif konnect_at > restored_at:
        assert result is served
    elif konnect_at < restored_at:
        assert result is restored  # however much shorter it runs: the operator chose it


@settings(max_examples=500, deadline=None)
@given(
    start=st.lists(records, min_size=2, max_size=4),
    secret=records,
    konnect=st.lists(records, min_size=1, max_size=4),
    rounds=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30),
    now=nows,
)
def test_replicas_never_write_the_secret_back_and_forth(
    start: list[LicenseRecord | None],
    secret: LicenseRecord | None,
    konnect: list[LicenseRecord | None],
    rounds: list[tuple[int, int]],
    now: datetime.datetime,
) -> None:
    """Any replica may lead in any round, holding what it held, and any Konnect answer may arrive: the
    Secret only ever moves up the order, so no two replicas (nor a keeper and a restore) ping-pong."""
    held = list(start)
    written: list[LicenseRecord] = []
    for leader_pick, answer_pick in rounds:
        leader = leader_pick % len(held)
        # every replica takes a better license from the Secret (the watch)
        held = [choose(h, [secret], now) for h in held]
        # the leader asks Konnect and keeps the better
        held[leader] = choose(held[leader], [konnect[answer_pick % len(konnect)]], now)
        best = choose(held[leader], [secret], now)
        if _valid(best) and best != secret:
            assert best is not None
            if secret is not None and _valid(secret):
                assert order_key(best, now) > order_key(secret, now)
            written.append(best)
            secret = best
    # each record is written at most once: nothing comes back after it was replaced
    assert len(written) == len(set(written))
