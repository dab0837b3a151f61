"""The image users deploy, built from the Dockerfile with podman and run as the chart runs it.

The build uses tools/image/build.sh: on a machine without a reachable registry (CI) it builds a local
bookworm stand-in for the public Python base once and caches it; podman's layer cache makes a rebuild of an
unchanged tree take seconds. `make test` runs this module when podman is installed (.ci/run installs it);
run alone:

    .venv/bin/python -m pytest -q tests/image
    LICENSE_KEEPER_TEST_IMAGE=registry.example/license-keeper:1.2.3 .venv/bin/python -m pytest -q tests/image

(the second checks an image built elsewhere instead of building one).

Policy checks read the image's exported filesystem and its config; the end-to-end test runs the keeper in
the container, hardened like the chart's securityContext, against the local control plane and the Konnect
stand-in with the chart's environment and its ServiceAccount's credentials mounted where the kubelet mounts
them.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from license_keeper.testing.container import KeeperContainer, PodFiles, hardened
from license_keeper.testing.controlplane import ControlPlane, free_port
from license_keeper.testing.konnect import KonnectStandIn

from ..e2e.conftest import leaks
from ..integration.test_chart_static import _container, _install, only

pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]  # a cold build (base + image) takes minutes

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "image" / "build.sh"
PODMAN = str(REPO / "tools" / "image" / "podman.sh")
TAG = "localhost/license-keeper:test"
UID = 10001
ENTRYPOINT = ["/opt/license-keeper/bin/license-keeper"]
HARDENED = hardened(UID)  # as the chart's securityContext


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# ------------------------------------------------------------------------------------------ build
@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: `apt-get install podman runc mmdebstrap` (.ci/run does)", pytrace=False)
    if given := os.environ.get("LICENSE_KEEPER_TEST_IMAGE"):
        return given
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run([str(BUILD)], env={**os.environ, "IMAGE": TAG}, stdout=subprocess.PIPE, stderr=out,
                              text=True, timeout=1100, check=False)  # fmt: skip
    assert proc.returncode == 0, f"tools/image/build.sh failed:\n{log.read_text()[-4000:]}"
    print(f"image built in {time.monotonic() - started:.1f} s")
    return TAG


@functools.cache
def _inspect(ref: str) -> dict[str, Any]:
    return dict(json.loads(podman("image", "inspect", ref).stdout)[0])


@dataclass
class Entry:
    path: str
    mode: int
    uid: int
    gid: int
    isdir: bool
    isreg: bool
    size: int


@pytest.fixture(scope="module")
def files(image: str) -> Iterator[dict[str, Entry]]:
    """Every path of the image's filesystem (from `podman export`: no engine-specific mount needed)."""
    name = f"lk-export-{uuid.uuid4().hex[:8]}"
    podman("create", "--name", name, image)
    try:
        proc = subprocess.Popen([PODMAN, "export", name], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        entries: dict[str, Entry] = {}
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                path = "/" + m.name.lstrip("./")
                entries[path] = Entry(path, m.mode, m.uid, m.gid, m.isdir(), m.isreg(), m.size)
        assert proc.wait(60) == 0
        yield entries
    finally:
        podman("rm", "-f", name, check=False)


# ----------------------------------------------------------------------------------------- policy
def test_config_runs_the_keeper_as_a_numeric_non_root_user(image: str) -> None:
    config = _inspect(image)["Config"]
    user, _, group = config["User"].partition(":")
    assert user.isdigit() and int(user) == UID and group == str(UID), config["User"]
    assert config["Entrypoint"] == ENTRYPOINT and config["Cmd"] == ["run"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert not [k for k in env if k.startswith("PIP_")], "pip's settings do not belong in the runtime image"
    assert "HOME" not in env, "HOME comes from the user's passwd entry"
    assert env["PATH"].startswith("/opt/license-keeper/bin:")


def test_no_build_tools_pip_wheels_or_caches(files: dict[str, Entry]) -> None:
    tools = {"gcc", "cc", "c++", "g++", "make", "ld", "as", "cpp", "pip", "pip3", "uv"}
    bins = [p for p in files if PurePosixPath(p).parent.name in {"bin", "sbin"}]
    found = [p for p in bins if PurePosixPath(p).name in tools or PurePosixPath(p).name.startswith(("gcc-", "pip3."))]
    assert not found, f"build tools or pip in the image: {found}"
    parts = [PurePosixPath(p).parts for p in files]
    assert not [p for p in parts if "pip" in p or "ensurepip" in p], "a pip or ensurepip package is in the image"
    assert not [p for p in files if p.endswith((".whl", ".deb"))], "wheels or packages are in the image"
    caches = [p for p in files if "/.cache/" in p or p.startswith(("/var/cache/apt/", "/var/lib/apt/lists/"))]
    assert not [p for p in caches if files[p].isreg and files[p].size], f"caches in the image: {caches[:10]}"
    assert [p for p in files if p.startswith("/tmp/") and p != "/tmp/"] == [], "the build left files in /tmp"
    assert "/opt/license-keeper/bin/license-keeper" in files


def test_no_setuid_or_setgid_files(files: dict[str, Entry]) -> None:
    found = [p for p, e in files.items() if e.mode & 0o6000]
    assert not found, f"setuid/setgid files: {found}"


def test_nothing_is_owned_by_the_runtime_user(files: dict[str, Entry]) -> None:
    owned = [p for p, e in files.items() if UID in (e.uid, e.gid)]
    assert not owned, f"owned by {UID}: {owned[:10]}"
    writable = [p for p, e in files.items() if e.isreg and e.mode & 0o002]
    assert not writable, f"world-writable files: {writable[:10]}"


def test_the_build_hosts_ca_bundle_is_not_in_the_image(image: str) -> None:
    """The host's bundle is bind-mounted for pip during the build; the image keeps its base's bundle."""
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    base = (_inspect(image)["Labels"] or {}).get("org.opencontainers.image.base.name")  # set by build.sh
    assert base, "the image does not name its base (org.opencontainers.image.base.name, set by tools/image/build.sh)"
    mine = podman("run", "--rm", "--network=none", "--entrypoint=/bin/cat", image, bundle).stdout
    theirs = podman("run", "--rm", "--network=none", "--entrypoint=/bin/cat", base, bundle).stdout
    assert hashlib.sha256(mine.encode()).digest() == hashlib.sha256(theirs.encode()).digest()


def test_starts_hardened_without_network(image: str) -> None:
    started = time.monotonic()
    proc = podman("run", "--rm", "--network=none", *HARDENED, image, "--version")
    assert "license-keeper" in proc.stdout
    print(f"container start -> --version: {time.monotonic() - started:.2f} s")
    ident = podman("run", "--rm", "--network=none", *HARDENED, "--entrypoint=/usr/bin/id", image).stdout.split()
    assert ident[:2] == [f"uid={UID}(license-keeper)", f"gid={UID}(license-keeper)"]


# ------------------------------------------------------------------------------------ end to end
def _secret(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return cp.must("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")


async def test_the_image_keeps_the_license_as_the_chart_runs_it(
    image: str, controlplane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    async with KonnectStandIn(tls_dir=tmp_path / "konnect-tls") as konnect:
        probe, metrics = free_port(), free_port()  # host network: the chart's 8080/8081 may be taken
        values = {
            "konnect.address": konnect.address,
            "konnect.controlPlaneId": konnect.control_plane_id,
            "konnect.caSecretName": "konnect-ca",
            "ports.probes": probe,
            "ports.metrics": metrics,
        }
        objs = await asyncio.to_thread(_install, controlplane, namespace, values)
        sa = only(objs, "ServiceAccount")["metadata"]["name"]
        secret = only(objs, "Secret")["metadata"]["name"]
        _, spec = _container(objs)
        assert spec["securityContext"]["runAsUser"] == UID and spec["securityContext"]["readOnlyRootFilesystem"]
        assert spec["args"] == ["run"]
        chart_env = {e["name"]: e["value"] for e in spec["env"] if "value" in e}
        assert chart_env["LICENSE_KEEPER_KONNECT_CA_FILE"] == "/etc/license-keeper/konnect-ca/ca.crt"

        pod = PodFiles(tmp_path / "pod", uid=UID)
        mounts = await asyncio.to_thread(pod.service_account, controlplane, namespace, sa)
        mounts += pod.konnect(konnect.tls)

        def keeper(name: str) -> KeeperContainer:
            env = {**chart_env, **pod.env, "POD_NAME": name}
            return KeeperContainer(image, env, mounts, probe, metrics, engine=(PODMAN,), args=spec["args"])

        first, second = keeper("lk-license-keeper-abc12"), keeper("lk-license-keeper-def34")
        try:
            await asyncio.to_thread(first.start)
            took = await asyncio.to_thread(first.wait_ready, 60)
            print(f"container start -> ready (fetching from Konnect): {took:.2f} s")
            assert konnect.record is not None
            deadline = time.monotonic() + 30
            while not (data := (await asyncio.to_thread(_secret, controlplane, namespace, secret)).get("data")):
                assert time.monotonic() < deadline, "the Secret was not written"
                await asyncio.sleep(0.2)
            assert set(data) == {"payload", "id", "updated_at", "license"}
            assert base64.b64decode(data["license"]).decode() == konnect.record.document
            assert await asyncio.to_thread(first.writes) == 1
            await asyncio.to_thread(first.stop)
            assert not leaks(first.logs())

            # A new pod while Konnect hangs: ready from the Secret alone, nothing written.
            before = (await asyncio.to_thread(_secret, controlplane, namespace, secret))["metadata"]["resourceVersion"]
            await konnect.set_mode("blackhole")
            await asyncio.to_thread(second.start)
            took = await asyncio.to_thread(second.wait_ready, 30)
            print(f"container start -> ready (from the Secret, Konnect black-holed): {took:.2f} s")
            await asyncio.sleep(3)
            assert await asyncio.to_thread(second.writes) == 0
            after = (await asyncio.to_thread(_secret, controlplane, namespace, secret))["metadata"]["resourceVersion"]
            assert after == before, "the Secret was written"
            assert not leaks(second.logs())
        finally:
            for k in (first, second):
                await asyncio.to_thread(k.remove)
