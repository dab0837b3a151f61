"""The soak's judges on hand-made inputs: each must be able to say "violated"."""

from __future__ import annotations

import base64

from license_keeper.policy import SecretSnapshot, desired_secret, rank
from license_keeper.testing.licenses import make_record

from .engine import _metric_label, key_record, leaks, now_utc, snapshot_of


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
