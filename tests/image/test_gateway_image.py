"""The gateway image (tools/image/Containerfile.gateway) on top of the keeper's image, run hardened as a pod.

Builds on the keeper's image from test_image (or LICENSE_KEEPER_TEST_IMAGE), under a tag of its own that it
removes afterwards. Host network: podman's bridge does not work on the project's VMs.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from license_keeper.license import parse_license
from license_keeper.testing.controlplane import free_port
from license_keeper.testing.licenses import leaks, make_document

from .test_image import HARDENED, UID, image, podman

__all__ = ["image"]  # the keeper's image fixture, shared with test_image

pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
BUILD_GATEWAY = REPO / "tools" / "image" / "build-gateway.sh"


@pytest.fixture(scope="module")
def gateway_image(image: str) -> Iterator[str]:
    tag = f"localhost/license-keeper-gateway:test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "KEEPER_IMAGE": image, "IMAGE": tag}
    proc = subprocess.run([str(BUILD_GATEWAY)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == tag
    try:
        yield tag
    finally:
        podman("rmi", tag, check=False)


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_listening(port: int, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            call(port, "GET", "/status")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(podman("logs", name, check=False).stderr[-2000:]) from None
            time.sleep(0.1)


def test_config(gateway_image: str) -> None:
    config = json.loads(podman("image", "inspect", gateway_image).stdout)[0]["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/opt/license-keeper/bin/python", "-m", "license_keeper.testing.gateway"]
    assert not config.get("Cmd")  # the keeper's `run` is not passed on
    assert "8001/tcp" in config["ExposedPorts"]


def test_runs_hardened_with_an_expired_license_and_stops_on_sigterm(gateway_image: str) -> None:
    expired = datetime.date.today() - datetime.timedelta(days=45)
    doc = make_document(expiration_date=expired)
    port, name = free_port(), f"lk-gateway-{uuid.uuid4().hex[:8]}"
    podman(
        "run", "-d", "--name", name, "--network=host", *HARDENED, "-e", f"KONG_LICENSE_DATA={doc}",
        "-e", f"KONG_ADMIN_LISTEN=127.0.0.1:{port}", gateway_image,
    )  # fmt: skip
    try:
        wait_listening(port, name)
        assert call(port, "POST", "/services", {"name": "s"}) == (
            403,
            {"message": "Enterprise license missing or expired"},
        )
        status, report = call(port, "GET", "/license/report")
        assert status == 200 and report["license"]["license_key"] == parse_license(doc).license_key
        assert report["deployment_info"] == {"type": "dbless"}
        assert call(port, "POST", "/licenses", {"payload": make_document()})[0] == 201
        assert call(port, "POST", "/services", {"name": "s"})[0] == 201
        started = time.monotonic()
        podman("stop", "-t", "10", name)
        assert time.monotonic() - started < 5  # SIGTERM ends it; podman would SIGKILL after 10 s
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
        logs = podman("logs", name)
        text = logs.stdout + logs.stderr
        assert f"The Kong Enterprise license expired on {expired}." in text
        assert leaks(text) == [] and doc not in text
    finally:
        podman("rm", "-f", name, check=False)
