"""license_keeper.syncrequest and the CLI's error lines: pure, tables and hypothesis."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from license_keeper.cli.errors import api_error_line
from license_keeper.kube import Conflict, Forbidden, KubeError, NotFound, Unreachable, classify, error_for_status
from license_keeper.syncrequest import (
    SYNC_ANSWER_ANNOTATION,
    SYNC_REQUEST_ANNOTATION,
    Outcome,
    SyncAnswer,
    answer_patch,
    backoff_answer,
    parse_answer,
    poll_answer,
    poll_outcome,
    request_patch,
    requested,
    withdraw_patch,
)

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
HELD = "license 0123456789abcdef (expires 2027-06-01, updated_at 1700000000)"


@pytest.mark.parametrize(
    ("result", "wrote", "refused", "outcome"),
    [
        ("ok", None, None, Outcome.UNCHANGED),
        ("ok", "rotate", None, Outcome.WROTE),
        ("ok", None, "foreign", Outcome.REFUSED),
        ("no_license", None, None, Outcome.NO_LICENSE),
        ("unreachable", None, None, Outcome.FAILED),
        ("auth", None, None, Outcome.FAILED),
        (None, None, None, Outcome.FAILED),  # no Konnect client: nothing was polled
    ],
)
def test_what_a_poll_came_to(result: str | None, wrote: str | None, refused: str | None, outcome: Outcome) -> None:
    assert poll_outcome(result, wrote, refused) is outcome
    answer = poll_answer("t", konnect_result=result, wrote=wrote, refused=refused, held=HELD, by="keeper-0", now=NOW)
    assert answer.outcome is outcome and answer.request == "t" and answer.by == "keeper-0"
    assert answer.at == "2026-06-01T12:00:00+00:00"
    assert answer.outcome.polled is (outcome in (Outcome.WROTE, Outcome.UNCHANGED, Outcome.NO_LICENSE))


def test_the_words_sync_prints() -> None:
    def message(result: str, wrote: str | None = None) -> str:
        return poll_answer("t", konnect_result=result, wrote=wrote, refused=None, held=HELD, by="k", now=NOW).message

    assert message("ok") == f"polled Konnect: no newer license; the Secret holds {HELD}"
    assert message("ok", "rotate") == f"polled Konnect: wrote the Secret (rotate): {HELD}"
    assert message("timeout") == f"polled Konnect: the request failed (timeout); keeping {HELD}"
    backoff = backoff_answer("t", failures=3, retry_in=41.6, held=HELD, by="k", now=NOW)
    assert backoff.outcome is Outcome.BACKOFF and not backoff.outcome.polled
    assert backoff.message.startswith("not polled: Konnect is failing (3 in a row); the next poll keeps its error")
    assert "(in 42 s)" in backoff.message


@given(
    request=st.text(min_size=1, max_size=128).filter(str.strip),
    outcome=st.sampled_from(list(Outcome)),
    message=st.text(max_size=200),
    by=st.text(max_size=60),
)
def test_an_answer_reads_back_as_written(request: str, outcome: Outcome, message: str, by: str) -> None:
    answer = SyncAnswer(request, outcome, message, by, "2026-06-01T12:00:00+00:00")
    assert parse_answer(answer.annotation()) == answer


@pytest.mark.parametrize(
    "text", [None, "", "not json", "[]", '{"request": "t"}', '{"request": "t", "outcome": "maybe", "message": ""}']
)
def test_what_is_not_an_answer(text: str | None) -> None:
    assert parse_answer(text) is None


@pytest.mark.parametrize(
    ("value", "token"),
    [(None, None), ("", None), ("   ", None), (" 171-ab ", "171-ab"), ("x" * 128, "x" * 128), ("x" * 129, None)],
)
def test_a_request_is_a_word_of_at_most_128_characters(value: str | None, token: str | None) -> None:
    annotations = {} if value is None else {SYNC_REQUEST_ANNOTATION: value}
    assert requested(annotations) == token


def test_the_patches_carry_their_resource_version_guard() -> None:
    answer = SyncAnswer("t", Outcome.UNCHANGED, "m", "k", "a")
    asked, withdrawn = request_patch("t", "41")["metadata"], withdraw_patch("42")["metadata"]
    assert asked == {"resourceVersion": "41", "annotations": {SYNC_REQUEST_ANNOTATION: "t"}}
    assert withdrawn == {"resourceVersion": "42", "annotations": {SYNC_REQUEST_ANNOTATION: None}}
    cleared = answer_patch(answer, "43", clear=True)["metadata"]
    assert cleared["resourceVersion"] == "43"
    assert cleared["annotations"] == {SYNC_ANSWER_ANNOTATION: answer.annotation(), SYNC_REQUEST_ANNOTATION: None}
    # a newer request than the one answered stays
    kept = answer_patch(answer, "44", clear=False)["metadata"]["annotations"]
    assert kept == {SYNC_ANSWER_ANNOTATION: answer.annotation()}


SERVER = "https://10.0.0.1:6443"
WHAT = "Secret kong/kong-license"
REFUSED = (
    'secrets "kong-license" is forbidden: User "system:serviceaccount:kong:ops" cannot patch resource "secrets" '
    'in API group "" in the namespace "kong"'
)


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            error_for_status(403, "patch Secret kong-license", REFUSED),
            f"from server {SERVER} (Forbidden): {REFUSED}",
        ),
        (
            error_for_status(401, "patch Secret kong-license"),
            f"from server {SERVER} (Unauthorized): cannot patch {WHAT}",
        ),
        (error_for_status(404, "patch Secret kong-license"), f"from server {SERVER} (NotFound): {WHAT} not found"),
        (
            classify(ConnectionRefusedError(), "get Secret kong-license"),
            f"unable to connect to the server {SERVER} (ConnectionRefusedError): patch {WHAT}",
        ),
        (error_for_status(503, "get Secret kong-license"), f"from server {SERVER} (HTTP 503): patch {WHAT} failed"),
        (error_for_status(409, "patch Secret kong-license"), f"from server {SERVER} (HTTP 409): patch {WHAT} failed"),
        (
            classify(ValueError("html"), "get Secret kong-license"),
            f"from server {SERVER}: malformed answer from the API server (ValueError) (patch {WHAT})",
        ),
    ],
)
def test_api_errors_in_kubectls_words(error: KubeError, line: str) -> None:
    assert api_error_line(error, SERVER, "patch", WHAT) == line
    assert line.count(SERVER) == 1 and line.count("kong-license") == 1  # each named once


def test_a_failure_keeps_the_call_apart_from_the_reason() -> None:
    e = classify(TimeoutError(), "get Secret kong-license")
    assert isinstance(e, Unreachable) and e.cause == "TimeoutError" and e.what == "get Secret kong-license"
    assert e.reason == "API server unreachable (TimeoutError)" and str(e) == f"{e.what}: {e.reason}"
    for kind in (Forbidden, NotFound, Conflict):
        assert kind("no prefix here").reason == "no prefix here"
