"""license_keeper.schedule: when to ask Konnect next. Tables for the period rules, hypothesis for the maths."""

from __future__ import annotations

import datetime
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from license_keeper.license import LicenseRecord
from license_keeper.schedule import (
    BACKOFF_BASE_SECONDS,
    MAX_SLEEP_SLICE_SECONDS,
    MIN_DELAY_SECONDS,
    WALL_JUMP_TOLERANCE_SECONDS,
    ScheduleConfig,
    backoff_ceiling,
    needs_fast_polling,
    next_delay,
    poll_wait,
    wall_jumped,
)
from license_keeper.testing.licenses import make_record

UTC = datetime.UTC
NOW = datetime.datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
DAY = 86400.0
CFG = ScheduleConfig(initial_period=60.0, regular_period=12 * 3600.0, renew_before=7 * DAY)
PROPS = settings(max_examples=1000, deadline=None)


def expiring_in(days: int) -> LicenseRecord:
    """A valid record whose expiration date is NOW's date + days (it expires at the end of that day)."""
    return make_record(
        updated_at=1,
        id="id",
        signature="ab" * 40,
        license_key="K",
        creation_date=NOW.date() - datetime.timedelta(days=400),
        expiration_date=NOW.date() + datetime.timedelta(days=days),
    )


INVALID = LicenseRecord(document='{"license": {}}', id="x", updated_at=5)
# Expires at the end of NOW's date + days, i.e. (days + 0.5) days after NOW (NOW is noon).
CASES = {
    "no license": (None, True),
    "invalid document": (INVALID, True),
    "expired long ago": (expiring_in(-30), True),
    "expired yesterday": (expiring_in(-1), True),
    "expires today": (expiring_in(0), True),
    "within renew_before": (expiring_in(3), True),
    "at renew_before boundary": (expiring_in(6), True),  # 6.5 days left <= 7
    "just past renew_before": (expiring_in(7), False),  # 7.5 days left
    "healthy": (expiring_in(200), False),
}


@pytest.mark.parametrize(("held", "fast"), list(CASES.values()), ids=list(CASES))
def test_needs_fast_polling(held: LicenseRecord | None, fast: bool) -> None:
    assert needs_fast_polling(held, NOW, CFG.renew_before) is fast


def test_exact_renew_before_boundary_is_fast() -> None:
    held = expiring_in(10)
    assert held.license is not None
    left = held.license.seconds_left(NOW)
    assert needs_fast_polling(held, NOW, renew_before=left) is True
    assert needs_fast_polling(held, NOW, renew_before=left - 1) is False


def test_backoff_ceiling_starts_at_ten_seconds_and_doubles() -> None:
    assert BACKOFF_BASE_SECONDS == 10.0
    assert [backoff_ceiling(n, 3600.0) for n in range(1, 7)] == [10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    assert backoff_ceiling(0, 3600.0) == 3600.0  # no failure: no backoff, the period applies
    assert backoff_ceiling(1000, 3600.0) == 3600.0
    assert backoff_ceiling(1, 5.0) == 5.0  # capped even at the first failure


periods = st.floats(min_value=1.0, max_value=30 * DAY, allow_nan=False, allow_infinity=False)
failures = st.integers(min_value=1, max_value=10_000)


@PROPS
@given(n=failures, period=periods)
def test_backoff_ceiling_monotone_and_capped(n: int, period: float) -> None:
    c = backoff_ceiling(n, period)
    assert c <= period
    assert c >= min(period, BACKOFF_BASE_SECONDS)  # never below the first step
    if n == 1:
        assert c == min(period, BACKOFF_BASE_SECONDS)
    assert backoff_ceiling(n + 1, period) >= c


# Records spread around the renew_before window and expiry, plus "none" and "invalid".
held_records = st.sampled_from([None, INVALID, *(expiring_in(d) for d in (-5, 0, 3, 6, 7, 8, 30, 365))])
configs = st.builds(
    ScheduleConfig,
    initial_period=st.sampled_from([1.0, 5.0, 60.0, 3600.0]),
    regular_period=st.sampled_from([1.0, 60.0, 3600.0, 12 * 3600.0, 7 * DAY]),
    renew_before=st.sampled_from([0.0, DAY, 7 * DAY, 30 * DAY]),
)


@PROPS
@given(held=held_records, n=failures, cfg=configs, seed=st.integers(0, 2**32))
def test_next_delay_after_errors_is_within_one_second_and_the_ceiling(
    held: LicenseRecord | None, n: int, cfg: ScheduleConfig, seed: int
) -> None:
    period = cfg.initial_period if needs_fast_polling(held, NOW, cfg.renew_before) else cfg.regular_period
    ceiling = backoff_ceiling(n, period, cfg.backoff_base)
    d = next_delay(held, n, NOW, cfg, random.Random(seed))
    assert MIN_DELAY_SECONDS <= d <= ceiling


@PROPS
@given(held=held_records, cfg=configs, seed=st.integers(0, 2**32))
def test_next_delay_without_errors_is_the_initial_period_or_the_jittered_regular_one(
    held: LicenseRecord | None, cfg: ScheduleConfig, seed: int
) -> None:
    d = next_delay(held, 0, NOW, cfg, random.Random(seed))
    if needs_fast_polling(held, NOW, cfg.renew_before):
        assert d == cfg.initial_period  # like KIC: no jitter while there is no usable license
    else:
        assert 0.9 * cfg.regular_period <= d <= cfg.regular_period


@PROPS
@given(held=held_records, n=st.integers(0, 50), cfg=configs, seed=st.integers(0, 2**32))
def test_next_delay_is_deterministic_for_a_seeded_random(
    held: LicenseRecord | None, n: int, cfg: ScheduleConfig, seed: int
) -> None:
    a, b = random.Random(seed), random.Random(seed)
    first = [next_delay(held, k, NOW, cfg, a) for k in range(n, n + 5)]
    second = [next_delay(held, k, NOW, cfg, b) for k in range(n, n + 5)]
    assert first == second


def test_backoff_jitter_actually_spreads() -> None:
    rng = random.Random(7)
    delays = {next_delay(None, 6, NOW, CFG, rng) for _ in range(50)}
    assert len(delays) > 40  # full jitter: not one synchronized retry time


# --- sleeping on the monotonic clock (issue 9 item 10) ---------------------------------------------------

mono = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)
step = st.floats(min_value=-1e7, max_value=1e7, allow_nan=False, allow_infinity=False)


def test_a_wall_clock_step_back_of_a_day_does_not_delay_the_poll() -> None:
    """It used to: the due time was on the wall clock, so a step back of a day added a day."""
    start_mono, delay = 5_000.0, 60.0
    due = start_mono + delay
    # a minute of monotonic time later, while the wall clock was stepped back by a day
    assert poll_wait(due, start_mono + delay, mono_elapsed=delay, wall_elapsed=delay - DAY) == 0.0
    # halfway there, the step back changes nothing either
    assert poll_wait(due, start_mono + 30, mono_elapsed=30, wall_elapsed=30 - DAY) == 30.0


def test_a_forward_wall_clock_jump_makes_the_poll_due_at_once() -> None:
    due = 1_000.0 + 12 * 3600
    assert poll_wait(due, 1_060.0, mono_elapsed=60, wall_elapsed=60) == MAX_SLEEP_SLICE_SECONDS
    # the node was suspended for an hour: the monotonic clock stood still, the wall clock did not
    assert poll_wait(due, 1_060.0, mono_elapsed=60, wall_elapsed=3660) == 0.0


@pytest.mark.parametrize(
    ("mono_elapsed", "wall_elapsed", "jumped"),
    [
        (60.0, 60.0, False),
        (60.0, 60.0 + WALL_JUMP_TOLERANCE_SECONDS, False),
        (60.0, 60.5 + WALL_JUMP_TOLERANCE_SECONDS, True),
        (60.0, 60.0 - DAY, False),  # backward steps are not jumps
        (0.0, DAY, True),
    ],
)
def test_wall_jumped(mono_elapsed: float, wall_elapsed: float, jumped: bool) -> None:
    assert wall_jumped(mono_elapsed, wall_elapsed) is jumped


@PROPS
@given(due=mono, now=mono, mono_elapsed=st.floats(0, 120), wall_step=step)
def test_poll_wait_is_bounded_and_never_later_than_due(
    due: float, now: float, mono_elapsed: float, wall_step: float
) -> None:
    wait = poll_wait(due, now, mono_elapsed=mono_elapsed, wall_elapsed=mono_elapsed + wall_step)
    assert 0.0 <= wait <= MAX_SLEEP_SLICE_SECONDS
    # no wall-clock step can push the wake-up past the due time (up to float rounding of now + (due - now))
    assert now + wait <= max(due, now) + 1e-9
    if wall_step <= 0:  # without a forward jump it is exactly the remaining time, in slices
        assert wait == (0.0 if now >= due else min(due - now, MAX_SLEEP_SLICE_SECONDS))
