"""Run `license-keeper run` as a real process against a control plane and a Konnect stand-in.

Used by the end-to-end tests and by `make demo`; users can drive their own keeper processes with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .controlplane import free_port
from .probes import KeeperProbes

__all__ = ["KeeperProcess", "KonnectEndpoint", "clean_environ", "keeper_rules"]

# What configures the keeper and its CLI besides their flags: settings (ours and KIC's names), the
# kubeconfig, the namespace and the in-cluster hint.
KEEPER_ENV_PREFIXES = ("LICENSE_KEEPER_", "CONTROLLER_KONNECT_")
KEEPER_ENV_NAMES = ("KUBECONFIG", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST")


def clean_environ() -> dict[str, str]:
    """This process's environment without what configures the keeper, for a keeper or CLI subprocess
    whose behaviour must come from its flags alone, not from the shell the tests run in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(KEEPER_ENV_PREFIXES) and k not in KEEPER_ENV_NAMES}


def keeper_rules(secret_name: str, lease_name: str, *, allow_create: bool = True) -> list[dict[str, Any]]:
    """The least-privilege Role of a keeper: its Secret and Lease by name, Events; never delete."""
    rules: list[dict[str, Any]] = [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [secret_name],
            # Writes are merge patches (never a PUT): no `update`. list and watch with a name field selector.
            "verbs": ["get", "patch", "list", "watch"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease_name],
            # list and watch with a metadata.name field selector: followers watch for the release.
            "verbs": ["get", "update", "list", "watch"],
        },
        # RBAC cannot limit create by name: a new object has no name to match yet.
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    if allow_create:
        rules.append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]})
    return rules


@dataclass(frozen=True)
class KonnectEndpoint:
    address: str
    control_plane_id: str
    cert_file: Path
    key_file: Path
    ca_file: Path

    @classmethod
    def of(cls, standin: Any) -> KonnectEndpoint:
        """From a running ``KonnectStandIn``."""
        tls = standin.tls
        return cls(standin.address, standin.control_plane_id, tls.client_cert_file, tls.client_key_file, tls.ca_file)


@dataclass
class KeeperProcess(KeeperProbes):
    kubeconfig: Path
    namespace: str
    konnect: KonnectEndpoint
    workdir: Path
    name: str = "keeper-0"
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    probe_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    # The interpreter that runs the keeper: LICENSE_KEEPER_TEST_PYTHON runs the same tests against
    # another build (an older checkout's virtualenv, to show a regression test failing before its fix).
    python: str = field(default_factory=lambda: os.environ.get("LICENSE_KEEPER_TEST_PYTHON") or sys.executable)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "license_keeper",
            "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace}",
            f"--konnect-address={self.konnect.address}",
            f"--konnect-control-plane-id={self.konnect.control_plane_id}",
            f"--konnect-tls-client-cert-file={self.konnect.cert_file}",
            f"--konnect-tls-client-key-file={self.konnect.key_file}",
            f"--konnect-ca-file={self.konnect.ca_file}",
            f"--probe-addr=127.0.0.1:{self.probe_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            "--log-format=json",
            *self.args,
        ]

    def start(self) -> KeeperProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = clean_environ()
        # Tests poll in milliseconds; the keeper refuses periods that short unless told it runs in a harness.
        env.update(
            {"POD_NAME": self.name, "PYTHONUNBUFFERED": "1", "LICENSE_KEEPER_ALLOW_SHORT_PERIODS": "true", **self.env}
        )
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def exited(self) -> str | None:
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"exited with {self.proc.returncode}"

    # ending
    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> KeeperProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
