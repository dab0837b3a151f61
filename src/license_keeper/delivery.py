"""Pure decisions for delivering the held license to gateways (no I/O; `now` is an argument).

Three kinds of target (REFERENCE §7):
- ``admin-api=https://host:8444``: Kong Admin API ``/licenses`` (traditional DB mode, hybrid control plane).
- ``konglicense=<name>``: a cluster-scoped ``configuration.konghq.com/v1alpha1`` KongLicense for KIC / Kong Operator.
- ``restart=deployment/<name>`` or ``restart=statefulset/<name>``: roll pods that read KONG_LICENSE_DATA at start.

Each decision is a small named predicate or plan function; every reason string names states, ids, names and
dates, never license text, keys or signatures.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .license import License

__all__ = [
    "FINGERPRINT_ANNOTATION",
    "AdminPlan",
    "DeliveryState",
    "TargetReport",
    "TargetSpec",
    "diagnose_admin",
    "diagnose_konglicense",
    "diagnose_rollout",
    "license_row_id",
    "parse_target",
    "plan_admin",
    "plan_konglicense",
    "plan_restart",
]

FINGERPRINT_ANNOTATION = "license-keeper.io/license-fingerprint"
KEEPER_NAMESPACE_UUID = uuid.uuid5(uuid.NAMESPACE_DNS, "license-keeper.io")
# A write the gateway has not shown yet is "pending" this long, then "drift" (Kong nodes in one cluster
# pick up /licenses changes within db_update_frequency, 5 s by default; controllers within a sync).
DEFAULT_GRACE_SECONDS = 120.0


class DeliveryState(enum.StrEnum):
    DELIVERED = "delivered"  # the gateway runs the held license
    PENDING = "pending"  # written (or waiting for a license / a rollout); not visible yet
    DRIFT = "drift"  # the gateway runs something else, and the reason says why
    UNSUPPORTED = "unsupported"  # this target cannot take a license this way (DB-less /licenses)
    ERROR = "error"  # the target could not be asked or written (transport, TLS, auth, bad answer)


DELIVERY_STATES = tuple(s.value for s in DeliveryState)


@dataclass(frozen=True)
class TargetReport:
    target: str
    state: DeliveryState
    reason: str
    wrote: bool = False  # this round changed something on the target
    at: float = 0.0  # wall clock of the report


# --- target specs ---------------------------------------------------------------------------------------

_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
RESTART_KINDS = ("deployment", "statefulset")


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # "admin-api" | "konglicense" | "restart"
    value: str  # the URL, the KongLicense name, or "deployment/<name>"

    @property
    def label(self) -> str:
        """The metric label and the name in logs: the spec as given (no credentials can be in it)."""
        return f"{self.kind}={self.value}"

    @property
    def workload(self) -> tuple[str, str]:
        kind, _, name = self.value.partition("/")
        return kind, name


def parse_target(text: str) -> TargetSpec:
    """``admin-api=https://host:8444``, ``konglicense=<name>``, ``restart=deployment/<name>``; ValueError else."""
    kind, sep, value = text.strip().partition("=")
    kind, value = kind.strip().lower(), value.strip()
    if not sep or not value:
        raise ValueError(f"not a delivery target: {text!r} (use admin-api=URL, konglicense=NAME or restart=KIND/NAME)")
    if kind == "admin-api":
        return TargetSpec(kind, _admin_url(value))
    if kind == "konglicense":
        if not _DNS_NAME.match(value):
            raise ValueError(f"konglicense name must be a lowercase DNS name, got {value!r}")
        return TargetSpec(kind, value)
    if kind == "restart":
        wkind, _, name = value.partition("/")
        if wkind.lower() not in RESTART_KINDS or not _DNS_NAME.match(name):
            raise ValueError(f"restart target must be deployment/<name> or statefulset/<name>, got {value!r}")
        return TargetSpec(kind, f"{wkind.lower()}/{name}")
    raise ValueError(f"unknown delivery target kind {kind!r} (admin-api, konglicense, restart)")


def _admin_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"admin-api needs an http(s):// URL, got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        # credentials belong in --deliver-admin-token-file; a URL ends up in labels and logs
        raise ValueError("admin-api URL must not carry credentials, a query or a fragment")
    return value.rstrip("/")


# --- Kong Admin API /licenses ----------------------------------------------------------------------------


def license_row_id(namespace: str, secret_name: str) -> str:
    """The keeper's one stable /licenses id: UUIDv5 of the Secret's namespace/name (same for every replica)."""
    return str(uuid.uuid5(KEEPER_NAMESPACE_UUID, f"{namespace}/{secret_name}"))


@dataclass(frozen=True)
class AdminPlan:
    put: bool  # PUT /licenses/{our_id} {"payload": document}
    reason: str


def row_holds_payload(rows: list[dict[str, Any]], payload: str) -> bool:
    return any(row.get("payload") == payload for row in rows)


def newest_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row Kong runs from the DB: the newest updated_at (ties: newest created_at, then id)."""
    if not rows:
        return None
    return max(rows, key=lambda r: (_int(r.get("updated_at")), _int(r.get("created_at")), str(r.get("id"))))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def plan_admin(rows: list[dict[str, Any]], payload: str) -> AdminPlan:
    """Converge: a row with the same payload (ours or anyone's) means nothing to write; else upsert our id.

    Never delete: rows the keeper did not write stay (and a second row with our payload would answer 409).
    """
    if row_holds_payload(rows, payload):
        return AdminPlan(False, "a /licenses row holds the held license")
    return AdminPlan(True, "no /licenses row holds the held license")


@dataclass(frozen=True)
class ReportedLicense:
    """What GET /license/report says the node runs (license_key compared in memory only)."""

    license_key: str
    expiration_date: str

    @property
    def unlicensed(self) -> bool:
        return self.license_key in ("", "UNLICENSED")


def runs_license(report: ReportedLicense, lic: License) -> bool:
    return report.license_key == lic.license_key and report.expiration_date == lic.expiration_date.isoformat()


def document_matches_report(document: str | None, report: ReportedLicense) -> bool:
    from .license import LicenseError, parse_license

    if not document:
        return False
    try:
        return runs_license(report, parse_license(document))
    except LicenseError:
        return False


HIDDEN_BY_ENV = (
    "the gateway runs a license from KONG_LICENSE_DATA, /etc/kong/license.json or KONG_LICENSE_PATH, which take "
    "precedence over /licenses (KONG_LICENSE_DATA > license.json > KONG_LICENSE_PATH > DB): remove it from the "
    "gateway, or deliver with a restart target instead"
)


def diagnose_admin(
    held: License,
    rows: list[dict[str, Any]],
    report: ReportedLicense,
    our_id: str,
    *,
    wrote_at: float | None,
    now: float,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> tuple[DeliveryState, str]:
    """Compare what the node reports with the held license; say why when they differ."""
    expires = held.expiration_date.isoformat()
    if runs_license(report, held):
        return DeliveryState.DELIVERED, f"gateway runs the held license (expires {expires})"
    fresh = wrote_at is not None and now - wrote_at < grace
    if fresh:
        return DeliveryState.PENDING, "written to /licenses; the gateway does not report it yet"
    newest = newest_row(rows)
    if report.unlicensed:
        why = "the gateway reports no license although /licenses holds one" if rows else "the gateway has no license"
        return DeliveryState.DRIFT, why
    if newest is not None and document_matches_report(newest.get("payload"), report):
        if newest.get("id") != our_id and not row_holds_payload([newest], held.document):
            return DeliveryState.DRIFT, (
                f"a newer /licenses row not written by the keeper wins (id {newest.get('id')}, "
                f"gateway license expires {report.expiration_date})"
            )
        return DeliveryState.DRIFT, "the gateway runs an older /licenses row"
    return DeliveryState.DRIFT, f"{HIDDEN_BY_ENV} (gateway license expires {report.expiration_date})"


# --- KongLicense -----------------------------------------------------------------------------------------

KONGLICENSE_API = "configuration.konghq.com/v1alpha1"


def konglicense_object(name: str, document: str) -> dict[str, Any]:
    return {
        "apiVersion": KONGLICENSE_API,
        "kind": "KongLicense",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "license-keeper"}},
        "rawLicenseString": document,
        "enabled": True,
    }


def plan_konglicense(obj: dict[str, Any] | None, document: str) -> dict[str, Any] | None:
    """ "create", a merge patch, or None when the object already carries the license and is enabled."""
    if obj is None:
        return {"create": True}
    patch: dict[str, Any] = {}
    if obj.get("rawLicenseString") != document:
        patch["rawLicenseString"] = document
    if obj.get("enabled", True) is not True:
        patch["enabled"] = True
    return patch or None


def konglicense_winner(items: list[dict[str, Any]]) -> str | None:
    """The name KIC / Kong Operator pick: enabled, newest creationTimestamp; a tie goes to the smaller name."""
    enabled = [o for o in items if o.get("enabled", True) is True]
    if not enabled:
        return None
    # RFC 3339 timestamps in UTC ("Z") sort as strings; ties -> the smaller name wins (so sort names descending)
    best = max(enabled, key=lambda o: (_meta(o, "creationTimestamp"), _reverse(_meta(o, "name"))))
    return _meta(best, "name")


def _meta(obj: dict[str, Any], key: str) -> str:
    return str((obj.get("metadata") or {}).get(key) or "")


def _reverse(name: str) -> tuple[int, ...]:
    return (*(-ord(c) for c in name), 0)


def programmed_conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for controller in (obj.get("status") or {}).get("controllers") or []:
        for cond in controller.get("conditions") or []:
            if cond.get("type") == "Programmed":
                out.append(cond)
    return out


def diagnose_konglicense(
    obj: dict[str, Any] | None,
    document: str,
    winner: str | None,
    *,
    wrote_at: float | None,
    now: float,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> tuple[DeliveryState, str]:
    if obj is None:
        return DeliveryState.PENDING, "KongLicense not created yet"
    name = _meta(obj, "name")
    if obj.get("rawLicenseString") != document or obj.get("enabled", True) is not True:
        return DeliveryState.DRIFT, f"KongLicense {name} does not carry the held license (changed by someone else?)"
    if winner is not None and winner != name:
        return DeliveryState.DRIFT, (
            f"KongLicense {winner} wins over {name} (enabled, newer creationTimestamp): "
            "controllers use it; disable or delete it"
        )
    conds = programmed_conditions(obj)
    generation = (obj.get("metadata") or {}).get("generation")
    current = [c for c in conds if c.get("observedGeneration") in (None, generation)]
    if any(c.get("status") == "True" for c in current):
        return DeliveryState.DELIVERED, f"KongLicense {name} is Programmed"
    refused = [c for c in current if c.get("status") == "False"]
    if refused:
        why = str(refused[0].get("reason") or "NotProgrammed")
        return DeliveryState.DRIFT, f"KongLicense {name} is not Programmed (reason {why})"
    if wrote_at is not None and now - wrote_at < grace:
        return DeliveryState.PENDING, f"KongLicense {name}: no controller has reported Programmed yet"
    return DeliveryState.DRIFT, (
        f"KongLicense {name}: no controller reports Programmed (is KIC running with the KongLicense controller on?)"
    )


# --- rolling restart -------------------------------------------------------------------------------------


def template_fingerprint(workload: dict[str, Any]) -> str | None:
    annotations = (((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations")
    return (annotations or {}).get(FINGERPRINT_ANNOTATION)


def is_paused(workload: dict[str, Any]) -> bool:
    return bool((workload.get("spec") or {}).get("paused"))


def restarts_on_template_change(workload: dict[str, Any]) -> bool:
    strategy = ((workload.get("spec") or {}).get("updateStrategy") or {}).get("type")
    return workload.get("kind") != "StatefulSet" or strategy != "OnDelete"


def restart_patch(fingerprint: str) -> dict[str, Any]:
    return {"spec": {"template": {"metadata": {"annotations": {FINGERPRINT_ANNOTATION: fingerprint}}}}}


def plan_restart(workload: dict[str, Any], fingerprint: str) -> dict[str, Any] | None:
    """The merge patch that rolls the pods, or None: already carries the fingerprint, or paused (refused)."""
    if template_fingerprint(workload) == fingerprint or is_paused(workload):
        return None
    return restart_patch(fingerprint)


def rollout_finished(workload: dict[str, Any]) -> bool:
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    generation = (workload.get("metadata") or {}).get("generation")
    replicas = spec.get("replicas", 1)
    return (
        status.get("observedGeneration") is not None
        and generation is not None
        and status["observedGeneration"] >= generation
        and status.get("updatedReplicas", 0) == replicas
    )


def diagnose_rollout(workload: dict[str, Any] | None, fingerprint: str, label: str) -> tuple[DeliveryState, str]:
    if workload is None:
        return DeliveryState.ERROR, f"{label} does not exist"
    carries = template_fingerprint(workload) == fingerprint
    if is_paused(workload) and not (carries and rollout_finished(workload)):
        return DeliveryState.DRIFT, f"{label} is paused: not restarted (kubectl rollout resume, then it rolls)"
    if not carries:
        return DeliveryState.PENDING, f"{label} pod template does not carry the held license fingerprint yet"
    if not restarts_on_template_change(workload):
        return DeliveryState.DRIFT, f"{label} uses updateStrategy OnDelete: pods restart only when deleted"
    if not rollout_finished(workload):
        status = workload.get("status") or {}
        replicas = (workload.get("spec") or {}).get("replicas", 1)
        return DeliveryState.PENDING, f"{label} rolling out ({status.get('updatedReplicas', 0)}/{replicas} updated)"
    return DeliveryState.DELIVERED, f"{label} runs pods started with the held license"
