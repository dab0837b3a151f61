"""The Konnect license API client (mutual TLS) and its typed results.

``KonnectClient.fetch()`` never raises for remote or transport problems: it returns a result whose
``kind`` is a metrics label value and whose ``describe()`` is a one-line message. No result, message or
repr ever carries the response body or the license text.

Client certificate files are re-read when their content changes on disk (checked before each fetch),
so a rotated certificate is used without a restart.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import hashlib
import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import aiohttp

from license_keeper import __version__
from license_keeper.license import (
    LicenseError,
    LicenseRecord,
    UpdatedAtError,
    describe,
    has_lone_surrogate,
    parse_license,
    parse_updated_at,
)

__all__ = [
    "KonnectAuthFailed",
    "KonnectClient",
    "KonnectConfigError",
    "KonnectFailure",
    "KonnectInvalidResponse",
    "KonnectResult",
    "KonnectServerError",
    "KonnectTimeout",
    "KonnectUnreachable",
    "LicenseFetched",
    "NoLicense",
    "check_client_files",
    "licenses_path",
    "load_client_ssl_context",
    "parse_licenses_body",
    "pem_file",
]


def licenses_path(control_plane_id: str) -> str:
    return f"/kic/api/control-planes/{quote(control_plane_id, safe='')}/v1/licenses"


# --- results ---------------------------------------------------------------------------------------------


class KonnectResult:
    kind: ClassVar[str]

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True)
class LicenseFetched(KonnectResult):
    kind: ClassVar[str] = "ok"
    record: LicenseRecord

    def describe(self) -> str:
        return f"Konnect served {describe(self.record)}"


@dataclass(frozen=True)
class NoLicense(KonnectResult):
    kind: ClassVar[str] = "no_license"

    def describe(self) -> str:
        return "Konnect has no license for this control plane (HTTP 404)"


class KonnectFailure(KonnectResult):
    """Base of every error result."""


@dataclass(frozen=True)
class _Explained(KonnectFailure):
    """A failure told by its headline and the reason (no response body, no license text)."""

    headline: ClassVar[str]
    reason: str

    def describe(self) -> str:
        return f"{self.headline}: {self.reason}"


@dataclass(frozen=True)
class KonnectUnreachable(_Explained):
    kind: ClassVar[str] = "unreachable"
    headline: ClassVar[str] = "Konnect unreachable"


@dataclass(frozen=True)
class KonnectTimeout(KonnectFailure):
    kind: ClassVar[str] = "timeout"
    seconds: float

    def describe(self) -> str:
        return f"Konnect did not answer within {self.seconds:g} s"


@dataclass(frozen=True)
class KonnectAuthFailed(_Explained):
    kind: ClassVar[str] = "auth"
    headline: ClassVar[str] = "Konnect authentication failed"


@dataclass(frozen=True)
class KonnectServerError(KonnectFailure):
    kind: ClassVar[str] = "server_error"
    status: int

    def describe(self) -> str:
        return f"Konnect server error: HTTP {self.status}"


@dataclass(frozen=True)
class KonnectInvalidResponse(_Explained):
    kind: ClassVar[str] = "invalid_response"
    headline: ClassVar[str] = "Konnect sent an invalid response"


# --- TLS -------------------------------------------------------------------------------------------------


class KonnectConfigError(Exception):
    """Client configuration is unusable (certificate files, address). One line, no key material."""


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or exc.__class__.__name__).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return exc.__class__.__name__


def load_client_ssl_context(cert_file: Path, key_file: Path, ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context: TLS >= 1.2, server verification on (system trust, or only ``ca_file``),
    presenting ``cert_file``/``key_file``. Raises KonnectConfigError with a one-line message."""
    return _client_context(cert_file, key_file, ca_file, system_trust=True)


def check_client_files(cert_file: Path, key_file: Path, ca_file: Path | None = None) -> None:
    """Raise KonnectConfigError, as load_client_ssl_context would, when these files cannot make a client
    context: the check at start. It leaves out the system trust store, which cannot fail and costs tens of
    milliseconds of CPU to load (on the way to ready); the first fetch loads it."""
    _client_context(cert_file, key_file, ca_file, system_trust=False)


def _client_context(cert_file: Path, key_file: Path, ca_file: Path | None, *, system_trust: bool) -> ssl.SSLContext:
    try:
        if ca_file is not None or system_trust:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    except (OSError, ssl.SSLError) as exc:
        # Without a CA file this is the system trust store (or SSLKEYLOGFILE, which the defaults open).
        what = f"Konnect CA file {ca_file}" if ca_file is not None else "the system's TLS defaults"
        raise KonnectConfigError(f"cannot load {what}: {_ssl_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    for path, what in ((cert_file, "client certificate"), (key_file, "client key")):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            raise KonnectConfigError(f"cannot read Konnect {what} file {path}: {_ssl_reason(exc)}") from None
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        reason = _ssl_reason(exc)
        if "mismatch" in reason:
            reason = "the key does not match the certificate"
        elif reason in ("pem lib", "sslerror"):
            reason = "not a valid PEM certificate and private key"
        raise KonnectConfigError(
            f"cannot use Konnect client certificate {cert_file} with key {key_file}: {reason}"
        ) from None
    return ctx


_INLINE_FILES: list[int] = []  # descriptors of inline PEM kept open for the life of the process


def pem_file(text: str, what: str) -> Path:
    """A path that reads as ``text``: for a certificate or key given inline (KIC's
    CONTROLLER_KONNECT_TLS_CLIENT_CERT / _KEY), since TLS loads them from files.

    In memory where Linux offers it (memfd, read back through /proc/self/fd: nothing on disk, fine on a
    read-only root filesystem); elsewhere a private temporary file (0600) removed at exit.
    """
    data = text.encode("utf-8")
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create(f"license-keeper-{what}", os.MFD_CLOEXEC)
        os.write(fd, data)
        _INLINE_FILES.append(fd)
        return Path(f"/proc/self/fd/{fd}")
    fd, name = tempfile.mkstemp(prefix=f"license-keeper-{what}-", suffix=".pem")  # mode 0600
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    atexit.register(_remove_quietly, name)
    return Path(name)


def _remove_quietly(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name)


def _files_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            data = b"\0unreadable\0"
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLError):
            return e
        todo.extend([e.__cause__, e.__context__])
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
        os_error = getattr(e, "os_error", None)
        if isinstance(os_error, BaseException):
            todo.append(os_error)
    return None


# --- client ----------------------------------------------------------------------------------------------


class KonnectClient:
    def __init__(
        self,
        address: str,
        control_plane_id: str,
        cert_file: Path,
        key_file: Path,
        *,
        ca_file: Path | None = None,
        connect_timeout: float = 5.0,
        total_timeout: float = 30.0,
        max_body: int = 65536,
        user_agent: str | None = None,
    ) -> None:
        parts = urlsplit(address)
        if parts.scheme != "https" or not parts.hostname:
            raise KonnectConfigError(f"Konnect address must be an https:// URL, got {address!r}")
        if not control_plane_id:
            raise KonnectConfigError("Konnect control plane id is empty")
        self.address = address.rstrip("/")
        self.control_plane_id = control_plane_id
        self.url = self.address + licenses_path(control_plane_id)
        self._cert_files = [Path(cert_file), Path(key_file)] + ([Path(ca_file)] if ca_file else [])
        self._cert_file, self._key_file = Path(cert_file), Path(key_file)
        self._ca_file = Path(ca_file) if ca_file else None
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_body = max_body
        self.user_agent = user_agent or f"license-keeper/{__version__}"
        self._session: aiohttp.ClientSession | None = None
        self._digest: str | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.reloads = 0  # how often the certificate files were (re)loaded; for tests and logs

    @property
    def cert_file(self) -> Path:
        return self._cert_file

    @property
    def key_file(self) -> Path:
        return self._key_file

    async def __aenter__(self) -> KonnectClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        session, self._session = self._session, None
        self._digest = None
        if session is not None:
            await session.close()

    async def _ensure_session(self) -> aiohttp.ClientSession | KonnectAuthFailed:
        """The session for the current certificate files; rebuilt when their content changed."""
        digest = _files_digest(self._cert_files)
        if self._session is not None and digest == self._digest:
            return self._session
        try:
            # In a thread: loading the system trust store is blocking file I/O and parsing (as aiohttp does).
            ctx = await asyncio.to_thread(load_client_ssl_context, self._cert_file, self._key_file, self._ca_file)
        except KonnectConfigError as exc:
            # Rotated-but-invalid files: drop the old session too (the files on disk are the truth),
            # and try again on the next fetch.
            old, self._session, self._digest = self._session, None, None
            if old is not None:
                await old.close()
            return KonnectAuthFailed(f"client certificate unusable: {exc}")
        if self._closed:  # closed while the context was loading: no session to leak
            raise RuntimeError("KonnectClient is closed")
        old = self._session
        connector = aiohttp.TCPConnector(ssl=ctx, force_close=True, limit=4)
        timeout = aiohttp.ClientTimeout(total=self.total_timeout, sock_connect=self.connect_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            raise_for_status=False,
            auto_decompress=True,
            # HTTPS_PROXY / NO_PROXY (and ~/.netrc) as KIC honours them: clusters often reach Konnect only
            # through an egress proxy.
            trust_env=True,
        )
        self._digest = digest
        self.reloads += 1
        if old is not None:
            await old.close()
        return self._session

    @property
    def deadline(self) -> float:
        """The longest one ``fetch`` waits for Konnect: the total timeout, and a second of belt and
        braces over aiohttp's own."""
        return self.total_timeout + 1.0

    async def fetch(self) -> KonnectResult:
        """One GET of the license; every remote or transport problem comes back as a KonnectFailure."""
        if self._closed:
            raise RuntimeError("KonnectClient is closed")
        async with self._lock:
            session = await self._ensure_session()
        if isinstance(session, KonnectAuthFailed):
            return session
        try:
            async with asyncio.timeout(self.deadline):
                return await self._get(session)
        except TimeoutError:
            return KonnectTimeout(self.total_timeout)
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            return KonnectAuthFailed(f"TLS handshake failed: {self._exc_text(exc)}")
        except aiohttp.ClientResponseError as exc:
            return KonnectInvalidResponse(f"malformed HTTP response ({exc.__class__.__name__})")
        except (aiohttp.ClientError, OSError) as exc:
            ssl_error = _find_ssl_error(exc)
            if ssl_error is not None:
                return KonnectAuthFailed(f"TLS failure: {_ssl_reason(ssl_error)}")
            return KonnectUnreachable(self._exc_text(exc))

    @staticmethod
    def _exc_text(exc: BaseException) -> str:
        ssl_error = _find_ssl_error(exc)
        if ssl_error is not None:
            return _ssl_reason(ssl_error)
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"{exc.__class__.__name__}: {text[:200]}" if text else exc.__class__.__name__

    async def _get(self, session: aiohttp.ClientSession) -> KonnectResult:
        async with session.get(self.url, allow_redirects=False) as resp:
            status = resp.status
            if status == 404:
                return NoLicense()
            if status in (401, 403):
                return KonnectAuthFailed(f"HTTP {status}: client certificate not accepted")
            if status >= 500:
                return KonnectServerError(status)
            if status != 200:
                return KonnectInvalidResponse(f"unexpected HTTP status {status}")
            if resp.content_length is not None and resp.content_length > self.max_body:
                return KonnectInvalidResponse(f"body too large (over {self.max_body} bytes)")
            chunks: list[bytes] = []
            size = 0
            while size <= self.max_body:
                chunk = await resp.content.read(self.max_body + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > self.max_body:
                return KonnectInvalidResponse(f"body too large (over {self.max_body} bytes)")
            return parse_licenses_body(b"".join(chunks), datetime.datetime.now(datetime.UTC))


def parse_licenses_body(body: bytes, now: datetime.datetime) -> KonnectResult:
    """Interpret a 200 body of the licenses endpoint. Pure (``now`` bounds ``updated_at``); reasons never
    quote the body."""
    try:
        data: Any = json.loads(body)
    except (ValueError, RecursionError):
        return KonnectInvalidResponse("body is not valid JSON")
    if not isinstance(data, dict):
        return KonnectInvalidResponse("body is not a JSON object")
    items = data.get("items")
    if not isinstance(items, list):
        return KonnectInvalidResponse("items is missing or not a list")
    if not items:
        return KonnectInvalidResponse("items is empty")
    item = items[0]
    if not isinstance(item, dict):
        return KonnectInvalidResponse("items[0] is not an object")
    payload = item.get("payload")
    if not isinstance(payload, str) or not payload.strip():
        return KonnectInvalidResponse("items[0].payload is missing or empty")
    license_id = item.get("id")
    if not isinstance(license_id, str) or not license_id.strip():
        return KonnectInvalidResponse("items[0].id is missing or empty")
    # A "\\ud800" escape decodes to a str that cannot be encoded to UTF-8, so it could never be written
    # to the Secret: it is an invalid answer, like any other malformed field.
    if has_lone_surrogate(license_id):
        return KonnectInvalidResponse("items[0].id is not valid Unicode (lone surrogate escape)")
    updated_at = _konnect_updated_at(item.get("updated_at"), now)
    if isinstance(updated_at, KonnectInvalidResponse):
        return updated_at
    try:
        parse_license(payload)
    except LicenseError as exc:
        return KonnectInvalidResponse(f"payload is not a valid license document ({exc})")
    return LicenseFetched(LicenseRecord(document=payload, id=license_id, updated_at=updated_at, source="konnect"))


def _konnect_updated_at(raw: object, now: datetime.datetime) -> int | KonnectInvalidResponse:
    """Konnect sends a JSON number of Unix seconds; zero means an invalid answer (as KIC treats it)."""
    if raw is None:
        return KonnectInvalidResponse("items[0].updated_at is missing")
    if isinstance(raw, bool) or not isinstance(raw, int):
        return KonnectInvalidResponse("items[0].updated_at is not an integer")
    if raw <= 0:
        return KonnectInvalidResponse("items[0].updated_at is zero or negative")
    try:
        return parse_updated_at(raw, now)
    except UpdatedAtError as exc:
        return KonnectInvalidResponse(f"items[0].{exc}")
