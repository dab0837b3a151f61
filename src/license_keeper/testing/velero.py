"""Velero with its AWS plugin and an S3 store (versitygw), backing up the test control plane, in a network
namespace of their own.

Velero runs as users run it, but as plain processes: the server out of cluster with a kubeconfig, the AWS
object-store plugin from a local plugin directory, versitygw as the bucket. All three are built from the Go
module proxy by ``tools/controlplane/build.sh`` (components ``velero``, ``velero-plugin-aws``, ``versitygw``).

Why a network namespace: Velero listens on ``*:8080`` (controller-runtime's metrics server; no flag changes
it). Inside a namespace that has only ``lo``, nothing any of the three binds is reachable from outside, and
nothing they dial can leave the machine. The control plane stays where the tests run it (host loopback);
a ``LoopbackBridge`` makes its port appear on the namespace's loopback, so the only path out of the
namespace is that one port, to that one API server.

Two things Velero expects of a cluster that this control plane does not give:

* Deployment ``velero/velero``: Velero's pod-volume restore action reads the server image from it on every
  restore, and without it every restore ends ``PartiallyFailed`` (nothing restored). A placeholder with
  ``replicas: 0`` is enough; nothing runs it.
* A namespace controller: ``delete_namespace`` empties a namespace and finalizes it, as kube-controller-manager
  would, so a restore can create it again.

Usage from the shell (a drill, root: it makes a network namespace)::

    python -m license_keeper.testing.velero start --workdir /tmp/lk-velero
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane, ControlPlaneError, _child_guard, _stop_process, binary, wait_for_signal

__all__ = [
    "LoopbackBridge",
    "NetworkNamespace",
    "Outcome",
    "VeleroStack",
    "VeleroUnavailable",
    "delete_namespace",
]

NAMESPACE = "velero"
BUCKET = "velero"
S3_PORT = 7070  # inside the private namespace: a fixed port cannot clash with anything
REGION = "us-east-1"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CLONE_NEWNET = 0x40000000
# What a namespace holds in these tests, emptied by delete_namespace before the namespace is finalized.
NAMESPACED_COLLECTIONS = (
    "/api/v1/namespaces/{ns}/secrets",
    "/api/v1/namespaces/{ns}/configmaps",
    "/api/v1/namespaces/{ns}/serviceaccounts",
    "/api/v1/namespaces/{ns}/events",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    "/apis/apps/v1/namespaces/{ns}/deployments",
)


class VeleroUnavailable(RuntimeError):
    """Velero cannot run here (not root, no `ip`, or the binaries are not built); one line says why."""


# --- the network namespace and the one way out of it ----------------------------------------------------


@dataclass
class NetworkNamespace:
    """A named network namespace (``ip netns``) with only ``lo``, up.

    It is entered through a file descriptor this process holds, not by name: the node harness removes every
    namespace that appeared while a node ran (another test run's node, on a shared machine, included), and
    the descriptor keeps ours usable even if its name goes.
    """

    name: str
    fd: int = -1

    def up(self) -> NetworkNamespace:
        if os.geteuid() != 0:
            raise VeleroUnavailable("Velero's harness makes a network namespace: run it as root")
        missing = [tool for tool in ("ip", "nsenter", "curl") if shutil.which(tool) is None]
        if missing:
            raise VeleroUnavailable(f"Velero's harness needs {', '.join(missing)}")
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.fd = os.open(Path("/run/netns") / self.name, os.O_RDONLY)
        subprocess.run(self.command(["ip", "link", "set", "lo", "up"]), check=True, capture_output=True)
        return self

    def down(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    @property
    def path(self) -> str:
        return f"/proc/{os.getpid()}/fd/{self.fd}"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside (nsenter execs it: the child's pid is the program's)."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def listen(self, port: int) -> socket.socket:
        """A listening TCP socket on the namespace's 127.0.0.1:port, made from a thread that enters it.

        A network namespace belongs to a thread, and a socket to the namespace it was made in: only the short
        helper thread enters, so this process and its other sockets stay on the host.
        """
        made: list[socket.socket | BaseException] = []

        def enter_and_bind() -> None:
            try:
                libc = ctypes.CDLL("libc.so.6", use_errno=True)
                if libc.setns(self.fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {self.name}")
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen(64)
                made.append(s)
            except BaseException as e:  # handed to the caller's thread
                made.append(e)

        t = threading.Thread(target=enter_and_bind, name=f"netns-{self.name}")
        t.start()
        t.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]


class LoopbackBridge:
    """127.0.0.1:port inside a namespace, forwarded to 127.0.0.1:port on the host: the API server's port.

    The same port on both sides, so the control plane's serving certificate (127.0.0.1) and its kubeconfigs
    hold inside too. Bytes are copied as they come (TLS end to end: the bridge sees no plaintext).
    """

    def __init__(self, netns: NetworkNamespace, port: int) -> None:
        self.netns = netns
        self.port = port
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> LoopbackBridge:
        self._listener = self.netns.listen(self.port)
        threading.Thread(target=self._accept, name="bridge-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.close()
            self._open.clear()

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                inside, _ = self._listener.accept()
            except OSError:
                return
            try:
                outside = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                inside.close()
                continue
            outside.settimeout(None)
            with self._lock:
                self._open.update((inside, outside))
            for a, b in ((inside, outside), (outside, inside)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
                with self._lock:
                    self._open.discard(s)


# --- namespace deletion without kube-controller-manager -------------------------------------------------


def delete_namespace(cp: ControlPlane, namespace: str, timeout: float = 30.0) -> None:
    """Delete a namespace and everything in it, as the namespace controller would: empty it, delete it,
    finalize it. Returns once it is gone (404)."""
    for collection in NAMESPACED_COLLECTIONS:
        cp.request("DELETE", collection.format(ns=namespace))
    cp.request("DELETE", f"/api/v1/namespaces/{namespace}")
    ns = cp.request("GET", f"/api/v1/namespaces/{namespace}")
    if ns.status == 200:
        body = ns.body
        body["spec"] = {"finalizers": []}
        cp.must("PUT", f"/api/v1/namespaces/{namespace}/finalize", body)
    deadline = time.monotonic() + timeout
    while cp.request("GET", f"/api/v1/namespaces/{namespace}").status != 404:
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"namespace {namespace} still there {timeout:.0f} s after its deletion")
        time.sleep(0.1)


# --- Velero --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a backup or restore ended, from its status (the CLI's exit code says less: see ``phase``)."""

    kind: str  # backup or restore
    name: str
    phase: str
    seconds: float
    warnings: int
    errors: int
    items: int  # backed up or restored

    @property
    def completed(self) -> bool:
        # A restore that skipped an existing object is Completed too, with a warning: check both.
        return self.phase == "Completed"


class VeleroStack:
    """versitygw, the Velero CRDs and BackupStorageLocation, and the Velero server, in a network namespace,
    backing up ``controlplane``. ``start()`` returns once the BackupStorageLocation is Available."""

    def __init__(self, controlplane: ControlPlane, workdir: Path) -> None:
        self.cp = controlplane
        self.workdir = Path(workdir)
        self.netns = NetworkNamespace(f"lk-velero-{secrets.token_hex(3)}")
        self.bridge = LoopbackBridge(self.netns, controlplane.apiserver_port)
        self.access_key = "lk-velero"
        self.secret_key = secrets.token_urlsafe(24)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._bin: dict[str, Path] = {}
        self.timings: dict[str, float] = {}
        self.kubeconfig = self.workdir / "velero.kubeconfig"

    # lifecycle
    def start(self, timeout: float = 60.0) -> VeleroStack:
        self._find_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for step in (self._network, self._s3, self._cluster_side, self._server):
            began = time.monotonic()
            step(timeout)
            self.timings[step.__name__.strip("_")] = time.monotonic() - began
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs.values()):
            _stop_process(proc, timeout=10)
        self._procs.clear()
        self.bridge.stop()
        self.netns.down()

    def __enter__(self) -> VeleroStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _find_binaries(self) -> None:
        try:
            self._bin = {
                "velero": binary("velero", "velero"),
                "plugin": binary("velero-plugin-aws", "velero-plugin-for-aws"),
                "versitygw": binary("versitygw", "versitygw"),
            }
        except ControlPlaneError as e:
            raise VeleroUnavailable(str(e)) from None

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                self.netns.command(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                preexec_fn=_child_guard(),  # a crashed test run leaves none behind (nsenter execs: it holds)
            )
        self._procs[name] = proc
        return proc

    def _until(self, what: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise VeleroUnavailable(f"{name} exited with {proc.returncode}; see {self.workdir}/{name}.log")
            if time.monotonic() > deadline:
                raise VeleroUnavailable(f"{what} not reached within {timeout:.0f} s; see {self.workdir}")
            time.sleep(0.1)

    # the steps of start()
    def _network(self, timeout: float) -> None:
        self.netns.up()
        self.bridge.start()

    def _s3(self, timeout: float) -> None:
        data = self.workdir / "s3data"
        data.mkdir(exist_ok=True)
        keys = {"ROOT_ACCESS_KEY": self.access_key, "ROOT_SECRET_KEY": self.secret_key}
        self._spawn(
            "versitygw", [str(self._bin["versitygw"]), "--port", f"127.0.0.1:{S3_PORT}", "posix", str(data)], keys
        )
        self._until("versitygw answering", lambda: self._create_bucket() in (200, 409), timeout)

    def _create_bucket(self) -> int:
        """PUT the bucket, SigV4-signed; versitygw wants x-amz-content-sha256 (of the empty body) as well."""
        out = subprocess.run(
            self.netns.command(
                [
                    "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                    "--aws-sigv4", f"aws:amz:{REGION}:s3", "-u", f"{self.access_key}:{self.secret_key}",
                    "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                    "-X", "PUT", f"http://127.0.0.1:{S3_PORT}/{BUCKET}",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        return int(out.stdout) if out.stdout.isdigit() else 0

    def _cluster_side(self, timeout: float) -> None:
        for crd in self._crds():
            resp = self.cp.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            if resp.status not in (201, 409):
                raise VeleroUnavailable(f"CRD {crd['metadata']['name']}: HTTP {resp.status}")
        self._until("Velero CRDs established", self._crds_established, timeout)
        if self.cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}").status == 404:
            self.cp.create_namespace(NAMESPACE)
        self._identity()
        base = f"/apis/velero.io/v1/namespaces/{NAMESPACE}"
        self.cp.must("POST", f"{base}/backupstoragelocations", self._storage_location())
        self.cp.must("POST", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", _placeholder_deployment())

    def _crds(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            self.netns.command([str(self._bin["velero"]), "install", "--crds-only", "--dry-run", "-o", "json"]),
            capture_output=True,
            text=True,
            check=True,
        )
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def _crds_established(self) -> bool:
        resp = self.cp.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        velero = [c for c in resp.body.get("items", []) if c["spec"]["group"] == "velero.io"]
        return bool(velero) and all(
            any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []  # null until the server sets them
            )
            for crd in velero
        )

    def _identity(self) -> None:
        """Velero's own ServiceAccount, bound to cluster-admin as Velero's install binds it: the audit log
        then tells Velero's writes (system:serviceaccount:velero:velero) from the keeper's and the tests'."""
        self.cp.create_service_account(NAMESPACE, "velero")
        self.cp.must(
            "POST",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "metadata": {"name": "velero"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": "velero", "namespace": NAMESPACE}],
            },
        )
        token = self.cp.request_token(NAMESPACE, "velero", seconds=24 * 3600)
        self.cp.write_kubeconfig(self.kubeconfig, token=token, user="velero", namespace=NAMESPACE)

    def _storage_location(self) -> dict[str, Any]:
        return {
            "apiVersion": "velero.io/v1",
            "kind": "BackupStorageLocation",
            "metadata": {"name": "default", "namespace": NAMESPACE},
            "spec": {
                "provider": "aws",
                "default": True,
                "objectStorage": {"bucket": BUCKET, "prefix": "license-keeper"},
                "config": {"region": REGION, "s3ForcePathStyle": "true", "s3Url": f"http://127.0.0.1:{S3_PORT}"},
            },
        }

    def _server(self, timeout: float) -> None:
        credentials = self.workdir / "credentials-velero"
        credentials.write_text(
            f"[default]\naws_access_key_id = {self.access_key}\naws_secret_access_key = {self.secret_key}\n"
        )
        credentials.chmod(0o600)
        tmp = self.workdir / "tmp"  # Velero writes BSL credential files to os.TempDir()
        tmp.mkdir(exist_ok=True)
        plugins = self._bin["plugin"].parent  # the server runs every executable in it
        argv = [
            str(self._bin["velero"]), "server", f"--kubeconfig={self.kubeconfig}", f"--namespace={NAMESPACE}",
            f"--plugin-dir={plugins}", "--metrics-address=127.0.0.1:8085", "--profiler-address=127.0.0.1:6060",
        ]  # fmt: skip
        self._spawn("velero-server", argv, {"AWS_SHARED_CREDENTIALS_FILE": str(credentials), "TMPDIR": str(tmp)})
        self._until("BackupStorageLocation Available", lambda: self._location_phase() == "Available", timeout)

    def _location_phase(self) -> str:
        resp = self.cp.request("GET", f"/apis/velero.io/v1/namespaces/{NAMESPACE}/backupstoragelocations/default")
        return str(resp.body.get("status", {}).get("phase", ""))

    # using it: the velero CLI, as users run it
    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        argv = [str(self._bin["velero"]), f"--kubeconfig={self.kubeconfig}", f"--namespace={NAMESPACE}", *args]
        return subprocess.run(self.netns.command(argv), capture_output=True, text=True, timeout=timeout, check=False)

    def backup(self, name: str, namespaces: Iterable[str], *args: str) -> Outcome:
        """``velero backup create NAME --include-namespaces … --wait``."""
        return self._run(
            "backup", name, ["backup", "create", name, f"--include-namespaces={','.join(namespaces)}"], args
        )

    def restore(self, name: str, backup: str, *args: str) -> Outcome:
        """``velero restore create NAME --from-backup BACKUP --wait`` (``args``: e.g.
        ``--existing-resource-policy=update``)."""
        return self._run("restore", name, ["restore", "create", name, f"--from-backup={backup}"], args)

    def _run(self, kind: str, name: str, command: list[str], args: Sequence[str]) -> Outcome:
        began = time.monotonic()
        out = self.cli(*command, *args, "--wait")
        seconds = time.monotonic() - began
        status = self.status(kind, name)
        if not status:
            raise VeleroUnavailable(f"velero {kind} create {name} made no {kind} (exit {out.returncode})")
        progress = status.get("progress", {})
        items = progress.get("itemsBackedUp" if kind == "backup" else "itemsRestored", 0)
        return Outcome(
            kind, name, str(status.get("phase")), seconds, status.get("warnings", 0), status.get("errors", 0), items
        )

    def status(self, kind: str, name: str) -> dict[str, Any]:
        resp = self.cp.request("GET", f"/apis/velero.io/v1/namespaces/{NAMESPACE}/{kind}s/{name}")
        return dict(resp.body.get("status", {})) if resp.status == 200 else {}


def _placeholder_deployment() -> dict[str, Any]:
    # Read by Velero's pod-volume restore action on every restore; nothing runs it (no kubelet, no replicas).
    labels = {"deploy": "velero"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "velero", "namespace": NAMESPACE},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "velero", "image": "velero/velero:v1.18.3"}]},
            },
        },
    }


# --- command line ----------------------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.velero",
        description="Run a control plane with Velero, its AWS plugin and versitygw beside it in a private "
        "network namespace (root), until interrupted.",
    )
    parser.add_argument("command", choices=["start"])
    parser.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    started = time.monotonic()
    with ControlPlane(args.workdir / "controlplane") as cp, VeleroStack(cp, args.workdir / "velero") as v:
        velero = v._bin["velero"]
        print(
            f"control plane and Velero ready in {time.monotonic() - started:.1f} s\n"
            f"  export KUBECONFIG={cp.admin_kubeconfig}\n"
            f"  velero: ip netns exec {v.netns.name} {velero} --kubeconfig={v.kubeconfig} --namespace={NAMESPACE}\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        wait_for_signal()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
