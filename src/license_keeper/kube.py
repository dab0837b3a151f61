"""The one door to the Kubernetes API: every call the keeper makes goes through here.

(Over 400 lines on purpose: it is the one place that knows the client library; its failure
classification, timeouts and watch loop are read together, and split they would invite a second door.)

Three promises, so callers never handle a client library's exceptions themselves:

* **One timeout on every call** (Events too): nothing waits on the API server forever.
* **One classification of failures** (``KubeError`` and its kinds): transient transport trouble,
  an API status with its code (by the code alone when the body is not a Kubernetes Status: a proxy's
  HTML page, JSON nested too deep), or a programming error that propagates and ends the process.
* **One watch loop** that reconnects with jittered exponential backoff, relists on 410 Gone, and
  resets its backoff only after a stream delivered an event (a 503 with an empty body, or a stream
  that closes at once, is a failure, not a clean end).

Typed calls use lightkube's ``AsyncClient`` (``kube.client``) through ``call``. Leases and watches
use raw JSON (``request``, ``watch``): a Lease's MicroTime must keep six fraction digits, which model
serialization drops when they are zero, and a watch needs control over every reconnect.
Messages carry the verb, the object's kind and name and the HTTP status, never object content.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx
from lightkube import ApiError, AsyncClient
from lightkube.config.client_adapter import AsyncClient as adapter_client
from lightkube.config.client_adapter import ConnectionParams
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError

__all__ = [
    "Backoff",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "Kube",
    "KubeConfigError",
    "KubeError",
    "NotFound",
    "Rejected",
    "Unreachable",
    "classify",
    "error_for_status",
]

log = logging.getLogger("license_keeper.kube")

T = TypeVar("T")

API_TIMEOUT_SECONDS = 30.0
WATCH_SERVER_TIMEOUT_SECONDS = 290  # the server ends each watch; we reconnect from the last resourceVersion
WATCH_IDLE_MARGIN_SECONDS = 30.0  # no line for server timeout + this: the stream is dead, not quiet
MAX_ERROR_BODY = 64 * 1024


# --- failures -------------------------------------------------------------------------------------


class KubeConfigError(Exception):
    """No usable credentials (kubeconfig or in-cluster ServiceAccount)."""


class KubeError(Exception):
    """A failed API call. ``code`` is the HTTP status (None: no answer); ``transient``: try again later."""

    transient = False

    def __init__(
        self, message: str, code: int | None = None, *, detail: str = "", what: str = "", cause: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.detail = detail  # the server's own Status message (names verbs and objects, never data)
        self.what = what  # the call that failed, e.g. "get Secret kong-license"
        self.cause = cause  # a transport failure's kind (ConnectError, TimeoutError); "" for an answer

    @property
    def reason(self) -> str:
        """The failure without the call that failed, so a caller naming the call does not repeat it."""
        text, prefix = str(self), f"{self.what}: "
        return text[len(prefix) :] if self.what and text.startswith(prefix) else text


class Unreachable(KubeError):
    """Transport failure, timeout, 5xx, 429 or an answer that is not a Kubernetes answer."""

    transient = True

    def __init__(
        self,
        message: str,
        code: int | None = None,
        *,
        retry_after: float | None = None,
        what: str = "",
        cause: str = "",
    ) -> None:
        super().__init__(message, code, what=what, cause=cause)
        self.retry_after = retry_after


class Forbidden(KubeError):
    """401 or 403: RBAC or credentials; retrying will not help until someone fixes them."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: the object changed since we read it (or already exists)."""


class Gone(KubeError):
    """410: the watch's resourceVersion is too old; list again."""


class Invalid(KubeError):
    """422. ``immutable`` when the server refused to change an immutable object."""

    @property
    def immutable(self) -> bool:
        return "immutable" in self.detail.lower()


class Rejected(KubeError):
    """Any other 4xx."""


_BY_CODE: dict[int, type[KubeError]] = {401: Forbidden, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone}


def error_for_status(code: int, what: str, detail: str = "", retry_after: float | None = None) -> KubeError:
    """The one mapping from an HTTP status to a failure kind."""
    if code == 429 or code >= 500:
        return Unreachable(f"{what}: HTTP {code} from the API server", code, retry_after=retry_after, what=what)
    if code == 422:
        return Invalid(f"{what}: HTTP 422 (invalid)", code, detail=detail, what=what)
    kind = _BY_CODE.get(code, Rejected)
    text = f"{what}: HTTP {code}"
    if kind is Forbidden:
        text += f" ({_short(detail) or 'forbidden'})"
    return kind(text, code, detail=detail, what=what)


def classify(error: BaseException, what: str) -> KubeError:
    """Any failure of a call as a ``KubeError``. Programming errors are not failures: re-raised."""
    if isinstance(error, KubeError):
        return error
    if isinstance(error, ApiError):
        status = error.status
        code = status.code or (error.response.status_code if error.response is not None else 0)
        return error_for_status(code, what, status.message or "", _retry_after(error.response))
    if isinstance(error, httpx.HTTPStatusError):
        return error_for_status(error.response.status_code, what, "", _retry_after(error.response))
    kind = type(error).__name__
    behind = _status_error_behind(error)
    if behind is not None:
        # lightkube failed to build its ApiError from a body that is not a Kubernetes Status (a proxy's
        # HTML page, a missing or wrong Content-Type, JSON nested too deep): the status code still tells.
        return error_for_status(behind.response.status_code, what, "", _retry_after(behind.response))
    if isinstance(error, httpx.HTTPError | OSError | TimeoutError | httpx.StreamError):
        return Unreachable(f"{what}: API server unreachable ({kind})", what=what, cause=kind)
    if _malformed_answer(error):
        # A 2xx whose body is not a Kubernetes object (an HTML page, a proxy's body, JSON nested too
        # deep for the decoder): the server side is broken, so it is transient for us.
        return Unreachable(f"{what}: malformed answer from the API server ({kind})", what=what)
    raise error


def _status_error_behind(error: BaseException) -> httpx.HTTPStatusError | None:
    """The HTTP error answer a failure was raised while handling, if any (lightkube raises its decode
    failure while handling the status error it was turning into an ApiError)."""
    seen: set[int] = set()
    cause = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, httpx.HTTPStatusError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _malformed_answer(error: BaseException) -> bool:
    """What decoding an answer raises. RecursionError too: under a call, the only deep recursion is
    the JSON decoder's, on a body nested too deep; left unclassified it would end the calling task."""
    return isinstance(error, ValueError | KeyError | TypeError | RecursionError)


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if 0 < value <= 600 else None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- backoff --------------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter. ``reset()`` only after real progress."""

    base: float = 0.5
    cap: float = 30.0
    rng: random.Random | None = None
    attempt: int = 0

    def next(self, floor: float = 0.0) -> float:
        rng = self.rng or random
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return max(floor, rng.uniform(ceiling / 2, ceiling))

    def reset(self) -> None:
        self.attempt = 0


# --- the client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEvent:
    """``SYNC`` (the object as listed, after every (re)list), ``ADDED``, ``MODIFIED``, ``DELETED``; for a
    collection (``watch_list``) ``LIST`` after every (re)list, with ``{"items": [...]}``.

    ``obj`` is the raw JSON object, None for a SYNC of an object that does not exist.
    """

    type: str
    obj: dict[str, Any] | None


def load_config(kubeconfig: str | Path | None, context: str | None = None) -> SingleConfig:
    """Kubeconfig if given (or KUBECONFIG), in-cluster in a pod, else ~/.kube/config; ``context``
    picks one of its contexts instead of the current one, as kubectl's --context does."""
    try:
        source = KubeConfig.from_file(str(kubeconfig)) if kubeconfig else KubeConfig.from_env()
        config = source.get(context_name=context or None)
    except (LightkubeConfigError, OSError, ValueError, KeyError, TypeError) as e:
        where = str(kubeconfig) if kubeconfig else "KUBECONFIG, in-cluster or ~/.kube/config"
        raise KubeConfigError(f"cannot load Kubernetes credentials from {where}: {_short(str(e))}") from None
    if config is None:
        raise KubeConfigError("the kubeconfig has no current context")
    return config


class Kube:
    """One per process: the typed lightkube client and a raw JSON client on the same credentials."""

    def __init__(
        self, config: SingleConfig, *, timeout: float = API_TIMEOUT_SECONDS, field_manager: str = "license-keeper"
    ) -> None:
        self.config = config
        self.timeout = timeout
        limits = httpx.Timeout(timeout)
        self.client = AsyncClient(config, timeout=limits, field_manager=field_manager, trust_env=False)
        # Raw JSON (Leases, watches): the same credentials and TLS settings, its own connections, and no
        # read timeout, because watches are long; every raw call runs under an asyncio timeout instead.
        self._raw = adapter_client(config, ConnectionParams(timeout=httpx.Timeout(timeout, read=None), trust_env=False))

    @classmethod
    def from_kubeconfig(
        cls, kubeconfig: str | Path | None = None, *, context: str | None = None, timeout: float = API_TIMEOUT_SECONDS
    ) -> Kube:
        return cls(load_config(kubeconfig, context), timeout=timeout)

    @property
    def server(self) -> str:
        """The API server's address, as the kubeconfig names it (for messages)."""
        return str(self.config.cluster.server)

    @property
    def default_namespace(self) -> str | None:
        """POD_NAMESPACE (Downward API), else the ServiceAccount's (in a pod) or the kubeconfig
        context's namespace; None when none of them names one."""
        return os.environ.get("POD_NAMESPACE", "").strip() or self.config.context.namespace or None

    async def close(self) -> None:
        await self.client.close()
        await self._raw.aclose()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # typed calls

    async def call(self, what: str, op: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run one lightkube call under the timeout; every failure becomes a ``KubeError``."""
        try:
            async with asyncio.timeout(timeout or self.timeout):
                return await op()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # classify re-raises what is not an API failure
            raise classify(e, what) from None

    async def get(self, res: Any, name: str, *, namespace: str | None = None) -> Any:
        """The object (a lightkube model of ``res``), or None when it does not exist."""
        client: Any = self.client  # its overloads want a concrete resource class
        try:
            return await self.call(f"get {res.__name__} {name}", lambda: client.get(res, name, namespace=namespace))
        except NotFound:
            return None

    # raw JSON

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        what: str,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One raw JSON call; a non-2xx status raises its ``KubeError``."""

        async def send() -> dict[str, Any]:
            content = json.dumps(body).encode() if body is not None else None
            headers = (
                {"Content-Type": content_type, "Accept": "application/json"}
                if content
                else {"Accept": "application/json"}
            )
            response = await self._raw.request(method, path, content=content, headers=headers, params=params)
            raw = await response.aread()
            if response.status_code >= 400:
                raise error_for_status(response.status_code, what, _status_message(raw), _retry_after(response))
            parsed = _load_json(raw) if raw else {}
            if not isinstance(parsed, dict):
                raise ValueError("not a JSON object")
            return parsed

        return await self.call(what, send, timeout=timeout)

    async def watch(
        self,
        collection: str,
        *,
        name: str,
        stop: asyncio.Event,
        what: str,
        on_failure: Callable[[KubeError, float], None] | None = None,
        rng: random.Random | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Events for the one object ``name`` in ``collection`` (an API path), until ``stop`` is set.

        Lists first (yielding SYNC with the object, or None), then watches from the list's resourceVersion;
        reconnects forever.
        """
        async for event in self._watch_loop(
            collection, {"fieldSelector": f"metadata.name={name}"}, stop, what, on_failure, rng, single=True
        ):
            yield event

    async def watch_list(
        self,
        collection: str,
        *,
        label_selector: str,
        stop: asyncio.Event,
        what: str,
        on_failure: Callable[[KubeError, float], None] | None = None,
        rng: random.Random | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Events for every object in ``collection`` that ``label_selector`` selects, until ``stop`` is set.

        After every (re)list: LIST with ``{"items": [...]}`` (the whole set, replacing what was known); then
        ADDED / MODIFIED / DELETED of one object each. Reconnects forever, as ``watch``.
        """
        async for event in self._watch_loop(
            collection, {"labelSelector": label_selector}, stop, what, on_failure, rng, single=False
        ):
            yield event

    async def _watch_loop(
        self,
        collection: str,
        selector: dict[str, str],
        stop: asyncio.Event,
        what: str,
        on_failure: Callable[[KubeError, float], None] | None,
        rng: random.Random | None,
        *,
        single: bool,
    ) -> AsyncIterator[WatchEvent]:
        backoff = Backoff(rng=rng)
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    listing = await self.request("GET", collection, what=f"list {what}", params=dict(selector))
                    version = str((listing.get("metadata") or {}).get("resourceVersion") or "") or None
                    items = [i for i in listing.get("items") or [] if isinstance(i, dict)]
                    if single:
                        yield WatchEvent("SYNC", items[0] if items else None)
                    else:
                        yield WatchEvent("LIST", {"items": items})
                delivered = False
                opened = asyncio.get_running_loop().time()
                async for event in self._watch_once(collection, selector, version, what):
                    kind, obj = event
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        version = str(rv)
                    delivered = True
                    if kind != "BOOKMARK":
                        yield WatchEvent(kind, obj)
                if delivered:
                    backoff.reset()
                elif asyncio.get_running_loop().time() - opened < WATCH_SERVER_TIMEOUT_SECONDS / 2:
                    # Ending early without a single event (an empty 200, a proxy closing at once) is a
                    # failure: reconnecting at once would spin.
                    raise Unreachable(f"watch {what}: stream ended early without events")
            except Gone:
                version = None  # too old: list again, at once
            except KubeError as e:
                delay = backoff.next(floor=getattr(e, "retry_after", None) or 0.0)
                if on_failure is not None:
                    on_failure(e, delay)
                else:
                    log.warning("%s; retrying in %.1f s", e, delay)
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                except TimeoutError:
                    pass

    async def _watch_once(
        self, collection: str, selector: dict[str, str], version: str | None, what: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        params = {
            "watch": "true",
            **selector,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SERVER_TIMEOUT_SECONDS),
        }
        if version:
            params["resourceVersion"] = version
        label = f"watch {what}"
        try:
            async with asyncio.timeout(self.timeout):
                request = self._raw.build_request(
                    "GET", collection, params=params, headers={"Accept": "application/json"}
                )
                response = await self._raw.send(request, stream=True)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            raise classify(e, label) from None
        try:
            if response.status_code >= 400:
                raw = await self._read_capped(response, label)
                raise error_for_status(response.status_code, label, _status_message(raw), _retry_after(response))
            lines = response.aiter_lines().__aiter__()
            idle = WATCH_SERVER_TIMEOUT_SECONDS + WATCH_IDLE_MARGIN_SECONDS
            while True:
                try:
                    async with asyncio.timeout(idle):
                        line = await lines.__anext__()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    raise
                except BaseException as e:
                    raise classify(e, label) from None
                if not line.strip():
                    continue
                yield _watch_line(line, label)
        finally:
            await response.aclose()

    async def _read_capped(self, response: httpx.Response, label: str) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                chunks = bytearray()
                async for chunk in response.aiter_bytes():
                    chunks += chunk
                    if len(chunks) > MAX_ERROR_BODY:
                        break
                return bytes(chunks)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            raise classify(e, label) from None


def _watch_line(line: str, what: str) -> tuple[str, dict[str, Any]]:
    """One watch event; an ERROR event raises its status (410 Gone above all)."""
    try:
        event = _load_json(line)
        kind, obj = event["type"], event["object"]
        if not isinstance(kind, str) or not isinstance(obj, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise Unreachable(f"{what}: malformed watch event") from None
    if kind == "ERROR":
        code = obj.get("code")
        raise error_for_status(code if isinstance(code, int) else 500, what, str(obj.get("message") or ""))
    return kind, obj


def _status_message(raw: bytes) -> str:
    """The ``message`` of a Kubernetes Status body, '' for anything else (HTML, empty, truncated)."""
    try:
        body = _load_json(raw[:MAX_ERROR_BODY]) if raw else None
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return message if isinstance(message, str) else ""


def _load_json(raw: str | bytes) -> Any:
    """JSON from the API server; ValueError for anything else, a body nested too deep included."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
