"""The keeper's loop in this process, against the real API server and the Konnect stand-in.

What the loop promises: every background task is supervised (one that dies ends the keeper with
exit 1, never a half-alive keeper); polls are timed on the monotonic clock; the Secret is loaded
before anything else and a better license in it is taken; a better license from Konnect is written
once. The process-level behaviour (signals, restarts, several replicas) is in tests/e2e.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from license_keeper.agent import Keeper
from license_keeper.config import load_settings
from license_keeper.konnect import KonnectClient
from license_keeper.kube import Kube
from license_keeper.testing.controlplane import ControlPlane, ServiceAccountAccess
from license_keeper.testing.keeper import keeper_rules
from license_keeper.testing.konnect import KonnectStandIn

SECRET = "kong-license"
LEASE = "kong-license-keeper"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def access(controlplane: ControlPlane, namespace: str) -> ServiceAccountAccess:
    return controlplane.service_account(namespace, "license-keeper", keeper_rules(SECRET, LEASE))


@pytest.fixture
async def konnect(tmp_path: Path) -> AsyncIterator[KonnectStandIn]:
    async with KonnectStandIn(tls_dir=tmp_path / "konnect-tls") as standin:
        yield standin


KeeperFactory = Callable[..., Keeper]


@pytest.fixture
async def make_keeper(
    access: ServiceAccountAccess, konnect: KonnectStandIn, namespace: str
) -> AsyncIterator[KeeperFactory]:
    kubes: list[Kube] = []

    def make(**overrides: Any) -> Keeper:
        settings = load_settings(
            namespace=namespace,
            probe_addr="127.0.0.1:0",
            metrics_addr="127.0.0.1:0",
            **overrides,
        )
        kube = Kube.from_kubeconfig(access.kubeconfig)
        kubes.append(kube)
        tls = konnect.tls
        client = KonnectClient(
            konnect.address,
            konnect.control_plane_id,
            tls.client_cert_file,
            tls.client_key_file,
            ca_file=tls.ca_file,
            total_timeout=settings.konnect_timeout,
        )
        return Keeper(settings, kube, namespace=namespace, konnect=client, identity=f"keeper-{len(kubes)}")

    yield make
    for kube in kubes:
        await kube.close()


async def until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


async def test_a_dead_elector_ends_the_leading_keeper_with_exit_1(
    make_keeper: KeeperFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9, defect 13: the elector task dying while leading left a keeper that neither renewed
    nor exited; now the supervisor ends it with exit 1 and says which task died."""
    keeper = make_keeper()
    serving = asyncio.create_task(keeper.serve())
    assert keeper.elector is not None
    await asyncio.wait_for(keeper.elector.leading.wait(), 30)

    async def broken_renew() -> None:
        raise RuntimeError("renew exploded")

    keeper.elector._try_renew = broken_renew  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="license_keeper.agent"):
        code = await asyncio.wait_for(serving, 30)
    assert code == 1
    assert "background task 'election' ended unexpectedly (RuntimeError" in caplog.text
    assert not keeper.leading_now()


async def test_a_dead_watch_ends_the_keeper_instead_of_leaving_it_half_alive(
    make_keeper: KeeperFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 9, defect 1: the Secret watch could die silently, leaving a keeper that never saw the
    Secret again while /healthz stayed green. A task that ends now ends the process with exit 1."""
    keeper = make_keeper()
    calls = 0
    real = keeper._on_snapshot

    async def failing_second_time(snapshot: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("a bug in snapshot handling")
        await real(snapshot)

    keeper._on_snapshot = failing_second_time  # type: ignore[method-assign]
    serving = asyncio.create_task(keeper.serve())
    await asyncio.wait_for(keeper.ready_event.wait(), 30)  # created the Secret: the watch sees it next
    with caplog.at_level(logging.ERROR, logger="license_keeper.agent"):
        code = await asyncio.wait_for(serving, 90)
    assert code == 1
    assert "background task" in caplog.text and "ended unexpectedly (RuntimeError" in caplog.text


async def test_a_clock_stepped_back_a_day_does_not_delay_the_next_poll(
    make_keeper: KeeperFactory, konnect: KonnectStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9, defect 10: the poll due time was on the wall clock, so a clock stepped back one day
    delayed the next poll by one day. Polls are now timed on the monotonic clock."""
    keeper = make_keeper(polling_period="10s")
    serving = asyncio.create_task(keeper.serve())
    try:
        await until(lambda: konnect.requests >= 1, 30)
        await asyncio.sleep(0.5)  # the poll loop is asleep now, its due time set
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() - 86400)
        started = time.monotonic()
        await until(lambda: konnect.requests >= 2, 30)
        print(f"\nnext poll {time.monotonic() - started:.1f} s after the clock went back a day")
    finally:
        keeper.stop()
        assert await asyncio.wait_for(serving, 30) == 0


async def test_the_secret_is_loaded_before_konnect_answers_and_a_better_one_is_taken(
    make_keeper: KeeperFactory, konnect: KonnectStandIn
) -> None:
    """The start-up race: with Konnect black-holed, the first keeper never gets a license; a license
    put into the Secret by someone else is taken from the watch, and the keeper turns ready."""
    from license_keeper.store import SecretStore
    from license_keeper.testing.licenses import make_record

    await konnect.set_mode("blackhole")
    keeper = make_keeper()
    serving = asyncio.create_task(keeper.serve())
    try:
        await asyncio.sleep(2)
        assert keeper.state.held is None and not keeper.ready_event.is_set()
        record = make_record(updated_at=int(time.time()))
        store = SecretStore(keeper.kube, keeper.namespace, SECRET)
        outcome = await store.sync(record, reason="restore")
        assert outcome.wrote == "restore"
        await asyncio.wait_for(keeper.ready_event.wait(), 20)
        assert keeper.state.held is not None and keeper.state.held.document == record.document
        assert keeper.metrics.secret_writes.labels("create")._value.get() == 0  # taken, not rewritten
    finally:
        keeper.stop()
        assert await asyncio.wait_for(serving, 30) == 0


class _ShiftedClock:
    """``time`` as observe.py sees it, with its monotonic clock moved ahead on demand: what /healthz
    says after minutes, without waiting for them. Everything else (asyncio, the Konnect client's own
    timeout) keeps the real clock, so a request in flight stays in flight."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    def time(self) -> float:
        return time.time()


async def test_a_leader_inside_its_own_konnect_timeout_is_not_called_stalled(
    make_keeper: KeeperFactory, konnect: KonnectStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26 item 1: /healthz said "poll loop stalled" after a fixed 300 s, so with --konnect-timeout
    above that, a Konnect that accepts and never answers failed the leader's liveness while the poll loop
    waited inside its own configured timeout. The stall bound now follows the configured timeouts; a
    loop stuck past the longest step it can take is still called stalled."""
    import urllib.error
    import urllib.request

    import license_keeper.observe as observe

    clock = _ShiftedClock()
    monkeypatch.setattr(observe, "time", clock)
    await konnect.set_mode("blackhole")
    keeper = make_keeper(konnect_timeout="5m", resync_period="5s")
    serving = asyncio.create_task(keeper.serve())
    try:
        await until(lambda: keeper.leading_now() and konnect.requests >= 1, 30)

        def get_healthz() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{keeper.ports.probe}/healthz", timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        async def healthz() -> tuple[int, str]:
            return await asyncio.to_thread(get_healthz)

        assert (await healthz())[0] == 200
        clock.ahead = 310.0  # the request has waited 310 s of its 300 s timeout + a Secret sync's time
        await asyncio.sleep(7)  # the heartbeat and a Secret re-read beat on the moved clock
        status, body = await healthz()
        print(f"\n/healthz 310 s into a 5 m Konnect request: {status} {body.strip()}")
        assert status == 200, body
        assert konnect.requests == 1  # still the one request, unanswered
        clock.ahead = 310.0 + 300.0  # far past any step the loop can take
        await asyncio.sleep(7)
        status, body = await healthz()
        assert status == 503 and "poll loop stalled" in body, body
    finally:
        keeper.stop()
        assert await asyncio.wait_for(serving, 30) == 0
