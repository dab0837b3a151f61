"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests and the demo.

(Over 400 lines on purpose: ``ControlPlane`` is one lifecycle, certificates, etcd, the API server,
readiness and the admin's requests, on the same files and ports. Reading the audit log is ``audit.py``.)

The binaries are built from the Go module proxy by ``tools/controlplane/build.sh`` into a cache
directory. The API server runs with RBAC authorization, a static admin token, ServiceAccount token
issuing (TokenRequest), a serving certificate and encryption at rest for Secrets (secretbox), so
behaviour that only a real API server shows (403, 409, field-selected watches, encrypted storage) is
what the tests see.

Usage from the shell::

    python -m license_keeper.testing.controlplane build
    python -m license_keeper.testing.controlplane start --workdir /tmp/cp   # writes /tmp/cp/admin.kubeconfig
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import AUDIT_POLICY, AuditEntry, AuditTail, filter_entries

__all__ = [
    "AuditEntry",
    "AuditTail",
    "ControlPlane",
    "ControlPlaneError",
    "ServiceAccountAccess",
    "free_port",
    "write_kubeconfig",
]

REPO_BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "controlplane" / "build.sh"
ADMIN_USER = "license-keeper-admin"
SERVICE_RANGE = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service's ClusterIP: the first address of SERVICE_RANGE
SECRETBOX_KEY_NAME = "key1"


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or spoken to."""


# --- locating binaries -----------------------------------------------------------------------------


def build_script() -> Path:
    override = os.environ.get("LICENSE_KEEPER_BUILD_SCRIPT")
    path = Path(override) if override else REPO_BUILD_SCRIPT
    if not path.exists():
        raise ControlPlaneError(
            f"build script not found at {path}; run from a license-keeper checkout or set LICENSE_KEEPER_BUILD_SCRIPT"
        )
    return path


def component_dir(component: str) -> Path:
    """Where build.sh puts (or has put) the binaries of one component."""
    out = subprocess.run([str(build_script()), "--print-dir", component], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ControlPlaneError(f"build.sh --print-dir {component} failed: {out.stderr.strip()}")
    return Path(out.stdout.strip())


def binary(component: str, name: str) -> Path:
    path = component_dir(component) / name
    if not os.access(path, os.X_OK):
        raise ControlPlaneError(
            f"{name} is not built ({path} missing); run `make controlplane` (or tools/controlplane/build.sh) first"
        )
    return path


def build(components: Sequence[str] = ()) -> None:
    subprocess.run([str(build_script()), *components], check=True)


# --- small helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # A crashed test run must not leave etcd or kube-apiserver behind.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _child_guard() -> Callable[[], None] | None:
    """PDEATHSIG fires when the *thread* that started the child ends, so it is only safe from the main
    thread; a child started from a worker thread (asyncio.to_thread) relies on stop() and atexit."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class ServiceAccountAccess:
    """A ServiceAccount bound to some rules, with a token and a kubeconfig that uses it."""

    namespace: str
    name: str
    token: str
    kubeconfig: Path

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"


# --- the control plane -----------------------------------------------------------------------------


class ControlPlane:
    """etcd and kube-apiserver as child processes, in ``workdir``.

    ``start()`` blocks until ``/readyz`` answers 200; ``stop()`` ends both processes.
    ``stop_apiserver()``/``start_apiserver()`` take the API server away and bring it back on the
    same port, for outage tests.
    """

    def __init__(self, workdir: Path | str, *, verbose: bool = False, node_ip: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.verbose = verbose
        # With a node beside it (testing.node), the API server also serves pods: it listens on the node's
        # address only, publishes itself as the `kubernetes` Service's endpoint, and mounts ServiceAccount
        # tokens into pods. Without one it stays on loopback, as the tests without pods want it.
        self.node_ip = node_ip
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()
        self.admin_token = secrets.token_urlsafe(32)
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._ssl: ssl.SSLContext | None = None
        atexit.register(self.stop)

    # paths
    @property
    def host(self) -> str:
        return self.node_ip or "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.pem"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    @property
    def audit_policy_file(self) -> Path:
        return self.workdir / "audit-policy.yaml"

    # lifecycle
    def start(self, timeout: float = 120.0) -> ControlPlane:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self._write_auth_and_encryption()
        self.audit_policy_file.write_text(json.dumps(AUDIT_POLICY, indent=2))  # JSON is valid YAML
        self._start_etcd()
        self._wait_etcd(deadline=started + timeout)
        self.start_apiserver(timeout=max(5.0, timeout - (time.monotonic() - started)))
        self.write_kubeconfig(self.admin_kubeconfig, token=self.admin_token, user=ADMIN_USER)
        return self

    def stop(self) -> None:
        _stop_process(self._apiserver)
        _stop_process(self._etcd)
        self._apiserver = self._etcd = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_apiserver(self, timeout: float = 90.0) -> None:
        if self._apiserver is not None and self._apiserver.poll() is None:
            return
        log = open(self.workdir / "kube-apiserver.log", "ab")  # noqa: SIM115 - owned by the child
        self._apiserver = subprocess.Popen(
            [str(binary("kubernetes", "kube-apiserver")), *self._apiserver_args()],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_guard(),
        )
        log.close()
        self.wait_ready(timeout)

    def stop_apiserver(self) -> None:
        _stop_process(self._apiserver)
        self._apiserver = None

    def stop_etcd(self) -> None:
        """Take etcd away (the API server keeps running and answers errors until it is back)."""
        _stop_process(self._etcd)
        self._etcd = None

    def start_etcd(self, timeout: float = 30.0) -> None:
        """Bring etcd back on the same ports with the same data."""
        if self._etcd is not None and self._etcd.poll() is None:
            return
        self._start_etcd()
        self._wait_etcd(deadline=time.monotonic() + timeout)

    @property
    def etcd_running(self) -> bool:
        return self._etcd is not None and self._etcd.poll() is None

    @property
    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.poll() is None

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._apiserver is not None and self._apiserver.poll() is not None:
                raise ControlPlaneError(
                    f"kube-apiserver exited with {self._apiserver.returncode}; "
                    f"see {self.workdir / 'kube-apiserver.log'}"
                )
            try:
                resp = self.request("GET", "/readyz")
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
            except (OSError, ControlPlaneError) as e:
                last = str(e)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f} s ({last})")

    # setup
    def _write_pki(self) -> None:
        import trustme
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(pki / "ca.pem"))
        names = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"]
        if self.node_ip:  # what in-cluster clients dial: the `kubernetes` Service's ClusterIP and DNS names
            names += [self.node_ip, SERVICE_IP, "kubernetes.default", "kubernetes.default.svc.cluster.local"]
        server = ca.issue_cert(*names)
        server.private_key_pem.write_to_path(str(pki / "apiserver-key.pem"))
        server.cert_chain_pems[0].write_to_path(str(pki / "apiserver.pem"))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def _write_auth_and_encryption(self) -> None:
        (self.workdir / "tokens.csv").write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        # JSON is valid YAML; the API server reads either.
        config = {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {
                    "resources": ["secrets"],
                    "providers": [
                        {"secretbox": {"keys": [{"name": SECRETBOX_KEY_NAME, "secret": key}]}},
                        {"identity": {}},
                    ],
                }
            ],
        }
        path = self.workdir / "encryption.yaml"
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def _start_etcd(self) -> None:
        data = self.workdir / "etcd"
        log = open(self.workdir / "etcd.log", "ab")  # noqa: SIM115 - owned by the child
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        self._etcd = subprocess.Popen(
            [
                str(binary("etcd", "etcd")),
                "--name=default",
                f"--data-dir={data}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # test data; fsync only slows the suite
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_guard(),
        )
        log.close()

    def _wait_etcd(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self._etcd is not None and self._etcd.poll() is not None:
                raise ControlPlaneError(f"etcd exited; see {self.workdir / 'etcd.log'}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                if json.load(r).get("health") == "true":
                    return
            time.sleep(0.1)
        raise ControlPlaneError("etcd did not become healthy")

    def _serving_args(self) -> list[str]:
        if not self.node_ip:
            return [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # No kubelets or Services here; the reconciler refuses a loopback advertise address.
                "--endpoint-reconciler-type=none",
                "--disable-admission-plugins=ServiceAccount",
            ]
        return [
            f"--bind-address={self.node_ip}",
            f"--advertise-address={self.node_ip}",
            "--endpoint-reconciler-type=lease",
            "--enable-admission-plugins=ServiceAccount",
            # The node's Hostname address may resolve to loopback, where the kubelet does not listen.
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self.workdir / "pki"
        return [
            f"--etcd-servers={self.etcd_url}",
            *self._serving_args(),
            # On SIGTERM, end open watches within a second, as a managed control plane's upgrade does;
            # without it the server waits on every watch until it is killed (15 s here).
            "--shutdown-watch-termination-grace-period=1s",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={pki / 'apiserver.pem'}",
            f"--tls-private-key-file={pki / 'apiserver-key.pem'}",
            f"--cert-dir={pki}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--encryption-provider-config={self.workdir / 'encryption.yaml'}",
            f"--audit-policy-file={self.audit_policy_file}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            # blocking: an entry is in the file before the response is sent, so a test that made a call can
            # read its entry at once (batch mode would delay it); at test volumes this costs nothing.
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",
            "--profiling=false",
            "--v=1",
        ]

    # talking to it
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        content_type: str | None = None,
    ) -> ApiResponse:
        """One API call as the admin (or the given token); any status is returned, not raised. A PATCH is
        a JSON merge patch unless ``content_type`` says otherwise."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.server}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        if data is not None:
            req.add_header("Content-Type", content_type or _default_content_type(method))
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=15) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"text": raw.decode(errors="replace")}
        return ApiResponse(status, parsed if isinstance(parsed, dict) else {"value": parsed})

    def must(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        resp = self.request(method, path, body)
        if resp.status >= 300:
            raise ControlPlaneError(f"{method} {path}: HTTP {resp.status}: {resp.body.get('message', resp.body)}")
        return resp.body

    def etcd_get(self, key: str) -> bytes | None:
        """The raw value etcd stores under ``key`` (via etcd's JSON gateway), or None."""
        payload = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
        req = urllib.request.Request(f"{self.etcd_url}/v3/kv/range", data=payload, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            kvs = json.load(r).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    # the audit log
    def audit_entries(
        self,
        since: datetime.datetime | float | None = None,
        namespace: str | None = None,
        resource: str | None = None,
    ) -> list[AuditEntry]:
        """Parsed audit events (Secrets, Leases, Events; Metadata level), oldest first.

        ``since`` is a datetime or a Unix time compared with each entry's stageTimestamp. For repeated
        reads of a growing log use ``AuditTail(cp.audit_log)`` instead.
        """
        return filter_entries(AuditTail(self.audit_log).read(), since=since, namespace=namespace, resource=resource)

    # objects the tests need
    def create_namespace(self, name: str) -> str:
        self.must("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        return name

    def create_service_account(self, namespace: str, name: str) -> None:
        self.must("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})

    def request_token(self, namespace: str, service_account: str, seconds: int = 3600) -> str:
        body = self.must(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return str(body["status"]["token"])

    def create_role(self, namespace: str, name: str, rules: Iterable[Mapping[str, Any]]) -> None:
        self.must(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
            {"metadata": {"name": name}, "rules": list(rules)},
        )

    def bind_role(self, namespace: str, name: str, role: str, service_account: str) -> None:
        self.must(
            "POST",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
            },
        )

    def service_account(
        self, namespace: str, name: str, rules: Iterable[Mapping[str, Any]] = ()
    ) -> ServiceAccountAccess:
        """A ServiceAccount with a Role of exactly ``rules``, a token and a kubeconfig for it."""
        self.create_service_account(namespace, name)
        rules = list(rules)
        if rules:
            self.create_role(namespace, name, rules)
            self.bind_role(namespace, name, name, name)
        token = self.request_token(namespace, name)
        path = self.workdir / "kubeconfigs" / f"{namespace}-{name}.kubeconfig"
        self.write_kubeconfig(path, token=token, user=name, namespace=namespace)
        return ServiceAccountAccess(namespace, name, token, path)

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str,
        user: str,
        namespace: str = "default",
        server: str | None = None,
        ca_file: Path | None = None,
    ) -> Path:
        """A token kubeconfig for this API server, or for ``server``/``ca_file`` (e.g. a fault proxy in front)."""
        return write_kubeconfig(
            path,
            server=server or self.server,
            ca_file=ca_file or self.ca_file,
            token=token,
            user=user,
            namespace=namespace,
        )


def _default_content_type(method: str) -> str:
    return "application/merge-patch+json" if method == "PATCH" else "application/json"


def write_kubeconfig(path: Path, *, server: str, ca_file: Path, token: str, user: str, namespace: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user, "namespace": namespace}}],
        "current-context": "local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


# --- command line ----------------------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.controlplane",
        description="Build or run the local test control plane (etcd + kube-apiserver with RBAC, "
        "token auth, ServiceAccount tokens and Secret encryption at rest).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build kube-apiserver, kubectl, etcd, helm and promtool into the cache")
    b.add_argument("components", nargs="*", help="kubernetes etcd helm prometheus (default: all)")
    s = sub.add_parser(
        "start",
        help="start etcd and kube-apiserver in the foreground until interrupted; "
        "writes WORKDIR/admin.kubeconfig once ready",
    )
    s.add_argument("--workdir", required=True, type=Path, help="directory for data, certificates and logs")
    args = parser.parse_args(argv)

    if args.command == "build":
        build(args.components)
        return 0
    if args.workdir.exists() and any(args.workdir.iterdir()):
        shutil.rmtree(args.workdir)  # a control plane's state is disposable; stale certs would confuse
    started = time.monotonic()
    cp = ControlPlane(args.workdir)
    try:
        cp.start()
    except ControlPlaneError as e:
        cp.stop()
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"control plane ready in {time.monotonic() - started:.1f} s at {cp.server}\n"
        f"  export KUBECONFIG={cp.admin_kubeconfig}\n"
        f"  kubectl: {component_dir('kubernetes') / 'kubectl'}\n"
        "Ctrl-C stops it.",
        flush=True,
    )
    try:
        wait_for_signal()
    finally:
        cp.stop()
        print("control plane stopped", flush=True)
    return 0


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (Ctrl-C): how the harnesses' `start` commands run in the foreground."""
    stop = False

    def _on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop:
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
