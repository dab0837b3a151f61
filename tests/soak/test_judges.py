"""The soak's judges on hand-made inputs: each must be able to say "violated"."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from license_keeper.policy import SecretSnapshot, desired_secret, rank
from license_keeper.testing.licenses import make_record
from license_keeper.testing.probes import KeeperProbes

from .engine import Limits, Replica, Soak, Violation, _metric_label, key_record, leaks, now_utc, snapshot_of


def test_key_record_reads_each_key_on_its_own() -> None:
    new, old = make_record(updated_at=200), make_record(updated_at=100)
    data = dict(desired_secret(new).data)
    data["payload"] = desired_secret(old).data["payload"]
    s = SecretSnapshot(exists=True, data=data)
    lic, pay = key_record(s, "license"), key_record(s, "payload")
    assert lic is not None and pay is not None
    assert lic.document == new.document and pay.document == old.document
    assert key_record(SecretSnapshot(exists=True, data={"license": b"\xff"}), "license").valid is False  # type: ignore[union-attr]
    assert key_record(SecretSnapshot.missing(), "payload") is None


def test_a_worse_license_ranks_lower_key_by_key() -> None:
    # Invariant 2 compares ranks of the same key before and after a keeper write.
    better = make_record(updated_at=200)
    worse = make_record(updated_at=100)
    assert rank(worse, now_utc()) < rank(better, now_utc())
    corrupt = key_record(SecretSnapshot(exists=True, data={"payload": b'{"license": "corrupt"}'}), "payload")
    assert rank(corrupt, now_utc()) < rank(worse, now_utc())


def test_snapshot_of_decodes_once() -> None:
    obj = {"metadata": {"resourceVersion": "7", "labels": {"a": "b"}}, "data": {"k": base64.b64encode(b"v").decode()}}
    s = snapshot_of(obj)
    assert s.data == {"k": b"v"} and s.resource_version == "7" and s.labels == {"a": "b"}
    assert not snapshot_of(None).exists


def test_metric_label_reads_the_one_hot_sample() -> None:
    text = (
        'license_keeper_secret_state{state="present"} 0.0\n'
        'license_keeper_secret_state{state="missing"} 1.0\n'
        'license_keeper_license_info{fingerprint="abcd",source="secret"} 1.0\n'
    )
    assert _metric_label(text, "license_keeper_secret_state", "state") == "missing"
    assert _metric_label(text, "license_keeper_license_info", "fingerprint") == "abcd"
    assert _metric_label(text, "license_keeper_leader", "x") is None


def test_leaks_finds_license_material() -> None:
    record = make_record(updated_at=1)
    assert leaks(record.document)
    assert not leaks('license_keeper_license_info{fingerprint="0123456789abcdef"} 1.0')


# --- the end of a run: convergence (invariant 9) with the harness supervising as the kubelet would ------------


class _Process:
    """Ends by itself (exit 1, as a keeper that lost its Lease) ``life`` seconds after its start; None: runs on."""

    def __init__(self, life: float | None) -> None:
        self.end = None if life is None else time.monotonic() + life
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.end is not None and time.monotonic() >= self.end:
            self.returncode = 1
        return self.returncode


class HandMadeKeeper(KeeperProbes):
    """A keeper without a process: its n-th start lives ``lives[n]`` seconds (the last entry repeats), and
    while it lives its probes answer as a ready keeper's would."""

    def __init__(self, name: str, lives: list[float | None], leader: bool = False) -> None:
        self.name, self.probe_port, self.metrics_port = name, 1, 2
        self.lives, self.leader, self.starts = lives, leader, 0
        self.proc: _Process | None = None

    def start(self) -> HandMadeKeeper:
        self.proc = _Process(self.lives[min(self.starts, len(self.lives) - 1)])
        self.starts += 1
        self.started_at = time.monotonic()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.returncode = self.proc.poll() or -9

    def _get(self, port: int, path: str) -> tuple[int, str]:
        if self.proc is None or self.proc.poll() is not None:
            return 0, ""  # connection refused
        return 200, f"license_keeper_leader {float(self.leader)}\n" if port == self.metrics_port else "ok"


class HandMadeEnd(Soak):
    """The soak after its last step, on hand-made replicas: the Secret holds the expected license and keeper-0
    takes the Lease ``failover`` seconds in (until then nobody holds it fresh: convergence takes that long)."""

    def __init__(self, tmp_path: Path, keepers: list[HandMadeKeeper], failover: float = 1.0) -> None:
        limits = Limits(converge=3.0, boot=1.0, ready=1.0)
        cp: Any = SimpleNamespace(audit_log=tmp_path / "audit.log")
        super().__init__(cp, tmp_path, seed=1, steps=0, limits=limits, log=lambda _: None)
        proxy: Any = SimpleNamespace(rules={})  # every path healed
        self.replicas = [Replica(i, k.start().name, f"sa-{i}", proxy, k) for i, k in enumerate(keepers)]
        self.expected = make_record(updated_at=100)
        self.lease_at = time.monotonic() + failover

    def read_secret(self) -> dict[str, Any] | None:
        want = desired_secret(self.expected)
        return {
            "metadata": {"name": "kong-license", "labels": want.labels, "resourceVersion": "1"},
            "data": {k: base64.b64encode(v).decode() for k, v in want.data.items()},
        }

    def lease_holder(self) -> tuple[str | None, float]:
        return ("keeper-0", 0.0) if time.monotonic() >= self.lease_at else (None, float("inf"))

    def converge(self) -> float:
        return self._await_convergence(self.expected)


def test_a_replica_that_exits_during_convergence_is_restarted_and_the_end_converges(tmp_path: Path) -> None:
    # keeper-1 exits 0.2 s into convergence (lost its Lease to the last fault), as seed 20261125 saw.
    lost_its_lease = HandMadeKeeper("keeper-1", [0.2, None])
    end = HandMadeEnd(tmp_path, [HandMadeKeeper("keeper-0", [None], leader=True), lost_its_lease])
    took = end.converge()
    assert 0.9 <= took < 3.0
    assert lost_its_lease.starts == 2 and end.replicas[1].exits == end.figures.unplanned_exits == 1
    assert end.figures.checks["6 ready after start"] == 1  # the restart is judged as every restart is


@pytest.mark.parametrize(
    ("stalled", "invariant"),
    [
        (False, 6),  # its path is up: a restart that never answers its probes is judged at once
        (True, 9),  # its path is still in the grace after a stall: readiness after start is not judged, convergence is
    ],
)
def test_a_replica_that_stays_down_is_a_violation(tmp_path: Path, stalled: bool, invariant: int) -> None:
    crashing = HandMadeKeeper("keeper-1", [0.2, 0.0])  # every restart exits at once
    end = HandMadeEnd(tmp_path, [HandMadeKeeper("keeper-0", [None], leader=True), crashing])
    if stalled:
        end.replicas[1].path_up_since = time.monotonic() + end.limits.stall_grace
    with pytest.raises(Violation) as caught:
        end.converge()
    assert caught.value.invariant == invariant
    assert crashing.starts >= 2
    if invariant == 9:
        assert "'keeper-1': 'exited" in caught.value.detail
