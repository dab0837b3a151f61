"""The soak's schedule is a pure function of (seed, steps): a failure can be replayed exactly."""

from __future__ import annotations

from .schedule import KINDS, counts, plan


def test_same_seed_same_schedule() -> None:
    assert plan(7, 300) == plan(7, 300)
    assert plan(7, 300)[:50] == plan(7, 50)  # a shorter replay is a prefix of the longer run


def test_seeds_differ_and_every_kind_appears() -> None:
    assert plan(1, 100) != plan(2, 100)
    kinds = {key.split(":")[0] for key in counts(plan(3, 1000))}
    assert kinds == {k for k, _ in KINDS}


def test_holds_are_bounded() -> None:
    for step in plan(11, 500):
        assert 0 <= step.hold <= 4
        assert step.target is None or 0 <= step.target < 3
