"""Leader election on a ``coordination.k8s.io/v1`` Lease, so only one replica talks to Konnect and writes.

(About 500 lines on purpose: ``LeaderElector`` is one state machine, acquire, renew, watch and
release sharing one lock and one record of what we last saw; split, its invariants would be read
in two places. The pure Lease rules are in ``lease.py``.)

The protocol is client-go's (``k8s.io/client-go/tools/leaderelection``), written out on the same API
calls, with three deliberate differences from the library electors:

* **Only our monotonic clock decides expiry.** A follower remembers *when it last saw the Lease
  record change* (``observed_at``, ``time.monotonic()``), and may take the Lease over only once
  ``observed_at + leaseDurationSeconds`` has passed. The remote ``renewTime`` is written for humans
  and for ``license-keeper status``; it is never compared with our wall clock.
* **Every write is guarded by ``metadata.resourceVersion``** (PUT replace of the object we last
  read or wrote). A 409 means somebody else changed the Lease: we re-read and only carry on if the
  record still names us; a create that answers 409 lost the race.
* **Leadership has a local expiry.** ``is_leader`` is True only while the last successful renew
  (timed from *before* the request was sent) is younger than the renew deadline. Because the renew
  deadline is shorter than the lease duration, and a follower's clock for the same record starts
  only after the server stored it, a follower can never take over while we still believe we lead.

Once lost, leadership never comes back in this process: ``run()`` returns, ``lost`` is set and the
caller is expected to stop writing and exit non-zero. ``release()`` on graceful shutdown clears the
holder (with ``leaseDurationSeconds=1``, like client-go's ``ReleaseOnCancel``), so a follower takes
over within one retry period.

The rules (``may_acquire``, ``acquire_spec``, ``release_spec``, ``observe``, ...) are pure functions
with the time as an argument, in ``lease.py``; this module only does I/O and bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .kube import Kube, KubeError, Unreachable
from .lease import (
    Observation,
    acquire_spec,
    is_leading,
    may_acquire,
    new_lease,
    next_attempt_at,
    observe,
    parse_micro_time,
    record_of,
    release_spec,
    updated_lease,
    validate_timings,
)

__all__ = ["LeaderElector", "default_identity", "read_holder"]

log = logging.getLogger("license_keeper.election")

ERROR_LOG_REPEAT_SECONDS = 60.0


def default_identity() -> str:
    """``POD_NAME`` if set (the Downward API), else hostname + "_" + a random suffix."""
    pod = os.environ.get("POD_NAME", "").strip()
    if pod:
        return pod
    return f"{socket.gethostname()}_{secrets.token_hex(5)}"


# --- talking to the API server ---------------------------------------------------------------------


TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (Unreachable,)


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]

    @property
    def message(self) -> str:
        message = self.body.get("message")
        return str(message) if message else f"HTTP {self.status}"


def lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


async def _call(
    kube: Kube,
    method: str,
    namespace: str,
    name: str,
    body: Mapping[str, Any] | None,
    request_timeout: float,
) -> _Reply:
    """One Lease call as raw JSON, so no model (de)serialization touches MicroTime values or drops
    fields. An API status is returned (not raised); an unreachable API server raises ``Unreachable``.
    """
    path = lease_path(namespace, None if method == "POST" else name)
    try:
        answer = await kube.request(
            method,
            path,
            dict(body) if body is not None else None,
            what=f"{method} Lease {namespace}/{name}",
            timeout=max(0.1, request_timeout),
        )
    except Unreachable:
        raise
    except KubeError as e:
        return _Reply(e.code or 0, {"message": e.detail} if e.detail else {})
    return _Reply(201 if method == "POST" else 200, answer)


@dataclass(frozen=True)
class LeaseInfo:
    """The Lease as ``license-keeper status`` shows it. Times are the holder's wall clock: display only."""

    name: str
    namespace: str
    holder: str | None
    acquire_time: datetime | None
    renew_time: datetime | None
    lease_duration_seconds: int | None
    transitions: int


async def read_holder(kube: Kube, namespace: str, name: str, *, request_timeout: float = 10.0) -> LeaseInfo | None:
    """Who holds the Lease (None if it does not exist). Other failures raise ``KubeError``."""
    reply = await _call(kube, "GET", namespace, name, None, request_timeout)
    if reply.status == 404:
        return None
    if reply.status != 200:
        raise KubeError(f"get Lease {namespace}/{name}: HTTP {reply.status}", reply.status)
    record = record_of(reply.body)
    return LeaseInfo(
        name=name,
        namespace=namespace,
        holder=record.holder,
        acquire_time=parse_micro_time(record.acquire_time),
        renew_time=parse_micro_time(record.renew_time),
        lease_duration_seconds=record.lease_duration_seconds,
        transitions=record.transitions,
    )


class _AttemptFailed(Exception):
    """An API answer that ends this attempt (already logged)."""


class LeaderElector:
    """Acquire, renew and release one Lease. See the module docstring for the rules.

    ``run()`` is the whole loop and returns when leadership is lost or ``release()`` was called.
    ``leading`` is set while we lead (cleared on loss or release); ``lost`` is set when leadership
    was lost involuntarily. Check ``is_leader`` right before every write.
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        validate_timings(lease_duration, renew_deadline, retry_period)
        if not namespace or not name:
            raise ValueError("the Lease needs a namespace and a name")
        if not identity:
            raise ValueError("the holder identity must not be empty")
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self._identity = identity
        self.lease_duration = float(lease_duration)
        self.renew_deadline = float(renew_deadline)
        self.retry_period = float(retry_period)
        self._on_change = on_change
        self._clock = clock
        self._wall_clock = wall_clock

        self.leading = asyncio.Event()
        self.lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._released = asyncio.Event()  # the watch saw the Lease free: try now
        self._lock = asyncio.Lock()
        self._started = False
        self._leading = False
        self._last_renew: float | None = None
        self._object: dict[str, Any] | None = None  # the Lease as last read or written
        self._observation: Observation | None = None
        self._error_key: tuple[str, int | str] | None = None
        self._error_logged_at = -math.inf
        self.last_error: str | None = None

    # observability
    @property
    def identity(self) -> str:
        return self._identity

    @property
    def holder(self) -> str | None:
        """The holder identity we last observed (None: free, or not read yet)."""
        return self._observation.record.holder if self._observation else None

    @property
    def transitions(self) -> int:
        """``leaseTransitions`` as last observed."""
        return self._observation.record.transitions if self._observation else 0

    @property
    def is_leader(self) -> bool:
        return is_leading(self._leading, self._last_renew, self._clock(), self.renew_deadline)

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    # the loop
    async def run(self) -> None:
        if self._started:
            raise RuntimeError("LeaderElector.run() may only be called once")
        self._started = True
        log.info("lease %s: %s is trying to acquire leadership", self.lease, self._identity)
        watcher = asyncio.create_task(self._watch_for_release(), name="lease-watch")
        try:
            acquired = await self._acquire_loop()
            watcher.cancel()
            if acquired:
                await self._renew_loop()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            if self._leading:  # cancelled or stopped while leading: we no longer claim anything
                self._set_leading(False)

    async def release(self) -> None:
        """Stop the loop; if leading, clear the holder (guarded by resourceVersion). Never raises."""
        self._stop.set()
        try:
            async with asyncio.timeout(self.renew_deadline + self.retry_period):
                async with self._lock:  # let an in-flight call finish; nothing new starts after _stop
                    was_leading = self._leading
                    if was_leading:
                        self._set_leading(False)  # stop writes before we give the Lease away
                    current = self._object
                    if not was_leading or current is None or record_of(current).holder != self._identity:
                        return
                    body = updated_lease(current, release_spec(record_of(current), self._wall_clock()))
                    reply = await self._request("PUT", body, self.renew_deadline)
                    if reply.status == 200:
                        self._seen(reply.body)
                        log.info("lease %s: %s released leadership", self.lease, self._identity)
                    elif reply.status == 409:
                        log.warning("lease %s: not released, it was changed by someone else (409)", self.lease)
                    else:
                        log.warning("lease %s: could not release: %s", self.lease, self._describe(reply))
        except Exception as e:  # release runs on shutdown: report, never raise
            log.warning("lease %s: could not release: %s", self.lease, _short(e))

    # acquire
    async def _acquire_loop(self) -> bool:
        while not self._stop.is_set():
            started = self._clock()
            try:
                if await self._try_acquire():
                    return True
            except _AttemptFailed:
                pass
            except TRANSPORT_ERRORS as e:
                self._note_error("acquire", "unreachable", f"cannot reach the API server: {_short(e)}")
            wake = next_attempt_at(self._observation, started, self.retry_period, self.lease_duration)
            if await self._sleep_until(wake, self._released):
                return False
        return False

    async def _watch_for_release(self) -> None:
        """While following, watch the Lease so a release (or deletion) is taken at once, not at the
        next retry; the retry period stays the fallback when the watch is down."""
        async for event in self._kube.watch(
            lease_path(self.namespace),
            name=self.name,
            stop=self._stop,
            what=f"Lease {self.lease}",
            on_failure=lambda e, delay: log.debug("lease %s: watch failed (%s); retry in %.1f s", self.lease, e, delay),
        ):
            if event.obj is None or event.type == "DELETED" or record_of(event.obj).holder is None:
                self._released.set()

    async def _try_acquire(self) -> bool:
        async with self._lock:
            if self._stop.is_set():
                return False
            reply = await self._request("GET", None, self.renew_deadline)
            if reply.status == 404:
                if self._observation is not None and not may_acquire(
                    self._observation, self._identity, self._clock(), self.lease_duration
                ):
                    return False  # it was held and vanished: wait out that holder's lease first
                return await self._create()
            self._check(reply, "get")
            self._seen(reply.body)
            if not may_acquire(self._observation, self._identity, self._clock(), self.lease_duration):
                self._recovered()
                return False
            previous = record_of(reply.body)
            body = updated_lease(
                reply.body, acquire_spec(previous, self._identity, self.lease_duration, self._wall_clock())
            )
            sent = self._clock()
            reply = await self._request("PUT", body, self.renew_deadline)
            if reply.status == 409:
                log.debug("lease %s: changed while we tried to take it (409), not ours", self.lease)
                return False
            self._check(reply, "update")
            self._won(reply.body, sent, previous.holder)
            return True

    async def _create(self) -> bool:
        body = new_lease(
            self.name,
            self.namespace,
            acquire_spec(None, self._identity, self.lease_duration, self._wall_clock()),
        )
        sent = self._clock()
        reply = await self._request("POST", body, self.renew_deadline)
        if reply.status == 409:
            log.debug("lease %s: someone else created it first (409)", self.lease)
            return False
        self._check(reply, "create", ok=(200, 201))
        self._won(reply.body, sent, None)
        return True

    # renew
    async def _renew_loop(self) -> None:
        last_attempt = self._last_renew if self._last_renew is not None else self._clock()
        while True:
            assert self._last_renew is not None
            deadline = self._last_renew + self.renew_deadline
            if await self._sleep_until(min(last_attempt + self.retry_period, deadline)):
                return
            now = self._clock()
            if now >= deadline:
                self._lose(
                    f"could not renew within the renew deadline of {self.renew_deadline:g} s"
                    + (f" (last error: {self.last_error})" if self.last_error else "")
                )
                return
            last_attempt = now
            try:
                async with asyncio.timeout(deadline - now):
                    await self._try_renew()
            except TimeoutError:
                self._note_error("renew", "timeout", "renew request timed out")
            except _AttemptFailed:
                pass
            except TRANSPORT_ERRORS as e:
                self._note_error("renew", "unreachable", f"cannot reach the API server: {_short(e)}")
            if self.lost.is_set():
                return

    async def _try_renew(self) -> None:
        async with self._lock:
            if self._stop.is_set() or not self._leading or self._object is None:
                return
            current = self._object
            for _ in range(2):  # a 409 gets one re-read and, if the record still names us, one retry
                sent = self._clock()
                body = updated_lease(
                    current,
                    acquire_spec(record_of(current), self._identity, self.lease_duration, self._wall_clock()),
                )
                reply = await self._request("PUT", body, self.renew_deadline)
                if reply.status == 200:
                    self._renewed(reply.body, sent)
                    return
                if reply.status == 404:
                    self._lose("the Lease was deleted")
                    return
                if reply.status != 409:
                    self._check(reply, "update")
                reread = await self._request("GET", None, self.renew_deadline)
                if reread.status == 404:
                    self._lose("the Lease was deleted")
                    return
                self._check(reread, "get")
                self._seen(reread.body)
                holder = record_of(reread.body).holder
                if holder != self._identity:
                    self._lose(f"the Lease was changed behind our back; holder is now {holder or 'nobody'}")
                    return
                current = reread.body
            self._note_error("renew", 409, "the Lease keeps changing under us (409)")

    # bookkeeping
    async def _request(self, method: str, body: Mapping[str, Any] | None, request_timeout: float) -> _Reply:
        return await _call(self._kube, method, self.namespace, self.name, body, request_timeout)

    def _check(self, reply: _Reply, verb: str, ok: tuple[int, ...] = (200,)) -> None:
        if reply.status in ok:
            return
        self._note_error(verb, reply.status, f"cannot {verb}: {self._describe(reply)}")
        raise _AttemptFailed

    def _describe(self, reply: _Reply) -> str:
        text = f"HTTP {reply.status}: {reply.message}"
        if reply.status in (401, 403):
            text += (
                f" (needs RBAC get, update on leases.coordination.k8s.io named {self.name!r} "
                f"and create on leases in namespace {self.namespace!r})"
            )
        return text

    def _note_error(self, operation: str, kind: int | str, text: str) -> None:
        """One clear log line per distinct problem (repeated at most once a minute), no tracebacks."""
        self.last_error = text
        key = (operation, kind)
        now = self._clock()
        if key != self._error_key or now - self._error_logged_at >= ERROR_LOG_REPEAT_SECONDS:
            level = logging.ERROR if kind in (401, 403) else logging.WARNING
            log.log(level, "lease %s: %s", self.lease, text)
            self._error_key, self._error_logged_at = key, now
        else:
            log.debug("lease %s: %s", self.lease, text)

    def _recovered(self) -> None:
        if self._error_key is not None:
            log.info("lease %s: API calls succeed again", self.lease)
        self._error_key, self.last_error = None, None

    def _seen(self, lease: Mapping[str, Any]) -> None:
        before = self.holder
        self._object = dict(lease)
        self._observation = observe(self._observation, record_of(lease), self._clock())
        after = self.holder
        if after != before and after != self._identity:
            log.info("lease %s: held by %s", self.lease, after or "nobody (released)")

    def _won(self, lease: Mapping[str, Any], sent: float, previous_holder: str | None) -> None:
        self._seen(lease)
        self._last_renew = sent
        self._recovered()
        log.info(
            "lease %s: %s became leader (previous holder %s, transitions %d)",
            self.lease,
            self._identity,
            previous_holder or "none",
            self.transitions,
        )
        self._set_leading(True)

    def _renewed(self, lease: Mapping[str, Any], sent: float) -> None:
        self._seen(lease)
        self._last_renew = sent
        self._recovered()

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self._leading = False
        self.lost.set()
        log.error("lease %s: %s lost leadership: %s", self.lease, self._identity, reason)
        self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        changed = leading != self.leading.is_set()
        self._leading = leading
        if leading:
            self.leading.set()
        else:
            self.leading.clear()
        if changed and self._on_change is not None:
            # A failing callback is a bug: it ends the elector's task, and the agent's supervisor the process.
            self._on_change(leading)

    async def _sleep_until(self, moment: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep until ``moment`` on our clock, or until ``wake`` is set; True if we were stopped."""
        delay = moment - self._clock()
        if delay > 0 and not self._stop.is_set() and not (wake is not None and wake.is_set()):
            waiters = [asyncio.ensure_future(self._stop.wait())]
            if wake is not None:
                waiters.append(asyncio.ensure_future(wake.wait()))
            try:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if wake is not None:
            wake.clear()
        return self._stop.is_set()


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
