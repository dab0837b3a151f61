"""The soak's seeded schedule: a pure function of (seed, steps), so a failing run can be replayed exactly.

The schedule says *what* happens at each step; timing (how long a step dwells, when a replica becomes
ready) is up to the machine, so a replay takes the same actions in the same order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

REPLICAS = 3

# Konnect's script: what it serves next (records), or a fault mode of the stand-in.
KONNECT_SERVES = ("newer", "newer", "older", "expired", "invalid", "not_found", "reserve")
KONNECT_MODES = ("server_error", "blackhole", "closed", "slow", "garbage", "unauthorized", "oversized")

# What an admin does to the Secret. Damage the keeper must repair, and acts it must respect.
ADVERSARY_DAMAGE = ("delete", "corrupt_payload", "corrupt_license", "downgrade", "downgrade_payload")
ADVERSARY_OTHER = ("restore_newer", "unlabel", "immutable")

# Between one replica and the API server (its fault proxy). Each holds for a few steps.
PROXY_FAULTS = (
    "cut",  # every open connection cut now, mid-stream
    "cut_watch",  # every watch answer cut right after its headers
    "cut_after",  # every answer cut after a few bytes
    "stall",
    "delay",
    "503",
    "502",
    "429",
    "partition",
    "events_503",  # only Event POSTs answered 503
    "events_stall",  # only Event POSTs never answered
    "reset_watch",  # watches reset as they arrive
)
PROCESS_FAULTS = ("sigkill", "sigterm", "restart")

KINDS: tuple[tuple[str, int], ...] = (
    ("konnect", 16),
    ("adversary", 20),
    ("proxy", 30),
    ("process", 12),
    ("apiserver", 2),
    ("etcd", 2),
    ("idle", 14),
)


@dataclass(frozen=True)
class Step:
    index: int
    kind: str
    arg: str = ""
    target: int | None = None  # replica index
    hold: int = 0  # steps the fault lasts before the harness heals it

    def describe(self) -> str:
        who = f" replica {self.target}" if self.target is not None else ""
        hold = f" for {self.hold} step(s)" if self.hold else ""
        return f"step {self.index}: {self.kind} {self.arg}{who}{hold}".replace("  ", " ")


def plan(seed: int, steps: int) -> list[Step]:
    """The schedule for one seed: the same (seed, steps) always gives the same list."""
    rng = random.Random(seed)
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    out: list[Step] = []
    for i in range(steps):
        kind = rng.choices(kinds, weights)[0]
        if kind == "konnect":
            arg = rng.choice(KONNECT_SERVES) if rng.random() < 0.65 else rng.choice(KONNECT_MODES)
            out.append(Step(i, kind, arg, hold=rng.randint(1, 4) if arg in KONNECT_MODES else 0))
        elif kind == "adversary":
            arg = rng.choice(ADVERSARY_DAMAGE) if rng.random() < 0.7 else rng.choice(ADVERSARY_OTHER)
            out.append(Step(i, kind, arg, hold=rng.randint(1, 3) if arg in ("unlabel", "immutable") else 0))
        elif kind == "proxy":
            arg = rng.choice(PROXY_FAULTS)
            out.append(Step(i, kind, arg, rng.randrange(REPLICAS), hold=0 if arg == "cut" else rng.randint(1, 4)))
        elif kind == "process":
            arg = rng.choice(PROCESS_FAULTS)
            out.append(Step(i, kind, arg, rng.randrange(REPLICAS), hold=0 if arg == "restart" else rng.randint(1, 3)))
        else:
            out.append(Step(i, kind, "restart" if kind in ("apiserver", "etcd") else ""))
    return out


def counts(schedule: list[Step]) -> dict[str, int]:
    """Faults of each kind in a schedule (for the figures)."""
    out: dict[str, int] = {}
    for s in schedule:
        key = f"{s.kind}:{s.arg}" if s.arg else s.kind
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
