"""A real OCI registry (CNCF Distribution, ``registry serve``) for the release tests, served over TLS.

The binary is built from the Go module proxy by ``tools/controlplane/build.sh registry``. It listens on one
address only (127.0.0.1 by default; the test node's own address when the node's containerd must pull from
it, ``host=node.node_ip``) with a server certificate from a test CA that covers that address
(``TLSMaterial.create(directory, hosts=[host])``). Clients trust that CA per tool, never through the
machine's trust store: ``ca_file`` is what podman (``--cert-dir``), helm (``--ca-file``), cosign
(``--registry-cacert``) and containerd (``hosts.toml``) are given. Storage is a directory under ``workdir``;
deleting is allowed (a test can replace what it pushed). No authentication unless ``users`` are given
(name → password; Distribution's htpasswd with bcrypt hashes: every request then needs one of them, by HTTP
basic auth): nothing outside this machine reaches the address either way.

Usage from the shell::

    python -m license_keeper.testing.registry start --workdir /tmp/registry [--host 10.255.255.7]
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from .controlplane import ControlPlaneError, _child_guard, _stop_process, binary, free_port
from .tls import TLSMaterial

__all__ = ["Registry", "RegistryError", "registry_config"]


class RegistryError(RuntimeError):
    """The registry could not be started or did not answer."""


def registry_config(
    root: Path, address: str, cert_file: Path, key_file: Path, htpasswd: Path | None = None
) -> dict[str, object]:
    """Distribution's configuration (JSON is valid YAML): filesystem storage, TLS, no debug server; basic auth
    against ``htpasswd`` when given, else none."""
    auth = {"auth": {"htpasswd": {"realm": "license-keeper-test", "path": str(htpasswd)}}} if htpasswd else {}
    return {
        **auth,
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": address,
            "tls": {"certificate": str(cert_file), "key": str(key_file), "minimumtls": "tls1.2"},
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }


class Registry:
    """``registry serve`` as a child process, in ``workdir``; ``start()`` returns once ``/v2/`` answers 200."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self.port = port or free_port()
        self.users = dict(users or {})
        self.tls: TLSMaterial | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def address(self) -> str:
        """``host:port``, as an image reference names the registry (``<address>/license-keeper@sha256:…``)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.address}"

    @property
    def ca_file(self) -> Path:
        if self.tls is None:
            raise RegistryError("the registry is not started")
        return self.tls.ca_file

    @property
    def log_file(self) -> Path:
        return self.workdir / "registry.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = TLSMaterial.load_or_create(self.workdir / "tls", hosts=[self.host])
        htpasswd = self._write_htpasswd() if self.users else None
        config = self.workdir / "config.yml"
        config.write_text(json.dumps(registry_config(
            self.workdir / "storage", self.address, self.tls.server_cert_file, self.tls.server_key_file, htpasswd,
        ), indent=2))  # fmt: skip
        try:
            exe = binary("registry", "registry")
        except ControlPlaneError as e:
            raise RegistryError(str(e)) from None
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child
        # Tracing off: otherwise Distribution exports spans to an OTLP collector on localhost:4318.
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"}
        self._proc = subprocess.Popen([str(exe), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                      env=env, preexec_fn=_child_guard())  # fmt: skip
        log.close()
        self._wait_ready(time.monotonic() + timeout)
        return self

    def _write_htpasswd(self) -> Path:
        import bcrypt  # lazy: only a registry with users needs it (a dev dependency)

        path = self.workdir / "htpasswd"
        lines = [f"{name}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                 for name, pw in self.users.items()]  # fmt: skip
        path.write_text("".join(lines))
        path.chmod(0o600)
        return path

    def auth_config(self, path: Path) -> Path:
        """A Docker-style config.json with the first user's credentials for this registry (REGISTRY_AUTH_FILE)."""
        name, password = next(iter(self.users.items()))
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        path.write_text(json.dumps({"auths": {self.address: {"auth": token}}}))
        path.chmod(0o600)
        return path

    def _request(
        self, url: str, method: str = "GET", headers: Mapping[str, str] | None = None
    ) -> urllib.request.Request:
        headers = dict(headers or {})
        if self.users:
            name, password = next(iter(self.users.items()))
            headers["Authorization"] = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
        return urllib.request.Request(url, method=method, headers=headers)

    def _wait_ready(self, deadline: float) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
                raise RegistryError(f"registry exited with {self._proc.returncode}: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(self._request(f"{self.url}/v2/"), timeout=2, context=ctx) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise RegistryError(f"registry at {self.url} not ready ({last}); see {self.log_file}")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest the registry serves for ``repository:reference`` (a tag or a digest); None when absent."""
        accept = ", ".join([
            "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ])  # fmt: skip
        req = self._request(f"{self.url}/v2/{repository}/manifests/{reference}", "HEAD", {"Accept": accept})
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                return r.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def tags(self, repository: str) -> list[str]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(self._request(f"{self.url}/v2/{repository}/tags/list"), timeout=5,
                                        context=ctx) as r:  # fmt: skip
                return list(json.load(r).get("tags") or [])
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise

    def stop(self) -> None:
        _stop_process(self._proc, timeout=10)
        self._proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- command line -----------------------------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.registry",
        description="Run a local OCI registry (CNCF Distribution) over TLS from a test CA, until interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start it in the foreground; Ctrl-C stops it")
    s.add_argument("--workdir", required=True, type=Path, help="directory for storage, certificates and the log")
    s.add_argument("--host", default="127.0.0.1", help="the one address it listens on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)

    registry = Registry(args.workdir, host=args.host, port=args.port or None)
    try:
        registry.start()
    except RegistryError as e:
        registry.stop()
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"registry at {registry.address}, CA {registry.ca_file}\n"
          f"  make release REGISTRY={registry.address} REGISTRY_CA={registry.ca_file}\n"
          "Ctrl-C stops it.", flush=True)  # fmt: skip
    stop = False

    def _on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        while not stop:
            time.sleep(0.5)
    finally:
        registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
