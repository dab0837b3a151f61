"""`make demo`: the whole job, end to end, on a local control plane with the Konnect stand-in.

1. The keeper fetches the license from Konnect and persists it to the Secret.
2. Konnect goes down and the keeper is killed.
3. A new keeper starts and is ready from the Secret alone.
4. Konnect comes back with a rotated license: exactly one write.

Everything runs for real: etcd and kube-apiserver (RBAC, encryption at rest), the keeper as its own
process under a ServiceAccount that may touch only its Secret, Lease and Events, and a Konnect
stand-in speaking mutual TLS. It cleans up after itself.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .testing.controlplane import ControlPlane, ControlPlaneError
from .testing.keeper import KeeperProcess, KonnectEndpoint, keeper_rules
from .testing.konnect import KonnectStandIn

NAMESPACE = "kong"
SECRET = "kong-license"
LEASE = "kong-license-keeper"


def say(step: str, text: str = "") -> None:
    print(f"\n\033[1m== {step}\033[0m" + (f"\n   {text}" if text else ""), flush=True)


def proves(text: str) -> None:
    print(f"   \033[32mproves:\033[0m {text}", flush=True)


async def status(cp: ControlPlane) -> int:
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "license_keeper",
            "status",
            f"--kubeconfig={cp.admin_kubeconfig}",
            f"--namespace={NAMESPACE}",
        ],
        capture_output=True,
        text=True,
    )
    for line in (out.stdout + out.stderr).splitlines():
        print(f"   | {line}")
    return out.returncode


async def until(predicate: Callable[[], object], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


async def demo(workdir: Path) -> None:
    say("Starting a local control plane", "etcd + kube-apiserver with RBAC and Secret encryption at rest")
    started = time.monotonic()
    cp = await asyncio.to_thread(ControlPlane(workdir / "controlplane").start)
    print(f"   ready in {time.monotonic() - started:.1f} s at {cp.server}")
    keepers: list[KeeperProcess] = []
    try:
        cp.create_namespace(NAMESPACE)
        access = cp.service_account(NAMESPACE, "license-keeper", keeper_rules(SECRET, LEASE))
        print(f"   ServiceAccount {NAMESPACE}/license-keeper: get/update/watch on Secret {SECRET} only, no delete")

        async with KonnectStandIn(tls_dir=workdir / "konnect-tls") as konnect:
            print(f"   Konnect stand-in (mutual TLS) at {konnect.address}")
            endpoint = KonnectEndpoint.of(konnect)

            def keeper(name: str) -> KeeperProcess:
                k = KeeperProcess(
                    kubeconfig=access.kubeconfig,
                    namespace=NAMESPACE,
                    konnect=endpoint,
                    workdir=workdir / "keepers",
                    name=name,
                )
                keepers.append(k)
                return k.start()

            def secret_payload() -> str | None:
                snap = cp.request("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")
                if snap.status != 200:
                    return None
                data = snap.body.get("data") or {}
                return base64.b64decode(data["payload"]).decode() if "payload" in data else None

            def resource_version() -> str:
                return str(
                    cp.must("GET", f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}")["metadata"]["resourceVersion"]
                )

            # 1
            say("1. Fetch and persist", "a keeper starts; Konnect serves a license")
            first = keeper("license-keeper-a")
            took = await asyncio.to_thread(first.wait_ready, 60)
            assert konnect.record is not None
            document = konnect.record.document
            await until(lambda: secret_payload() == document, 30, "the license in the Secret")
            print(f"   keeper ready {took:.1f} s after start; Secret {NAMESPACE}/{SECRET} holds the license")
            await status(cp)
            proves("the license fetched over mutual TLS is persisted in the format Kong and KIC read")

            # 2
            say("2. Konnect goes down and the keeper is killed (SIGKILL)")
            await konnect.set_mode("closed")
            first.kill()
            version = resource_version()
            print("   Konnect refuses connections; the keeper process is gone; the Secret stays")
            proves("nothing deletes the Secret when Konnect or the controller fails")

            # 3
            say("3. A new keeper starts while Konnect is still down")
            second = keeper("license-keeper-b")
            took = await asyncio.to_thread(second.wait_ready, 30)
            print(f"   ready {took:.2f} s after start, from the Secret alone (KIC 3.5 waits up to 5 min)")
            writes = await asyncio.to_thread(second.writes)
            unchanged = resource_version() == version
            print(f"   Secret writes by the new keeper: {writes:.0f}; resourceVersion unchanged: {unchanged}")
            proves("a restart during a Konnect outage is licensed within seconds, without touching the Secret")

            # 4
            say("4. Konnect returns with a rotated license")
            rotated = konnect.rotate()
            await konnect.set_mode("license")
            print("   waiting for the new keeper to take the Lease of the killed one (lease 15 s) ...")
            await until(lambda: second.metric("license_keeper_leader") == 1, 40, "leadership")
            second.signal(signal.SIGHUP)  # poll now, as `license-keeper sync` would
            await until(lambda: secret_payload() == rotated.document, 30, "the rotated license")
            await asyncio.sleep(2)
            writes = await asyncio.to_thread(second.writes)
            print(f"   Secret writes: {writes:.0f} (rotate)")
            await status(cp)
            if writes != 1:
                raise RuntimeError(f"expected exactly one write, saw {writes:.0f}")
            proves("a newer license is written exactly once; unchanged polls write nothing")
            say("Done", "all four steps behaved as claimed; cleaning up")
    finally:
        for k in keepers:
            k.kill()
        await asyncio.to_thread(cp.stop)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="license-keeper-demo-"))
    try:
        asyncio.run(demo(workdir))
    except (ControlPlaneError, TimeoutError, RuntimeError, AssertionError) as e:
        print(f"\ndemo failed: {e}\n(logs kept in {workdir})", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
