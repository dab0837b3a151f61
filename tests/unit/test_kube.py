"""The Kubernetes edge's pure parts: the one failure classification, backoff, watch lines.

The I/O (timeouts, reconnects against a real API server and a fault proxy) is tested in
tests/integration/test_kube.py.
"""

from __future__ import annotations

import json
import random

import httpx2 as httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lightkube import ApiError

from license_keeper.kube import (
    Backoff,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    Rejected,
    Unreachable,
    _status_message,
    _watch_line,
    classify,
    error_for_status,
)

REQUEST = httpx.Request("GET", "https://api.test/api/v1/namespaces/ns/secrets/s")


def response(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(code, content=body, headers=headers or {}, request=REQUEST)


def status_body(code: int, message: str) -> bytes:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "code": code, "message": message}).encode()


@pytest.mark.parametrize(
    ("code", "kind", "transient"),
    [
        (401, Forbidden, False),
        (403, Forbidden, False),
        (404, NotFound, False),
        (409, Conflict, False),
        (410, Gone, False),
        (422, Invalid, False),
        (400, Rejected, False),
        (405, Rejected, False),
        (429, Unreachable, True),
        (500, Unreachable, True),
        (502, Unreachable, True),
        (503, Unreachable, True),
        (504, Unreachable, True),
    ],
)
def test_every_status_has_one_kind(code: int, kind: type[KubeError], transient: bool) -> None:
    error = error_for_status(code, "get Secret ns/s")
    assert type(error) is kind
    assert error.code == code
    assert error.transient is transient
    assert f"HTTP {code}" in str(error) and "get Secret ns/s" in str(error)


def test_422_immutable_is_told_apart_from_other_invalid_writes() -> None:
    immutable = error_for_status(
        422, "update", 'Secret "s" is invalid: data: Forbidden: field is immutable when `immutable` is set'
    )
    other = error_for_status(422, "update", 'Secret "s" is invalid: metadata.name: Invalid value')
    assert isinstance(immutable, Invalid) and immutable.immutable
    assert isinstance(other, Invalid) and not other.immutable


def test_forbidden_names_what_rbac_refused_but_other_messages_stay_out_of_the_text() -> None:
    forbidden = error_for_status(
        403, "update Secret ns/s", 'secrets "s" is forbidden: User "system:serviceaccount:ns:k"'
    )
    assert "forbidden" in str(forbidden) and "system:serviceaccount:ns:k" in str(forbidden)
    # A 422's message may quote a field; it is kept in .detail, never in the text that gets logged.
    invalid = error_for_status(422, "update Secret ns/s", 'Invalid value: "secret-looking-value"')
    assert "secret-looking-value" not in str(invalid)


def test_retry_after_is_kept_for_429() -> None:
    error = classify(
        httpx.HTTPStatusError("x", request=REQUEST, response=response(429, headers={"Retry-After": "7"})), "w"
    )
    assert isinstance(error, Unreachable) and error.retry_after == 7.0
    nonsense = classify(
        httpx.HTTPStatusError("x", request=REQUEST, response=response(429, headers={"Retry-After": "soon"})), "w"
    )
    assert isinstance(nonsense, Unreachable) and nonsense.retry_after is None


def test_api_errors_keep_their_status_code() -> None:
    error = classify(ApiError(request=REQUEST, response=response(409, status_body(409, "conflict"))), "update")
    assert isinstance(error, Conflict) and error.code == 409 and error.detail == "conflict"


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused", request=REQUEST),
        httpx.ReadTimeout("slow", request=REQUEST),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body", request=REQUEST),
        httpx.ReadError("reset", request=REQUEST),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        # lightkube's own failures on answers that are not Kubernetes answers:
        KeyError("content-type"),  # a 503 with no Content-Type header
        ValueError("Expecting value"),  # an HTML error page where JSON was expected
        TypeError("NoneType"),
    ],
)
def test_transport_trouble_and_malformed_answers_are_transient(error: BaseException) -> None:
    classified = classify(error, "watch Secret ns/s")
    assert isinstance(classified, Unreachable) and classified.transient
    assert classified.code is None


def test_an_empty_503_is_transient_not_a_clean_end() -> None:
    error = classify(httpx.HTTPStatusError("503", request=REQUEST, response=response(503)), "watch")
    assert isinstance(error, Unreachable) and error.code == 503


def test_programming_errors_are_not_classified_away() -> None:
    with pytest.raises(AttributeError):
        classify(AttributeError("a bug"), "get")
    with pytest.raises(RuntimeError):
        classify(RuntimeError("a bug"), "get")


# --- answers from something in front of the API server (issue 26 item 5) ----------------------------------

HTML = b"<html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1></body></html>"
DEEP = b'{"a":' * 100_000 + b"null" + b"}" * 100_000


def lightkube_failure(code: int, body: bytes, content_type: str | None) -> BaseException:
    """What lightkube raises for this answer to a typed call (its own raise_for_status)."""
    from lightkube.core.generic_client import GenericClient

    headers = {"Content-Type": content_type} if content_type is not None else {}
    try:
        GenericClient.raise_for_status(response(code, body, headers))
    except BaseException as e:
        return e
    raise AssertionError("lightkube did not fail")


@pytest.mark.parametrize(
    ("code", "body", "content_type", "kind"),
    [
        (403, HTML, "text/html", Forbidden),
        (403, HTML, "application/json", Forbidden),  # a proxy labelling its page JSON
        (403, HTML, None, Forbidden),  # no Content-Type at all
        (404, HTML, "application/json", NotFound),
        (404, HTML, None, NotFound),
        (401, b"Unauthorized", None, Forbidden),
        (403, b"[1, 2]", "application/json", Forbidden),  # JSON, but not a Status
        (403, b'"denied"', "application/json", Forbidden),
        (403, b'{"code": "no"}', "application/json", Forbidden),
        (403, DEEP, "application/json", Forbidden),  # nested too deep to parse
        (404, DEEP, "application/json", NotFound),
        (502, DEEP, "application/json", Unreachable),
        (429, HTML, "application/json", Unreachable),
    ],
)
def test_an_answer_that_is_not_a_status_is_classified_by_its_status_code(
    code: int, body: bytes, content_type: str | None, kind: type[KubeError]
) -> None:
    """Issue 26 item 5: lightkube cannot build its ApiError from a body that is not a Kubernetes Status;
    what it raised instead (JSONDecodeError, KeyError, ValidationError) was taken for a transient
    malformed answer, and a deeply nested one raised RecursionError, which ended the calling task."""
    classified = classify(lightkube_failure(code, body, content_type), "get Secret ns/s")
    assert type(classified) is kind and classified.code == code
    assert "html" not in str(classified).lower() and '{"a"' not in str(classified)


def test_a_deeply_nested_answer_without_an_error_status_is_a_malformed_answer() -> None:
    """A 200 whose body is nested too deep: lightkube's decoder (msgspec) raises RecursionError."""
    import msgspec

    with pytest.raises(RecursionError) as info:
        msgspec.json.decode(DEEP)
    classified = classify(info.value, "get Secret ns/s")
    assert isinstance(classified, Unreachable) and classified.transient and classified.code is None
    assert "malformed answer" in str(classified)


def test_a_deeply_nested_watch_line_or_status_body_is_malformed_not_a_crash() -> None:
    with pytest.raises(Unreachable, match="malformed watch event"):
        _watch_line(DEEP.decode(), "watch Secret ns/s")
    assert _status_message(DEEP) == ""


def test_watch_lines() -> None:
    kind, obj = _watch_line(json.dumps({"type": "MODIFIED", "object": {"metadata": {"resourceVersion": "5"}}}), "w")
    assert kind == "MODIFIED" and obj["metadata"]["resourceVersion"] == "5"
    with pytest.raises(Gone):
        _watch_line(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}), "w")
    with pytest.raises(Unreachable):
        _watch_line(json.dumps({"type": "ERROR", "object": {"kind": "Status", "message": "no code"}}), "w")
    for garbage in (
        "<html>",
        "[]",
        '{"type": 1, "object": {}}',
        '{"type": "ADDED"}',
        '{"type": "ADDED", "object": []}',
    ):
        with pytest.raises(Unreachable):
            _watch_line(garbage, "w")


def test_status_message_only_from_a_status_body() -> None:
    assert _status_message(status_body(403, "forbidden: no")) == "forbidden: no"
    assert _status_message(b"<html>502 Bad Gateway</html>") == ""
    assert _status_message(b"") == ""
    assert _status_message(b'{"message": 5}') == ""
    assert _status_message(b'["message"]') == ""


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1, max_value=60))
def test_backoff_grows_within_bounds_and_only_resets_when_told(seed: int, failures: int) -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(seed))
    delays = [backoff.next() for _ in range(failures)]
    for attempt, delay in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    # Without a reset, failures in a row never get faster than half the cap once it is reached.
    if failures > 8:
        assert min(delays[7:]) >= 15.0
    backoff.reset()
    assert backoff.next() <= 0.5


def test_backoff_honours_a_retry_after_floor() -> None:
    backoff = Backoff(rng=random.Random(1))
    assert backoff.next(floor=7.0) >= 7.0
