"""The API server's audit log, read as the tests judge by it: who did what to which object, and the answer.

The control plane (``controlplane.py``) starts the API server with ``AUDIT_POLICY``; ``AuditTail`` reads
the log it writes, incrementally, and ``filter_entries`` picks the entries a test asks about.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["AUDIT_POLICY", "AuditEntry", "AuditTail", "filter_entries"]

# What the audit log records: every request on Secrets, Leases and Events at Metadata level (who, verb,
# object, status; never the body, so no license text reaches the log), except the API server's own
# housekeeping. Everything else is noise for the tests that judge by it.
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "users": ["system:apiserver"]},
        {"level": "None", "namespaces": ["kube-system", "kube-public", "kube-node-lease"]},
        {
            "level": "Metadata",
            "resources": [
                {"group": "", "resources": ["secrets", "events"]},
                {"group": "events.k8s.io", "resources": ["events"]},
                {"group": "coordination.k8s.io", "resources": ["leases"]},
            ],
        },
        {"level": "None"},
    ],
}


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class AuditEntry:
    """One audit event (Metadata level): who did what to which object, and the answer."""

    audit_id: str
    stage: str  # ResponseComplete, ResponseStarted (long-running: watches) or Panic
    verb: str  # get, list, watch, create, update, patch, delete, ...
    username: str
    namespace: str | None
    resource: str | None
    name: str | None
    subresource: str | None
    api_group: str
    code: int | None  # responseStatus.code
    received: datetime.datetime | None  # requestReceivedTimestamp
    at: datetime.datetime | None  # stageTimestamp
    user_agent: str
    raw: dict[str, Any]

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> AuditEntry:
        ref = event.get("objectRef") or {}
        status = event.get("responseStatus") or {}
        return cls(
            audit_id=str(event.get("auditID", "")),
            stage=str(event.get("stage", "")),
            verb=str(event.get("verb", "")),
            username=str((event.get("user") or {}).get("username", "")),
            namespace=ref.get("namespace"),
            resource=ref.get("resource"),
            name=ref.get("name"),
            subresource=ref.get("subresource"),
            api_group=str(ref.get("apiGroup", "")),
            code=status.get("code"),
            received=_parse_time(event.get("requestReceivedTimestamp")),
            at=_parse_time(event.get("stageTimestamp")),
            user_agent=str(event.get("userAgent", "")),
            raw=dict(event),
        )

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    def brief(self) -> str:
        """One line for failure reports (metadata only; the audit level records no bodies)."""
        at = self.at.strftime("%H:%M:%S.%f")[:-3] if self.at else "?"
        obj = f"{self.resource or '?'}/{self.name or ''}" + (f"/{self.subresource}" if self.subresource else "")
        return f"{at} {self.stage[:8]:8} {self.verb:6} {obj:40} {self.code} {self.username}"


def _since_value(since: datetime.datetime | float | None) -> datetime.datetime | None:
    if since is None or isinstance(since, datetime.datetime):
        return since
    return datetime.datetime.fromtimestamp(since, datetime.UTC)


def filter_entries(
    entries: Iterable[AuditEntry],
    *,
    since: datetime.datetime | float | None = None,
    namespace: str | None = None,
    resource: str | None = None,
) -> list[AuditEntry]:
    """Entries at or after ``since`` (a datetime or a Unix time), in ``namespace``, on ``resource``."""
    start = _since_value(since)
    return [
        e
        for e in entries
        if (start is None or (e.at is not None and e.at >= start))
        and (namespace is None or e.namespace == namespace)
        and (resource is None or e.resource == resource)
    ]


class AuditTail:
    """Reads an audit log incrementally: each ``read()`` returns the complete lines written since the last.

    A long soak reads the log hundreds of times; re-parsing it from the start each time would be
    quadratic. A partial last line (the API server is mid-write) is kept for the next call.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[AuditEntry]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                out.append(AuditEntry.parse(json.loads(line)))
            except (ValueError, AttributeError):
                continue  # not an audit event (never expected); skip rather than fail the reader
        return out
