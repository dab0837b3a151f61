"""Static checks of the Helm chart and the alert rules, with the real helm and promtool binaries.

The binaries come from tools/controlplane/build.sh (CI runs it before the tests). A missing binary
is a FAILURE with instructions, never a skip: a chart nobody rendered must not look green.

    tools/controlplane/build.sh helm prometheus
    .venv/bin/python -m pytest -q tests/integration/test_chart_static.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.controlplane  # needs binaries built by tools/controlplane/build.sh

REPO = Path(__file__).resolve().parents[2]
BUILD_SH = REPO / "tools" / "controlplane" / "build.sh"
CHART = REPO / "charts" / "license-keeper"
ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = REPO / "tests" / "alerts" / "alerts.test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"

REQUIRED = {
    "konnect.controlPlaneId": "0b8d6a5e-3b64-4c1f-9a1e-2f6a7b1c9d00",
    "konnect.tlsSecretName": "konnect-client-tls",
}
NAMESPACE = "kong"
RELEASE = "lk"


# ------------------------------------------------------------------------------------------ tools
@functools.cache
def tool(component: str, binary: str) -> str:
    proc = subprocess.run([str(BUILD_SH), "--print-dir", component], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{BUILD_SH} --print-dir {component} failed (rc={proc.returncode}): {proc.stderr.strip()}")
    path = Path(proc.stdout.strip()) / binary
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"{binary} not found at {path}: build it first with `tools/controlplane/build.sh {component}` "
            "(CI runs tools/controlplane/build.sh before the tests)",
            pytrace=False,
        )
    return str(path)


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # keep helm away from the user's config and any cluster
    env.update(
        {
            "HELM_CACHE_HOME": "/tmp/lk-helm/cache",
            "HELM_CONFIG_HOME": "/tmp/lk-helm/config",
            "HELM_DATA_HOME": "/tmp/lk-helm/data",
            "KUBECONFIG": "/dev/null",
        }
    )
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=REPO, env=env, **kw)


def set_args(values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        if isinstance(value, bool):
            out += ["--set", f"{key}={str(value).lower()}"]
        elif isinstance(value, float):  # --set reads 0.5 as a string
            out += ["--set-json", f"{key}={json.dumps(value)}"]
        elif isinstance(value, int):
            out += ["--set", f"{key}={value}"]
        else:
            out += ["--set-string", f"{key}={value}"]
    return out


def template(values: dict[str, Any] | None = None, *, required: bool = True) -> subprocess.CompletedProcess[str]:
    merged = dict(REQUIRED) if required else {}
    merged.update(values or {})
    return run([tool("helm", "helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *set_args(merged)])


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    proc = template(values)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def only(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def walk(node: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


NON_DEFAULT: dict[str, Any] = {
    "controllerName": "edge",
    "rbac.allowSecretCreate": False,
    "serviceMonitor.enabled": True,
    "prometheusRule.enabled": True,
    "prometheusRule.labels.release": "kube-prometheus-stack",
    "konnect.caSecretName": "konnect-ca",
    "konnect.address": "https://eu.kic.api.konghq.com",
    "logFormat": "text",
    "logLevel": "debug",
    "pollingPeriod": "6h",
    "leaderElection.enabled": False,
    "commonLabels.team": "platform",
    "podLabels.tier": "control",
    "podAnnotations.example\\.com/owner": "platform",
    "replicaCount": 1,  # leader election off allows no more (test_leader_election_cannot_be_off_...)
}

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "non-default": NON_DEFAULT,
    "secret-name-override": {"secretName": "my-kong-license", "leaderElection.leaseName": "my-lease"},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    values = VARIANTS[request.param]
    return request.param, values, render(values)


# ------------------------------------------------------------------------------------- promtool
def test_promtool_check_rules() -> None:
    proc = run([tool("prometheus", "promtool"), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}\n{proc.stderr}"


def test_promtool_test_rules() -> None:
    proc = run([tool("prometheus", "promtool"), "test", "rules", str(ALERT_TESTS)])
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}\n{proc.stderr}"


def _alert_names() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    expected = {
        "LicenseKeeperLicenseExpiringSoon",
        "LicenseKeeperLicenseExpiryCritical",
        "LicenseKeeperLicenseExpired",
        "LicenseKeeperKonnectSyncStale",
        "LicenseKeeperSecretNotPresent",
        "LicenseKeeperNoLeader",
        "LicenseKeeperGatewayLicenseMismatch",
        "LicenseDeliveryDrift",
    }
    assert set(_alert_names()) == expected
    for name in expected:
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name}: no firing case"
        assert any(not c.get("exp_alerts") for c in mine), f"{name}: no non-firing case"


def test_alerts_have_annotations_and_runbooks_that_exist() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    ops = OPERATIONS.read_text()
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        ann = rule.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, rule["alert"]
        url = ann.get("runbook_url", "")
        assert "docs/operations.md#" in url, rule["alert"]
        anchor = url.rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower()
        assert f'id="{anchor}"' in ops, f"docs/operations.md has no anchor {anchor}"


# ------------------------------------------------------------------------------------------ helm
def test_helm_lint() -> None:
    proc = run([tool("helm", "helm"), "lint", "--strict", str(CHART), *set_args(REQUIRED)])
    assert proc.returncode == 0, f"helm lint failed:\n{proc.stdout}\n{proc.stderr}"
    proc = run([tool("helm", "helm"), "lint", "--strict", str(CHART), *set_args({**REQUIRED, **NON_DEFAULT})])
    assert proc.returncode == 0, f"helm lint (non-default values) failed:\n{proc.stdout}\n{proc.stderr}"
    proc = run([tool("helm", "helm"), "lint", "--strict", str(CHART), *set_args({**REQUIRED, **DELIVERY_ALL})])
    assert proc.returncode == 0, f"helm lint (delivery values) failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_required_values_fail_clearly(missing: str) -> None:
    values = {k: v for k, v in REQUIRED.items() if k != missing}
    proc = template(values, required=False)
    assert proc.returncode != 0
    assert f"{missing} is required" in proc.stderr


def test_schema_rejects_unknown_and_bad_values() -> None:
    assert template({"pollingPeriod": "twelve hours"}).returncode != 0
    assert template({"logFormat": "xml"}).returncode != 0
    assert template({"nonsense": "x"}).returncode != 0
    json.loads((CHART / "values.schema.json").read_text())


# ------------------------------------------------------------------------------------------ the image
DIGEST = "sha256:" + "ab" * 32


def _image(values: dict[str, Any]) -> str:
    _, c = _container(render(values))
    return str(c["image"])


def _chart_yaml() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "Chart.yaml").read_text()))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, "license-keeper:{app}"),
        ({"image.tag": "1.2.3"}, "license-keeper:1.2.3"),
        ({"image.repository": "registry.example.com/license-keeper"}, "registry.example.com/license-keeper:{app}"),
        ({"image.registry": "registry.example.com"}, "registry.example.com/license-keeper:{app}"),
        ({"image.registry": "10.255.255.7:5000/kong", "image.tag": "2.0.0"},
         "10.255.255.7:5000/kong/license-keeper:2.0.0"),
        ({"image.registry": "registry.example.com/kong", "image.digest": DIGEST},
         f"registry.example.com/kong/license-keeper@{DIGEST}"),
        ({"image.registry": "registry.example.com", "image.tag": "9.9.9", "image.digest": DIGEST},
         f"registry.example.com/license-keeper@{DIGEST}"),
        ({"image.digest": DIGEST}, f"license-keeper@{DIGEST}"),
    ],
    ids=["default", "tag", "repository-with-host", "registry", "registry-port-path", "registry-digest",
         "digest-over-tag", "digest-only"],
)  # fmt: skip
def test_image_from_registry_repository_tag_and_digest(values: dict[str, Any], expected: str) -> None:
    """[registry/]repository@digest when a digest is given, else [registry/]repository:tag (appVersion)."""
    assert _image(values) == expected.format(app=_chart_yaml()["appVersion"])


def test_image_version_label_follows_the_tag() -> None:
    dep, _ = _container(render({"image.registry": "registry.example.com", "image.digest": DIGEST}))
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == _chart_yaml()["appVersion"]


@pytest.mark.parametrize(
    "bad",
    [
        {"image.registry": "https://registry.example.com"},
        {"image.registry": "registry.example.com/kong@x"},
        {"image.registry": "registry example.com"},
        {"image.registry": "registry.example.com/"},
        {"image.digest": "sha256:abc"},
        {"image.digest": "latest"},
        {"image.repository": ""},
    ],
)
def test_schema_rejects_bad_image_values(bad: dict[str, Any]) -> None:
    assert template(bad).returncode != 0


def test_one_version_number() -> None:
    """__version__ is the one place the version is set; Chart.yaml's version and appVersion follow it."""
    from license_keeper import __version__

    chart = _chart_yaml()
    assert (chart["version"], chart["appVersion"]) == (__version__, __version__), (
        "charts/license-keeper/Chart.yaml must carry __version__ from src/license_keeper/__init__.py as both "
        "version and appVersion (make release refuses otherwise)"
    )


def test_no_cluster_scope_and_no_delete(variant: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, _, objs = variant
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition"}
    for o in objs:
        assert o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']}/{o['metadata']['name']} not namespaced"
    for o in objs:
        for rule in o.get("rules", []) if o["kind"] == "Role" else []:
            assert "delete" not in rule["verbs"] and "deletecollection" not in rule["verbs"]
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    # and nowhere else either (e.g. a stray verbs list)
    for k, v in walk(objs):
        if k == "verbs":
            assert "delete" not in v


def _expected_names(values: dict[str, Any]) -> tuple[str, str]:
    controller = values.get("controllerName", "kong")
    secret = values.get("secretName") or f"{controller}-license"
    lease = values.get("leaderElection.leaseName") or f"{controller}-license-keeper"
    return secret, lease


def test_role_rules(variant: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objs = variant
    secret, lease = _expected_names(values)
    role = only(objs, "Role")
    rules = role["rules"]

    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    named = [r for r in secret_rules if r.get("resourceNames")]
    unnamed = [r for r in secret_rules if not r.get("resourceNames")]
    assert len(named) == 1
    assert named[0]["resourceNames"] == [secret]
    assert named[0]["apiGroups"] == [""]
    assert set(named[0]["verbs"]) == {"get", "patch", "list", "watch"}  # writes are merge patches: no update
    # every secrets rule without resourceNames is the create-only rule, present only when allowed
    for r in unnamed:
        assert r["verbs"] == ["create"]
    if values.get("rbac.allowSecretCreate", True):
        assert len(unnamed) == 1
    else:
        assert unnamed == []

    lease_rules = [r for r in rules if "leases" in r["resources"]]
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in lease_rules)
    assert [r for r in lease_rules if r.get("resourceNames")] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease],
            "verbs": ["get", "update", "list", "watch"],
        }
    ]
    assert [r["verbs"] for r in lease_rules if not r.get("resourceNames")] == [["create"]]

    event_groups = {g for r in rules if "events" in r["resources"] for g in r["apiGroups"]}
    assert event_groups == {""}  # core/v1 Events only: the keeper never calls events.k8s.io
    for r in rules:
        if "events" in r["resources"]:
            assert set(r["verbs"]) == {"create", "patch"}
    assert {tuple(r["resources"]) for r in rules} <= {("secrets",), ("leases",), ("events",)}

    binding = only(objs, "RoleBinding")
    sa = only(objs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]


def test_license_secret(variant: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objs = variant
    secret_name, _ = _expected_names(values)
    secret = only(objs, "Secret")
    assert secret["metadata"]["name"] == secret_name
    assert secret.get("type") == "Opaque"
    assert "data" not in secret and "stringData" not in secret, "the Secret must be pre-created empty"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    labels = secret["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "license-keeper"
    assert "velero.io/exclude-from-backup" not in labels  # Velero backups always take the license


@pytest.mark.parametrize(
    "values",
    [{"licenseSecret.excludeFromBackup": True}, {"licenseSecret.labels.velero\\.io/exclude-from-backup": "true"}],
    ids=["excludeFromBackup", "label"],
)
def test_the_license_secret_cannot_be_excluded_from_backups(values: dict[str, Any]) -> None:
    proc = template(values)
    assert proc.returncode != 0
    assert "always part of Velero backups" in proc.stderr


def test_license_secret_can_be_left_out() -> None:
    objs = render({"licenseSecret.create": False})
    assert not [o for o in objs if o["kind"] == "Secret"]


def _container(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    dep = only(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dep, container


def test_deployment(variant: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    name, values, objs = variant
    secret_name, lease = _expected_names(values)
    dep, c = _container(objs)
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == values.get("replicaCount", 2)

    # security
    psc, sc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["serviceAccountName"] == only(objs, "ServiceAccount")["metadata"]["name"]

    # spread across nodes
    tsc = pod["topologySpreadConstraints"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" for t in tsc)
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"

    # probes and ports
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "probes": 8081}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}

    # downward API and settings
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    val = {k: e.get("value") for k, e in env.items()}
    assert all(k.startswith("LICENSE_KEEPER_") or k in {"POD_NAME", "POD_NAMESPACE"} for k in val)
    assert val["LICENSE_KEEPER_KONNECT_CONTROL_PLANE_ID"] == REQUIRED["konnect.controlPlaneId"]
    assert val["LICENSE_KEEPER_KONNECT_ADDRESS"] == values.get("konnect.address", "https://us.kic.api.konghq.com")
    assert val["LICENSE_KEEPER_KONNECT_TLS_CLIENT_CERT_FILE"] == "/etc/license-keeper/konnect/tls.crt"
    assert val["LICENSE_KEEPER_KONNECT_TLS_CLIENT_KEY_FILE"] == "/etc/license-keeper/konnect/tls.key"
    assert val["LICENSE_KEEPER_CONTROLLER_NAME"] == values.get("controllerName", "kong")
    assert val["LICENSE_KEEPER_SECRET_NAME"] == secret_name
    assert val["LICENSE_KEEPER_LEASE_NAME"] == lease
    assert val["LICENSE_KEEPER_LOG_FORMAT"] == values.get("logFormat", "json")
    assert val["LICENSE_KEEPER_LOG_LEVEL"] == values.get("logLevel", "info")
    assert val["LICENSE_KEEPER_POLLING_PERIOD"] == values.get("pollingPeriod", "12h")
    assert val["LICENSE_KEEPER_INITIAL_POLLING_PERIOD"] == "1m"
    assert val["LICENSE_KEEPER_RENEW_BEFORE"] == "7d"
    assert val["LICENSE_KEEPER_PROBE_ADDR"] == ":8081"
    assert val["LICENSE_KEEPER_METRICS_ADDR"] == ":8080"
    assert val["LICENSE_KEEPER_LEADER_ELECT"] == str(values.get("leaderElection.enabled", True)).lower()
    assert c["args"][0] == "run"

    # volumes: client cert as files, optional CA, writable /tmp
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    tls = vols[mounts["/etc/license-keeper/konnect"]["name"]]["secret"]
    assert tls["secretName"] == REQUIRED["konnect.tlsSecretName"]
    assert {i["key"] for i in tls["items"]} == {"tls.crt", "tls.key"}
    assert mounts["/etc/license-keeper/konnect"]["readOnly"] is True
    assert "emptyDir" in vols[mounts["/tmp"]["name"]]
    if values.get("konnect.caSecretName"):
        ca = vols[mounts["/etc/license-keeper/konnect-ca"]["name"]]["secret"]
        assert ca["secretName"] == "konnect-ca"
        assert val["LICENSE_KEEPER_KONNECT_CA_FILE"] == "/etc/license-keeper/konnect-ca/ca.crt"
    else:
        assert "LICENSE_KEEPER_KONNECT_CA_FILE" not in val

    # labels
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for k, v in dep["spec"]["selector"]["matchLabels"].items():
        assert pod_labels[k] == v
    if name == "non-default":
        assert pod_labels["tier"] == "control" and pod_labels["team"] == "platform"
        assert dep["spec"]["template"]["metadata"]["annotations"]["example.com/owner"] == "platform"
        for o in objs:
            assert o["metadata"]["labels"]["team"] == "platform", o["kind"]


def test_service_pdb_and_monitoring(variant: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objs = variant
    dep, _ = _container(objs)
    svc = only(objs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    budgets = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    if values.get("replicaCount", 2) == 1:
        assert budgets == []  # a budget for one replica would block every drain
    else:
        (pdb,) = budgets
        assert pdb["spec"]["minAvailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        # keepers unready for lack of a license must not block a node drain
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"

    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    rules = [o for o in objs if o["kind"] == "PrometheusRule"]
    if values.get("serviceMonitor.enabled"):
        (sm,) = monitors
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    else:
        assert monitors == []
    if values.get("prometheusRule.enabled"):
        (pr,) = rules
        assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        # rendered verbatim from files/alerts.yaml, alert templates untouched by helm; only the runbooks'
        # base moves to this chart version's docs (test_runbooks_point_at_the_docs_of_this_chart_version)
        version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
        versioned = ALERTS.read_text().replace("/blob/main/docs/", f"/blob/v{version}/docs/")
        assert pr["spec"] == yaml.safe_load(versioned)
        assert "{{ $labels.namespace }}" in json.dumps(pr["spec"])
    else:
        assert rules == []


def test_the_budget_is_left_out_for_one_replica_and_takes_max_unavailable() -> None:
    assert not [o for o in render({"replicaCount": 1}) if o["kind"] == "PodDisruptionBudget"]
    pdb = only(render({"replicaCount": 3, "podDisruptionBudget.maxUnavailable": 1}), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]


def test_runbook_base_url_can_be_replaced() -> None:
    objs = render({"prometheusRule.enabled": True, "prometheusRule.runbookBaseUrl": "https://wiki.example.com/lk/"})
    pr = only(objs, "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in pr["spec"]["groups"] for r in g["rules"]]
    assert urls and all(
        re.fullmatch(r"https://wiki\.example\.com/lk#license(keeper|delivery)[a-z]+", u) for u in urls
    ), urls


def _rules_of(values: dict[str, Any]) -> list[dict[str, Any]]:
    pr = only(render({"prometheusRule.enabled": True, **values}), "PrometheusRule")
    return [r for g in pr["spec"]["groups"] for r in g["rules"]]


def _promtool_check(rules: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = run([tool("prometheus", "promtool"), "check", "rules", str(path)])
    assert proc.returncode == 0, f"promtool check rules (rendered):\n{proc.stdout}\n{proc.stderr}"


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", duration)
    assert m, duration
    return int(m.group(1)) * units[m.group(2)]


def test_for_scale_scales_every_for_and_nothing_else(tmp_path: Path) -> None:
    """The live alert tests render `for:` an hour to a second; the result must stay a valid rule file."""
    shipped = _rules_of({})
    scaled = _rules_of({"prometheusRule.forScale": 1 / 3600})
    assert [r["alert"] for r in scaled] == [r["alert"] for r in shipped]
    for before, after in zip(shipped, scaled, strict=True):
        assert after["for"].endswith("ms"), after["for"]
        assert _seconds(after["for"]) == pytest.approx(_seconds(before["for"]) / 3600, abs=0.001)
        assert {k: v for k, v in after.items() if k != "for"} == {k: v for k, v in before.items() if k != "for"}
    pr = only(render({"prometheusRule.enabled": True, "prometheusRule.forScale": 1 / 3600}), "PrometheusRule")
    _promtool_check(pr["spec"], tmp_path)


def test_expiry_thresholds_are_chart_values(tmp_path: Path) -> None:
    rules = {
        r["alert"]: r
        for r in _rules_of({"prometheusRule.expiryWarningDays": 45, "prometheusRule.expiryCriticalDays": 10})
    }
    soon, critical = (
        rules["LicenseKeeperLicenseExpiringSoon"]["expr"],
        rules["LicenseKeeperLicenseExpiryCritical"]["expr"],
    )
    assert ") < 45 * 86400" in soon and ") >= 10 * 86400" in soon
    assert ") < 10 * 86400" in critical
    shipped = {r["alert"]: r for r in _rules_of({})}
    changed = [name for name in rules if rules[name] != shipped[name]]
    assert changed == ["LicenseKeeperLicenseExpiringSoon", "LicenseKeeperLicenseExpiryCritical"]
    _promtool_check({"groups": [{"name": "t", "rules": list(rules.values())}]}, tmp_path)


@pytest.mark.parametrize(
    "bad",
    [
        {"prometheusRule.forScale": 0},
        {"prometheusRule.forScale": -1},
        {"prometheusRule.forScale": "fast"},
        {"prometheusRule.expiryWarningDays": 0},
        {"prometheusRule.expiryCriticalDays": "7d"},
    ],
)
def test_schema_rejects_bad_alert_values(bad: dict[str, Any]) -> None:
    assert template({"prometheusRule.enabled": True, **bad}).returncode != 0


# ------------------------------------------------------------ the rendered RBAC on a real API server
_PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
}


def _render_in(namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """`helm template` of the chart with its required values and ``values``, into ``namespace``."""
    proc = run(
        [
            tool("helm", "helm"),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            namespace,
            *set_args({**REQUIRED, **values}),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _install(controlplane: Any, namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    """`helm template` into the namespace and create every object on the API server (as admin)."""
    objs = _render_in(namespace, values)
    assert {o["kind"] for o in objs} <= set(_PATHS), "a kind the API server test does not know"
    for o in objs:
        resp = controlplane.request("POST", _PATHS[o["kind"]].format(ns=namespace), o)
        assert resp.status == 201, f"{o['kind']}/{o['metadata']['name']}: {resp.status} {resp.body.get('message')}"
    return objs


@pytest.mark.parametrize("allow_create", [True, False], ids=["allowSecretCreate", "noSecretCreate"])
def test_rendered_rbac_on_a_real_api_server(controlplane: Any, namespace: str, allow_create: bool) -> None:
    objs = _install(controlplane, namespace, {"rbac.allowSecretCreate": allow_create})
    sa = only(objs, "ServiceAccount")["metadata"]["name"]
    token = controlplane.request_token(namespace, sa)

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> int:
        patch = "application/merge-patch+json" if method == "PATCH" else "application/json"
        return int(controlplane.request(method, path, body, token=token, content_type=patch).status)

    secrets = f"/api/v1/namespaces/{namespace}/secrets"
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"

    # the one Secret: read, list/watch by field selector, merge patch; no update
    assert call("GET", f"{secrets}/kong-license") == 200
    assert call("GET", f"{secrets}?fieldSelector=metadata.name%3Dkong-license") == 200
    assert call("GET", f"{secrets}?fieldSelector=metadata.name%3Dkong-license&watch=1&timeoutSeconds=1") == 200
    current = controlplane.request("GET", f"{secrets}/kong-license", token=token).body
    patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "data": {"license": "e30="}}
    assert controlplane.request("PATCH", f"{secrets}/kong-license", patch, token=token).status == 200
    current = controlplane.request("GET", f"{secrets}/kong-license", token=token).body
    assert call("PUT", f"{secrets}/kong-license", current) == 403  # the keeper never replaces it whole
    # nothing else, and never delete
    assert call("GET", secrets) == 403
    assert call("GET", f"{secrets}/someone-elses") == 403
    assert call("DELETE", f"{secrets}/kong-license") == 403
    # recreate after deletion only when allowed
    assert controlplane.request("DELETE", f"{secrets}/kong-license").status == 200
    fresh = {
        "metadata": {"name": "kong-license", "labels": {"app.kubernetes.io/managed-by": "license-keeper"}},
        "data": {"license": "e30="},
    }
    assert call("POST", secrets, fresh) == (201 if allow_create else 403)

    # leader election
    lease = {
        "metadata": {"name": "kong-license-keeper"},
        "spec": {"holderIdentity": "lk-0", "leaseDurationSeconds": 15},
    }
    assert call("POST", leases, lease) == 201
    got = controlplane.request("GET", f"{leases}/kong-license-keeper", token=token)
    assert got.status == 200
    got.body["spec"]["holderIdentity"] = "lk-1"
    assert call("PUT", f"{leases}/kong-license-keeper", got.body) == 200
    assert call("GET", f"{leases}/another-lease") == 403
    assert call("DELETE", f"{leases}/kong-license-keeper") == 403

    # core/v1 Events; none in events.k8s.io
    ref = {"kind": "Secret", "namespace": namespace, "name": "kong-license", "apiVersion": "v1"}
    core_event = {
        "metadata": {"name": "kong-license.1"},
        "involvedObject": ref,
        "reason": "Test",
        "message": "m",
        "type": "Normal",
    }
    assert call("POST", f"/api/v1/namespaces/{namespace}/events", core_event) == 201
    new_event = {
        "metadata": {"name": "kong-license.2"},
        "regarding": ref,
        "reason": "Test",
        "note": "m",
        "type": "Normal",
        "action": "Test",
        "reportingController": "license-keeper",
        "reportingInstance": "lk-0",
        "eventTime": "2026-01-01T00:00:00.000000Z",
    }
    assert call("POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", new_event) == 403  # unused API


def test_rendered_environment_is_accepted_by_the_keeper_settings(
    variant: tuple[str, dict[str, Any], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every LICENSE_KEEPER_* variable the chart sets is a setting `license-keeper run` knows, with a valid value."""
    from license_keeper.config import Settings, load_settings

    _, values, objs = variant
    _, c = _container(objs)
    for name in list(os.environ):
        if name.startswith(("LICENSE_KEEPER_", "CONTROLLER_KONNECT_")):
            monkeypatch.delenv(name)
    env = {e["name"]: e["value"] for e in c["env"] if e["name"].startswith("LICENSE_KEEPER_")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    known = {"LICENSE_KEEPER_" + f.name.upper() for f in dataclasses.fields(Settings)}
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    settings = load_settings()
    secret_name, lease = _expected_names(values)
    assert settings.effective_secret_name == secret_name
    assert settings.effective_lease_name == lease
    assert settings.leader_elect is values.get("leaderElection.enabled", True)
    assert settings.polling_period == {"12h": 43200, "6h": 21600}[values.get("pollingPeriod", "12h")]


def test_helm_lifecycle_keeps_the_license(controlplane: Any, namespace: str) -> None:
    """install -> the keeper writes -> upgrade -> uninstall, with the real helm on a real API server.

    Helm forces `app.kubernetes.io/managed-by: Helm` on every object it installs or upgrades, so the
    pre-created Secret carries the adopt annotation: the keeper must still count it as its own.
    """
    from license_keeper.kube import Kube
    from license_keeper.policy import WriteAction, manageable, plan_write
    from license_keeper.store import SecretStore, SyncOutcome, snapshot_from
    from license_keeper.testing.licenses import make_record

    helm = tool("helm", "helm")
    kube = ["--kubeconfig", str(controlplane.admin_kubeconfig), "--namespace", namespace]
    secret_path = f"/api/v1/namespaces/{namespace}/secrets/kong-license"

    def helm_run(*args: str) -> None:
        proc = run([helm, *args, *kube])
        assert proc.returncode == 0, f"helm {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"

    helm_run("install", RELEASE, str(CHART), *set_args(REQUIRED))
    live = controlplane.must("GET", secret_path)
    assert not live.get("data")
    assert live["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert manageable(snapshot_from(live))

    # the keeper fills it, with its own store code
    record = make_record(updated_at=1_700_000_000)

    async def keeper_sync() -> SyncOutcome:
        async with Kube.from_kubeconfig(controlplane.admin_kubeconfig) as kube:
            return await SecretStore(kube, namespace, "kong-license").sync(record)

    assert asyncio.run(keeper_sync()).wrote == "create"
    live = controlplane.must("GET", secret_path)
    # Helm's label stays: Helm resets it on upgrade and demands it when installing again.
    assert live["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    helm_run("upgrade", RELEASE, str(CHART), *set_args({**REQUIRED, "logLevel": "debug"}))
    after = controlplane.must("GET", secret_path)
    assert after["data"] == live["data"], "helm upgrade must not touch the license"
    assert manageable(snapshot_from(after)), "after an upgrade the keeper must still own the Secret"
    assert plan_write(snapshot_from(after), record).action == WriteAction.NONE, "no repair write after an upgrade"

    helm_run("uninstall", RELEASE)
    kept = controlplane.request("GET", secret_path)
    assert kept.status == 200 and kept.body["data"] == live["data"], "helm uninstall must keep the Secret"
    helm_run("install", RELEASE, str(CHART), *set_args(REQUIRED))  # the kept Secret is adopted again
    again = controlplane.must("GET", secret_path)
    assert again["data"] == live["data"], "a re-install must not empty the license"
    assert plan_write(snapshot_from(again), record).action == WriteAction.NONE
    helm_run("uninstall", RELEASE)
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    assert controlplane.must("GET", deployments)["items"] == []


# ------------------------------------------------------------------------------------------ delivery
DELIVERY_ALL: dict[str, Any] = {
    "delivery.period": "5m",
    "delivery.adminApi.urls[0]": "https://kong-cp-admin.kong:8444",
    "delivery.adminApi.urls[1]": "https://kong-cp-admin.edge:8444",
    "delivery.adminApi.tokenSecretName": "kong-admin-token",
    "delivery.adminApi.clientCertSecretName": "kong-admin-client",
    "delivery.adminApi.caSecretName": "kong-admin-ca",
    "delivery.adminApi.trustedNetwork": True,
    "delivery.adminApi.tlsServerName": "kong-admin.kong.svc",
    "delivery.adminService.services[0]": "kong-admin:admin-tls",
    "delivery.adminService.services[1]": "edge/kong-dp-admin",
    "delivery.kongLicense.name": "kong-license",
    "delivery.restart.deployments[0]": "kong-gateway",
    "delivery.restart.statefulSets[0]": "kong-db",
}


def _env(objs: list[dict[str, Any]]) -> dict[str, str]:
    _, c = _container(objs)
    return {e["name"]: e.get("value", "") for e in c["env"]}


def _delivery_rbac(objs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cluster = [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    restart = [o for o in objs if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["name"].endswith("-restart")]
    return cluster, restart


def _discovery_rbac(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Role", "RoleBinding") and o["metadata"]["name"].endswith("-discovery")]


def test_delivery_is_off_by_default() -> None:
    objs = render()
    assert not [k for k in _env(objs) if k.startswith(("LICENSE_KEEPER_DELIVER", "LICENSE_KEEPER_DELIVERY"))]
    assert _delivery_rbac(objs) == ([], []) and _discovery_rbac(objs) == []


def test_delivery_targets_render_settings_mounts_and_rbac(monkeypatch: pytest.MonkeyPatch) -> None:
    from license_keeper.config import load_settings

    objs = render(DELIVERY_ALL)
    env = _env(objs)
    assert env["LICENSE_KEEPER_DELIVER"] == (
        "admin-api=https://kong-cp-admin.kong:8444,admin-api=https://kong-cp-admin.edge:8444,"
        f"admin-svc={NAMESPACE}/kong-admin:admin-tls,admin-svc=edge/kong-dp-admin,"
        "konglicense=kong-license,restart=deployment/kong-gateway,restart=statefulset/kong-db"
    )
    assert env["LICENSE_KEEPER_DELIVER_ADMIN_TRUSTED_NETWORK"] == "true"
    assert env["LICENSE_KEEPER_DELIVER_ADMIN_TLS_SERVER_NAME"] == "kong-admin.kong.svc"
    assert env["LICENSE_KEEPER_DELIVERY_PERIOD"] == "5m"
    dep, c = _container(objs)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v["secret"] for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    for env_name, secret in (
        ("LICENSE_KEEPER_DELIVER_ADMIN_TOKEN_FILE", "kong-admin-token"),
        ("LICENSE_KEEPER_DELIVER_ADMIN_CLIENT_CERT_FILE", "kong-admin-client"),
        ("LICENSE_KEEPER_DELIVER_ADMIN_CLIENT_KEY_FILE", "kong-admin-client"),
        ("LICENSE_KEEPER_DELIVER_ADMIN_CA_FILE", "kong-admin-ca"),
    ):
        path = Path(env[env_name])
        volume = vols[mounts[str(path.parent)]]
        assert volume["secretName"] == secret
        assert path.name in {i["path"] for i in volume["items"]}

    # the rendered settings are valid for the keeper
    for name in list(os.environ):
        if name.startswith(("LICENSE_KEEPER_", "CONTROLLER_KONNECT_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("LICENSE_KEEPER_"):
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert [t.kind for t in settings.delivery_targets()] == [
        "admin-api",
        "admin-api",
        "admin-svc",
        "admin-svc",
        "konglicense",
        "restart",
        "restart",
    ]
    assert settings.delivery_period == 300.0

    cluster, restart = _delivery_rbac(objs)
    (cr,) = [o for o in cluster if o["kind"] == "ClusterRole"]
    assert cr["rules"] == [
        {
            "apiGroups": ["configuration.konghq.com"],
            "resources": ["konglicenses"],
            "resourceNames": ["kong-license"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["configuration.konghq.com"], "resources": ["konglicenses"], "verbs": ["create"]},
        {"apiGroups": ["configuration.konghq.com"], "resources": ["konglicenses"], "verbs": ["list"]},
    ]
    (crb,) = [o for o in cluster if o["kind"] == "ClusterRoleBinding"]
    assert crb["roleRef"]["name"] == cr["metadata"]["name"] and NAMESPACE in cr["metadata"]["name"]
    assert crb["subjects"] == [
        {"kind": "ServiceAccount", "name": only(objs, "ServiceAccount")["metadata"]["name"], "namespace": NAMESPACE}
    ]
    (role,) = [o for o in restart if o["kind"] == "Role"]
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": ["kong-gateway"],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": ["apps"], "resources": ["statefulsets"], "resourceNames": ["kong-db"], "verbs": ["get", "patch"]},
    ]
    for obj in [*cluster, *restart]:
        for rule in obj.get("rules", []):
            assert set(rule["verbs"]) <= {"get", "patch", "create", "list"}, "never delete, update or watch"

    # admin Services: a Role in each Service's namespace, list/watch on EndpointSlices and nothing else
    discovery = _discovery_rbac(objs)
    roles = {o["metadata"]["namespace"]: o for o in discovery if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in discovery if o["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {NAMESPACE, "edge"}
    for ns, role in roles.items():
        assert role["rules"] == [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
        ]
        assert bindings[ns]["roleRef"]["name"] == role["metadata"]["name"]
        assert bindings[ns]["subjects"] == [
            {"kind": "ServiceAccount", "name": only(objs, "ServiceAccount")["metadata"]["name"], "namespace": NAMESPACE}
        ]


@pytest.mark.parametrize(
    ("values", "cluster_role", "restart_role"),
    [
        ({"delivery.adminApi.urls[0]": "https://kong:8444"}, False, False),
        ({"delivery.kongLicense.name": "kl"}, True, False),
        ({"delivery.restart.deployments[0]": "gw"}, False, True),
        ({"delivery.kongLicense.name": "kl", "rbac.create": False}, False, False),
        ({"delivery.adminService.services[0]": "kong-admin"}, False, False),
    ],
)
def test_each_targets_rbac_only_when_enabled(values: dict[str, Any], cluster_role: bool, restart_role: bool) -> None:
    objs = render(values)
    cluster, restart = _delivery_rbac(objs)
    assert bool(cluster) is cluster_role and bool(restart) is restart_role
    discovery = _discovery_rbac(objs)
    assert bool(discovery) is ("delivery.adminService.services[0]" in values), discovery


def test_admin_service_credentials_mounted_without_admin_api_urls() -> None:
    env = _env(render({"delivery.adminService.services[0]": "kong-admin", "delivery.adminApi.caSecretName": "ca"}))
    assert env["LICENSE_KEEPER_DELIVER"] == f"admin-svc={NAMESPACE}/kong-admin"
    assert env["LICENSE_KEEPER_DELIVER_ADMIN_CA_FILE"].endswith("/ca.crt")
    assert "LICENSE_KEEPER_DELIVER_ADMIN_TRUSTED_NETWORK" not in env


def test_konglicense_without_detect_competing_has_no_list() -> None:
    cluster, _ = _delivery_rbac(
        render({"delivery.kongLicense.name": "kl", "delivery.kongLicense.detectCompeting": False})
    )
    (cr,) = [o for o in cluster if o["kind"] == "ClusterRole"]
    assert all("list" not in r["verbs"] for r in cr["rules"])


@pytest.mark.parametrize(
    "bad",
    [
        {"delivery.adminApi.urls[0]": "kong:8444"},
        {"delivery.adminApi.urls[0]": "https://user:pw@kong:8444"},
        {"delivery.kongLicense.name": "Bad_Name"},
        {"delivery.restart.deployments[0]": "Bad_Name"},
        {"delivery.adminService.services[0]": "Kong/Admin"},
        {"delivery.adminService.services[0]": "kong/admin:"},
        {"delivery.adminService.services[0]": "a/b/c"},
        {"delivery.adminApi.trustedNetwork": "yes"},
        {"delivery.period": "ten minutes"},
        {"delivery.nonsense": "x"},
    ],
)
def test_schema_rejects_bad_delivery_values(bad: dict[str, Any]) -> None:
    assert template(bad).returncode != 0


def test_rendered_delivery_rbac_on_a_real_api_server(controlplane: Any, namespace: str) -> None:
    from license_keeper.testing.kic import KONGLICENSES, install_konglicense_crd

    install_konglicense_crd(controlplane)
    kl_name = f"kl-{namespace}"
    values = {"delivery.kongLicense.name": kl_name, "delivery.restart.deployments[0]": "kong-gateway"}
    objs = _render_in(namespace, values)
    paths = {
        **_PATHS,
        "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    }
    for o in objs:
        resp = controlplane.request("POST", paths[o["kind"]].format(ns=namespace), o)
        assert resp.status == 201, f"{o['kind']}/{o['metadata']['name']}: {resp.status} {resp.body.get('message')}"
    token = controlplane.request_token(namespace, only(objs, "ServiceAccount")["metadata"]["name"])

    def call(method: str, path: str, body: Any = None) -> int:
        return int(controlplane.request(method, path, body, token=token).status)

    def kl(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "configuration.konghq.com/v1alpha1",
            "kind": "KongLicense",
            "metadata": {"name": name},
            "rawLicenseString": "{}",
        }

    assert call("POST", KONGLICENSES, kl(kl_name)) == 201
    assert call("GET", f"{KONGLICENSES}/{kl_name}") == 200
    assert call("GET", KONGLICENSES) == 200
    assert call("DELETE", f"{KONGLICENSES}/{kl_name}") == 403
    other = f"other-{namespace}"
    assert controlplane.request("POST", KONGLICENSES, kl(other)).status == 201
    assert call("GET", f"{KONGLICENSES}/{other}") == 403

    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    for name in ("kong-gateway", "not-ours"):
        body = {
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"a": name}},
                "template": {
                    "metadata": {"labels": {"a": name}},
                    "spec": {"containers": [{"name": "c", "image": "kong"}]},
                },
            },
        }
        # (only the admin creates these; the keeper never creates workloads)
        assert call("POST", deployments, body) == 403
        assert controlplane.request("POST", deployments, body).status == 201
    assert call("GET", f"{deployments}/kong-gateway") == 200
    assert call("GET", f"{deployments}/not-ours") == 403
    # the restart target reads back what the license Secret holds, with the keeper's own Role
    assert call("GET", f"/api/v1/namespaces/{namespace}/secrets/kong-license") == 200
    assert call("GET", f"/apis/apps/v1/namespaces/{namespace}/statefulsets/kong-gateway") == 403
    assert call("DELETE", f"{deployments}/kong-gateway") == 403


def test_rendered_discovery_rbac_on_a_real_api_server(controlplane: Any, namespace: str) -> None:
    other = controlplane.create_namespace(f"{namespace}-gw")
    values = {"delivery.adminService.services[0]": "kong-admin", "delivery.adminService.services[1]": f"{other}/dp"}
    objs = _render_in(namespace, values)
    for o in objs:
        ns = o["metadata"].get("namespace", namespace)
        if o["kind"] in _PATHS:
            resp = controlplane.request("POST", _PATHS[o["kind"]].format(ns=ns), o)
            assert resp.status == 201, f"{o['kind']}/{o['metadata']['name']}: {resp.status} {resp.body.get('message')}"
    token = controlplane.request_token(namespace, only(objs, "ServiceAccount")["metadata"]["name"])

    def call(method: str, path: str) -> int:
        return int(controlplane.request(method, path, None, token=token).status)

    for ns in (namespace, other):
        slices = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
        assert call("GET", f"{slices}?labelSelector=kubernetes.io/service-name%3Dkong-admin") == 200
        assert call("GET", f"{slices}?watch=true&timeoutSeconds=1") == 200
        assert call("GET", f"{slices}/some-slice") == 403, "get is not needed"
        assert call("DELETE", f"{slices}/some-slice") == 403
        assert call("GET", f"/api/v1/namespaces/{ns}/pods") == 403
    third = controlplane.create_namespace(f"{namespace}-x")
    assert call("GET", f"/apis/discovery.k8s.io/v1/namespaces/{third}/endpointslices") == 403


# ------------------------------------------------------------------------------------------ durations
GO_DURATIONS = {
    "pollingPeriod": "1h30m",
    "initialPollingPeriod": "1m30s",
    "renewBefore": "6d12h",
    "konnect.timeout": "45s",
    "leaderElection.leaseDuration": "15s",
    "leaderElection.renewDeadline": "10s",
    "leaderElection.retryPeriod": "2s500ms",
    "delivery.period": "1h5m",
    "delivery.adminApi.urls[0]": "https://kong:8444",
    "delivery.adminApi.timeout": "10.5s",
}


def test_durations_take_go_syntax_in_chart_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """`1h30m` is accepted by the schema and by the keeper that reads the rendered environment."""
    from license_keeper.config import load_settings

    env = _env(render(GO_DURATIONS))
    for name in list(os.environ):
        if name.startswith(("LICENSE_KEEPER_", "CONTROLLER_KONNECT_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("LICENSE_KEEPER_"):
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.polling_period, settings.initial_polling_period, settings.renew_before) == (5400, 90, 561600)
    assert (settings.leader_elect_retry_period, settings.delivery_period) == (2.5, 3900)
    assert settings.deliver_admin_timeout == 10.5
    for bad in ("1h30", "5 minutes", "-5s", "1e3"):
        assert template({"pollingPeriod": bad}).returncode != 0, bad


def test_the_charts_role_is_the_keepers_rules(variant: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    """The chart grants what the keeper calls, no more: the same rules the e2e keepers run under, whose
    every verb tests/e2e/test_sync.py finds in the API server's audit log."""
    from license_keeper.testing.keeper import keeper_rules

    _, values, objs = variant
    secret, lease = _expected_names(values)
    allow_create = values.get("rbac.allowSecretCreate", True)

    def as_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, tuple[str, ...], frozenset[str]]]:
        return {
            (group, resource, tuple(r.get("resourceNames") or ()), frozenset(r["verbs"]))
            for r in rules
            for group in r["apiGroups"]
            for resource in r["resources"]
        }

    assert as_set(only(objs, "Role")["rules"]) == as_set(keeper_rules(secret, lease, allow_create=allow_create))


# ------------------------------------------------------------------------------ beside Kong's chart (issue 21 #4)
def render_file(values: dict[str, Any], tmp_path: Path, *, release: str = RELEASE, namespace: str = NAMESPACE) -> str:
    """`helm template` with a values file (lists and maps as a user writes them); the raw output."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = run([tool("helm", "helm"), "template", release, str(CHART), "--namespace", namespace, "-f", str(path)])
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return proc.stdout


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


KONG_KONNECT = {  # Kong chart's ingressController.konnect block, as a user would copy it
    "controlPlaneID": REQUIRED["konnect.controlPlaneId"],
    "apiHostname": "eu.kic.api.konghq.com",
    "tlsClientCertSecretName": REQUIRED["konnect.tlsSecretName"],
}


def test_kongs_value_names_render_as_ours(tmp_path: Path) -> None:
    ours = render({"konnect.address": "https://eu.kic.api.konghq.com"})
    theirs = docs(render_file({"konnect": KONG_KONNECT}, tmp_path))
    assert _container(theirs)[1] == _container(ours)[1]
    assert _volumes(theirs) == _volumes(ours)
    deprecated_name = {"konnect": {**KONG_KONNECT, "controlPlaneID": "", "runtimeGroupID": "rg"}}
    deprecated = docs(render_file(deprecated_name, tmp_path))
    assert _env(deprecated)["LICENSE_KEEPER_KONNECT_CONTROL_PLANE_ID"] == "rg"


def _volumes(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(only(objs, "Deployment")["spec"]["template"]["spec"]["volumes"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"konnect.controlPlaneID": "other"}, "konnect.controlPlaneId and konnect.controlPlaneID differ"),
        (
            {"konnect.tlsClientCertSecretName": "other"},
            "konnect.tlsSecretName and konnect.tlsClientCertSecretName differ",
        ),
        (
            {"konnect.address": "https://us.kic.api.konghq.com:443", "konnect.apiHostname": "eu.kic.api.konghq.com"},
            "konnect.address and konnect.apiHostname differ",
        ),
    ],
)
def test_two_names_for_one_value_must_agree(values: dict[str, Any], message: str) -> None:
    proc = template(values)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def _mapping_table() -> list[tuple[str, str]]:
    text = (CHART / "README.md").read_text()
    section = text.split("## Kong's value names", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.MULTILINE)


def test_the_mapping_table_covers_every_kong_name_the_chart_accepts() -> None:
    """One table in the chart README maps Kong's names to ours; every alias the schema accepts is in it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    rows = _mapping_table()
    assert rows, "charts/license-keeper/README.md has no 'Kong's value names' table"
    accepted = {f"konnect.{k}" for k in ("controlPlaneID", "runtimeGroupID", "apiHostname", "tlsClientCertSecretName")}
    accepted |= {"image.pullSecrets", "extraLabels"}
    assert accepted <= {kong.split(" ")[0] for kong, _ in rows}

    def known(path: str) -> bool:
        node = schema
        for part in path.split("."):
            node = node.get("properties", {}).get(part)
            if node is None:
                return False
        return True

    for kong, ours in rows:
        assert known(ours.split(" ")[0]), f"{ours} (for {kong}) is not a value of this chart"
        if kong in accepted:
            assert known(kong), f"{kong} is in the table as accepted but the schema rejects it"


def test_escape_hatches(tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    values: dict[str, Any] = {
        "image": {
            "registry": "registry.example.com",
            "repository": "platform/license-keeper",
            "digest": digest,
            "pullSecrets": ["kongs"],  # Kong's name and shape: a list of Secret names
        },
        "revisionHistoryLimit": 2,
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraVolumes": [{"name": "extra-ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "extra-ca", "mountPath": "/etc/extra-ca", "readOnly": True}],
        "imagePullSecrets": [{"name": "ours"}],
    }
    objs = docs(render_file({**_required_nested(), **values}, tmp_path))
    dep, c = _container(objs)
    assert c["image"] == f"registry.example.com/platform/license-keeper@{digest}"
    assert dep["spec"]["revisionHistoryLimit"] == 2
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "ours"}, {"name": "kongs"}]
    assert {"name": "TZ", "value": "UTC"} in c["env"]
    assert {"name": "extra-ca", "configMap": {"name": "corporate-ca"}} in dep["spec"]["template"]["spec"]["volumes"]
    assert {"name": "extra-ca", "mountPath": "/etc/extra-ca", "readOnly": True} in c["volumeMounts"]
    tagged = _container(render({"image.registry": "registry.example.com", "image.tag": "1.10"}))[1]["image"]
    assert tagged == "registry.example.com/license-keeper:1.10"
    assert _container(render())[1]["image"] == "license-keeper:0.1.0"
    assert only(render(), "Deployment")["spec"]["revisionHistoryLimit"] == 5


def _required_nested() -> dict[str, Any]:
    return {
        "konnect": {
            "controlPlaneId": REQUIRED["konnect.controlPlaneId"],
            "tlsSecretName": REQUIRED["konnect.tlsSecretName"],
        }
    }


def _with_network_policy() -> dict[str, Any]:
    return {**_required_nested(), "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"]}}}


def test_replicas_spread_over_nodes_and_zones_by_default() -> None:
    dep, _ = _container(render())
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [t["topologyKey"] for t in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert all(t["whenUnsatisfiable"] == "ScheduleAnyway" and t["maxSkew"] == 1 for t in spread)
    selector = dep["spec"]["selector"]["matchLabels"]
    assert all(t["labelSelector"]["matchLabels"] == selector for t in spread)


def test_network_policy_is_optional_and_lets_out_only_the_api_server_konnect_and_dns(tmp_path: Path) -> None:
    assert not [o for o in render() if o["kind"] == "NetworkPolicy"]
    proc = template({"networkPolicy.enabled": True})
    assert proc.returncode != 0 and "networkPolicy.apiServer.cidrs is required" in proc.stderr
    objs = docs(render_file(_with_network_policy(), tmp_path))
    policy = only(objs, "NetworkPolicy")
    dep, _ = _container(objs)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    egress = spec["egress"]
    assert egress[0] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
    }
    assert egress[1] == {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    dns = egress[2]
    assert {p["port"] for p in dns["ports"]} == {53} and {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    assert dns["to"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    assert len(egress) == 3
    ingress_ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics", "probes"}


def test_the_network_policy_is_accepted_by_the_api_server(controlplane: Any, namespace: str, tmp_path: Path) -> None:
    objs = docs(render_file(_with_network_policy(), tmp_path, namespace=namespace))
    policy = only(objs, "NetworkPolicy")
    resp = controlplane.request("POST", f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies", policy)
    assert resp.status == 201, resp.body.get("message")


LOOKALIKES = {  # strings YAML 1.1 reads as something else when a template forgets to quote them
    "konnect.tlsSecretName": "yes",
    "konnect.caSecretName": "on",
    "konnect.caSecretKey": "true",
    "konnect.controlPlaneId": "012",
    "secretName": "no",
    "leaderElection.leaseName": "off",
    "priorityClassName": "null",
    "serviceAccount.name": "0x1F",
    "delivery.adminApi.urls[0]": "https://kong:8444",
    "delivery.adminApi.tokenSecretName": "1.5",
    "delivery.adminApi.tokenSecretKey": "~",
    "podLabels.tier": "on",
    "image.pullPolicy": "Always",
    "tmpSizeLimit": "64Mi",
    "serviceMonitor.enabled": True,
    "serviceMonitor.interval": "1m",
}
STRING_KEYS = {"name", "namespace", "secretName", "key", "priorityClassName", "serviceAccountName", "value", "image"}


def test_strings_stay_strings_everywhere() -> None:
    """`--set konnect.tlsSecretName=y` must not become a boolean, in any template: every string is quoted."""
    proc = run([tool("helm", "helm"), "template", "yes", str(CHART), "--namespace", "on", *set_args(LOOKALIKES)])
    assert proc.returncode == 0, proc.stderr
    objs = docs(proc.stdout)
    for k, v in walk(objs):
        if k in STRING_KEYS:
            assert isinstance(v, str | dict | list), (k, v)
        if k in ("labels", "annotations", "matchLabels"):
            assert all(isinstance(x, str) for x in v.values()), (k, v)
    assert all(o["metadata"]["namespace"] == "on" for o in objs)
    dep, _ = _container(objs)
    pod = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["konnect-client-tls"]["secret"]["secretName"] == "yes"
    assert vols["konnect-ca"]["secret"]["secretName"] == "on"
    assert vols["konnect-ca"]["secret"]["items"][0]["key"] == "true"
    assert vols["kong-admin-token"]["secret"] == {
        "secretName": "1.5",
        "defaultMode": 0o440,
        "items": [{"key": "~", "path": "token"}],
    }
    assert pod["priorityClassName"] == "null" and pod["serviceAccountName"] == "0x1F"
    assert only(objs, "Secret")["metadata"]["name"] == "no"
    assert _env(objs)["LICENSE_KEEPER_KONNECT_CONTROL_PLANE_ID"] == "012"
    assert dep["spec"]["template"]["metadata"]["labels"]["tier"] == "on"
    assert dep["metadata"]["labels"]["app.kubernetes.io/instance"] == "yes"
    # go-yaml (what Kubernetes and Helm read with) also takes y/n for booleans, which PyYAML does not.
    y = {**REQUIRED, "konnect.tlsSecretName": "y"}
    proc = run([tool("helm", "helm"), "template", RELEASE, str(CHART), *set_args(y)])
    assert proc.returncode == 0 and 'secretName: "y"' in proc.stdout, proc.stderr


def test_leader_election_cannot_be_off_with_more_than_one_replica() -> None:
    proc = template({"leaderElection.enabled": False, "replicaCount": 2})
    assert proc.returncode != 0 and "leaderElection.enabled=false needs replicaCount: 1" in proc.stderr
    single = only(render({"leaderElection.enabled": False, "replicaCount": 1}), "Deployment")
    # Without election even a rolling update must not run two keepers: the old pod goes first.
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    assert only(render(), "Deployment")["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_runbooks_point_at_the_docs_of_this_chart_version() -> None:
    """By default every runbook_url points into docs/operations.md as tagged with the chart's version, at an
    anchor that exists in the docs that ship with it."""
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    base = f"https://github.com/license-keeper/license-keeper/blob/v{version}/docs/operations.md"
    rule = only(render({"prometheusRule.enabled": True}), "PrometheusRule")
    ops = OPERATIONS.read_text()
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert rules
    for r in rules:
        url = r["annotations"]["runbook_url"]
        assert url == f"{base}#{r['alert'].lower()}", url
        assert f'id="{r["alert"].lower()}"' in ops, f"docs/operations.md has no anchor for {r['alert']}"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "{{ .Chart.Version }}" in values["prometheusRule"]["runbookBaseUrl"]


def test_the_schema_names_each_key_once() -> None:
    """A JSON object with a key twice is legal, and the last one silently wins (a merge once left two
    `image.registry` rules, and the stricter one refused registries with a path)."""

    def once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), sorted(k for k in set(keys) if keys.count(k) > 1)
        return dict(pairs)

    json.loads((CHART / "values.schema.json").read_text(), object_pairs_hook=once)
