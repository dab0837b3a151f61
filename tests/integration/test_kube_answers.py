"""Answers that are not Kubernetes answers, from something in front of the real API server (the fault
proxy), through every kind of call the keeper makes: each ends as a ``KubeError`` chosen by the status
code, never as an exception the keeper's tasks do not expect (issue 26 item 5)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from license_keeper.kube import Forbidden, Kube, KubeError, NotFound, Unreachable
from license_keeper.store import SecretStore, StoreForbidden, StoreUnreachable
from license_keeper.testing.controlplane import ControlPlane
from license_keeper.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxy(controlplane: ControlPlane, tmp_path: Path) -> Iterator[FaultProxy]:
    with FaultProxy(controlplane.server, controlplane.ca_file, tls_dir=tmp_path / "proxy-tls") as p:
        yield p


@pytest.fixture
async def kube(proxy: FaultProxy, controlplane: ControlPlane, namespace: str, tmp_path: Path) -> AsyncIterator[Kube]:
    """The keeper's own client, reaching the API server only through the proxy."""
    kubeconfig = proxy.write_kubeconfig(
        tmp_path / "proxied.kubeconfig", token=controlplane.admin_token, user="admin", namespace=namespace
    )
    k = Kube.from_kubeconfig(kubeconfig, timeout=10.0)
    try:
        yield k
    finally:
        await k.close()


Call = Callable[[Kube, str], Awaitable[Any]]

# One of each kind of call the keeper makes: lightkube's typed calls and the raw JSON ones.
CALLS: dict[str, Call] = {
    "typed get": lambda k, ns: k.call("get Secret", lambda: k.client.get(Secret, "s", namespace=ns)),
    "typed create": lambda k, ns: k.call(
        "create Secret", lambda: k.client.create(Secret(metadata=ObjectMeta(name="s", namespace=ns)))
    ),
    "raw get": lambda k, ns: k.request("GET", f"/api/v1/namespaces/{ns}/secrets/s", what="get Secret"),
    "raw merge patch": lambda k, ns: k.request(
        "PATCH",
        f"/api/v1/namespaces/{ns}/secrets/s",
        {"metadata": {"labels": {"a": "b"}}},
        what="patch Secret",
        content_type="application/merge-patch+json",
    ),
}

# (fault proxy mode and its parameters, the kind of failure its status code means)
ANSWERS: dict[str, tuple[dict[str, Any], type[KubeError]]] = {
    "html 403": ({"mode": "html", "status": 403}, Forbidden),
    "html 403 labelled json": ({"mode": "html", "status": 403, "content_type": "application/json"}, Forbidden),
    "html 403 no content type": ({"mode": "html", "status": 403, "content_type": ""}, Forbidden),
    "html 404 labelled json": ({"mode": "html", "status": 404, "content_type": "application/json"}, NotFound),
    "html 404 no content type": ({"mode": "html", "status": 404, "content_type": ""}, NotFound),
    "deep json 403": ({"mode": "nested", "status": 403}, Forbidden),
    "deep json 404": ({"mode": "nested", "status": 404}, NotFound),
    "deep json 200": ({"mode": "nested", "status": 200}, Unreachable),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
@pytest.mark.parametrize("call", list(CALLS))
async def test_every_call_classifies_a_foreign_answer_by_its_status_code(
    kube: Kube, proxy: FaultProxy, namespace: str, call: str, answer: str
) -> None:
    rule, kind = ANSWERS[answer]
    proxy.set_mode(**rule)
    with pytest.raises(KubeError) as info:
        await CALLS[call](kube, namespace)
    assert type(info.value) is kind, f"{type(info.value).__name__}: {info.value}"
    assert info.value.code == (rule["status"] if rule["status"] >= 400 else None)
    assert "<html" not in str(info.value) and '{"a"' not in str(info.value)


async def test_the_store_reports_a_proxys_403_page_as_forbidden_not_unreachable(
    kube: Kube, proxy: FaultProxy, namespace: str
) -> None:
    """What the keeper logs: a proxy's 403 page on the Secret is an RBAC-like refusal, not an outage."""
    store = SecretStore(kube, namespace, "kong-license")
    proxy.set_mode("html", status=403, content_type="application/json")
    with pytest.raises(StoreForbidden, match=r"forbidden to get Secret .* \(HTTP 403\)"):
        await store.read()
    proxy.set_mode("nested", status=200)
    with pytest.raises(StoreUnreachable, match="malformed answer"):
        await store.read()
    proxy.set_mode("pass")
    assert not (await store.read()).exists


@pytest.mark.parametrize(
    ("rule", "kind"),
    [
        ({"mode": "nested", "status": 200}, Unreachable),  # a watch line nested too deep
        ({"mode": "nested", "status": 403}, Forbidden),
        ({"mode": "html", "status": 403, "content_type": ""}, Forbidden),
    ],
    ids=["deep json 200", "deep json 403", "html 403"],
)
async def test_the_watch_reports_a_foreign_answer_and_keeps_going(
    kube: Kube, proxy: FaultProxy, namespace: str, rule: dict[str, Any], kind: type[KubeError]
) -> None:
    """A RecursionError out of the watch ended the keeper's watch task (and the keeper); now the
    failure goes to on_failure and the watch retries with backoff until stopped."""
    proxy.set_mode(**rule, watch=True)  # the list passes, the watch meets the answer
    stop = asyncio.Event()
    failures: list[KubeError] = []

    def failed(error: KubeError, retry_in: float) -> None:
        failures.append(error)
        if len(failures) >= 2:
            stop.set()

    events = [
        event.type
        async for event in kube.watch(
            f"/api/v1/namespaces/{namespace}/secrets", name="s", stop=stop, what="Secret s", on_failure=failed
        )
    ]
    assert events[0] == "SYNC"
    assert [type(f) for f in failures] == [kind, kind], failures
