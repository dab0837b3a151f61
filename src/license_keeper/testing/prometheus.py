"""A real Prometheus server and Alertmanager on loopback, and a webhook receiver, for tests.

Both binaries are built from the Go module proxy by ``tools/controlplane/build.sh`` (components
``prometheus`` and ``alertmanager``), like the control plane. Prometheus scrapes the targets the harness
writes as file_sd JSON, with the labels a prometheus-operator ServiceMonitor would give them (``namespace``,
``pod``, ``job``...), evaluates the rule files it is given (the chart's, as ``helm template`` renders them:
``rules_from_chart``) and sends alerts to Alertmanager, whose only receiver is a webhook served by
``AlertReceiver`` in the test process::

    with AlertReceiver() as receiver, Alertmanager(tmp / "am", receiver.url) as am, Prometheus(
        tmp / "prom", alertmanager=am.address
    ) as prom:
        prom.set_rules("chart", rules_from_chart(CHART, {"prometheusRule.forScale": 1 / 3600}))
        prom.set_targets("keepers", [Target("127.0.0.1:8080", {"namespace": "kong", "pod": "lk-0"})])
        prom.query("license_keeper_leader")
        receiver.alerts()          # what Alertmanager posted, firing and resolved

Intervals are short (scrape and evaluation every 500 ms) so that a test sees an alert fire within seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .controlplane import _child_guard, _stop_process, binary, free_port

__all__ = [
    "AlertReceiver",
    "Alertmanager",
    "PanelQuery",
    "Prometheus",
    "PrometheusError",
    "ReceivedAlert",
    "Target",
    "dashboard_queries",
    "label_names",
    "rules_from_chart",
    "selectors",
]

SCRAPE_INTERVAL = "500ms"
EVALUATION_INTERVAL = "500ms"


class PrometheusError(RuntimeError):
    """Prometheus or Alertmanager could not be started or answered an error."""


# --- HTTP, JSON ------------------------------------------------------------------------------------------


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _api(base: str, path: str, params: Mapping[str, str] | None = None) -> Any:
    """GET a Prometheus API path; the ``data`` of a success, else PrometheusError with its message."""
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    status, raw = _http("GET", url)
    doc = json.loads(raw or b"{}")
    if status != 200 or doc.get("status") != "success":
        raise PrometheusError(f"GET {path} {dict(params or {})}: HTTP {status}: {doc.get('error', raw[:200])}")
    return doc["data"]


def _write_json(path: Path, doc: Any) -> None:
    # Write and rename: Prometheus watches these files and must never read half of one.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


# --- one child process -----------------------------------------------------------------------------------


class _Server:
    """A binary of the monitoring stack on a loopback port, in ``workdir``, ready when ``ready_path`` is 200."""

    component = ""
    name = ""
    ready_path = "/-/ready"

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def args(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> _Server:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [str(binary(self.component, self.name)), *self.args()],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_guard(),
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise PrometheusError(f"{self.name} exited with {self._proc.returncode}; see {self.log_path}")
            try:
                if _http("GET", self.url + self.ready_path, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise PrometheusError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- Alertmanager ----------------------------------------------------------------------------------------


class Alertmanager(_Server):
    """One Alertmanager (no cluster) that posts every alert group to ``webhook_url``, resolved ones too.

    Grouped by every label (``...``), so each alert is its own notification; a group's first notification
    leaves at once and its changes (a resolve) within ``group_interval``."""

    component = name = "alertmanager"

    def __init__(self, workdir: Path | str, webhook_url: str, *, group_interval: str = "1s") -> None:
        super().__init__(workdir)
        self.webhook_url = webhook_url
        self.group_interval = group_interval

    def write_config(self) -> None:
        route = {
            "receiver": "test",
            "group_by": ["..."],
            "group_wait": "0s",
            "group_interval": self.group_interval,
            "repeat_interval": "1h",
        }
        hook = {"url": self.webhook_url, "send_resolved": True}
        config = {"route": route, "receivers": [{"name": "test", "webhook_configs": [hook]}]}
        _write_json(self.workdir / "alertmanager.json", config)  # JSON is YAML

    def args(self) -> list[str]:
        return [
            f"--config.file={self.workdir / 'alertmanager.json'}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # a single instance: no gossip port, no settle wait
            "--log.level=warn",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (API v2), active and not."""
        status, raw = _http("GET", f"{self.url}/api/v2/alerts")
        if status != 200:
            raise PrometheusError(f"alertmanager /api/v2/alerts: HTTP {status}")
        alerts: list[dict[str, Any]] = json.loads(raw)
        return alerts


# --- Prometheus ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One scrape target: ``host:port`` and the labels its discovery gives it."""

    address: str
    labels: Mapping[str, str] = field(default_factory=dict)


class Prometheus(_Server):
    """A Prometheus server scraping file_sd targets and evaluating the rule files in ``workdir/rules``.

    Two scrape jobs: ``keepers`` (plain HTTP, like the chart's metrics Service) and ``gateways`` (HTTPS,
    verified with ``gateway_ca_file``, like Kong's status or Admin API). A target's ``job`` label, when
    given, wins over the job name, as with a ServiceMonitor."""

    component = "prometheus"
    name = "prometheus"

    def __init__(
        self,
        workdir: Path | str,
        *,
        alertmanager: str | None = None,
        gateway_ca_file: Path | None = None,
        scrape_interval: str = SCRAPE_INTERVAL,
        evaluation_interval: str = EVALUATION_INTERVAL,
    ) -> None:
        super().__init__(workdir)
        self.alertmanager = alertmanager
        self.gateway_ca_file = gateway_ca_file
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval

    @property
    def rules_dir(self) -> Path:
        return self.workdir / "rules"

    @property
    def targets_dir(self) -> Path:
        return self.workdir / "targets"

    def _scrape_config(self, job: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        sd = {"files": [str(self.targets_dir / f"{job}.json")], "refresh_interval": "1s"}
        return {"job_name": job, "file_sd_configs": [sd], **extra}

    def write_config(self) -> None:
        self.rules_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        for job in ("keepers", "gateways"):
            if not (self.targets_dir / f"{job}.json").exists():
                _write_json(self.targets_dir / f"{job}.json", [])
        tls = {"scheme": "https", "tls_config": {"ca_file": str(self.gateway_ca_file)}} if self.gateway_ca_file else {}
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(self.rules_dir / "*.yaml")],
            "scrape_configs": [self._scrape_config("keepers", {}), self._scrape_config("gateways", tls)],
        }
        if self.alertmanager:
            targets = [{"targets": [self.alertmanager]}]
            config["alerting"] = {"alertmanagers": [{"static_configs": targets, "api_version": "v2"}]}
        _write_json(self.workdir / "prometheus.json", config)

    def args(self) -> list[str]:
        return [
            f"--config.file={self.workdir / 'prometheus.json'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--web.enable-lifecycle",  # POST /-/reload after set_rules
            # Apply new targets within 100 ms instead of 5 s: keepers come and go within a test.
            "--scrape.discovery-reload-interval=100ms",
            # Firing alerts are sent again this often; Alertmanager resolves one not sent for 4 x this.
            "--rules.alert.resend-delay=2s",
            "--log.level=warn",
        ]

    # configuration at run time
    def set_targets(self, job: str, targets: Iterable[Target]) -> None:
        """Replace the targets of ``job`` (``keepers`` or ``gateways``); Prometheus sees the file change."""
        groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
        _write_json(self.targets_dir / f"{job}.json", groups)

    def set_rules(self, name: str, rules: Mapping[str, Any]) -> None:
        """Install a rule file (``{"groups": [...]}``) as ``rules/<name>.yaml`` and reload."""
        _write_json(self.rules_dir / f"{name}.yaml", rules)
        self.reload()

    def reload(self) -> None:
        status, raw = _http("POST", f"{self.url}/-/reload", b"")
        if status != 200:
            raise PrometheusError(f"reload failed: HTTP {status}: {raw[:300]!r}; see {self.log_path}")

    # the API
    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector result: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = _api(self.url, "/api/v1/query", {"query": expr})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Every pending and firing alert of the rules, with ``labels`` and ``state``."""
        alerts: list[dict[str, Any]] = _api(self.url, "/api/v1/alerts")["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = _api(self.url, "/api/v1/rules")["groups"]
        return groups

    def parse(self, expr: str) -> dict[str, Any]:
        """The syntax tree of a PromQL expression, as Prometheus' own parser reads it."""
        tree: dict[str, Any] = _api(self.url, "/api/v1/parse_query", {"query": expr})
        return tree

    def series(self, match: str) -> list[dict[str, str]]:
        """The label sets of every series matching ``match`` seen in the last 5 minutes."""
        now = time.time()
        found: list[dict[str, str]] = _api(
            self.url, "/api/v1/series", {"match[]": match, "start": str(now - 300), "end": str(now)}
        )
        return found

    def targets_up(self, job: str) -> dict[str, float]:
        """``{address: up}`` of the targets of ``job`` that have been scraped at least once."""
        active = _api(self.url, "/api/v1/targets", {"state": "active"})["activeTargets"]
        return {
            t["labels"]["instance"]: 1.0 if t["health"] == "up" else 0.0
            for t in active
            if t["scrapePool"] == job and t["health"] != "unknown"
        }


# --- the webhook receiver --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedAlert:
    """One alert of one webhook notification from Alertmanager."""

    received_at: float  # time.time() at arrival
    status: str  # firing or resolved
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


class AlertReceiver:
    """Alertmanager's webhook receiver: a plain HTTP server on loopback, in a thread, that keeps every alert
    it is sent, in order of arrival."""

    def __init__(self) -> None:
        self._alerts: list[ReceivedAlert] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-receiver", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/alerts"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._keep(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # the test's output is not the place
                pass

        return Handler

    def _keep(self, notification: Mapping[str, Any]) -> None:
        now = time.time()
        got = [
            ReceivedAlert(now, a["status"], a.get("labels", {}), a.get("annotations", {}), a.get("startsAt", ""))
            for a in notification.get("alerts", [])
        ]
        with self._lock:
            self._alerts.extend(got)

    def alerts(self, since: float = 0.0, where: Callable[[ReceivedAlert], bool] | None = None) -> list[ReceivedAlert]:
        """What arrived at or after ``since`` (``time.time()``), optionally filtered."""
        with self._lock:
            return [a for a in self._alerts if a.received_at >= since and (where is None or where(a))]

    def start(self) -> AlertReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> AlertReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the chart's rules -----------------------------------------------------------------------------------


def rules_from_chart(
    chart: Path, values: Mapping[str, Any] | None = None, *, workdir: Path, required: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The rule file the chart's PrometheusRule carries, exactly as ``helm template`` renders it with
    ``prometheusRule.enabled`` and ``values`` (dotted keys, as with --set)."""
    import yaml

    merged: dict[str, Any] = {**(required or {}), "prometheusRule.enabled": True, **(values or {})}
    values_file = workdir / "values.json"
    workdir.mkdir(parents=True, exist_ok=True)
    values_file.write_text(json.dumps(_nest(merged)))  # JSON is YAML; numbers keep their type
    env = {**os.environ, **{f"HELM_{k}_HOME": str(workdir / "helm" / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}
    env["KUBECONFIG"] = os.devnull  # helm template reads no cluster
    proc = subprocess.run(
        [str(binary("helm", "helm")), "template", "lk", str(chart), "-f", str(values_file)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise PrometheusError(f"helm template failed: {proc.stderr.strip()}")
    (rule,) = [d for d in yaml.safe_load_all(proc.stdout) if d and d.get("kind") == "PrometheusRule"]
    spec: dict[str, Any] = rule["spec"]
    return spec


def _nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


# --- the chart's Grafana dashboard -----------------------------------------------------------------------


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str  # as written, with Grafana's variables

    def resolved(self, variables: Mapping[str, str]) -> str:
        """The query as Grafana sends it, with ``$name`` / ``${name}`` replaced (longest names first)."""
        expr = self.expr
        for name in sorted(variables, key=len, reverse=True):
            expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
        return expr


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every Prometheus query of every panel (rows' nested panels included)."""
    out: list[PanelQuery] = []
    for panel in _panels(dashboard.get("panels", [])):
        for t in panel.get("targets", []):
            if t.get("expr"):
                out.append(PanelQuery(panel.get("title", ""), t.get("refId", ""), t["expr"]))
    return out


def _panels(panels: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def selectors(tree: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """The vector and matrix selectors of a syntax tree from ``Prometheus.parse``."""
    if tree.get("type") in ("vectorSelector", "matrixSelector"):
        yield tree
    for key in ("expr", "lhs", "rhs", "param"):
        if isinstance(tree.get(key), dict):
            yield from selectors(tree[key])
    for arg in tree.get("args", []) or []:
        if isinstance(arg, dict):
            yield from selectors(arg)


def label_names(tree: Mapping[str, Any]) -> Iterable[str]:
    """Every label name a syntax tree reads: in matchers, by/without, on/ignoring and group_left/right."""
    for sel in selectors(tree):
        yield from (m["name"] for m in sel.get("matchers", []) if m["name"] != "__name__")
    yield from _grouping_labels(tree)


def _grouping_labels(tree: Mapping[str, Any]) -> Iterable[str]:
    yield from tree.get("grouping", []) or []
    matching = tree.get("matching") or {}
    yield from matching.get("labels", []) or []
    yield from matching.get("include", []) or []
    for key in ("expr", "lhs", "rhs", "param"):
        if isinstance(tree.get(key), dict):
            yield from _grouping_labels(tree[key])
    for arg in tree.get("args", []) or []:
        if isinstance(arg, dict):
            yield from _grouping_labels(arg)
