"""`make demo`: the whole job, end to end, on a local control plane with the Konnect stand-in.

1. The keeper fetches the license from Konnect and persists it to the Secret.
2. Konnect goes down and the keeper is killed.
3. A new keeper starts and is ready from the Secret alone.
4. Konnect comes back with a rotated license: exactly one write, and the running gateway (a Kong
   Admin API stand-in) runs the rotated license without a restart.
5. Someone pins the gateway to another license (KONG_LICENSE_DATA): the keeper reports drift, and
   `delivered` again once the pin is gone.

Everything runs for real: etcd and kube-apiserver (RBAC, encryption at rest), the keeper as its own
process under a ServiceAccount that may touch only its Secret, Lease and Events, a Konnect stand-in
speaking mutual TLS and a Kong Admin API stand-in over TLS. It cleans up after itself. It lives in
the testing package (it needs the stand-ins, i.e. the `testing` extra): `make demo`, or
`python -m license_keeper.testing.demo`.
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

from .controlplane import ControlPlane, ControlPlaneError
from .keeper import KeeperProcess, KonnectEndpoint, keeper_rules
from .kong import KongStandIn
from .konnect import KonnectStandIn
from .licenses import make_document

__all__: list[str] = []  # nothing is imported from here

NAMESPACE = "kong"
SECRET = "kong-license"
LEASE = "kong-license-keeper"


def say(step: str, text: str = "") -> None:
    print(f"\n\033[1m== {step}\033[0m" + (f"\n   {text}" if text else ""), flush=True)


def proves(text: str) -> None:
    print(f"   \033[32mproves:\033[0m {text}", flush=True)


async def status(cp: ControlPlane, extra: tuple[str, ...] = ()) -> int:
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "license_keeper",
            "status",
            f"--kubeconfig={cp.admin_kubeconfig}",
            f"--namespace={NAMESPACE}",
            *extra,
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
        print(f"   ServiceAccount {NAMESPACE}/license-keeper: get/list/watch/patch on Secret {SECRET} only, no delete")

        async with (
            KonnectStandIn(tls_dir=workdir / "konnect-tls") as konnect,
            KongStandIn(tls_dir=workdir / "kong-tls") as kong,
        ):
            print(f"   Konnect stand-in (mutual TLS) at {konnect.address}")
            print(f"   Kong gateway stand-in (Admin API over TLS) at {kong.address}")
            endpoint = KonnectEndpoint.of(konnect)
            target = f"admin-api={kong.address}"
            deliver = (f"--deliver={target}", f"--deliver-admin-ca-file={kong.tls.ca_file}", "--delivery-period=5s")

            def keeper(name: str) -> KeeperProcess:
                k = KeeperProcess(
                    kubeconfig=access.kubeconfig,
                    namespace=NAMESPACE,
                    konnect=endpoint,
                    workdir=workdir / "keepers",
                    name=name,
                    args=deliver,
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
            took = await until(lambda: kong.node.active()[1] == rotated.document, 30, "the gateway to run it")
            print(f"   the running gateway runs the rotated license {took:.1f} s after the Secret write")
            await asyncio.sleep(2)
            writes = await asyncio.to_thread(second.writes)
            print(f"   Secret writes: {writes:.0f} (rotate)")
            await status(cp, deliver)
            if writes != 1:
                raise RuntimeError(f"expected exactly one write, saw {writes:.0f}")
            proves("a newer license is written exactly once and reaches the running gateway without a restart")

            # 5
            say("5. Someone pins the gateway to another license (KONG_LICENSE_DATA)")
            kong.node.env_license = make_document()  # another license than the keeper's

            def delivery(state: str) -> bool:
                return second.metric(f'license_keeper_delivery_state{{state="{state}",target="{target}"}}') == 1

            took = await until(lambda: delivery("drift"), 30, "the drift")
            print(f'   license_keeper_delivery_state{{state="drift"}} = 1 after {took:.1f} s')
            await status(cp, deliver)
            kong.node.env_license = None
            took = await until(lambda: delivery("delivered"), 30, "delivered again")
            print(f'   pin removed: license_keeper_delivery_state{{state="delivered"}} = 1 after {took:.1f} s')
            proves("the keeper reports what each gateway really runs, and why it differs")
            say("Done", "all five steps behaved as claimed; cleaning up")
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
