"""Prints the container image's figures: size, cold and warm build times, container start -> ready.

    .venv/bin/python bench/image.py [--runs 3] [--cold-base] [--no-keeper] [--no-builds]

Builds with tools/image/build.sh (podman; the local bookworm base when no base can be pulled) into
localhost/license-keeper:bench. Build times: cold (`--no-cache`; the base cached unless --cold-base), warm
with nothing changed, warm after a source change (a copy of the tree with one edited file: the
dependency layer is reused). Start times: `--version` with no network, and the keeper against the local
control plane and the Konnect stand-in, run as the chart runs it: ready after fetching from Konnect, and a
new container ready from the Secret alone with Konnect black-holed (medians of --runs), plus its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from license_keeper.testing.container import KeeperContainer, PodFiles, hardened
from license_keeper.testing.controlplane import ControlPlane, free_port
from license_keeper.testing.keeper import keeper_rules
from license_keeper.testing.konnect import KonnectStandIn

REPO = Path(__file__).resolve().parents[1]
PODMAN = str(REPO / "tools" / "image" / "podman.sh")
TAG = "localhost/license-keeper:bench"
SECRET, LEASE = "kong-license", "kong-license-keeper"


def timed(cmd: list[str], **env: str) -> float:
    start = time.monotonic()
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - start


def podman(*args: str) -> str:
    return subprocess.run([PODMAN, *args], capture_output=True, text=True, check=True).stdout


def builds(cold_base: bool) -> None:
    base_cmd = [str(REPO / "tools" / "image" / "build-base.sh"), *(["--force"] if cold_base else [])]
    print(f"base (tools/image/build-base.sh{' --force' if cold_base else ''}): {timed(base_cmd):.1f} s", flush=True)
    build = str(REPO / "tools" / "image" / "build.sh")
    print(f"cold image build (--no-cache): {timed([build], IMAGE=TAG, BUILD_ARGS='--no-cache'):.1f} s", flush=True)
    warm = min(timed([build], IMAGE=TAG) for _ in range(2))  # the first may still fill podman's cache
    print(f"warm image build (nothing changed): {warm:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="lk-bench-tree-") as tree:
        files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        for name in files.split():
            if (REPO / name).is_file():
                (Path(tree) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, Path(tree) / name)
        with open(Path(tree) / "src" / "license_keeper" / "__init__.py", "a") as f:
            f.write(f"# bench edit {time.time()}\n")
        secs = timed([str(Path(tree) / "tools" / "image" / "build.sh")], IMAGE=TAG + "-edit")
        print(f"warm image build after a source change: {secs:.1f} s", flush=True)
    podman("rmi", TAG + "-edit")


def sizes() -> None:
    (info,) = json.loads(podman("image", "inspect", TAG))
    base = info["Labels"]["org.opencontainers.image.base.name"]
    (base_info,) = json.loads(podman("image", "inspect", base))
    venv = podman("run", "--rm", "--network=none", "--entrypoint=/usr/bin/du", TAG, "-sk", "/opt/license-keeper")
    print(f"image size: {info['Size'] / 1e6:.0f} MB ({info['Size'] / 2**20:.0f} MiB)")
    print(f"  base {base}: {base_info['Size'] / 1e6:.0f} MB; /opt/license-keeper: {int(venv.split()[0]) / 1e3:.0f} MB")


def version_start(runs: int) -> None:
    times = [timed([PODMAN, "run", "--rm", "--network=none", *hardened(), TAG, "--version"]) for _ in range(runs)]
    print(f"container start -> --version exits (median of {runs}): {statistics.median(times):.2f} s")


async def keeper_start(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="lk-bench-image-"))
    cp = await asyncio.to_thread(ControlPlane(work / "cp").start)
    fetch, restart, rss = [], [], []
    try:
        async with KonnectStandIn(tls_dir=work / "tls") as konnect:
            for i in range(runs):
                ns = cp.create_namespace(f"bench-image-{i}")
                cp.service_account(ns, "license-keeper", keeper_rules(SECRET, LEASE))
                pod = PodFiles(work / ns)
                mounts = pod.service_account(cp, ns, "license-keeper") + pod.konnect(konnect.tls)
                probe, metrics = free_port(), free_port()
                env = {
                    **pod.env,
                    "LICENSE_KEEPER_KONNECT_ADDRESS": konnect.address,
                    "LICENSE_KEEPER_KONNECT_CONTROL_PLANE_ID": konnect.control_plane_id,
                    "LICENSE_KEEPER_KONNECT_TLS_CLIENT_CERT_FILE": "/etc/license-keeper/konnect/tls.crt",
                    "LICENSE_KEEPER_KONNECT_TLS_CLIENT_KEY_FILE": "/etc/license-keeper/konnect/tls.key",
                    "LICENSE_KEEPER_KONNECT_CA_FILE": "/etc/license-keeper/konnect-ca/ca.crt",
                    "LICENSE_KEEPER_SECRET_NAME": SECRET,
                    "LICENSE_KEEPER_LEASE_NAME": LEASE,
                    "LICENSE_KEEPER_PROBE_ADDR": f":{probe}",
                    "LICENSE_KEEPER_METRICS_ADDR": f":{metrics}",
                    "LICENSE_KEEPER_LOG_FORMAT": "json",
                }
                await konnect.set_mode("license")
                a = KeeperContainer(TAG, {**env, "POD_NAME": "a"}, mounts, probe, metrics, engine=(PODMAN,))
                b = KeeperContainer(TAG, {**env, "POD_NAME": "b"}, mounts, probe, metrics, engine=(PODMAN,))
                try:
                    await asyncio.to_thread(a.start)
                    fetch.append(await asyncio.to_thread(a.wait_ready, 60))
                    await asyncio.to_thread(a.stop)
                    await konnect.set_mode("blackhole")
                    await asyncio.to_thread(b.start)
                    restart.append(await asyncio.to_thread(b.wait_ready, 60))
                    await asyncio.sleep(1)
                    rss.append(await asyncio.to_thread(b.rss_mib))
                finally:
                    for k in (a, b):
                        await asyncio.to_thread(k.remove)
                print(f"run {i + 1}: ready (fetch) {fetch[-1]:.2f} s, ready (from the Secret) {restart[-1]:.2f} s, "
                      f"RSS {rss[-1]:.0f} MiB", flush=True)  # fmt: skip
    finally:
        await asyncio.to_thread(cp.stop)
        shutil.rmtree(work, ignore_errors=True)
    print(f"median container start -> ready, fetching from Konnect: {statistics.median(fetch):.2f} s")
    print(f"median container start -> ready from the Secret, Konnect black-holed: {statistics.median(restart):.2f} s")
    print(f"median keeper RSS in the container: {statistics.median(rss):.0f} MiB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--cold-base", action="store_true", help="rebuild the local base too")
    p.add_argument("--no-keeper", action="store_true", help="skip the runs against the control plane")
    p.add_argument("--no-builds", action="store_true", help="measure the image built by an earlier run")
    args = p.parse_args()
    if not args.no_builds:
        builds(args.cold_base)
    sizes()
    version_start(args.runs)
    if not args.no_keeper:
        asyncio.run(keeper_start(args.runs))
