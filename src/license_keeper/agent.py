"""The keeper's loop: wires Konnect, the Secret, leader election and observability together.

Every replica loads and watches the Secret (read only), so it is ready and shows the right metrics as
soon as the Secret holds a valid license. Only the replica holding the Lease asks Konnect and writes.
All decisions go through one lock and the pure functions in ``policy`` and ``schedule``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from kubernetes_asyncio import client

from .config import Settings
from .election import TRANSPORT_ERRORS, LeaderElector, default_identity
from .konnect import KonnectClient, KonnectFailure, KonnectResult, LicenseFetched, NoLicense
from .license import LicenseRecord
from .observe import EventRecorder, KeeperState, Metrics, metrics_app, probe_app, start_site
from .policy import SecretSnapshot, SecretState, choose, is_better, record_from_secret, secret_state
from .schedule import ScheduleConfig, next_delay, sleep_slice
from .store import SecretStore, StoreError, SyncOutcome

log = logging.getLogger("license_keeper.agent")

EXIT_OK = 0
EXIT_LOST_LEASE = 1
HEARTBEAT_SECONDS = 5.0
RESYNC_SECONDS = 60.0  # re-read the Secret even without watch events, in case the watch is starved

_WRITE_EVENTS = {
    "create": ("LicenseStored", False),
    "rotate": ("LicenseRotated", False),
    "repair": ("SecretRepaired", True),
    "recreate": ("SecretRecreated", True),
    "restore": ("LicenseRestored", False),
}


@dataclass
class Ports:
    probe: int = 0
    metrics: int = 0


def describe(record: LicenseRecord | None) -> str:
    """Safe words for a license in logs and Events: fingerprint, expiry, updated_at. Nothing else."""
    if record is None:
        return "no license"
    lic = record.license
    if lic is None:
        return "an invalid license"
    return f"license {lic.fingerprint} (expires {lic.expiration_date.isoformat()}, updated_at {record.updated_at})"


class Keeper:
    def __init__(
        self,
        settings: Settings,
        api: client.ApiClient,
        *,
        namespace: str,
        konnect: KonnectClient | None = None,
        identity: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.rng = rng or random.Random()
        self.state = KeeperState(renew_before=settings.renew_before, polling_period=settings.polling_period)
        self.metrics = Metrics(self.state)
        self.store = SecretStore(api, namespace, settings.effective_secret_name)
        self.events = EventRecorder(api, namespace, settings.effective_secret_name, "license-keeper", self.identity)
        self.konnect = konnect
        self.schedule = ScheduleConfig(
            initial_period=settings.initial_polling_period,
            regular_period=settings.polling_period,
            renew_before=settings.renew_before,
        )
        self.elector: LeaderElector | None = None
        if settings.leader_elect:
            self.elector = LeaderElector(
                api,
                namespace,
                settings.effective_lease_name,
                self.identity,
                lease_duration=settings.leader_elect_lease_duration,
                renew_deadline=settings.leader_elect_renew_deadline,
                retry_period=settings.leader_elect_retry_period,
                on_change=self._on_leadership,
            )
        self.ports = Ports()
        self.ready_event = asyncio.Event()
        self._lock = asyncio.Lock()
        self._poll_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._leading = False
        self._secret = SecretSnapshot.missing()
        self._secret_seen = False  # the Secret existed at some point since start
        self._first_snapshot = True
        self._failures = 0
        self._konnect_down = False
        self._announced: set[str] = set()  # once-per-condition Events (foreign, expiring, expired)
        self._runners: list[web.AppRunner] = []
        self._event_tasks: set[asyncio.Task[None]] = set()  # strong refs until each Event is sent

    # --- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or until the Lease is lost (exit 1)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_poll)
        try:
            return await self.serve()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def stop(self) -> None:
        log.info("stopping")
        self._stopping.set()

    def request_poll(self) -> None:
        log.info("poll requested")
        self._poll_now.set()

    async def serve(self) -> int:
        await self._start_http()
        background = [
            asyncio.create_task(self._watch_secret(), name="watch"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
        ]
        election = asyncio.create_task(self.elector.run(), name="election") if self.elector else None
        leader: asyncio.Task[None] | None = None
        code = EXIT_OK
        try:
            if await self._wait_for_leadership(election):
                self._leading = True
                self.state.leader = True
                leader = asyncio.create_task(self._lead(), name="lead")
                code = await self._wait_while_leading(leader)
            elif not self._stopping.is_set():
                log.error("leader election ended without leading; exiting so the pod restarts clean")
                code = EXIT_LOST_LEASE
        finally:
            self._leading = False
            self.state.leader = False
            for task in [leader, *background]:
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in [leader, *background] if t is not None), return_exceptions=True)
            if self.elector is not None:
                if code == EXIT_OK:
                    await self.elector.release()
                if election is not None:
                    election.cancel()
                    await asyncio.gather(election, return_exceptions=True)
            if self.konnect is not None:
                await self.konnect.close()
            for runner in self._runners:
                await runner.cleanup()
        log.info("stopped (exit %d)", code)
        return code

    async def _wait_for_leadership(self, election: asyncio.Task[None] | None) -> bool:
        if self.elector is None:
            return not self._stopping.is_set()
        waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self.elector.leading.wait())]
        if election is not None:
            waits.append(election)  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits[:2]:
                w.cancel()
        return self.elector.leading.is_set() and not self._stopping.is_set() and not self.elector.lost.is_set()

    async def _wait_while_leading(self, leader: asyncio.Task[None]) -> int:
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._stopping.wait()), leader]  # type: ignore[list-item]
        if self.elector is not None:
            waits.append(asyncio.ensure_future(self.elector.lost.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                if w is not leader:
                    w.cancel()
        if self.elector is not None and self.elector.lost.is_set():
            # Stop every write and Konnect call now; the caller exits non-zero so the pod restarts clean.
            self._leading = False
            leader.cancel()
            log.error("lost the leader Lease; stopping all writes and exiting")
            return EXIT_LOST_LEASE
        if leader.done() and not leader.cancelled() and leader.exception() is not None:
            raise leader.exception()  # type: ignore[misc]
        return EXIT_OK

    def _on_leadership(self, leading: bool) -> None:
        self.state.leader = leading and self._leading
        log.info("leadership: %s", "acquired" if leading else "not leading")

    def may_write(self) -> bool:
        if self._stopping.is_set() or not self._leading:
            return False
        return self.elector is None or self.elector.is_leader

    async def _start_http(self) -> None:
        probe, self.ports.probe = await start_site(
            probe_app(self.state, self._sync_requested), self.settings.probe_addr
        )
        metrics, self.ports.metrics = await start_site(metrics_app(self.metrics), self.settings.metrics_addr)
        self._runners = [probe, metrics]
        log.info("probes on port %d, metrics on port %d", self.ports.probe, self.ports.metrics)

    async def _sync_requested(self) -> tuple[int, str]:
        if not self.may_write():
            holder = self.elector.holder if self.elector is not None else None
            return 409, f"not the leader (leader: {holder or 'unknown'}); ask the leader"
        self.request_poll()
        return 202, "poll requested"

    async def _heartbeat(self) -> None:
        while True:
            self.state.beat()
            self._check_expiry()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # --- the Secret, on every replica ---------------------------------------------------------------

    async def _watch_secret(self) -> None:
        async def resync() -> None:
            while True:
                await asyncio.sleep(RESYNC_SECONDS)
                try:
                    await self._on_snapshot(await self.store.read())
                except StoreError as e:
                    log.warning("re-reading the Secret failed: %s", e)
                except TRANSPORT_ERRORS as e:
                    log.warning("re-reading the Secret failed: API server unreachable (%s)", type(e).__name__)

        resyncer = asyncio.create_task(resync())
        try:
            async for snapshot in self.store.watch(self._stopping):
                await self._on_snapshot(snapshot)
        finally:
            resyncer.cancel()

    async def _on_snapshot(self, snapshot: SecretSnapshot) -> None:
        async with self._lock:
            first = self._first_snapshot
            self._first_snapshot = False
            self._note_secret(snapshot)
            in_secret = record_from_secret(snapshot)
            if in_secret is not None and in_secret.valid and is_better(in_secret, self.state.held, self._now()):
                before = self.state.held
                self._hold(in_secret)
                if first and before is None:
                    log.info("loaded %s from the Secret at start", describe(in_secret))
                    await self.events.emit(
                        "LicenseLoadedFromSecret", f"Loaded {describe(in_secret)} from the Secret at start"
                    )
                else:
                    log.info("the Secret holds a better license, taking it: %s", describe(in_secret))
            if self.may_write():
                await self._persist(snapshot=snapshot)

    def _note_secret(self, snapshot: SecretSnapshot) -> None:
        self._secret = snapshot
        if snapshot.exists:
            self._secret_seen = True
            if snapshot.uid:
                self.events.uid = snapshot.uid
        self.state.secret_state = secret_state(snapshot)

    # --- the leader's work ------------------------------------------------------------------------

    async def _lead(self) -> None:
        log.info("leading: this replica now asks Konnect and writes the Secret")
        async with self._lock:
            await self._persist()  # the Secret may have been lost while nobody led
        while True:
            self.state.beat_poll_loop()
            result = await self._fetch()
            await self._handle(result)
            delay = next_delay(self.state.held, self._failures, self._now(), self.schedule, self.rng)
            log.debug("next Konnect poll in %.0f s", delay)
            await self._sleep(time.time() + delay)

    async def _fetch(self) -> KonnectResult | None:
        if self.konnect is None:
            return None
        result = await self.konnect.fetch()
        self.metrics.konnect_requests.labels(result.kind).inc()
        return result

    async def _handle(self, result: KonnectResult | None) -> None:
        if result is None:
            return
        if isinstance(result, KonnectFailure):
            self._failures += 1
            log.warning("Konnect request failed (%d in a row): %s", self._failures, result.describe())
            if not self._konnect_down:
                self._konnect_down = True
                await self.events.emit(
                    "KonnectUnreachable",
                    f"Konnect license request failed ({result.kind}); keeping {describe(self.state.held)}",
                    warning=True,
                )
            return
        self._failures = 0
        self.state.last_konnect_success = time.time()
        if self._konnect_down:
            self._konnect_down = False
            log.info("Konnect answers again")
            await self.events.emit("KonnectRecovered", "Konnect license requests succeed again")
        if isinstance(result, NoLicense):
            log.warning("Konnect has no license for this control plane (404); keeping %s", describe(self.state.held))
            return
        assert isinstance(result, LicenseFetched)
        async with self._lock:
            chosen = choose(self.state.held, [result.record], self._now())
            if chosen is not self.state.held:
                log.info("Konnect served a better license: %s", describe(chosen))
                self._hold(chosen)
            elif result.record != self.state.held:
                log.info("Konnect served %s; keeping the better %s", describe(result.record), describe(self.state.held))
            await self._persist()

    async def _persist(self, snapshot: SecretSnapshot | None = None) -> None:
        """Make the Secret hold the held license (caller holds the lock)."""
        if self.state.held is None or not self.may_write():
            return
        try:
            outcome = await self.store.sync(
                self.state.held,
                self._now(),
                existed_before=self._secret_seen,
                may_write=self.may_write,
                # The watch keeps our last snapshot fresh, so an unchanged poll costs no API call at all;
                # a stale snapshot costs a 409 and a re-read, never a lost update.
                snapshot=snapshot if snapshot is not None else (None if self._first_snapshot else self._secret),
            )
        except StoreError as e:
            log.error("could not sync the Secret: %s", e)
            return
        except TRANSPORT_ERRORS as e:
            # The watch or the next poll tries again; an API server outage must not end the loop.
            log.error("could not sync the Secret: API server unreachable (%s)", type(e).__name__)
            return
        await self._after_sync(outcome)

    async def _after_sync(self, outcome: SyncOutcome) -> None:
        self._note_secret(outcome.snapshot)
        if outcome.took_secret and outcome.held is not None:
            log.info("the Secret held a better license, taking it: %s", describe(outcome.held))
            self._hold(outcome.held)
        if outcome.refused is not None:
            self.state.secret_state = outcome.refused
            if outcome.refused.value not in self._announced:
                self._announced.add(outcome.refused.value)
                msg = (
                    "Secret exists but is not managed by license-keeper; leaving it alone "
                    "(label it app.kubernetes.io/managed-by=license-keeper or annotate license-keeper.io/adopt=true)"
                    if outcome.refused == SecretState.FOREIGN
                    else "Secret is immutable; cannot store the license in it"
                )
                log.error("%s", msg)
                await self.events.emit(
                    "ForeignSecret" if outcome.refused == SecretState.FOREIGN else "SecretImmutable", msg, warning=True
                )
            return
        self._announced.discard(SecretState.FOREIGN.value)
        self._announced.discard(SecretState.IMMUTABLE.value)
        if outcome.wrote:
            self.metrics.secret_writes.labels(outcome.wrote).inc()
            reason, warning = _WRITE_EVENTS.get(outcome.wrote, ("LicenseStored", False))
            log.info("wrote the Secret (%s): %s", outcome.wrote, describe(self.state.held))
            await self.events.emit(
                reason, f"Secret written ({outcome.wrote}): {describe(self.state.held)}", warning=warning
            )

    def _hold(self, record: LicenseRecord | None) -> None:
        self.state.held = record
        if record is not None and record.valid:
            self.ready_event.set()
        self._check_expiry()

    def _check_expiry(self) -> None:
        state = self.state.license_state(self._now())
        for condition in ("expiring", "expired"):
            if state == condition and condition not in self._announced:
                self._announced.add(condition)
                text = "expires soon" if condition == "expiring" else "has expired"
                log.warning("the held %s %s", describe(self.state.held), text)
                task = asyncio.get_running_loop().create_task(
                    self.events.emit(
                        "LicenseExpiringSoon" if condition == "expiring" else "LicenseExpired",
                        f"Held {describe(self.state.held)} {text}",
                        warning=True,
                    )
                )
                self._event_tasks.add(task)
                task.add_done_callback(self._event_tasks.discard)
            elif state != condition:
                self._announced.discard(condition)

    async def _sleep(self, due_wall: float) -> None:
        while not self._stopping.is_set():
            self.state.beat_poll_loop()
            wait = sleep_slice(due_wall, time.time())
            if wait <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), wait)
            if self._poll_now.is_set():
                self._poll_now.clear()
                return

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)

