"""The chart's Grafana dashboard: shipped off by default in a ConfigMap for the Grafana sidecar, and linted.

Grafana's own linter (github.com/grafana/dashboard-linter) cannot be built here: the Go module proxy
refuses the module it needs since v0.2.0 (github.com/grafana/grafana/apps/dashboard, 403) and every
earlier release (403), and it links Grafana's and Loki's AGPL code. So its rules that apply to a
Prometheus dashboard are checked here, as its docs state them (docs/rules/*.md in that repository), with
every query parsed by the real promtool. The queries run against a live Prometheus in
tests/e2e/test_alerts_live.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from license_keeper.testing.prometheus import PanelQuery, dashboard_queries

from .test_chart_static import CHART, only, render, run, tool

pytestmark = pytest.mark.controlplane  # helm and promtool from tools/controlplane/build.sh

DASHBOARD = CHART / "files" / "dashboard.json"
# Grafana's unit ids (packages/grafana-data/src/valueFormats/categories.ts) that this dashboard may use.
UNITS = {"none", "short", "s", "d", "dateTimeAsIso", "reqps", "bool"}
PANEL_KINDS_WITH_UNITS = {"stat", "singlestat", "graph", "table", "timeseries", "gauge"}
# What Grafana puts in for the variables when "All" is chosen (allValue) and for its own ones.
RESOLVED = {"namespace": ".+", "job": ".+", "instance": ".+", "__rate_interval": "2m", "__range": "1h"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


# ------------------------------------------------------------------------------------------ the chart
def test_the_dashboard_configmap_is_off_by_default_and_carries_the_sidecar_label() -> None:
    assert not [o for o in render() if o["kind"] == "ConfigMap"]
    values = {"grafanaDashboard.enabled": True, "grafanaDashboard.annotations.grafana_folder": "Kong"}
    cm = only(render(values), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Kong"}
    assert cm["metadata"]["namespace"] == "kong"
    assert json.loads(cm["data"]["license-keeper.json"]) == json.loads(DASHBOARD.read_text())
    other = only(
        render({**values, "grafanaDashboard.namespace": "monitoring", "grafanaDashboard.label": "dash"}), "ConfigMap"
    )
    assert other["metadata"]["namespace"] == "monitoring" and other["metadata"]["labels"]["dash"] == "1"


# ------------------------------------------------------------------ the linter's rules, one by one
def test_template_datasource_rule(dashboard: dict[str, Any]) -> None:
    sources = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert len(sources) == 1
    (ds,) = sources
    assert (ds["name"], ds["label"], ds["query"]) == ("datasource", "Data source", "prometheus")


@pytest.mark.parametrize("name", ["job", "instance"])
def test_template_job_and_instance_rules(dashboard: dict[str, Any], name: str) -> None:
    v = _variables(dashboard)[name]
    assert v["label"] == name and v["type"] == "query"
    assert v["datasource"]["uid"] in ("$datasource", "${datasource}")
    assert v["multi"] is True and v["allValue"] == ".+"


def test_template_on_time_change_reload_rule(dashboard: dict[str, Any]) -> None:
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            assert v["refresh"] == 2, v["name"]  # 2: on time range change


def test_template_label_promql_rule(dashboard: dict[str, Any], tmp_path: Path) -> None:
    queries = []
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"]["query"])
            assert m, v["query"]
            queries.append(PanelQuery(f"variable {v['name']}", "", m.group(1)))
    _promtool_parses(queries, tmp_path)


def test_panel_datasource_title_description_and_units_rules(dashboard: dict[str, Any]) -> None:
    for p in _panels(dashboard):
        assert p["title"] and p["description"], p["id"]
        assert p["datasource"]["uid"] in ("$datasource", "${datasource}"), p["title"]
        assert all(t["datasource"]["uid"] in ("$datasource", "${datasource}") for t in p["targets"]), p["title"]
        if p["type"] in PANEL_KINDS_WITH_UNITS:
            assert p["fieldConfig"]["defaults"].get("unit") in UNITS, p["title"]
        assert p["targets"], f"{p['title']}: panel-no-targets-rule"


def test_target_promql_rule(dashboard: dict[str, Any], tmp_path: Path) -> None:
    _promtool_parses(dashboard_queries(dashboard), tmp_path)


def test_target_job_instance_rate_interval_and_counter_rules(dashboard: dict[str, Any]) -> None:
    for q in dashboard_queries(dashboard):
        where = f"{q.panel}/{q.ref_id}: {q.expr}"
        # every selector filters on the dashboard's variables (each selector has braces here)
        assert q.expr.count('job=~"$job"') == q.expr.count("{"), where
        assert q.expr.count('instance=~"$instance"') == q.expr.count("{"), where
        for fn in ("rate", "irate", "increase"):
            for window in re.findall(rf"\b{fn}\([^\[]*\[([^\]]+)\]", q.expr):
                assert window == "$__rate_interval", where
        for counter in re.findall(r"\b(\w+_total)\{", q.expr):
            assert re.search(rf"\b(rate|irate|increase)\({counter}\{{", q.expr), f"{where}: counter {counter} not rated"


def _promtool_parses(queries: list[PanelQuery], tmp_path: Path) -> None:
    rules = [{"record": f"q:{i}", "expr": q.resolved(RESOLVED)} for i, q in enumerate(queries)]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([tool("prometheus", "promtool"), "check", "rules", str(path)])
    assert proc.returncode == 0, f"a dashboard query is not valid PromQL:\n{proc.stdout}\n{proc.stderr}"
