"""The keeper's loop: wires Konnect, the Secret, leader election and observability together.

(Over 400 lines on purpose: ``Keeper`` is one loop whose steps share one lock and one state; each
decision in it is a call into a pure module, what stays here is the order of things and who may write.)

Every replica loads and watches the Secret (read only), so it is ready and shows the right metrics as
soon as the Secret holds a valid license. Only the replica holding the Lease asks Konnect and writes.
All decisions go through one lock and the pure functions in ``policy`` and ``schedule``.

Every background task (watch, re-read, heartbeat, Events, election, the leader's loop) is supervised:
one that ends while the keeper is not stopping ends the process with exit 1 and one log line, so the
kubelet restarts a clean pod instead of leaving a half-alive keeper behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .config import Settings
from .deliver import DeliveryCollector, deliverer_from_settings, delivery_events
from .delivery import TargetReport
from .election import LeaderElector, default_identity
from .konnect import KonnectClient, KonnectFailure, KonnectResult, LicenseFetched, NoLicense
from .kube import Kube, KubeError
from .license import LicenseRecord, describe, format_restored_at
from .observe import EventRecorder, KeeperState, Metrics, metrics_app, poll_loop_stall_bound, probe_app, start_site
from .policy import (
    SecretSnapshot,
    SecretState,
    choose,
    foreign_advice,
    is_better,
    manageable,
    record_from_secret,
    restore_downgrade,
    secret_state,
    velero_restore_name,
)
from .schedule import ScheduleConfig, next_delay, poll_wait
from .store import SecretStore, StoreError, SyncOutcome
from .syncrequest import SyncAnswer, backoff_answer, poll_answer, requested

__all__ = ["Keeper"]

log = logging.getLogger("license_keeper.agent")

EXIT_OK = 0
EXIT_LOST_LEASE = 1
EXIT_TASK_DIED = 1
HEARTBEAT_SECONDS = 5.0
SLEEP_SLICE_SECONDS = 30.0  # the poll loop beats at least this often while it sleeps
MIN_REQUESTED_POLL_INTERVAL = 10.0  # sync requests and SIGHUP: at most one extra Konnect call per 10 s
ERROR_LOG_REPEAT_SECONDS = 60.0


def _restore_words(snapshot: SecretSnapshot) -> str:
    restore = velero_restore_name(snapshot)
    return f" (put there by Velero restore {restore})" if restore else ""


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


class Keeper:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        *,
        namespace: str,
        konnect: KonnectClient | None = None,
        identity: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.rng = rng or random.Random()
        self.state = KeeperState(
            renew_before=settings.renew_before,
            polling_period=settings.polling_period,
            secret_view_stale_after=3 * settings.resync_period,
            # the configured timeouts, not a fixed bound: a loop waiting inside them is slow, not stuck
            poll_loop_stale_after=poll_loop_stall_bound(konnect.deadline if konnect else 0.0, kube.timeout),
        )
        self.metrics = Metrics(self.state)
        self.store = SecretStore(kube, namespace, settings.effective_secret_name)
        self.events = EventRecorder(kube, namespace, settings.effective_secret_name, "license-keeper", self.identity)
        self.konnect = konnect
        self.schedule = ScheduleConfig(
            initial_period=settings.initial_polling_period,
            regular_period=settings.polling_period,
            renew_before=settings.renew_before,
        )
        self.elector: LeaderElector | None = None
        if settings.leader_elect:
            self.elector = LeaderElector(
                kube,
                namespace,
                settings.effective_lease_name,
                self.identity,
                lease_duration=settings.leader_elect_lease_duration,
                renew_deadline=settings.leader_elect_renew_deadline,
                retry_period=settings.leader_elect_retry_period,
                on_change=self._on_leadership,
            )
        # Delivery to running gateways: leader only, after the Secret (the source of truth); its
        # failures never touch the Secret or readiness.
        # Its writes are fenced as the Secret's are: asked right before each one whether we still lead.
        self.deliverer = deliverer_from_settings(
            settings, kube, namespace=namespace, on_report=self._on_delivery, may_write=self.leading_now
        )
        self.metrics.registry.register(DeliveryCollector(self.deliverer))
        self.ports = Ports()
        self.ready_event = asyncio.Event()
        self._lock = asyncio.Lock()
        self._poll_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._ended = asyncio.Event()  # stopping, a task died, or the Lease was lost
        self._leading = False
        self._secret = SecretSnapshot.missing()
        self._secret_seen = False  # the Secret existed at some point since start
        self._first_snapshot = True
        self._failures = 0
        self._last_poll: float | None = None  # monotonic time of the last Konnect call
        self._konnect_down = False
        self._announced: set[str] = set()  # once-per-condition Events (foreign, expiring, expired)
        self._runners: list[web.AppRunner] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._died: tuple[str, str] | None = None  # (task, what ended it)
        self._lost_leadership = False
        self._watch_error: tuple[str, float] | None = None  # last logged watch failure, when
        self._write_note = ""  # said with the next write's Event (a restore a newer license replaces)
        # A poll asked for through the Secret's annotation (syncrequest.py): the token waiting for the
        # leader's next poll, and the last one answered (a stale snapshot must not have it answered twice).
        self._sync_pending: str | None = None
        self._sync_answered: str | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0), the Lease is lost (exit 1) or a task dies (exit 1)."""
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
        self._ended.set()

    def request_poll(self) -> None:
        log.info("poll requested")
        self._poll_now.set()

    async def serve(self) -> int:
        for note in self.settings.kic_notes():
            log.info("%s", note)
        await self._start_http()
        self._spawn("watch", self._watch_secret())
        self._spawn("resync", self._resync())
        self._spawn("heartbeat", self._heartbeat())
        self._spawn("events", self.events.run())
        if self.elector is not None:
            self._spawn("election", self.elector.run())
        else:
            self._begin_leading()
        try:
            await self._ended.wait()
            code = self._exit_code()
        finally:
            await self._shutdown()
        log.info("stopped (exit %d)", code)
        return code

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and not self._stopping.is_set():
            self._ended.set()  # _exit_code tells which task ended, and why

    def _exit_code(self) -> int:
        self._died = self._dead_task()
        if self._died is not None:
            name, what = self._died
            log.error("background task %r ended unexpectedly (%s); exiting so the pod restarts clean", name, what)
            return EXIT_TASK_DIED
        if self._lost_leadership:
            log.error("lost the leader Lease; stopping all writes and exiting")
            return EXIT_LOST_LEASE
        return EXIT_OK

    def _dead_task(self) -> tuple[str, str] | None:
        """The first task that ended by itself while the keeper was not stopping: (name, how)."""
        if self._stopping.is_set():
            return None
        for name, task in self._tasks.items():
            if not task.done() or task.cancelled():
                continue
            error = task.exception()
            if error is None and name == "election" and self._lost_leadership:
                continue  # the elector returns after losing the Lease: that is the lost-Lease exit
            return name, f"{type(error).__name__}: {_short(error)}" if error is not None else "returned"
        return None

    async def _shutdown(self) -> None:
        graceful = self._died is None and not self._lost_leadership
        self._leading = False
        self.state.leader = False
        election = self._tasks.pop("election", None)
        events = self._tasks.pop("events", None)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self.elector is not None:
            if graceful:
                await self.elector.release()  # a follower takes over as soon as it sees the release
            if election is not None:
                election.cancel()
                await asyncio.gather(election, return_exceptions=True)
        if events is not None:
            events.cancel()
            await asyncio.gather(events, return_exceptions=True)
            await self.events.flush(timeout=2.0)
        if self.konnect is not None:
            await self.konnect.close()
        await self.deliverer.close()
        for runner in self._runners:
            await runner.cleanup()

    def _on_leadership(self, leading: bool) -> None:
        log.info("leadership: %s", "acquired" if leading else "not leading")
        if leading and not self._stopping.is_set():
            self._begin_leading()
        elif not leading and self._leading:
            # Stop every write and Konnect call now; the election task ends and the process exits 1.
            self._lost_leadership = not self._stopping.is_set()
            self._leading = False
            self.state.leader = False
            for name in ("lead", "deliver"):
                task = self._tasks.pop(name, None)
                if task is not None:
                    task.cancel()
            self._ended.set()

    def _begin_leading(self) -> None:
        if self._leading:
            return
        self._leading = True
        self.state.leader = True
        self._spawn("lead", self._lead())
        if self.deliverer.targets:
            self._spawn(
                "deliver",
                self.deliverer.run_periodic(
                    lambda: self.state.held, self._stopping, period=self.settings.delivery_period
                ),
            )

    def leading_now(self) -> bool:
        """We hold the Lease right now (and are not stopping): the one check before a write."""
        if self._stopping.is_set() or not self._leading:
            return False
        return self.elector is None or self.elector.is_leader

    async def _start_http(self) -> None:
        probe, self.ports.probe = await start_site(probe_app(self.state), self.settings.probe_addr)
        metrics, self.ports.metrics = await start_site(metrics_app(self.metrics), self.settings.metrics_addr)
        self._runners = [probe, metrics]
        log.info("probes on port %d, metrics on port %d", self.ports.probe, self.ports.metrics)

    async def _heartbeat(self) -> None:
        while True:
            self.state.beat()
            self._check_expiry()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # --- the Secret, on every replica ---------------------------------------------------------------

    async def _watch_secret(self) -> None:
        async for snapshot in self.store.watch(self._stopping, on_failure=self._watch_failed):
            if self._watch_error is not None:
                log.info("watching the Secret again")
                self._watch_error = None
            self.state.note_secret_view()
            await self._on_snapshot(snapshot)
        if not self._stopping.is_set():
            raise RuntimeError("the Secret watch ended")

    def _watch_failed(self, error: KubeError, retry_in: float) -> None:
        """One log line per distinct failure, repeated at most once a minute."""
        text = str(error)
        now = time.monotonic()
        last = self._watch_error
        if last is None or last[0] != text or now - last[1] >= ERROR_LOG_REPEAT_SECONDS:
            log.warning("watching the Secret failed: %s; retrying in %.1f s", text, retry_in)
            self._watch_error = (text, now)

    async def _resync(self) -> None:
        """Re-read the Secret now and then, so a starved or silently broken watch cannot hide a change."""
        while True:
            await asyncio.sleep(self.settings.resync_period)
            try:
                snapshot = await self.store.read()
            except StoreError as e:
                log.warning("re-reading the Secret failed: %s", e)
                continue
            self.state.note_secret_view()
            await self._on_snapshot(snapshot)

    async def _on_snapshot(self, snapshot: SecretSnapshot) -> None:
        async with self._lock:
            first = self._first_snapshot
            self._first_snapshot = False
            self._note_secret(snapshot)
            self._note_sync_request(snapshot)
            in_secret = record_from_secret(snapshot, now=self._now())
            if in_secret is not None and in_secret.valid and is_better(in_secret, self.state.held, self._now()):
                before = self.state.held
                self._hold(in_secret)
                if first and before is None:
                    origin = _restore_words(snapshot)
                    log.info("loaded %s from the Secret at start%s", describe(in_secret), origin)
                    self.events.emit(
                        "LicenseLoadedFromSecret", f"Loaded {describe(in_secret)} from the Secret at start{origin}"
                    )
                elif in_secret.restored_at:
                    self._took_restore(before, in_secret)
                else:
                    log.info("the Secret holds a better license, taking it: %s", describe(in_secret))
                self.deliverer.kick()  # it is in the Secret already: gateways may have it now
            if self.leading_now():
                await self._persist(snapshot=snapshot)

    def _note_secret(self, snapshot: SecretSnapshot) -> None:
        self._secret = snapshot
        if snapshot.exists:
            self._secret_seen = True
            if snapshot.uid:
                self.events.uid = snapshot.uid
        self.state.secret_state = secret_state(snapshot, held=self.state.held)

    def _note_sync_request(self, snapshot: SecretSnapshot) -> None:
        """A poll asked for on the Secret: the leader polls soon and answers it once; followers ignore it."""
        token = requested(snapshot.annotations) if manageable(snapshot) else None
        if token is None or not self.leading_now() or token in (self._sync_pending, self._sync_answered):
            return
        log.info("poll requested through the Secret")
        self._sync_pending = token
        self._poll_now.set()

    # --- the leader's work ------------------------------------------------------------------------

    async def _lead(self) -> None:
        log.info("leading: this replica now asks Konnect and writes the Secret")
        async with self._lock:
            await self._persist()  # the Secret may have been lost while nobody led
            self._note_sync_request(self._secret)  # asked while nobody led: the first poll answers it
        while True:
            self.state.beat_poll_loop()
            self._last_poll = time.monotonic()
            asked = self._sync_pending  # only a poll that starts after the request answers it
            result = await self._fetch()
            outcome = await self._handle(result)
            if asked is not None:
                await self._answer_sync(self._poll_answer(asked, result, outcome))
            delay = next_delay(self.state.held, self._failures, self._now(), self.schedule, self.rng)
            log.debug("next Konnect poll in %.0f s", delay)
            await self._sleep(delay)

    async def _fetch(self) -> KonnectResult | None:
        if self.konnect is None:
            return None
        result = await self.konnect.fetch()
        self.metrics.konnect_requests.labels(result.kind).inc()
        return result

    async def _handle(self, result: KonnectResult | None) -> SyncOutcome | None:
        """Take a Konnect answer; the Secret write it led to, if it got that far."""
        if result is None:
            return None
        if isinstance(result, KonnectFailure):
            self._failures += 1
            log.warning("Konnect request failed (%d in a row): %s", self._failures, result.describe())
            if not self._konnect_down:
                self._konnect_down = True
                self.events.emit(
                    "KonnectUnreachable",
                    f"Konnect license request failed ({result.kind}); keeping {describe(self.state.held)}",
                    warning=True,
                )
            return None
        self._failures = 0
        self.state.last_konnect_success = time.time()
        if self._konnect_down:
            self._konnect_down = False
            log.info("Konnect answers again")
            self.events.emit("KonnectRecovered", "Konnect license requests succeed again")
        if isinstance(result, NoLicense):
            log.warning("Konnect has no license for this control plane (404); keeping %s", describe(self.state.held))
            return None
        assert isinstance(result, LicenseFetched)
        async with self._lock:
            chosen = choose(self.state.held, [result.record], self._now())
            if chosen is not self.state.held:
                log.info("Konnect served a better license: %s", describe(chosen))
                replaced = self.state.held
                if replaced is not None and replaced.restored_at:
                    self._write_note = (
                        f"; it replaces {describe(replaced)}, an operator's restore: Konnect's license is newer "
                        "than the restore"
                        if chosen is not None and chosen.updated_at > replaced.restored_at
                        else f"; it replaces {describe(replaced)}, an operator's restore, which has expired"
                    )
                    log.info(
                        "the license restored at %s gives way%s",
                        format_restored_at(replaced.restored_at),
                        self._write_note,
                    )
                self._hold(chosen)
            elif result.record != self.state.held:
                kept = (
                    "the operator's restore"
                    if self.state.held is not None and self.state.held.restored_at
                    else ("the better")
                )
                log.info("Konnect served %s; keeping %s %s", describe(result.record), kept, describe(self.state.held))
            return await self._persist()

    def _poll_answer(self, asked: str, result: KonnectResult | None, outcome: SyncOutcome | None) -> SyncAnswer:
        return poll_answer(
            asked,
            konnect_result=result.kind if result is not None else None,
            wrote=outcome.wrote if outcome is not None else None,
            refused=outcome.refused.value if outcome is not None and outcome.refused is not None else None,
            held=describe(self.state.held),
            by=self.identity,
            now=self._now(),
        )

    async def _answer_sync(self, answer: SyncAnswer) -> None:
        """Record the answer on the Secret and clear the request, once, while leading."""
        async with self._lock:
            if not self.leading_now():
                return
            try:
                snapshot = await self.store.answer_sync(answer, self._secret)
            except StoreError as e:
                # Forget it: the next re-read of the Secret finds the request again and asks anew.
                self._sync_pending = None
                log.warning("could not answer the poll request: %s", e)
                return
            self._sync_answered = answer.request
            if self._sync_pending == answer.request:
                self._sync_pending = None
            if snapshot is None:
                log.info("the Secret is gone; the poll request went with it")
                return
            self._note_secret(snapshot)
        log.info("answered the poll request: %s", answer.message)

    async def _answer_without_poll(self, due: float) -> None:
        """While Konnect is failing a request does not cut the error backoff short: it is told so at once."""
        if self._sync_pending is None:
            return
        answer = backoff_answer(
            self._sync_pending,
            failures=self._failures,
            retry_in=due - time.monotonic(),
            held=describe(self.state.held),
            by=self.identity,
            now=self._now(),
        )
        await self._answer_sync(answer)

    async def _persist(self, snapshot: SecretSnapshot | None = None) -> SyncOutcome | None:
        """Make the Secret hold the held license (caller holds the lock); what the write did, if tried."""
        if self.state.held is None or not self.leading_now():
            return None
        try:
            outcome = await self.store.sync(
                self.state.held,
                self._now(),
                existed_before=self._secret_seen,
                still_leading=self.leading_now,
                # The watch keeps our last snapshot fresh, so an unchanged poll costs no API call at all;
                # a stale snapshot costs a 409 and a re-read, never a lost update.
                snapshot=snapshot if snapshot is not None else (None if self._first_snapshot else self._secret),
            )
        except StoreError as e:
            # The watch, the re-read or the next poll tries again; an API outage never ends the loop.
            log.error("could not sync the Secret: %s", e)
            return None
        await self._after_sync(outcome)
        return outcome

    async def _after_sync(self, outcome: SyncOutcome) -> None:
        before = self._secret  # what the write (if any) replaced
        self._note_secret(outcome.snapshot)
        if outcome.took_secret and outcome.held is not None:
            held_before = self.state.held
            self._hold(outcome.held)
            if outcome.held.restored_at:
                self._took_restore(held_before, outcome.held)
            else:
                log.info("the Secret held a better license, taking it: %s", describe(outcome.held))
        if outcome.refused is not None:
            self.state.secret_state = outcome.refused
            if outcome.refused.value not in self._announced:
                self._announced.add(outcome.refused.value)
                msg = (
                    foreign_advice(outcome.snapshot, self.store.name)
                    if outcome.refused == SecretState.FOREIGN
                    else "Secret is immutable; cannot store the license in it"
                )
                log.error("%s", msg)
                self.events.emit(
                    "ForeignSecret" if outcome.refused == SecretState.FOREIGN else "SecretImmutable", msg, warning=True
                )
            return
        self._announced.discard(SecretState.FOREIGN.value)
        self._announced.discard(SecretState.IMMUTABLE.value)
        if outcome.wrote:
            self.deliverer.kick()  # after the Secret, never before it
            self.metrics.secret_writes.labels(outcome.wrote).inc()
            reason, warning = _WRITE_EVENTS.get(outcome.wrote, ("LicenseStored", False))
            note, self._write_note = self._write_note, ""
            log.info("wrote the Secret (%s): %s%s", outcome.wrote, describe(self.state.held), note)
            self.events.emit(
                reason, f"Secret written ({outcome.wrote}): {describe(self.state.held)}{note}", warning=warning
            )
            if outcome.wrote == "rotate":
                self._announce_restore_replaced(before)

    def _took_restore(self, before: LicenseRecord | None, restored: LicenseRecord) -> None:
        """An operator restored a license into the Secret and this replica now holds it: say so (the leader
        in an Event, Warning when it is worse than the license it replaces, i.e. forced)."""
        when = format_restored_at(restored.restored_at)
        by = "".join(c for c in restored.restored_by if c.isprintable())[:120] or "an unknown operator"
        forced = before is not None and restore_downgrade(before, restored, self._now()) is not None
        message = (
            f"Operator restore by {by} at {when}: holding {describe(restored)}; it stays until Konnect serves a "
            f"license updated after {when}" + (f" (forced over the better {describe(before)})" if forced else "")
        )
        log.log(logging.WARNING if forced else logging.INFO, "%s", message)
        if self.leading_now():
            self.events.emit("LicenseRestored", message, warning=forced)

    def _announce_restore_replaced(self, before: SecretSnapshot) -> None:
        """A Velero restore put a license in the Secret and the keeper just replaced it with a better one
        (typically `--existing-resource-policy=update` from an older backup): say which restore, once."""
        restore = velero_restore_name(before)
        if restore is None or f"restore/{restore}" in self._announced:
            return
        self._announced.add(f"restore/{restore}")
        msg = (
            f"Velero restore {restore} put {describe(record_from_secret(before, now=self._now()))} in the Secret; "
            f"replaced by the better {describe(self.state.held)} (the keeper never keeps a downgrade)"
        )
        log.warning("%s", msg)
        self.events.emit("RestoredLicenseReplaced", msg, warning=True)

    def _on_delivery(self, previous: TargetReport | None, report: TargetReport) -> None:
        for reason, message, warning in delivery_events(previous, report, self.deliverer.grace):
            self.events.emit(reason, message, warning=warning)

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
                self.events.emit(
                    "LicenseExpiringSoon" if condition == "expiring" else "LicenseExpired",
                    f"Held {describe(self.state.held)} {text}",
                    warning=True,
                )
            elif state != condition:
                self._announced.discard(condition)

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds on the monotonic clock, so a clock stepped back never delays a poll.

        Wakes early when the wall clock jumps ahead (a suspended node, a corrected clock: expiry-based
        deadlines may have passed) and for a requested poll, which is rate-limited and never cuts
        an error backoff short.
        """
        due = time.monotonic() + delay
        last_mono, last_wall = time.monotonic(), time.time()
        while not self._stopping.is_set():
            self.state.beat_poll_loop()
            now_mono, now_wall = time.monotonic(), time.time()
            wait = poll_wait(
                due,
                now_mono,
                mono_elapsed=now_mono - last_mono,
                wall_elapsed=now_wall - last_wall,
                max_slice=SLEEP_SLICE_SECONDS,
            )
            last_mono, last_wall = now_mono, now_wall
            if wait <= 0:
                if now_mono < due:
                    log.info("the wall clock jumped forward; polling now")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), wait)
            if self._poll_now.is_set():
                self._poll_now.clear()
                if self._failures:
                    await self._answer_without_poll(due)
                due = self._requested_due(due)

    def _requested_due(self, due: float) -> float:
        if self._failures:
            log.info("poll request noted; Konnect is failing, so the next poll keeps its backoff")
            return due
        earliest = (self._last_poll or 0.0) + MIN_REQUESTED_POLL_INTERVAL
        return min(due, max(time.monotonic(), earliest))

    @staticmethod
    def _now() -> datetime:
        return datetime.now(UTC)


def _short(error: BaseException | None, limit: int = 200) -> str:
    text = str(error) if error is not None else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
