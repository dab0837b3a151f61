"""`sync`: ask the leader for a poll through the Secret and wait for its answer (``syncrequest.py``);
with --once, poll Konnect from here instead.

Asking needs only `get` and `patch` on the one Secret: no pod exec, no port, no Lease access. A request
already waiting on the Secret is joined rather than replaced, so two operators never cancel each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from ..config import ConfigError, Settings, parse_duration
from ..syncrequest import (
    SYNC_ANSWER_ANNOTATION,
    SyncAnswer,
    parse_answer,
    poll_answer,
    request_patch,
    requested,
    withdraw_patch,
)
from .common import (
    EXIT_BAD,
    EXIT_UNKNOWN,
    EXIT_VALID,
    connect,
    emit,
    fail,
    fail_store,
    konnect_client,
    konnect_options,
    output_option,
    run_async,
    secret_options,
    settings_from,
)
from .errors import KeeperCommand, exit_codes_epilog

if TYPE_CHECKING:
    from ..kube import Kube
    from ..store import SecretStore

__all__ = ["sync"]

DEFAULT_TIMEOUT = "1m"  # the leader waits up to 10 s between extra polls, and a Konnect call up to 30 s
READ_INTERVAL_SECONDS = 0.5
REQUEST_ATTEMPTS = 5


@click.command(cls=KeeperCommand, epilog=exit_codes_epilog("sync"))
@secret_options
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="How long to wait for the leader's answer (a duration: 30s, 2m).",
)
@output_option()
@click.option("--once", is_flag=True, help="Ask no keeper: poll Konnect once from here and persist the result.")
@konnect_options
def sync(once: bool, timeout: str, output: str, **flags: Any) -> None:
    """Ask the leader to poll Konnect now, and print its answer.

    Sets the annotation license-keeper.io/sync-requested on the Secret; the leader polls (at most one
    extra poll per 10 s; while Konnect is failing it keeps its error backoff and says so), clears the
    request and records its answer in license-keeper.io/sync-answer. Needs only get and patch on the
    Secret. Without this command: kubectl annotate secret <name> license-keeper.io/sync-requested=$(date +%s).

    With --once no keeper is asked: Konnect is polled from here (the --konnect-* settings) and the result
    persisted to the Secret through the same selection policy.
    """
    settings = settings_from(**flags)
    try:
        wait = parse_duration(timeout)
    except ValueError as e:
        fail(f"--timeout: {e}", EXIT_UNKNOWN)
    code = _sync_once(settings, output) if once else _ask_the_leader(settings, wait, output)
    sys.exit(run_async(code))


async def _ask_the_leader(settings: Settings, wait: float, output: str) -> int:
    from ..store import SecretStore, StoreError

    namespace, api = await connect(settings)
    store = SecretStore(api, namespace, settings.effective_secret_name)
    try:
        token, ours = await _request(store)
        answer = await _answer_to(store, token, wait)
        if answer is None:
            if ours:
                await _withdraw(store, token)
            fail(await _no_answer(api, settings, namespace, wait), EXIT_UNKNOWN)
    except StoreError as e:
        fail_store(e, api)
    finally:
        await api.close()
    emit(_report(store.what, answer), output, lambda r: str(r["message"]))
    return EXIT_VALID if answer.outcome.polled else EXIT_BAD


async def _request(store: SecretStore) -> tuple[str, bool]:
    """The token to wait for, and whether this command placed it (False: it joined one already waiting)."""
    from ..policy import manageable
    from ..store import StoreConflict

    for _ in range(REQUEST_ATTEMPTS):
        current = await store.read()
        if not current.exists:
            fail(
                f"{store.what} does not exist, so no keeper can be asked there (the keeper creates it once it "
                "holds a license; `sync --once` polls Konnect from here)"
            )
        if not manageable(current):
            fail(f"{store.what} is not managed by license-keeper; no keeper answers there")
        waiting = requested(current.annotations)
        if waiting is not None:
            return waiting, False
        token = f"{int(time.time())}-{secrets.token_hex(4)}"
        try:
            await store.patch(request_patch(token, current.resource_version))
        except StoreConflict:
            continue  # the Secret changed since the read (a write, another request): look again
        return token, True
    raise StoreConflict(f"{store.what} kept changing under us ({REQUEST_ATTEMPTS} conflicts in a row)")


async def _answer_to(store: SecretStore, token: str, wait: float) -> SyncAnswer | None:
    """The leader's answer to ``token``, read with `get` (a watch would need more RBAC), or None in time."""
    deadline = time.monotonic() + wait
    while True:
        snapshot = await store.read()
        answer = parse_answer(snapshot.annotations.get(SYNC_ANSWER_ANNOTATION))
        if answer is not None and answer.request == token:
            return answer
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(READ_INTERVAL_SECONDS)


async def _withdraw(store: SecretStore, token: str) -> None:
    """Take back our unanswered request, so a keeper that starts later does not poll for nobody."""
    from ..store import StoreConflict, StoreError

    for _ in range(REQUEST_ATTEMPTS):
        current = await store.read()
        if requested(current.annotations) != token:
            return
        try:
            await store.patch(withdraw_patch(current.resource_version))
            return
        except StoreConflict:
            continue
        except StoreError:
            return  # best effort: the "no answer" line matters more than the leftover request


async def _no_answer(api: Kube, settings: Settings, namespace: str, wait: float) -> str:
    """Why nobody answered, as far as this user may see: the Lease's holder, if the Lease is readable."""
    from ..election import read_holder
    from ..kube import KubeError

    line = f"no keeper answered within {wait:g} s"
    with contextlib.suppress(KubeError):  # sync needs no Lease access; the holder is only a hint
        lease = await read_holder(api, namespace, settings.effective_lease_name)
        holder = lease.holder if lease is not None else None
        return f"{line} (Lease {settings.effective_lease_name}: {'held by ' + holder if holder else 'no holder'})"
    return f"{line}; is a keeper running?"


def _report(secret: str, answer: SyncAnswer) -> dict[str, Any]:
    return {
        "secret": secret.removeprefix("Secret "),
        "request": answer.request,
        "outcome": answer.outcome.value,
        "message": answer.message,
        "answered_by": answer.by,
        "answered_at": answer.at,
    }


async def _sync_once(settings: Settings, output: str) -> int:
    from ..konnect import KonnectConfigError, KonnectFailure, LicenseFetched
    from ..license import describe
    from ..policy import choose, record_from_secret
    from ..store import SecretStore, StoreError

    try:
        settings.require_own_secret()  # KIC's Secret is KIC's to write
        konnect = konnect_client(settings)
    except (ConfigError, KonnectConfigError) as e:
        fail(str(e), EXIT_UNKNOWN)
    namespace, api = await connect(settings)
    store = SecretStore(api, namespace, settings.effective_secret_name)
    wrote = refused = None
    try:
        async with konnect:
            result = await konnect.fetch()
        if isinstance(result, KonnectFailure):
            fail(f"Konnect: {result.describe()}")
        now = datetime.now(UTC)
        current = await store.read()
        held = record_from_secret(current, now=now)
        if isinstance(result, LicenseFetched):  # else Konnect has none: nothing to write
            outcome = await store.sync(choose(held, [result.record], now), now, snapshot=current)
            held, wrote = outcome.held, outcome.wrote
            refused = outcome.refused.value if outcome.refused is not None else None
    except StoreError as e:
        fail_store(e, api)
    finally:
        await api.close()
    answer = poll_answer(
        "--once",
        konnect_result=result.kind,
        wrote=wrote,
        refused=refused,
        held=describe(held),
        by=socket.gethostname(),
        now=now,
    )
    emit(_report(store.what, answer), output, lambda r: str(r["message"]))
    return EXIT_VALID if answer.outcome.polled else EXIT_BAD
