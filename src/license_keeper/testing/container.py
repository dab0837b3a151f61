"""Run the keeper's container image as the Helm chart runs it, against a local control plane.

Used by tests/image and bench/image.py; works with podman (or docker) on the host network::

    pod = PodFiles(workdir, uid=10001)
    mounts = pod.service_account(controlplane, namespace, "lk-license-keeper") + pod.konnect(standin.tls)
    k = KeeperContainer("license-keeper:0.1.0", env={**chart_env, **pod.env}, mounts=mounts,
                        probe_port=8081, metrics_port=8080).start()
    k.wait_ready(30)

What the kubelet would give the pod is made by hand: the ServiceAccount's token, CA and namespace where
in-cluster clients look for them, the API server's address in KUBERNETES_SERVICE_HOST/PORT, and the chart's
Secret volumes, each readable by the pod's group only (fsGroup). The container runs with the chart's
securityContext: numeric user, read-only root, /tmp a small tmpfs, no capabilities, no privilege escalation.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KONNECT_TLS_DIR = "/etc/license-keeper/konnect"  # the chart's mount paths
KONNECT_CA_DIR = "/etc/license-keeper/konnect-ca"


def hardened(uid: int = 10001) -> list[str]:
    """Run options matching the chart's securityContext (seccomp: the runtime's default profile)."""
    return [
        f"--user={uid}:{uid}",
        "--read-only",
        "--tmpfs=/tmp:rw,size=64m,mode=1777",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
    ]


@dataclass
class PodFiles:
    """The files and variables a pod gets from the kubelet, written under ``workdir``."""

    workdir: Path
    uid: int = 10001
    env: dict[str, str] = field(default_factory=dict)

    def _volume(self, name: str, files: Mapping[str, bytes], mode: int) -> Path:
        # As a Secret volume with fsGroup: owned by root, group of the pod, no access for others.
        root = self.workdir / name
        root.mkdir(parents=True, exist_ok=True)
        for file, data in files.items():
            path = root / file
            path.write_bytes(data)
            os.chown(path, 0, self.uid)
            path.chmod(mode)
        os.chown(root, 0, self.uid)
        root.chmod(0o750)
        return root

    def service_account(self, controlplane: Any, namespace: str, service_account: str) -> list[str]:
        """Mounts of a token for the ServiceAccount (as automountServiceAccountToken) and its API address."""
        token = controlplane.request_token(namespace, service_account)
        files = {"token": token.encode(), "ca.crt": controlplane.ca_file.read_bytes(), "namespace": namespace.encode()}
        api = urlsplit(controlplane.server)
        self.env.update(
            {"POD_NAMESPACE": namespace, "KUBERNETES_SERVICE_HOST": str(api.hostname),
             "KUBERNETES_SERVICE_PORT": str(api.port)}
        )  # fmt: skip
        return [f"{self._volume('serviceaccount', files, 0o440)}:{SA_DIR}:ro"]

    def konnect(self, tls: Any) -> list[str]:
        """Mounts of the Konnect client certificate and CA (a ``TLSMaterial``) at the chart's paths."""
        client = {"tls.crt": tls.client_cert_file.read_bytes(), "tls.key": tls.client_key_file.read_bytes()}
        ca = {"ca.crt": tls.ca_file.read_bytes()}
        return [
            f"{self._volume('konnect', client, 0o440)}:{KONNECT_TLS_DIR}:ro",
            f"{self._volume('konnect-ca', ca, 0o444)}:{KONNECT_CA_DIR}:ro",
        ]


@dataclass
class KeeperContainer:
    image: str
    env: Mapping[str, str]
    mounts: Sequence[str]
    probe_port: int
    metrics_port: int
    engine: Sequence[str] = ("podman",)
    args: Sequence[str] = ("run",)
    uid: int = 10001
    memory: str = "192m"  # the chart's limit
    name: str = field(default_factory=lambda: f"license-keeper-{uuid.uuid4().hex[:8]}")
    started_at: float = 0.0

    def _engine(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.engine, *args], capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> KeeperContainer:
        opts = ["run", "--detach", f"--name={self.name}", "--network=host", *hardened(self.uid)]
        opts += [f"--memory={self.memory}"] if self.memory else []
        opts += [f"--env={k}={v}" for k, v in self.env.items()]
        opts += [f"--volume={m}" for m in self.mounts]
        self.started_at = time.monotonic()
        proc = self._engine(*opts, self.image, *self.args)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.name} did not start ({proc.returncode}): {proc.stderr[-2000:]}")
        return self

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def running(self) -> bool:
        return self._engine("inspect", "--format={{.State.Running}}", self.name).stdout.strip() == "true"

    def ready(self) -> bool:
        return self._get(self.probe_port, "/readyz")[0] == 200

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from the engine's `run` until /readyz answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return time.monotonic() - self.started_at
            if not self.running():
                raise RuntimeError(f"{self.name} exited:\n{self.logs()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.logs()[-3000:]}")

    def metrics(self) -> dict[str, float]:
        """Samples as {'name{label="v",...}': value}, plus bare names for unlabelled ones."""
        status, text = self._get(self.metrics_port, "/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name}: /metrics answered {status}")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def writes(self) -> float:
        """Secret writes by this keeper (license_keeper_secret_writes_total, all labels)."""
        return sum(v for k, v in self.metrics().items() if k.startswith("license_keeper_secret_writes_total"))

    def rss_mib(self) -> float:
        pid = self._engine("inspect", "--format={{.State.Pid}}", self.name).stdout.strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def logs(self) -> str:
        proc = self._engine("logs", self.name)
        return proc.stdout + proc.stderr

    def stop(self, grace: int = 20) -> None:
        self._engine("stop", f"--time={grace}", self.name, timeout=grace + 30)

    def remove(self) -> None:
        self._engine("rm", "--force", self.name, timeout=60)

    def __enter__(self) -> KeeperContainer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
