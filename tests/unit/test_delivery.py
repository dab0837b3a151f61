"""Pure delivery decisions: target specs, /licenses plans and drift reasons, KongLicense winner, rollouts."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from license_keeper.delivery import (
    ADOPTED_ANNOTATION,
    FINGERPRINT_ANNOTATION,
    DeliveryState,
    ReportedLicense,
    RestartPlan,
    adopt_patch,
    diagnose_admin,
    diagnose_konglicense,
    diagnose_rollout,
    konglicense_winner,
    license_row_id,
    newest_row,
    parse_target,
    plan_admin,
    plan_konglicense,
    plan_restart,
    reads_license_from,
    rollout_finished,
    secret_license,
)
from license_keeper.license import License, parse_license
from license_keeper.testing.licenses import make_document

D, S = DeliveryState, None

# ------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("admin-api=https://kong-cp:8444", "admin-api", "https://kong-cp:8444"),
        ("admin-api=https://kong-cp:8444/", "admin-api", "https://kong-cp:8444"),
        (" ADMIN-API = http://10.0.0.1:8001 ", "admin-api", "http://10.0.0.1:8001"),
        ("konglicense=kong-license", "konglicense", "kong-license"),
        ("restart=deployment/kong-gateway", "restart", "deployment/kong-gateway"),
        ("restart=StatefulSet/kong", "restart", "statefulset/kong"),
    ],
)
def test_parse_target(text: str, kind: str, value: str) -> None:
    spec = parse_target(text)
    assert (spec.kind, spec.value) == (kind, value)
    assert spec.label == f"{kind}={value}"


@pytest.mark.parametrize(
    "text",
    [
        "admin-api",
        "admin-api=",
        "admin-api=kong:8444",
        "admin-api=https://user:pw@kong:8444",
        "admin-api=https://kong:8444/?token=x",
        "konglicense=Bad_Name",
        "restart=daemonset/kong",
        "restart=deployment/",
        "restart=kong",
        "secret=foo",
    ],
)
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_target(text)
    assert "pw" not in str(exc.value) or "user:pw" not in text


def test_row_id_is_stable_uuid5_per_secret() -> None:
    a = license_row_id("kong", "kong-license")
    assert a == license_row_id("kong", "kong-license")
    assert uuid.UUID(a).version == 5
    assert len({a, license_row_id("kong", "other"), license_row_id("edge", "kong-license")}) == 3


# ----------------------------------------------------------------------------------------- /licenses

HELD = make_document(expiration_date="2030-01-01")
OTHER = make_document(expiration_date="2029-01-01")
OURS = license_row_id("kong", "kong-license")


def row(payload: str, rid: str | None = None, updated: int = 1) -> dict[str, Any]:
    return {"id": rid or str(uuid.uuid4()), "payload": payload, "created_at": 1, "updated_at": updated}


@pytest.mark.parametrize(
    ("rows", "put"),
    [
        ([], True),
        ([row(OTHER)], True),
        ([row(OTHER, OURS)], True),
        ([row(HELD, OURS)], False),
        ([row(HELD), row(OTHER, OURS)], False),  # someone else's row holds it: a PUT would answer 409
    ],
)
def test_plan_admin(rows: list[dict[str, Any]], put: bool) -> None:
    assert plan_admin(rows, HELD).put is put


@given(st.lists(st.sampled_from([HELD, OTHER, make_document()]), max_size=6))
def test_plan_admin_puts_exactly_when_no_row_holds_the_license(payloads: list[str]) -> None:
    rows = [row(p) for p in payloads]
    assert plan_admin(rows, HELD).put is (HELD not in payloads)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=8))
def test_newest_row_has_max_updated_at(stamps: list[tuple[int, int]]) -> None:
    rows = [{"id": str(i), "payload": "x", "updated_at": u, "created_at": c} for i, (u, c) in enumerate(stamps)]
    best = newest_row(rows)
    assert best is not None and best["updated_at"] == max(u for u, _ in stamps)


def reported(doc: str | None) -> ReportedLicense:
    if doc is None:
        return ReportedLicense("UNLICENSED", "UNLICENSED")
    lic = parse_license(doc)
    return ReportedLicense(lic.license_key, lic.expiration_date.isoformat())


HIDDEN = make_document(expiration_date="2027-07-07")


@pytest.mark.parametrize(
    ("rows", "runs", "wrote_at", "state", "words"),
    [
        ([row(HELD, OURS)], HELD, None, D.DELIVERED, "runs the held license"),
        ([row(HELD, OURS)], OTHER, 95.0, D.PENDING, "does not report it yet"),
        ([row(HELD, OURS)], HIDDEN, 95.0 - 1000, D.DRIFT, "KONG_LICENSE_DATA"),
        ([row(HELD, OURS)], HIDDEN, None, D.DRIFT, "KONG_LICENSE_DATA > license.json > KONG_LICENSE_PATH > DB"),
        ([row(HELD, OURS, 1), row(OTHER, "x", 2)], OTHER, None, D.DRIFT, "newer /licenses row not written"),
        ([row(HELD, OURS)], None, None, D.DRIFT, "reports no license although"),
        ([], None, None, D.DRIFT, "has no license"),
    ],
)
def test_diagnose_admin(
    rows: list[dict[str, Any]], runs: str | None, wrote_at: float | None, state: DeliveryState, words: str
) -> None:
    got, reason = diagnose_admin(parse_license(HELD), rows, reported(runs), OURS, wrote_at=wrote_at, now=100.0)
    assert got is state and words in reason
    lic = parse_license(HELD)
    assert lic.license_key not in reason and lic.signature not in reason


def test_same_key_other_expiry_is_drift() -> None:
    lic = parse_license(HELD)
    renewed = make_document(license_key=lic.license_key, expiration_date="2031-01-01")
    state, _ = diagnose_admin(lic, [row(HELD, OURS)], reported(renewed), OURS, wrote_at=None, now=0)
    assert state is D.DRIFT


# ------------------------------------------------------------------------------------------ KongLicense


def kl(name: str, ts: str, enabled: bool | None = True, raw: str = HELD, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "creationTimestamp": ts, "generation": 1},
        "rawLicenseString": raw,
    }
    if enabled is not None:
        obj["enabled"] = enabled
    obj.update(extra)
    return obj


@pytest.mark.parametrize(
    ("items", "winner"),
    [
        ([], None),
        ([kl("a", "2024-01-01T00:00:00Z")], "a"),
        ([kl("a", "2024-01-01T00:00:00Z"), kl("b", "2024-01-02T00:00:00Z")], "b"),
        ([kl("a", "2024-01-01T00:00:00Z"), kl("b", "2024-01-02T00:00:00Z", enabled=False)], "a"),
        ([kl("b", "2024-01-01T00:00:00Z"), kl("a", "2024-01-01T00:00:00Z")], "a"),  # tie: smaller name
        ([kl("ab", "2024-01-01T00:00:00Z"), kl("a", "2024-01-01T00:00:00Z")], "a"),
        ([kl("a", "2024-01-01T00:00:00Z", enabled=None)], "a"),  # enabled defaults to true
    ],
)
def test_konglicense_winner(items: list[dict[str, Any]], winner: str | None) -> None:
    assert konglicense_winner(items) == winner


@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.integers(0, 3), st.booleans()), max_size=6, unique_by=lambda t: t[0]
    )
)
def test_winner_is_newest_enabled(entries: list[tuple[str, int, bool]]) -> None:
    items = [kl(n, f"2024-01-0{d + 1}T00:00:00Z", enabled=e) for n, d, e in entries]
    win = konglicense_winner(items)
    enabled = [(d, n) for n, d, e in entries if e]
    if not enabled:
        assert win is None
    else:
        newest = max(d for d, _ in enabled)
        assert win == min(n for d, n in enabled if d == newest)


@pytest.mark.parametrize(
    ("obj", "plan"),
    [
        (None, {"create": True}),
        (kl("k", "t"), None),
        (kl("k", "t", raw=OTHER), {"rawLicenseString": HELD}),
        (kl("k", "t", enabled=False), {"enabled": True}),
        (kl("k", "t", enabled=False, raw=OTHER), {"rawLicenseString": HELD, "enabled": True}),
    ],
)
def test_plan_konglicense(obj: dict[str, Any] | None, plan: dict[str, Any] | None) -> None:
    if obj is not None:
        obj["metadata"]["annotations"] = {"license-keeper.io/owner": "kong/kong-license"}
    assert plan_konglicense(obj, HELD, "kong/kong-license") == plan


OWNER = "kong/kong-license"


@pytest.mark.parametrize(
    ("labels", "annotations", "plan"),
    [
        ({}, {}, None),  # someone else's
        ({}, {"license-keeper.io/owner": "other/kong-license"}, None),  # another keeper installation's
        (
            {"app.kubernetes.io/managed-by": "license-keeper"},
            {"license-keeper.io/owner": "other/kong-license"},
            None,
        ),
        (  # a keeper's from before owners were recorded: ours, and the owner is recorded
            {"app.kubernetes.io/managed-by": "license-keeper"},
            {},
            {
                "rawLicenseString": HELD,
                "metadata": {"annotations": {"license-keeper.io/owner": OWNER, "license-keeper.io/adopt": None}},
            },
        ),
        (  # handed over
            {},
            {"license-keeper.io/owner": "other/x", "license-keeper.io/adopt": "true"},
            {
                "rawLicenseString": HELD,
                "metadata": {"annotations": {"license-keeper.io/owner": OWNER, "license-keeper.io/adopt": None}},
            },
        ),
        ({}, {"license-keeper.io/owner": OWNER}, {"rawLicenseString": HELD}),
    ],
)
def test_a_konglicense_another_installation_owns_is_never_written(
    labels: dict[str, str], annotations: dict[str, str], plan: dict[str, Any] | None
) -> None:
    obj = kl("k", "t", raw=OTHER)
    obj["metadata"].update(labels=labels, annotations=annotations)
    assert plan_konglicense(obj, HELD, OWNER) == plan
    state, reason = diagnose_konglicense(obj, HELD, "k", wrote_at=None, now=100.0, owner=OWNER)
    if plan is None:
        assert state is D.DRIFT and "not managed by this keeper" in reason, reason


def programmed(status: str, reason: str, generation: int = 1) -> dict[str, Any]:
    cond = {"type": "Programmed", "status": status, "reason": reason, "observedGeneration": generation}
    return {"controllers": [{"controllerName": "konghq.com/kic", "conditions": [cond]}]}


@pytest.mark.parametrize(
    ("obj", "winner", "wrote_at", "state", "words"),
    [
        (None, None, None, D.PENDING, "not created"),
        (kl("k", "t", status=programmed("True", "PickedAsLatest")), "k", None, D.DELIVERED, "Programmed"),
        (kl("k", "t", status=programmed("True", "PickedAsLatest")), "newer", None, D.DRIFT, "newer wins over k"),
        (kl("k", "t", status=programmed("False", "ReplacedByNewer")), None, None, D.DRIFT, "ReplacedByNewer"),
        (
            kl("k", "t", status=programmed("True", "PickedAsLatest", generation=0)),
            "k",
            95.0,
            D.PENDING,
            "no controller",
        ),
        (kl("k", "t"), "k", 95.0, D.PENDING, "no controller has reported"),
        (kl("k", "t"), "k", None, D.DRIFT, "is KIC running"),
        (kl("k", "t", raw=OTHER), "k", None, D.DRIFT, "does not carry"),
    ],
)
def test_diagnose_konglicense(
    obj: dict[str, Any] | None, winner: str | None, wrote_at: float | None, state: DeliveryState, words: str
) -> None:
    got, reason = diagnose_konglicense(obj, HELD, winner, wrote_at=wrote_at, now=100.0)
    assert got is state and words in reason


# ------------------------------------------------------------------------------------------ restarts

HELD_LICENSE, OTHER_LICENSE = parse_license(HELD), parse_license(OTHER)
FP, OTHER_FP = HELD_LICENSE.fingerprint, OTHER_LICENSE.fingerprint


def workload(
    fp: str | None = None,
    *,
    paused: bool = False,
    generation: int = 2,
    observed: int | None = 2,
    updated: int = 3,
    replicas: int = 3,
    running: int | None = None,
    available: int | None = None,
    kind: str = "Deployment",
    strategy: str | None = None,
    adopted: str | None = None,
    reads: str | None = None,
) -> dict[str, Any]:
    """A workload whose status is by default a finished rollout: ``running`` pods in all (default: the
    updated ones, no old pods left), ``available`` of them available (default: all updated). ``fp``: the pod
    template's annotation, ``adopted``: the workload's; ``reads``: the Secret its pods read KONG_LICENSE_DATA from."""
    annotations = {FINGERPRINT_ANNOTATION: fp} if fp else {}
    containers = [{"name": "kong", "env": [license_env(reads)] if reads else []}]
    spec: dict[str, Any] = {
        "replicas": replicas,
        "template": {"metadata": {"annotations": annotations}, "spec": {"containers": containers}},
    }
    if paused:
        spec["paused"] = True
    if strategy:
        spec["updateStrategy"] = {"type": strategy}
    running = updated if running is None else running
    available = updated if available is None else available
    status: dict[str, Any] = {
        "replicas": running,
        "updatedReplicas": updated,
        "readyReplicas": available,
        "availableReplicas": available,
    }
    if observed is not None:
        status["observedGeneration"] = observed
    metadata: dict[str, Any] = {"name": "kong", "generation": generation}
    if adopted:
        metadata["annotations"] = {ADOPTED_ANNOTATION: adopted}
    return {"kind": kind, "metadata": metadata, "spec": spec, "status": status}


def license_env(secret: str, key: str = "license") -> dict[str, Any]:
    return {"name": "KONG_LICENSE_DATA", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def merge_patch(obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies the target's patches."""
    out = copy.deepcopy(obj)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge_patch(out.get(key) or {}, value)
        else:
            out[key] = value
    return out


SECRET = "kong-license"
ROLL_FP = {"spec": {"template": {"metadata": {"annotations": {FINGERPRINT_ANNOTATION: FP}}}}}


@pytest.mark.parametrize(
    ("obj", "patched"),
    [
        (workload(None), True),
        (workload("old"), True),
        (workload(FP), False),  # idempotent: a re-run or a second replica never restarts twice
        (workload("old", paused=True), False),  # paused: refused, like kubectl rollout restart
    ],
)
def test_plan_restart(obj: dict[str, Any], patched: bool) -> None:
    plan = plan_restart(obj, FP, SECRET)
    assert (plan is not None) is patched
    if plan:
        assert (plan.patch, plan.adopt) == (ROLL_FP, False)


def test_no_restart_while_the_secret_holds_no_license() -> None:
    assert plan_restart(workload(None), None, SECRET) is None
    assert plan_restart(workload("old"), None, SECRET) is None
    assert plan_restart(workload(None, reads=SECRET), None, SECRET) is None


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        # turned on for pods that read the Secret: adopt what it holds on the workload, do not roll
        (workload(None, reads=SECRET), RestartPlan({"metadata": {"annotations": {ADOPTED_ANNOTATION: FP}}}, True)),
        (workload(None, reads=SECRET, paused=True), RestartPlan(adopt_patch(FP), True)),  # recording rolls nothing
        (workload(None, adopted=FP, reads=SECRET), None),  # adopted once: idempotent
        (workload(FP, reads=SECRET), None),
        # a change of content after the adoption rolls them; the template records it from then on
        (
            workload(None, adopted=OTHER_FP, reads=SECRET),
            RestartPlan({**ROLL_FP, "metadata": {"annotations": {ADOPTED_ANNOTATION: None}}}, False),
        ),
        (workload(OTHER_FP, reads=SECRET), RestartPlan(ROLL_FP, False)),  # rolled before: never adopted again
        (  # the template wins
            workload(OTHER_FP, adopted=FP, reads=SECRET),
            RestartPlan({**ROLL_FP, "metadata": {"annotations": {ADOPTED_ANNOTATION: None}}}, False),
        ),
        (workload(FP, adopted=OTHER_FP, reads=SECRET), None),
        # nothing tells what pods run that do not read the Secret's key `license`: roll them once
        (workload(None), RestartPlan(ROLL_FP, False)),
        (workload(None, reads="other-secret"), RestartPlan(ROLL_FP, False)),
    ],
)
def test_plan_restart_adopts_what_pods_reading_the_secret_run(
    obj: dict[str, Any], expected: RestartPlan | None
) -> None:
    assert plan_restart(obj, FP, SECRET) == expected


def pod_template(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "spec": {"template": {"spec": {"containers": list(containers), "initContainers": list(init)}}},
    }


@pytest.mark.parametrize(
    ("obj", "reads"),
    [
        (pod_template({"name": "proxy", "env": [license_env(SECRET)]}), True),
        (pod_template({"name": "proxy", "env": [license_env(SECRET)]}, {"name": "ingress-controller"}), True),
        (pod_template({"name": "proxy"}, init=({"name": "migrations", "env": [license_env(SECRET)]},)), True),
        (pod_template({"name": "proxy", "env": [license_env(SECRET, key="payload")]}), False),
        (pod_template({"name": "proxy", "env": [license_env("other")]}), False),
        (pod_template({"name": "proxy", "env": [{"name": "KONG_LICENSE_DATA", "value": "{}"}]}), False),
        # another container sets KONG_LICENSE_DATA some other way: not all of the pod runs the Secret's
        (pod_template({"name": "a", "env": [license_env(SECRET)]}, {"name": "b", "env": [license_env("x")]}), False),
        (pod_template({"name": "proxy", "envFrom": [{"secretRef": {"name": SECRET}}]}), False),
        (pod_template({"name": "proxy"}), False),
        ({"kind": "Deployment"}, False),
    ],
)
def test_reads_license_from(obj: dict[str, Any], reads: bool) -> None:
    assert reads_license_from(obj, SECRET) is reads


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"license": HELD.encode()}, FP),
        ({"license": HELD.encode(), "payload": OTHER.encode()}, FP),  # pods read `license`, not KIC's `payload`
        ({"payload": HELD.encode()}, None),
        ({"license": b""}, None),
        ({"license": b"{not json"}, None),
        ({"license": b"\xff\xfe"}, None),
        ({}, None),
    ],
)
def test_secret_license_is_what_a_pod_starting_now_reads(data: dict[str, bytes], expected: str | None) -> None:
    got = secret_license(data)
    assert (got.fingerprint if got else None) == expected


@pytest.mark.parametrize(
    ("obj", "finished"),
    [
        (workload(FP), True),
        (workload(FP, observed=1), False),
        (workload(FP, observed=None), False),
        (workload(FP, updated=2), False),
        (workload(FP, replicas=0, updated=0), True),
        # every replica updated, but old pods still run: kubectl waits for them to terminate
        (workload(FP, updated=3, running=4), False),
        (workload(FP, updated=3, running=6), False),
        # every replica updated and no old pod left, but not every new pod is available yet
        (workload(FP, updated=3, available=0), False),
        (workload(FP, updated=3, available=2), False),
        # scaled down right after the rollout: more updated pods than replicas, all new, all available
        (workload(FP, replicas=2, updated=3), True),
    ],
)
def test_rollout_finished(obj: dict[str, Any], finished: bool) -> None:
    assert rollout_finished(obj) is finished


@st.composite
def deployment_world(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """The pods of a Deployment mid-rollout (old template, new template; available or not), the status
    its controller reports for them, and whether the rollout is really over: the spec change seen, every
    replica on the new template, no old pod left, every new pod available."""
    replicas = draw(st.integers(0, 5))
    old, new = draw(st.integers(0, 6)), draw(st.integers(0, 7))
    old_available, new_available = draw(st.integers(0, old)), draw(st.integers(0, new))
    generation = draw(st.integers(1, 4))
    observed = draw(st.one_of(st.none(), st.integers(0, generation)))
    obj = workload(
        FP,
        generation=generation,
        observed=observed,
        replicas=replicas,
        updated=new,
        running=old + new,
        available=old_available + new_available,
    )
    over = observed == generation and old == 0 and new >= replicas and new_available == new
    return obj, over


@given(deployment_world())
def test_deployment_rollout_is_finished_only_when_no_old_pod_is_left_and_every_new_one_is_available(
    world: tuple[dict[str, Any], bool],
) -> None:
    obj, over = world
    assert rollout_finished(obj) is over


def statefulset(
    fp: str | None = None,
    *,
    replicas: int = 3,
    updated: int = 3,
    ready: int | None = None,
    partition: int | None = None,
    rolling_update: bool | None = None,
    revisions: tuple[str, str] = ("r2", "r2"),
    generation: int = 2,
    observed: int | None = 2,
    strategy: str = "RollingUpdate",
) -> dict[str, Any]:
    """A StatefulSet; ``rolling_update`` (default: when a partition is given) adds spec.updateStrategy.rollingUpdate,
    ``revisions`` are status (currentRevision, updateRevision)."""
    update: dict[str, Any] = {"type": strategy}
    if rolling_update or (rolling_update is None and partition is not None):
        update["rollingUpdate"] = {} if partition is None else {"partition": partition}
    status: dict[str, Any] = {
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": replicas if ready is None else ready,
        "currentRevision": revisions[0],
        "updateRevision": revisions[1],
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {
        "kind": "StatefulSet",
        "metadata": {"name": "kong", "generation": generation},
        "spec": {
            "replicas": replicas,
            "updateStrategy": update,
            "template": {"metadata": {"annotations": {FINGERPRINT_ANNOTATION: fp} if fp else {}}},
        },
        "status": status,
    }


def daemonset(
    *,
    desired: int = 3,
    updated: int = 3,
    available: int = 3,
    generation: int = 2,
    observed: int | None = 2,
    strategy: str = "RollingUpdate",
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "desiredNumberScheduled": desired,
        "updatedNumberScheduled": updated,
        "numberAvailable": available,
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {
        "kind": "DaemonSet",
        "metadata": {"name": "kong", "generation": generation},
        "spec": {"updateStrategy": {"type": strategy}, "template": {"metadata": {}}},
        "status": status,
    }


@pytest.mark.parametrize(
    ("obj", "finished"),
    [
        (statefulset(), True),
        (statefulset(observed=1), False),
        (statefulset(observed=None), False),  # kubectl: observedGeneration 0 is "not observed yet"
        (statefulset(ready=2), False),
        # without rollingUpdate: done when the update revision became the current one
        (statefulset(updated=1, revisions=("r1", "r2")), False),
        (statefulset(updated=3, revisions=("r1", "r2")), False),
        # rollingUpdate without a partition (the API server defaults it to 0): every replica updated
        (statefulset(rolling_update=True, updated=2, revisions=("r1", "r2")), False),
        (statefulset(rolling_update=True, updated=3, revisions=("r1", "r2")), True),
        (statefulset(partition=0, updated=2, revisions=("r1", "r2")), False),
        (statefulset(partition=0, updated=3), True),
        # a partition: done once every ordinal at or above it is updated, never pending forever
        (statefulset(partition=2, updated=0, revisions=("r1", "r2")), False),
        (statefulset(partition=2, updated=1, revisions=("r1", "r2")), True),
        (statefulset(partition=5, updated=0, revisions=("r1", "r2")), True),
        (statefulset(partition=2, updated=1, ready=2, revisions=("r1", "r2")), False),
        (statefulset(strategy="OnDelete"), False),  # kubectl: no rollout status for OnDelete
        (daemonset(), True),
        (daemonset(observed=1), False),
        (daemonset(updated=2), False),
        (daemonset(available=2), False),
        (daemonset(desired=0, updated=0, available=0), True),
        (daemonset(strategy="OnDelete"), False),
    ],
)
def test_rollout_finished_statefulset_and_daemonset(obj: dict[str, Any], finished: bool) -> None:
    assert rollout_finished(obj) is finished


@st.composite
def statefulset_world(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A StatefulSet rolling from the highest ordinal down: ``updated`` pods on the new revision, some
    ready; a partition (or none, or rollingUpdate without one) holds back the ordinals below it."""
    replicas = draw(st.integers(0, 5))
    updated, ready = draw(st.integers(0, replicas)), draw(st.integers(0, replicas))
    partition = draw(st.one_of(st.none(), st.integers(0, replicas + 1)))
    rolling_update = draw(st.booleans()) or partition is not None
    generation = draw(st.integers(1, 4))
    observed = draw(st.one_of(st.none(), st.integers(0, generation)))
    # the controller makes the update revision current once every replica runs it
    revisions = ("r2", "r2") if updated == replicas else ("r1", "r2")
    obj = statefulset(
        replicas=replicas,
        updated=updated,
        ready=ready,
        partition=partition,
        rolling_update=rolling_update,
        revisions=revisions,
        generation=generation,
        observed=observed,
    )
    due = replicas - (partition or 0)  # the ordinals the rollout may update
    over = observed == generation and ready == replicas and updated >= due
    return obj, over


@given(statefulset_world())
def test_statefulset_rollout_is_finished_when_every_ordinal_above_the_partition_is_updated_and_all_are_ready(
    world: tuple[dict[str, Any], bool],
) -> None:
    obj, over = world
    assert rollout_finished(obj) is over


@given(
    st.integers(0, 5).flatmap(
        lambda desired: st.tuples(st.just(desired), st.integers(0, desired), st.integers(0, desired))
    ),
    st.integers(1, 3),
    st.one_of(st.none(), st.integers(0, 3)),
)
def test_daemonset_rollout_is_finished_when_every_node_runs_an_updated_available_pod(
    counts: tuple[int, int, int], generation: int, observed: int | None
) -> None:
    desired, updated, available = counts
    obj = daemonset(desired=desired, updated=updated, available=available, generation=generation, observed=observed)
    over = observed is not None and observed >= generation and updated == desired and available == desired
    assert rollout_finished(obj) is over


def deadline_exceeded(obj: dict[str, Any]) -> dict[str, Any]:
    obj["status"]["conditions"] = [
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
    ]
    return obj


@pytest.mark.parametrize(
    ("obj", "state", "words"),
    [
        (None, D.ERROR, "does not exist"),
        (workload(FP), D.DELIVERED, "(rolled for it)"),
        (workload(None, adopted=FP, reads=SECRET), D.DELIVERED, "(adopted: they read it from the Secret"),
        (workload(OTHER_FP, adopted=FP, reads=SECRET), D.PENDING, "not rolled for"),
        (workload(None, reads=SECRET), D.PENDING, "nor adopted"),  # check only: the next delivery adopts it
        (workload(FP, updated=1), D.PENDING, "1/3 updated"),
        (workload("old"), D.PENDING, "not rolled for"),
        (workload("old", paused=True), D.DRIFT, "paused"),
        (workload(FP, kind="StatefulSet", strategy="OnDelete"), D.DRIFT, "OnDelete"),
        (workload(FP, kind="StatefulSet", strategy="RollingUpdate"), D.DELIVERED, "runs pods"),
        (workload(FP, running=4), D.PENDING, "1 old pods still running"),
        (workload(FP, available=1), D.PENDING, "1/3 updated pods available"),
        (workload(FP, observed=1), D.PENDING, "observe the latest change"),
        (deadline_exceeded(workload(FP, updated=1)), D.DRIFT, "progress deadline"),
        (statefulset(FP, partition=1, updated=2, revisions=("r1", "r2")), D.DRIFT, "1 pods below it"),
        (statefulset(FP, partition=0), D.DELIVERED, "runs pods"),
        (statefulset(FP, ready=2), D.PENDING, "2/3 pods ready"),
    ],
)
def test_diagnose_rollout(obj: dict[str, Any] | None, state: DeliveryState, words: str) -> None:
    got, reason = diagnose_rollout(obj, HELD_LICENSE, HELD_LICENSE, "deployment kong", secret="kong-license")
    assert got is state and words in reason


@pytest.mark.parametrize(
    ("obj", "in_secret", "words"),
    [
        # the write of the held license failed or was refused: the pods run (or will run) the Secret's
        (workload(OTHER_FP), OTHER_LICENSE, f"holds license {OTHER_FP}"),
        (workload(FP), OTHER_LICENSE, f"not the held license {FP}"),
        (workload(None), OTHER_LICENSE, "rolled only for what the Secret holds"),
        (workload(FP), None, "holds no valid license"),
        (workload(None), None, "not restarted"),
    ],
)
def test_diagnose_rollout_from_what_the_secret_holds(
    obj: dict[str, Any], in_secret: License | None, words: str
) -> None:
    got, reason = diagnose_rollout(obj, in_secret, HELD_LICENSE, "deployment kong", secret="kong-license")
    assert got is D.DRIFT and words in reason, reason


@given(
    st.sampled_from([None, HELD_LICENSE, OTHER_LICENSE]),
    st.sampled_from([None, FP, OTHER_FP]),
    st.sampled_from([None, FP, OTHER_FP]),
    st.sampled_from([None, SECRET, "other"]),
    st.booleans(),
    deployment_world(),
)
def test_restart_rolls_adopts_and_reports_only_from_the_secret(
    in_secret: License | None,
    rolled_for: str | None,
    adopted: str | None,
    reads: str | None,
    paused: bool,
    world: tuple[dict[str, Any], bool],
) -> None:
    obj, over = world
    obj["spec"]["template"] = workload(rolled_for, reads=reads)["spec"]["template"]
    obj["metadata"]["annotations"] = {ADOPTED_ANNOTATION: adopted} if adopted else {}
    obj["spec"]["paused"] = paused
    secret_fp = in_secret.fingerprint if in_secret is not None else None
    recorded = rolled_for or adopted
    plan = plan_restart(obj, secret_fp, SECRET)
    if plan is not None:
        after = merge_patch(obj, plan.patch)
        if plan.adopt:  # only pods that read the Secret and were never rolled nor adopted; the template is untouched
            assert recorded is None and reads == SECRET and after["spec"] == obj["spec"]
            assert after["metadata"]["annotations"] == {ADOPTED_ANNOTATION: secret_fp}
        else:  # rolled only for what the Secret holds, never twice for it, never while paused
            assert secret_fp not in (None, recorded) and not paused
            assert after["spec"]["template"]["metadata"]["annotations"][FINGERPRINT_ANNOTATION] == secret_fp
            assert ADOPTED_ANNOTATION not in after["metadata"]["annotations"]
        assert plan_restart(after, secret_fp, SECRET) is None, "a second round (or replica) changes nothing"
    else:
        adoptable = recorded is None and reads == SECRET
        assert secret_fp is None or secret_fp == recorded or (paused and not adoptable)
    state, reason = diagnose_rollout(obj, in_secret, HELD_LICENSE, "deployment kong", secret=SECRET)
    # delivered: the Secret holds the held license, the pods were rolled for it or adopted it, the rollout is over
    assert (state is D.DELIVERED) is (in_secret is HELD_LICENSE and recorded == FP and over)
    for doc in (HELD, OTHER):
        lic = parse_license(doc)
        assert lic.license_key not in reason and lic.signature not in reason and doc not in reason


# ------------------------------------------------------------------------------------------ events


def rep(state: DeliveryState, wrote: bool = False) -> Any:
    from license_keeper.delivery import TargetReport

    return TargetReport("admin-api=https://kong:8444", state, "why", wrote=wrote)


@pytest.mark.parametrize(
    ("previous", "current", "event"),
    [
        (None, rep(D.DELIVERED, wrote=True), ("LicenseDelivered", False)),
        (rep(D.DELIVERED), rep(D.DELIVERED, wrote=True), ("LicenseDelivered", False)),  # a rotation
        (None, rep(D.DELIVERED), None),  # found in place at start: nothing to tell
        (rep(D.DELIVERED), rep(D.DELIVERED), None),
        (rep(D.DRIFT), rep(D.DELIVERED), ("LicenseDelivered", False)),
        (None, rep(D.DRIFT), ("LicenseDeliveryDrift", True)),
        (rep(D.DELIVERED), rep(D.ERROR), ("LicenseDeliveryDrift", True)),
        (rep(D.ERROR), rep(D.ERROR), None),  # once per change, not per round
        (rep(D.DELIVERED), rep(D.UNSUPPORTED), ("LicenseDeliveryDrift", True)),
        (rep(D.DELIVERED), rep(D.PENDING), None),
    ],
)
def test_delivery_event(previous: Any, current: Any, event: tuple[str, bool] | None) -> None:
    from license_keeper.deliver import delivery_event

    got = delivery_event(previous, current)
    assert (None if got is None else (got[0], got[2])) == event


DOCS = [HELD, OTHER, HIDDEN]


@given(
    st.lists(st.tuples(st.sampled_from(DOCS), st.booleans(), st.integers(0, 5)), max_size=4),
    st.sampled_from([*DOCS, None]),
    st.one_of(st.none(), st.floats(0, 200)),
)
def test_diagnose_admin_properties(
    rows_spec: list[tuple[str, bool, int]], runs: str | None, wrote_at: float | None
) -> None:
    held = parse_license(HELD)
    rows = [row(doc, OURS if ours else None, updated) for doc, ours, updated in rows_spec]
    state, reason = diagnose_admin(held, rows, reported(runs), OURS, wrote_at=wrote_at, now=200.0, grace=60)
    # the gateway's own word decides "delivered"; a fresh write is never called drift
    assert (state is D.DELIVERED) is (runs == HELD)
    if runs != HELD and wrote_at is not None and 200.0 - wrote_at < 60:
        assert state is D.PENDING
    for doc in DOCS:
        lic = parse_license(doc)
        assert lic.license_key not in reason and lic.signature not in reason and doc not in reason
