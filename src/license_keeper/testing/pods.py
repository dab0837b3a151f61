"""The chart and DB-less gateways on the test node (``testing.node``), as a Kong user runs them.

``Cluster`` is one namespace's view: kubectl and helm on the node's admin kubeconfig, the API, the audit log.
The gateways are the Kong stand-in's gateway image, run as Kong's chart runs Kong with
``enterprise.license_secret``: ``KONG_LICENSE_DATA`` from the license Secret's ``license`` key, read at start.
"Licensed" is what a gateway pod itself reports at its pod address (``/license/report``). Used by the node
tests and ``make demo-node``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from license_keeper import __version__
from license_keeper.license import parse_license

from .audit import AuditEntry
from .controlplane import ControlPlane, binary
from .node import Node

__all__ = [
    "GATEWAY",
    "GATEWAY_IMAGE",
    "KEEPER",
    "KEEPER_IMAGE",
    "LEASE",
    "LOCAL_KEEPER_IMAGE",
    "RELEASE",
    "SECRET",
    "Cluster",
    "ImageBuildError",
    "all_gateways_run",
    "build_images",
    "eventually",
    "gateway_deployment",
    "gateway_pods",
    "http_text",
    "install_keeper",
    "keeper_pods",
    "keeper_secret_writes",
    "keeper_values",
    "pod_ready",
    "running_key",
    "secret_key",
]

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "license-keeper"
KEEPER_IMAGE = f"localhost/license-keeper:{__version__}"
GATEWAY_IMAGE = f"localhost/license-keeper-gateway:{__version__}"
RELEASE = "lk"
KEEPER = f"{RELEASE}-license-keeper"  # the chart's fullname for this release
SECRET = "kong-license"
LEASE = "kong-license-keeper"
GATEWAY = "gateway"
ADMIN_PORT = 8001
WRITE_VERBS = ("create", "update", "patch", "delete")


# The keeper's image as the chart names it: built locally and imported into the node (pullPolicy Never), unless
# a Cluster is given the values of an image the node pulls from a registry (the node tests: a release's digest).
LOCAL_KEEPER_IMAGE: dict[str, Any] = {
    "repository": KEEPER_IMAGE.rsplit(":", 1)[0], "tag": __version__, "pullPolicy": "Never",
}  # fmt: skip


class ImageBuildError(RuntimeError):
    """An image could not be built."""


def build_images() -> None:
    """The keeper image as `make image` builds it, and the gateway image on top (both local, no registry)."""
    env = {**os.environ, "IMAGE": KEEPER_IMAGE, "KEEPER_IMAGE": KEEPER_IMAGE}
    for script in ("build.sh", "build-gateway.sh"):
        done = subprocess.run(
            [str(REPO / "tools" / "image" / script)],
            capture_output=True, text=True, env={**env, "IMAGE": GATEWAY_IMAGE} if "gateway" in script else env,
            check=False, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            raise ImageBuildError(f"tools/image/{script} failed: {done.stderr.strip()[-1500:]}")


@dataclass
class Cluster:
    """The node's cluster, seen from one test's namespace: kubectl, helm, the API and the pods' own answers."""

    node: Node
    namespace: str
    workdir: Path
    # the chart's image values for the keeper (image.registry, repository, tag, digest, pullPolicy)
    keeper_image: dict[str, Any] = field(default_factory=lambda: dict(LOCAL_KEEPER_IMAGE))

    @property
    def cp(self) -> ControlPlane:
        return self.node.cp

    def env(self) -> dict[str, str]:
        helm_home = self.workdir / "helm"
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "KUBECONFIG": str(self.cp.admin_kubeconfig),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        kubectl = str(binary("kubernetes", "kubectl"))
        return self._run(kubectl, "-n", self.namespace, *args, check=check, timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> str:
        return self._run(str(binary("helm", "helm")), "-n", self.namespace, *args, check=check, timeout=timeout)

    def _run(self, *argv: str, check: bool, timeout: float) -> str:
        done = subprocess.run(list(argv), capture_output=True, text=True, env=self.env(), timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])}… failed: {done.stderr.strip()[-1500:]}")
        return done.stdout + done.stderr

    def apply(self, obj: Mapping[str, Any]) -> None:
        path = self.workdir / f"{obj['kind']}-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(obj))
        self.kubectl("apply", "--server-side", "-f", str(path))

    def get(self, kind: str, name: str = "", selector: str = "") -> dict[str, Any]:
        args = ["get", kind, *([name] if name else []), *(["-l", selector] if selector else []), "-o", "json"]
        return dict(json.loads(self.kubectl(*args)))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return list(self.get("pods", selector=selector)["items"])

    def secret_data(self) -> dict[str, str]:
        data = self.get("secret", SECRET).get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def secret_writes(self, since: float, user: str | None = None) -> list[AuditEntry]:
        """Successful writes of the license Secret since ``since`` (Unix time), by the audit log."""
        entries = self.cp.audit_entries(since=since, namespace=self.namespace, resource="secrets")
        return [
            e for e in entries
            if e.name == SECRET and e.verb in WRITE_VERBS and e.ok and (user is None or e.username == user)
        ]  # fmt: skip

    def install(self, values: Mapping[str, Any], *, upgrade: bool = False, wait: bool = True) -> str:
        path = self.workdir / f"values-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(values))
        verb = ["upgrade", RELEASE] if upgrade else ["install", RELEASE]
        return self.helm(*verb, str(CHART), "-f", str(path), *(["--wait", "--timeout=120s"] if wait else []))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions
    )


def http_json(url: str, timeout: float = 3.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return dict(json.load(r))


def http_text(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def license_report(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a gateway pod runs, asked of the pod itself at its address (not the keeper's word)."""
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        return None
    try:
        return http_json(f"http://{ip}:{ADMIN_PORT}/license/report")
    except (OSError, urllib.error.URLError, ValueError):
        return None


def running_key(pod: Mapping[str, Any]) -> str | None:
    report = license_report(pod)
    lic = (report or {}).get("license") or {}
    key = lic.get("license_key")
    return str(key) if key and key != "UNLICENSED" else None


async def eventually(predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "") -> float:
    """Poll a blocking predicate in a thread until it is true; seconds it took."""
    start = time.monotonic()
    last: Any = None
    while time.monotonic() - start < timeout:
        last = await asyncio.to_thread(predicate)
        if last:
            return time.monotonic() - start
        await asyncio.sleep(interval)
    raise TimeoutError(f"not within {timeout} s: {what or predicate} (last: {last!r})")


# --- the chart and the gateways as a Kong user installs them ----------------------------------------------


def keeper_values(konnect: Any, image: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The chart's values for this node: the keeper's image (``image``: the chart's image values; default the
    local image), the Konnect stand-in, short periods. ``image={}`` leaves the chart's own image values."""
    values: dict[str, Any] = {
        "image": dict(LOCAL_KEEPER_IMAGE if image is None else image),
        "konnect": {
            "address": konnect.address,
            "controlPlaneId": konnect.control_plane_id,
            "tlsSecretName": "konnect-client",
            "caSecretName": "konnect-ca",
            "timeout": "3s",
        },
        "initialPollingPeriod": "1s",
        "pollingPeriod": "3s",
        "extraEnv": [{"name": "LICENSE_KEEPER_ALLOW_SHORT_PERIODS", "value": "true"}],
        "logFormat": "text",
        "delivery": {"period": "5s", "restart": {"deployments": [GATEWAY]}},
        "terminationGracePeriodSeconds": 10,
    }
    for key, value in overrides.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
    return values


def konnect_secrets(c: Cluster, konnect: Any) -> None:
    tls = konnect.tls
    c.kubectl("create", "secret", "tls", "konnect-client", f"--cert={tls.client_cert_file}",
              f"--key={tls.client_key_file}")  # fmt: skip
    c.kubectl("create", "secret", "generic", "konnect-ca", f"--from-file=ca.crt={tls.ca_file}")


def install_keeper(c: Cluster, konnect: Any, *, wait: bool = True, **overrides: Any) -> str:
    """`helm install` with the Konnect client Secrets; ``wait``: until the keepers are Ready (a license held)."""
    konnect_secrets(c, konnect)
    return c.install(keeper_values(konnect, c.keeper_image, **overrides), wait=wait)


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "readOnlyRootFilesystem": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def gateway_deployment(namespace: str, replicas: int = 3) -> dict[str, Any]:
    """DB-less gateways as Kong's chart runs them with `enterprise.license_secret`: KONG_LICENSE_DATA from the
    Secret's `license` key, read once at start."""
    env = [{"name": "KONG_LICENSE_DATA", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "license"}}}]
    container = {
        "name": "proxy",
        "image": GATEWAY_IMAGE,
        "imagePullPolicy": "Never",
        "env": env,
        "ports": [{"name": "admin", "containerPort": ADMIN_PORT}],
        "readinessProbe": {"httpGet": {"path": "/status", "port": "admin"}, "periodSeconds": 1},
        "securityContext": RESTRICTED_CONTAINER,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": GATEWAY, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": GATEWAY}},
            "template": {
                "metadata": {"labels": {"app": GATEWAY}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 3,
                    "containers": [container],
                },
            },
        },
    }


def gateway_pods(c: Cluster) -> list[dict[str, Any]]:
    return [p for p in c.pods(f"app={GATEWAY}") if not p["metadata"].get("deletionTimestamp")]


def keeper_pods(c: Cluster) -> list[dict[str, Any]]:
    return c.pods(f"app.kubernetes.io/instance={RELEASE}")


def secret_key(c: Cluster) -> str:
    return parse_license(c.secret_data()["license"]).license_key


def all_gateways_run(c: Cluster, key: str, replicas: int) -> bool:
    pods = gateway_pods(c)
    return len(pods) == replicas and all(pod_ready(p) and running_key(p) == key for p in pods)


def keeper_user(c: Cluster) -> str:
    return f"system:serviceaccount:{c.namespace}:{KEEPER}"


def keeper_secret_writes(c: Cluster, since: float) -> list[str]:
    return [e.brief() for e in c.secret_writes(since, keeper_user(c))]
