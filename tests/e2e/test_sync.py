"""`license-keeper sync` through the Secret's annotation, with real keeper processes (issue 21 #3, issue 26 #6).

The leader answers a request once and clears it; a follower ignores it; the CLI user needs only get and
patch on the Secret; the probe port no longer takes poll requests. What every party did is read from the
API server's audit log, one ServiceAccount per party.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import socket
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from license_keeper.kube import Kube
from license_keeper.store import SecretStore
from license_keeper.testing.audit import AuditEntry
from license_keeper.testing.controlplane import ControlPlane, ServiceAccountAccess
from license_keeper.testing.keeper import clean_environ, keeper_rules
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import make_record

from .conftest import LEASE, SECRET, KeeperFactory, leaks, read_secret, ready, wait_for

# The annotations are an interface (docs/interfaces.md): spelled out here, not imported.
SYNC_REQUEST_ANNOTATION = "license-keeper.io/sync-requested"
SYNC_ANSWER_ANNOTATION = "license-keeper.io/sync-answer"
SYNC_USER_RULES = [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get", "patch"]}]


async def cli(*args: str, access: ServiceAccountAccess) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "license_keeper", *args, f"--kubeconfig={access.kubeconfig}"]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=clean_environ(), timeout=120
    )


def parse_answer(text: str | None) -> SimpleNamespace | None:
    """The leader's answer as kubectl shows it: JSON with request, outcome, message, by, at."""
    return SimpleNamespace(**json.loads(text)) if text else None


def annotations(secret: Secret | None) -> dict[str, str]:
    assert secret is not None
    return dict(secret.metadata.annotations or {})


def holds(secret: Secret | None, document: str) -> bool:
    return secret is not None and base64.b64decode((secret.data or {}).get("license", "")).decode() == document


def audited(controlplane: ControlPlane, since: float, namespace: str, who: ServiceAccountAccess) -> list[AuditEntry]:
    return [e for e in controlplane.audit_entries(since=since, namespace=namespace) if e.username == who.username]


def writes_to_the_secret(entries: list[AuditEntry]) -> list[tuple[str, int | None]]:
    return [(e.verb, e.code) for e in entries if e.resource == "secrets" and e.verb in ("create", "update", "patch")]


async def leading(k: Any) -> None:
    await wait_for(lambda: asyncio.to_thread(lambda: k.metric("license_keeper_leader") == 1), 30)


async def test_the_leader_answers_once_and_clears_and_the_user_needs_only_get_and_patch(
    keepers: KeeperFactory,
    keeper_access: ServiceAccountAccess,
    konnect: KonnectStandIn,
    controlplane: ControlPlane,
    admin_api: AsyncClient,
    namespace: str,
) -> None:
    assert konnect.record is not None
    follower_access = controlplane.service_account(namespace, "keeper-b", keeper_rules(SECRET, LEASE))
    user = controlplane.service_account(namespace, "sync-user", SYNC_USER_RULES)
    leader = keepers("keeper-0")
    await ready(leader)
    await leading(leader)
    await wait_for(lambda: _holds(admin_api, namespace, konnect.record.document), 20)
    follower = keepers("keeper-1", kubeconfig=follower_access.kubeconfig)
    await ready(follower)
    assert follower.metric("license_keeper_leader") == 0

    since, polls = time.time(), konnect.requests
    out = await cli("sync", "-n", namespace, access=user)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("polled Konnect: no newer license; the Secret holds license ")
    assert konnect.requests == polls + 1, "one poll for one request"
    secret = await read_secret(admin_api, namespace)
    assert SYNC_REQUEST_ANNOTATION not in annotations(secret), "the leader clears the request"
    answer = parse_answer(annotations(secret)[SYNC_ANSWER_ANNOTATION])
    assert answer is not None and answer.by == "keeper-0" and answer.outcome == "unchanged"

    await asyncio.sleep(2)  # anything late would show now
    assert writes_to_the_secret(audited(controlplane, since, namespace, keeper_access)) == [("patch", 200)]
    assert writes_to_the_secret(audited(controlplane, since, namespace, follower_access)) == []
    users = audited(controlplane, since, namespace, user)
    assert writes_to_the_secret(users) == [("patch", 200)] and {e.verb for e in users} == {"get", "patch"}
    assert konnect.requests == polls + 1 and follower.metric("license_keeper_leader") == 0

    # A newer license at Konnect: the answer says it was written, as JSON for scripts.
    newer = make_record(updated_at=konnect.record.updated_at + 60)
    konnect.serve(newer)
    out = await cli("sync", "-n", namespace, "-o", "json", access=user)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["outcome"] == "wrote" and report["answered_by"] == "keeper-0"
    assert report["message"].startswith("polled Konnect: wrote the Secret (rotate): license ")
    assert report["secret"] == f"{namespace}/{SECRET}"
    assert holds(await read_secret(admin_api, namespace), newer.document)
    assert not leaks(out.stdout + out.stderr)


async def _holds(api: AsyncClient, namespace: str, document: str) -> bool:
    return holds(await read_secret(api, namespace), document)


async def test_a_follower_ignores_a_request_the_next_leader_answers_it_and_nobody_answering_is_3(
    keepers: KeeperFactory,
    keeper_access: ServiceAccountAccess,
    admin_kube: Kube,
    konnect: KonnectStandIn,
    controlplane: ControlPlane,
    admin_api: AsyncClient,
    namespace: str,
) -> None:
    assert konnect.record is not None
    user = controlplane.service_account(namespace, "sync-user", SYNC_USER_RULES)
    # Someone else holds the Lease for an hour: the keeper stays a follower, watching the Lease.
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    lease = {"metadata": {"name": LEASE}, "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 3600}}
    lease["spec"].update({"acquireTime": now, "renewTime": now})  # type: ignore[attr-defined]
    controlplane.must("POST", lease_path, lease)
    assert (await SecretStore(admin_kube, namespace, SECRET).sync(konnect.record)).wrote == "create"
    follower = keepers("keeper-1")
    await ready(follower)

    since = time.time()
    out = await cli("sync", "-n", namespace, "--timeout=3s", access=user)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stderr.strip() == "error: no keeper answered within 3 s; is a keeper running?"
    assert SYNC_REQUEST_ANNOTATION not in annotations(await read_secret(admin_api, namespace)), "withdrawn"
    assert konnect.requests == 0 and writes_to_the_secret(
        audited(controlplane, since, namespace, keeper_access)
    ) == []

    # Asked with kubectl while nobody leads: the next leader's first poll answers it.
    await admin_api.patch(
        Secret,
        SECRET,
        {"metadata": {"annotations": {SYNC_REQUEST_ANNOTATION: "by-hand-1"}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await asyncio.sleep(2)
    assert annotations(await read_secret(admin_api, namespace))[SYNC_REQUEST_ANNOTATION] == "by-hand-1"
    # "elsewhere" releases the Lease, as a keeper stopping does: the follower takes it at once.
    current = controlplane.must("GET", f"{lease_path}/{LEASE}")
    current["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1})
    controlplane.must("PUT", f"{lease_path}/{LEASE}", current)
    await leading(follower)

    async def answered() -> bool:
        found = annotations(await read_secret(admin_api, namespace))
        answer = parse_answer(found.get(SYNC_ANSWER_ANNOTATION))
        return answer is not None and answer.request == "by-hand-1" and SYNC_REQUEST_ANNOTATION not in found

    await wait_for(answered, 20)
    answer = parse_answer(annotations(await read_secret(admin_api, namespace))[SYNC_ANSWER_ANNOTATION])
    assert answer is not None and answer.by == "keeper-1" and answer.outcome == "unchanged"
    assert konnect.requests == 1


async def test_a_refused_request_names_the_server_the_verb_and_the_resource(
    keepers: KeeperFactory, konnect: KonnectStandIn, controlplane: ControlPlane, admin_api: AsyncClient, namespace: str
) -> None:
    k = keepers("keeper-0")
    await ready(k)
    await wait_for(lambda: _holds(admin_api, namespace, konnect.record.document), 20)
    get_only = [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get"]}]
    read_only = controlplane.service_account(namespace, "reader", get_only)
    nobody = controlplane.service_account(namespace, "nobody")
    for who, verb in ((read_only, "patch"), (nobody, "get")):
        out = await cli("sync", "-n", namespace, access=who)
        assert out.returncode == 3, out.stdout + out.stderr
        line = out.stderr.strip()
        assert "\n" not in line and line.count(controlplane.server) == 1, line
        assert line.startswith(f"error: from server {controlplane.server} (Forbidden): ")
        assert f'User "{who.username}" cannot {verb} resource "secrets"' in line, line
        assert f'secrets "{SECRET}" is forbidden' in line
    out = await cli("status", "-n", namespace, access=nobody)
    assert out.returncode == 3 and 'cannot get resource "secrets"' in out.stderr


async def test_the_keepers_role_grants_exactly_the_verbs_it_calls(
    keepers: KeeperFactory,
    keeper_access: ServiceAccountAccess,
    konnect: KonnectStandIn,
    controlplane: ControlPlane,
    namespace: str,
) -> None:
    """Create, watch, re-read, answer a request: every verb the keepers use on the Secret and the Lease is
    in their Role (chart: tests/integration/test_chart_static.py compares the chart with keeper_rules), and
    the Role grants no verb they never call."""
    follower_access = controlplane.service_account(namespace, "keeper-b", keeper_rules(SECRET, LEASE))
    user = controlplane.service_account(namespace, "sync-user", SYNC_USER_RULES)
    since = time.time()
    leader = keepers("keeper-0", "--resync-period=5s")
    await ready(leader)
    await leading(leader)
    follower = keepers("keeper-1", "--resync-period=5s", kubeconfig=follower_access.kubeconfig)
    await ready(follower)
    assert (await cli("sync", "-n", namespace, access=user)).returncode == 0
    await asyncio.sleep(6)  # one re-read (get) each
    entries = [
        e
        for who in (keeper_access, follower_access)
        for e in audited(controlplane, since, namespace, who)
    ]
    refused = [e.brief() for e in entries if e.code in (401, 403)]
    assert not refused, refused  # (a 404 is fine: the first get of a Lease nobody created yet)
    granted: dict[str, set[str]] = {}
    for rule in keeper_rules(SECRET, LEASE):
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    used: dict[str, set[str]] = {}
    for e in entries:
        used.setdefault(e.resource or "", set()).add(e.verb)
    assert used["secrets"] == granted["secrets"] == {"create", "get", "list", "watch", "patch"}
    assert used["leases"] == granted["leases"] == {"create", "get", "update", "list", "watch"}
    assert used["events"] <= granted["events"] == {"create", "patch"}


def _post_sync_from(source: str, port: int) -> str:
    """POST /sync to the probe port from ``source`` (any loopback address, as a mesh sidecar's 127.0.0.6)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(b"POST /sync HTTP/1.1\r\nHost: keeper\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode()


async def test_the_probe_port_takes_no_poll_requests(
    keepers: KeeperFactory, konnect: KonnectStandIn, admin_api: AsyncClient, namespace: str
) -> None:
    """Issue 26 #6: /sync accepted any loopback source, e.g. a mesh sidecar's 127.0.0.6. It is gone."""
    k = keepers("keeper-0")
    await ready(k)
    await leading(k)
    await wait_for(lambda: konnect.requests >= 1, 10)
    await asyncio.sleep(11)  # past the 10 s between extra polls, so a route that still worked would poll
    before = konnect.requests
    for source in ("127.0.0.6", "127.0.0.1"):
        status = await asyncio.to_thread(_post_sync_from, source, k.probe_port)
        assert status.split(" ")[1] in ("404", "405"), status
    await asyncio.sleep(2)
    assert konnect.requests == before
    assert k.healthy()
