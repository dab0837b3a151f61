"""When to ask Konnect next. Pure: the time and the random source are arguments.

The schedule gives a *delay*; the caller sleeps it on the monotonic clock (``poll_wait``), so a wall
clock stepped back cannot postpone a poll. The wall clock is only watched for forward jumps
(``wall_jumped``: a suspended node, a clock stepped forward), after which the poll is due at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from .license import LicenseRecord

__all__ = [
    "BACKOFF_BASE_SECONDS",
    "MAX_SLEEP_SLICE_SECONDS",
    "MIN_DELAY_SECONDS",
    "WALL_JUMP_TOLERANCE_SECONDS",
    "ScheduleConfig",
    "backoff_ceiling",
    "needs_fast_polling",
    "next_delay",
    "poll_wait",
    "wall_jumped",
]

BACKOFF_BASE_SECONDS = 10.0
MIN_DELAY_SECONDS = 1.0
MAX_SLEEP_SLICE_SECONDS = 60.0
# The regular poll is spread over the last tenth of the period, so replicas of many keepers started
# together (a cluster restore) do not all call Konnect in the same second.
REGULAR_JITTER_FRACTION = 0.1
# More wall-clock than monotonic time passed over one sleep slice: the node was suspended (the monotonic
# clock stops then) or the clock was stepped forward. Slices are at most a minute and an NTP step is a
# few seconds, so half a minute tells the two apart.
WALL_JUMP_TOLERANCE_SECONDS = 30.0


@dataclass(frozen=True)
class ScheduleConfig:
    initial_period: float = 60.0
    regular_period: float = 12 * 3600.0
    renew_before: float = 7 * 86400.0
    backoff_base: float = BACKOFF_BASE_SECONDS


def needs_fast_polling(held: LicenseRecord | None, now: datetime, renew_before: float) -> bool:
    """No valid license, or the one held is expired or about to be: poll at the initial rate."""
    lic = held.license if held is not None else None
    if lic is None:
        return True
    return lic.seconds_left(now) <= renew_before


def backoff_ceiling(consecutive_failures: int, period: float, base: float = BACKOFF_BASE_SECONDS) -> float:
    """base * 2^(n-1), capped at the period that applies (never poll slower than without errors)."""
    if consecutive_failures <= 0:
        return period
    exponent = min(consecutive_failures - 1, 30)  # 2**30 * 10 s is far past any period
    return min(period, base * (2.0**exponent))


def next_delay(
    held: LicenseRecord | None,
    consecutive_failures: int,
    now: datetime,
    cfg: ScheduleConfig,
    rng: random.Random,
) -> float:
    """Seconds until the next Konnect call.

    After an error: exponential backoff with full jitter (AWS architecture blog's "full jitter":
    uniform between 0 and the ceiling), so a Konnect outage is not met by synchronized retries.
    """
    fast = needs_fast_polling(held, now, cfg.renew_before)
    period = cfg.initial_period if fast else cfg.regular_period
    if consecutive_failures > 0:
        return max(MIN_DELAY_SECONDS, rng.uniform(0.0, backoff_ceiling(consecutive_failures, period, cfg.backoff_base)))
    if not fast:
        return period * (1.0 - REGULAR_JITTER_FRACTION * rng.random())
    return period


def wall_jumped(mono_elapsed: float, wall_elapsed: float, tolerance: float = WALL_JUMP_TOLERANCE_SECONDS) -> bool:
    """The wall clock ran ahead of the monotonic clock by more than ``tolerance`` over the same interval.

    Backward steps are not jumps: the sleep runs on the monotonic clock and they cannot delay it.
    """
    return wall_elapsed - mono_elapsed > tolerance


def poll_wait(
    due_mono: float,
    now_mono: float,
    *,
    mono_elapsed: float,
    wall_elapsed: float,
    max_slice: float = MAX_SLEEP_SLICE_SECONDS,
    tolerance: float = WALL_JUMP_TOLERANCE_SECONDS,
) -> float:
    """Seconds to sleep (monotonic) before looking again; 0 means poll now.

    ``due_mono`` = monotonic time when the delay from ``next_delay`` started + that delay.
    ``mono_elapsed``/``wall_elapsed``: how far each clock moved since the caller last looked. Sleeping
    in slices of at most ``max_slice`` lets a suspended node or a forward wall-clock jump be noticed
    within a slice instead of after a 12 h sleep.
    """
    if wall_jumped(mono_elapsed, wall_elapsed, tolerance):
        return 0.0
    remaining = due_mono - now_mono
    if remaining <= 0:
        return 0.0
    return min(remaining, max_slice)
