"""The state and rules of one Kong Gateway node's licensing, as the Admin API exposes it (no I/O).

Facts (docs/../shared REFERENCE §7, from Kong's source and docs):
- `/licenses` rows are `{id, payload, created_at, updated_at, checksum}`; checksum = sha256_hex(payload) is unique.
- Which license a node runs: KONG_LICENSE_DATA > /etc/kong/license.json > KONG_LICENSE_PATH > the row with the
  newest `updated_at`. Expired licenses are accepted.
- DB-less and data-plane nodes refuse writes with 405; hybrid data planes run the newest row the CP sent.
- Prometheus: `kong_enterprise_license_signature` = float(int(signature[-34:], 16)), printed `%.14g`;
  `kong_enterprise_license_expiration` = noon of the expiry date (the node's local time; UTC here) - 86,400 s.

Kong 3.15 without a valid license (REFERENCE §9; Kong EE's `license_helpers.lua`, as published):
- The expiry instant is `os.time{year, month, day}` of `license_expiration_date`: Lua fills in hour 12, so
  noon (node-local; UTC here), the same instant the Prometheus figure starts from. A grace period of 30 days
  follows. Missing, unreadable or past the grace period: the Admin API is read-only, every write except to
  `/licenses` and `/keyring/recover|import|import/raw` answers 403 `Enterprise license missing or expired`.
  (The signature check, and so the exact instant Kong's license library calls "expired", is not public.)
- A daily log line: WARN below 90 days, ERR below 30 days, CRIT in the grace period and after it (wording in
  ``license_notice``). An expired license is still accepted on `/licenses`, with a WARN.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from license_keeper.license import License, LicenseError, parse_license

__all__ = ["ApiAnswer", "KongNode", "license_notice"]

UNLICENSED = "UNLICENSED"
DAY = 86400
GRACE_PERIOD_DAYS = 30
WARNING_NOTICE_DAYS = 90
ERROR_NOTICE_DAYS = 30
_PLEASE_CONTACT = "Please contact <support@konghq.com> to renew your license."
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Writable without a license (Kong 3.15): how a valid license gets in, and how keyring material is recovered.
_UNLICENSED_WRITABLE = ("/licenses", "/keyring/recover", "/keyring/import", "/keyring/import/raw")
UNLICENSED_WRITE = {"message": "Enterprise license missing or expired"}


def expiration_time(lic: License) -> int:
    """Kong's expiry instant (epoch seconds): noon UTC of ``license_expiration_date``."""
    day = lic.expiration_date
    return calendar.timegm((day.year, day.month, day.day, 12, 0, 0))


def license_notice(lic: License, now: float) -> tuple[str, str] | None:
    """Kong's daily line about ``lic`` at ``now``: (nginx level, message), or None when nothing is due."""
    expires = expiration_time(lic)
    date = lic.expiration_date.isoformat()
    if expires < now:
        if now < expires + GRACE_PERIOD_DAYS * DAY:
            days_in = min(math.ceil((now - expires) / DAY), GRACE_PERIOD_DAYS)
            left = GRACE_PERIOD_DAYS - days_in
            return "crit", (
                f"Your license is expired. You have {left} days left in the renewal grace period. {_PLEASE_CONTACT}"
            )
        return "crit", f"The Kong Enterprise license expired on {date}. {_PLEASE_CONTACT}"
    if expires < now + ERROR_NOTICE_DAYS * DAY:
        return "error", f"The Kong Enterprise license will expire on {date}. {_PLEASE_CONTACT}"
    if expires < now + WARNING_NOTICE_DAYS * DAY:
        return "warn", f"The Kong Enterprise license will expire on {date}. {_PLEASE_CONTACT}"
    return None


def added_license_warning(lic: License, now: float) -> str | None:
    """Kong's WARN when an expired license is added through /licenses (it is accepted all the same)."""
    expires = expiration_time(lic)
    if now < expires:
        return None
    if now < expires + GRACE_PERIOD_DAYS * DAY:
        return "The license being added is expired"
    return "The license being added is expired; some functionality may not be available"


def unlicensed_writable(path: str) -> bool:
    """Whether Kong 3.15 takes a write to ``path`` (normalized, no trailing slash) without a license."""
    return path in _UNLICENSED_WRITABLE or path.startswith("/licenses/")


@dataclass
class LicenseRow:
    id: str
    payload: str
    created_at: int
    updated_at: int

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.payload.encode("utf-8", "surrogatepass")).hexdigest()

    def entity(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payload": self.payload,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "checksum": self.checksum,
        }


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: dict[str, Any] | None


def _schema_violation(field_name: str, problem: str) -> ApiAnswer:
    return ApiAnswer(
        400,
        {
            "code": 2,
            "name": "schema violation",
            "message": f"schema violation ({field_name}: {problem})",
            "fields": {field_name: problem},
        },
    )


NOT_FOUND = ApiAnswer(404, {"message": "Not found"})
BAD_JSON = ApiAnswer(400, {"message": "Cannot parse JSON body"})


def validate_payload(payload: Any, rejected_signatures: frozenset[str] = frozenset()) -> str | None:
    """Kong's reason for refusing a license payload, or None. Kong checks the signature (we cannot):
    signatures in ``rejected_signatures`` fail as Kong's "validation failed"."""
    if not isinstance(payload, str) or not payload:
        return "required field missing"
    try:
        data = json.loads(payload)
    except ValueError:
        return "could not decode license json"
    try:
        lic = parse_license(payload)
    except LicenseError as exc:
        if exc.field == "license_expiration_date":
            return "invalid license expiration date"
        return "invalid license format" if isinstance(data, dict) else "could not decode license json"
    if lic.signature in rejected_signatures:
        return "Unable to validate license: validation failed"
    return None


def _offset_token(key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([key]).encode()).decode().rstrip("=")


def _offset_key(token: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)
        return str(value[0])
    except (ValueError, TypeError, IndexError, KeyError):
        return None


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


@dataclass
class KongNode:
    """One node: its role, its env/file licenses and its rows (DB rows, declarative or CP-sent rows)."""

    role: str = "traditional"
    database: str = "postgres"  # "off" = DB-less
    env_license: str | None = None  # KONG_LICENSE_DATA
    file_license: str | None = None  # /etc/kong/license.json
    path_license: str | None = None  # KONG_LICENSE_PATH
    rows: dict[str, LicenseRow] = field(default_factory=dict)
    rejected_signatures: frozenset[str] = frozenset()
    version: str = "3.10.0.0-enterprise-edition"
    # A DB-less node that keeps /licenses writes in memory, as DB-less Kong keeps a `licenses:` list pushed
    # through /config: they run in place of KONG_LICENSE_DATA until restart (the gateway stand-in; a real
    # DB-less Kong answers 405 on /licenses itself).
    in_memory_licenses: bool = False

    @property
    def writable(self) -> bool:
        return (self.database != "off" or self.in_memory_licenses) and self.role != "data_plane"

    # --- which license runs ------------------------------------------------------------------------------

    def active(self) -> tuple[str, str | None]:
        """(source, document) of the license this node runs: config, env, file, path, db, or none."""
        if self.in_memory_licenses and self.rows:
            return "config", self._newest_row().payload
        for source, doc in (("env", self.env_license), ("file", self.file_license), ("path", self.path_license)):
            if doc:
                return source, doc
        if self.rows:
            return "db", self._newest_row().payload
        return "none", None

    def _newest_row(self) -> LicenseRow:
        return max(self.rows.values(), key=lambda r: (r.updated_at, r.created_at, r.id))

    def active_license(self) -> License | None:
        _, doc = self.active()
        if doc is None:
            return None
        try:
            return parse_license(doc)
        except LicenseError:
            return None

    def license_state(self, now: float) -> str:
        """What Kong 3.15 makes of the active license: missing, invalid, valid, grace or expired."""
        _, doc = self.active()
        if doc is None:
            return "missing"
        lic = self.active_license()
        if lic is None or validate_payload(doc, self.rejected_signatures) is not None:
            return "invalid"
        expires = expiration_time(lic)
        if now < expires:
            return "valid"
        return "grace" if now < expires + GRACE_PERIOD_DAYS * DAY else "expired"

    def refuse_unlicensed(self, method: str, path: str, now: float) -> ApiAnswer | None:
        """Kong 3.15's 403 for a write while no valid license runs (reads and /licenses always pass)."""
        if method not in WRITE_METHODS or unlicensed_writable(path):
            return None
        if self.license_state(now) in ("valid", "grace"):
            return None
        return ApiAnswer(403, dict(UNLICENSED_WRITE))

    # --- read endpoints ----------------------------------------------------------------------------------

    def root(self, hostname: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "version": self.version,
            "hostname": hostname,
            "tagline": "Welcome to kong",
            "configuration": {"database": self.database, "role": self.role},
        }
        lic = self.active_license()
        if lic is not None:
            payload = json.loads(lic.document)["license"]["payload"]
            body["license"] = {k: v for k, v in payload.items() if k != "license_key"}
        return body

    def deployment(self) -> str:
        if self.role != "traditional":
            return "hybrid"
        return "dbless" if self.database == "off" else "traditional"

    def report(self, now: int, hostname: str = "kong-stand-in") -> dict[str, Any]:
        lic = self.active_license()
        return {
            "kong_version": self.version,
            "timestamp": now,
            "db_version": "postgres 16.2" if self.database != "off" else "off",
            "deployment_info": {"type": self.deployment()},
            "system_info": {"hostname": hostname},
            "counters": {"buckets": []},
            "plugins_count": {"tiers": {}, "unique_route_lambdas": 0},
            "license": {
                "license_key": lic.license_key if lic else UNLICENSED,
                "license_expiration_date": lic.expiration_date.isoformat() if lic else UNLICENSED,
            },
        }

    def metrics(self) -> str:
        lic = self.active_license()
        lines = []
        if lic is not None:
            noon = expiration_time(lic)
            lines += [
                "# HELP kong_enterprise_license_signature Last 32 bytes of the license signature in number",
                "# TYPE kong_enterprise_license_signature gauge",
                f"kong_enterprise_license_signature {lic.kong_signature:.14g}",
                "# HELP kong_enterprise_license_expiration Unix epoch time when the license expires, "
                "the timestamp is substracted by 24 hours to avoid difference in timezone",
                "# TYPE kong_enterprise_license_expiration gauge",
                f"kong_enterprise_license_expiration {noon - 86400}",
            ]
        lines += [
            "# HELP kong_enterprise_license_errors Errors when collecting license info",
            "# TYPE kong_enterprise_license_errors counter",
            f"kong_enterprise_license_errors {0 if lic is not None else 1}",
        ]
        return "\n".join(lines) + "\n"

    def list_rows(self, size_param: str | None, offset_param: str | None, base: str = "/licenses") -> ApiAnswer:
        try:
            size = 100 if size_param is None else int(size_param)
        except ValueError:
            size = -1
        if not 1 <= size <= 1000:
            return ApiAnswer(
                400, {"code": 9, "name": "invalid size", "message": "size must be an integer between 1 and 1000"}
            )
        ordered = sorted(self.rows.values(), key=lambda r: r.id)
        if offset_param is not None:
            key = _offset_key(offset_param)
            if key is None:
                return ApiAnswer(
                    400, {"code": 10, "name": "invalid offset", "message": "'offset' is not a valid offset"}
                )
            ordered = [r for r in ordered if r.id > key]
        page, rest = ordered[:size], ordered[size:]
        body: dict[str, Any] = {"data": [r.entity() for r in page], "next": None}
        if rest:
            token = _offset_token(page[-1].id)
            body["offset"] = token
            body["next"] = f"{base}?offset={token}" + (f"&size={size}" if size_param is not None else "")
        return ApiAnswer(200, body)

    def get_row(self, row_id: str) -> ApiAnswer:
        row = self.rows.get(row_id.lower())
        return ApiAnswer(200, row.entity()) if row else NOT_FOUND

    def licenses_call(
        self, method: str, row_id: str | None, body: Any, now: int, query: dict[str, str] | None = None
    ) -> ApiAnswer:
        """One /licenses request: ``row_id`` from /licenses/{id}; ``body`` the parsed JSON (None for none)."""
        query = query or {}
        if method == "GET":
            if row_id is None:
                return self.list_rows(query.get("size"), query.get("offset"))
            return self.get_row(row_id)
        if method == "POST" and row_id is None:
            return self.create(body, now)
        if method == "PUT" and row_id is not None:
            return self.upsert(row_id, body, now)
        if method == "PATCH" and row_id is not None:
            return self.patch(row_id, body, now)
        if method == "DELETE" and row_id is not None:
            return self.delete(row_id)
        return ApiAnswer(405, {"message": "Method not allowed"})

    # --- write endpoints ---------------------------------------------------------------------------------

    def _refuse_dbless(self, verb: str) -> ApiAnswer | None:
        if self.writable:
            return None
        return ApiAnswer(405, {"message": f"cannot {verb} 'licenses' entities when not using a database"})

    def _check(self, body: Any, row_id: str) -> ApiAnswer | str:
        if not isinstance(body, dict):
            return ApiAnswer(400, {"message": "Cannot parse JSON body"})
        payload = body.get("payload")
        problem = validate_payload(payload, self.rejected_signatures)
        if problem is not None:
            return _schema_violation("payload", problem)
        checksum = hashlib.sha256(str(payload).encode("utf-8", "surrogatepass")).hexdigest()
        for other in self.rows.values():
            if other.id != row_id and other.checksum == checksum:
                return _conflict("unique constraint violation", "UNIQUE violation detected on", "checksum", checksum)
        return str(payload)

    def create(self, body: Any, now: int) -> ApiAnswer:
        refused = self._refuse_dbless("create")
        if refused:
            return refused
        row_id = str(uuid.uuid4())
        if isinstance(body, dict) and "id" in body:
            if not isinstance(body["id"], str) or not _is_uuid(body["id"]):
                return _schema_violation("id", "expected a valid UUID")
            row_id = body["id"].lower()
            if row_id in self.rows:
                return _conflict("primary key violation", "primary key violation on key", "id", row_id)
        checked = self._check(body, row_id)
        if isinstance(checked, ApiAnswer):
            return checked
        self.rows[row_id] = LicenseRow(row_id, checked, now, now)
        return ApiAnswer(201, self.rows[row_id].entity())

    def upsert(self, row_id: str, body: Any, now: int) -> ApiAnswer:
        refused = self._refuse_dbless("update")
        if refused:
            return refused
        if not _is_uuid(row_id):
            return _schema_violation("id", "expected a valid UUID")
        row_id = row_id.lower()
        checked = self._check(body, row_id)
        if isinstance(checked, ApiAnswer):
            return checked
        old = self.rows.get(row_id)
        self.rows[row_id] = LicenseRow(row_id, checked, old.created_at if old else now, now)
        return ApiAnswer(200, self.rows[row_id].entity())

    def patch(self, row_id: str, body: Any, now: int) -> ApiAnswer:
        refused = self._refuse_dbless("update")
        if refused:
            return refused
        old = self.rows.get(row_id.lower())
        if old is None:
            return NOT_FOUND
        checked = self._check(body, old.id)
        if isinstance(checked, ApiAnswer):
            return checked
        self.rows[old.id] = LicenseRow(old.id, checked, old.created_at, now)
        return ApiAnswer(200, self.rows[old.id].entity())

    def delete(self, row_id: str) -> ApiAnswer:
        refused = self._refuse_dbless("delete")
        if refused:
            return refused
        self.rows.pop(row_id.lower(), None)
        return ApiAnswer(204, None)


def _conflict(name: str, text: str, key: str, value: str) -> ApiAnswer:
    """Kong's 409 body (error code 5) for a row that clashes with another on ``key``."""
    return ApiAnswer(
        409,
        {"code": 5, "name": name, "message": f"{text} '{{{key}=\"{value}\"}}'", "fields": {key: value}},
    )
