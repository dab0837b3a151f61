"""The seeded fault soak (issue 10). `make soak SEED=… STEPS=…` replays one schedule; CI runs the fixed seeds.

Environment: SOAK_SEEDS (comma list, default the CI seeds), SOAK_STEPS (per seed), SOAK_FIGURES (a file the
figures of each seed are appended to as JSON lines), SOAK_KEEP (keep the work directory), and the limits
in engine.Limits (SOAK_REPAIR_LIMIT, SOAK_READY_LIMIT, SOAK_SETTLE, SOAK_STALE_LIMIT, SOAK_DWELL).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from license_keeper.testing.controlplane import ControlPlane

from .engine import Soak, SoakFailure

CI_SEEDS = (101, 202, 303)
CI_STEPS = 50  # 3 x 50 = 150 steps

SEEDS = [int(s) for s in (os.environ.get("SOAK_SEEDS") or ",".join(map(str, CI_SEEDS))).split(",") if s.strip()]
STEPS = int(os.environ.get("SOAK_STEPS") or CI_STEPS)


@pytest.mark.soak
@pytest.mark.timeout(int(os.environ.get("SOAK_TIMEOUT", 600 + STEPS * 10)))
@pytest.mark.parametrize("seed", SEEDS)
def test_soak(controlplane: ControlPlane, tmp_path: Path, seed: int) -> None:
    soak = Soak(controlplane, tmp_path, seed, STEPS)
    try:
        figures = soak.run()
    except SoakFailure as failure:
        print(f"\n{failure}", flush=True)  # at once, not only in pytest's summary after every seed
        _record(soak.figures.summary())
        raise
    _record(figures.summary())
    assert not figures.violations


def _record(summary: dict[str, object]) -> None:
    print("\nSOAK FIGURES " + json.dumps(summary), flush=True)
    if os.environ.get("SOAK_FIGURES"):
        with open(os.environ["SOAK_FIGURES"], "a") as fh:
            fh.write(json.dumps(summary) + "\n")
