"""When to ask Konnect next. Pure: the time and the random source are arguments."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from .license import LicenseRecord

BACKOFF_BASE_SECONDS = 10.0
MIN_DELAY_SECONDS = 1.0
MAX_SLEEP_SLICE_SECONDS = 60.0
# The regular poll is spread over the last tenth of the period, so replicas of many keepers started
# together (a cluster restore) do not all call Konnect in the same second.
REGULAR_JITTER_FRACTION = 0.1


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


def applicable_period(held: LicenseRecord | None, now: datetime, cfg: ScheduleConfig) -> float:
    return cfg.initial_period if needs_fast_polling(held, now, cfg.renew_before) else cfg.regular_period


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


def sleep_slice(due_wall: float, now_wall: float, max_slice: float = MAX_SLEEP_SLICE_SECONDS) -> float:
    """How long to sleep before looking at the wall clock again (0 = due now).

    Sleeping in short slices against the wall clock means a node that was suspended, or a clock that
    jumped forward, is noticed within a slice instead of after a 12 h monotonic sleep.
    """
    remaining = due_wall - now_wall
    if remaining <= 0:
        return 0.0
    return min(remaining, max_slice)
