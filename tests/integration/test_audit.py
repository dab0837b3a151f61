"""The API server's audit log, the oracle of the soak: who did what to Secrets, Leases and Events."""

from __future__ import annotations

import base64
import secrets
import time

from license_keeper.testing.controlplane import AuditTail, ControlPlane

from ..conftest import ServiceAccountFactory


def test_secret_create_by_a_service_account_is_audited_with_its_username_and_verb(
    controlplane: ControlPlane, namespace: str, service_account: ServiceAccountFactory
) -> None:
    sa = service_account([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get"]}])
    since = time.time() - 1
    value = secrets.token_hex(16)
    body = {"metadata": {"name": "audited"}, "data": {"v": base64.b64encode(value.encode()).decode()}}
    resp = controlplane.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body, token=sa.token)
    assert resp.status == 201
    denied = controlplane.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/audited", token=sa.token)
    assert denied.status == 403
    # Noise the policy omits: a ConfigMap.
    controlplane.must("POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": "noise"}})

    entries = controlplane.audit_entries(since=since, namespace=namespace)
    mine = [e for e in entries if e.username == sa.username]
    assert [(e.verb, e.resource, e.name, e.code) for e in mine] == [
        ("create", "secrets", "audited", 201),
        ("delete", "secrets", "audited", 403),
    ]
    assert all(e.stage == "ResponseComplete" for e in entries)  # RequestReceived is omitted
    assert mine[0].received is not None and mine[0].at is not None and mine[0].received <= mine[0].at
    assert not [e for e in entries if e.resource == "configmaps"]
    # Metadata level: no request or response bodies, so no Secret content in the log.
    assert value not in controlplane.audit_log.read_text()
    assert controlplane.audit_entries(since=since, namespace=namespace, resource="leases") == []


def test_audit_tail_reads_only_what_is_new(controlplane: ControlPlane, namespace: str) -> None:
    tail = AuditTail(controlplane.audit_log)
    tail.read()  # skip everything before this test
    controlplane.must("POST", f"/api/v1/namespaces/{namespace}/secrets", {"metadata": {"name": "one"}})
    first = [e for e in tail.read() if e.namespace == namespace]
    controlplane.must("GET", f"/api/v1/namespaces/{namespace}/secrets/one")
    second = [e for e in tail.read() if e.namespace == namespace]
    assert [(e.verb, e.name) for e in first] == [("create", "one")]
    assert [(e.verb, e.name) for e in second] == [("get", "one")]
