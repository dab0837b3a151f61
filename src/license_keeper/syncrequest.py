"""A poll asked for through the Secret: the request annotation, the leader's answer, and the patches. Pure.

Modelled on External Secrets' ``force-sync`` annotation: whoever may patch the Secret (`license-keeper
sync`, or ``kubectl annotate``) sets ``license-keeper.io/sync-requested`` to a token of their choice.
Every replica watches the Secret already; only the leader acts on it: it polls Konnect (at most one extra
poll per 10 s, and never cutting an error backoff short), then clears the request and records the answer
for that token in ``license-keeper.io/sync-answer``, once. Followers ignore it. Nobody needs a pod exec
or a port: the request and the answer travel with the Secret, under the Secret's own RBAC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "SYNC_ANSWER_ANNOTATION",
    "SYNC_REQUEST_ANNOTATION",
    "Outcome",
    "SyncAnswer",
    "answer_patch",
    "backoff_answer",
    "parse_answer",
    "poll_answer",
    "poll_outcome",
    "request_patch",
    "requested",
    "withdraw_patch",
]

SYNC_REQUEST_ANNOTATION = "license-keeper.io/sync-requested"
SYNC_ANSWER_ANNOTATION = "license-keeper.io/sync-answer"
MAX_TOKEN_LENGTH = 128  # a token is an opaque word; anything longer is not a request but a mistake


class Outcome(StrEnum):
    WROTE = "wrote"  # polled Konnect and wrote the better license it served
    UNCHANGED = "unchanged"  # polled Konnect: nothing newer than what the Secret holds
    NO_LICENSE = "no-license"  # polled Konnect: it has no license for this control plane (404)
    FAILED = "failed"  # the Konnect request failed
    REFUSED = "refused"  # polled, but the Secret is foreign or immutable: left untouched
    BACKOFF = "backoff"  # not polled: Konnect is failing and its error backoff stands

    @property
    def polled(self) -> bool:
        """Konnect answered the poll (a license, or none): what `sync` exits 0 for."""
        return self in (Outcome.WROTE, Outcome.UNCHANGED, Outcome.NO_LICENSE)


@dataclass(frozen=True)
class SyncAnswer:
    """The leader's answer to one request. Its message names fingerprints and dates only."""

    request: str
    outcome: Outcome
    message: str
    by: str  # the leader's identity (its pod name)
    at: str  # when it answered, ISO 8601 UTC

    def annotation(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def requested(annotations: Mapping[str, str]) -> str | None:
    """The pending request's token, or None."""
    token = (annotations.get(SYNC_REQUEST_ANNOTATION) or "").strip()
    return token if 0 < len(token) <= MAX_TOKEN_LENGTH else None


def parse_answer(text: str | None) -> SyncAnswer | None:
    """The answer recorded on the Secret, or None when there is none or it is not one of ours."""
    try:
        data = json.loads(text or "")
        return SyncAnswer(
            request=str(data["request"]),
            outcome=Outcome(data["outcome"]),
            message=str(data["message"]),
            by=str(data.get("by", "")),
            at=str(data.get("at", "")),
        )
    except (ValueError, KeyError, TypeError):
        return None


_POLL_MESSAGES = {
    Outcome.FAILED: "polled Konnect: the request failed ({result}); keeping {held}",
    Outcome.REFUSED: "polled Konnect, but the Secret is {refused}: left untouched",
    Outcome.WROTE: "polled Konnect: wrote the Secret ({wrote}): {held}",
    Outcome.NO_LICENSE: "polled Konnect: it has no license for this control plane; keeping {held}",
    Outcome.UNCHANGED: "polled Konnect: no newer license; the Secret holds {held}",
}


def poll_outcome(konnect_result: str | None, wrote: str | None, refused: str | None) -> Outcome:
    """What a poll came to: ``konnect_result`` is the result's metrics kind (ok, no_license, unreachable,
    ...; None without a Konnect client), ``wrote`` the write reason, ``refused`` the refusing Secret state."""
    if konnect_result not in ("ok", "no_license"):
        return Outcome.FAILED
    if refused is not None:
        return Outcome.REFUSED
    if wrote is not None:
        return Outcome.WROTE
    return Outcome.NO_LICENSE if konnect_result == "no_license" else Outcome.UNCHANGED


def poll_answer(
    request: str,
    *,
    konnect_result: str | None,
    wrote: str | None,
    refused: str | None,
    held: str,
    by: str,
    now: datetime,
) -> SyncAnswer:
    """The answer after a poll; ``held`` is the held license as ``license.describe`` words it."""
    outcome = poll_outcome(konnect_result, wrote, refused)
    message = _POLL_MESSAGES[outcome].format(result=konnect_result, refused=refused, wrote=wrote, held=held)
    return SyncAnswer(request, outcome, message, by, _stamp(now))


def backoff_answer(
    request: str, *, failures: int, retry_in: float, held: str, by: str, now: datetime
) -> SyncAnswer:
    """The answer while Konnect is failing: a request never cuts the error backoff short."""
    message = (
        f"not polled: Konnect is failing ({failures} in a row); the next poll keeps its error backoff "
        f"(in {max(retry_in, 0.0):.0f} s); keeping {held}"
    )
    return SyncAnswer(request, Outcome.BACKOFF, message, by, _stamp(now))


def request_patch(token: str, resource_version: str | None) -> dict[str, Any]:
    """Ask for a poll, guarded by ``resource_version`` so that a request never replaces another unseen."""
    return {"metadata": {"resourceVersion": resource_version, "annotations": {SYNC_REQUEST_ANNOTATION: token}}}


def answer_patch(answer: SyncAnswer, resource_version: str | None, *, clear: bool) -> dict[str, Any]:
    """Record ``answer``; ``clear`` the request when it is still the one answered (a newer one stays)."""
    annotations: dict[str, Any] = {SYNC_ANSWER_ANNOTATION: answer.annotation()}
    if clear:
        annotations[SYNC_REQUEST_ANNOTATION] = None
    return {"metadata": {"resourceVersion": resource_version, "annotations": annotations}}


def withdraw_patch(resource_version: str | None) -> dict[str, Any]:
    """Take back an unanswered request (no keeper answered in time)."""
    return {"metadata": {"resourceVersion": resource_version, "annotations": {SYNC_REQUEST_ANNOTATION: None}}}


def _stamp(now: datetime) -> str:
    return now.isoformat(timespec="seconds")
