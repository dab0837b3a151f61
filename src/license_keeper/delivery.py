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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .license import License, LicenseError, parse_license

__all__ = [
    "ADOPTED_ANNOTATION",
    "DEFAULT_GRACE_SECONDS",
    "DELIVERY_STATES",
    "FINGERPRINT_ANNOTATION",
    "AdminUrl",
    "DeliveryState",
    "ReportedLicense",
    "RestartPlan",
    "TargetReport",
    "TargetSpec",
    "diagnose_admin",
    "diagnose_konglicense",
    "diagnose_rollout",
    "konglicense_object",
    "konglicense_winner",
    "license_row_id",
    "newest_row",
    "parse_admin_url",
    "parse_target",
    "plan_admin",
    "plan_konglicense",
    "plan_restart",
    "rollout_finished",
    "rollout_status",
    "secret_license",
    "shown",
]

# What a restart target last rolled a workload's pods for: on the pod template, because changing it is what
# rolls them (as `kubectl rollout restart` does with its own annotation).
FINGERPRINT_ANNOTATION = "license-keeper.io/license-fingerprint"
# What the pods already ran when the target first looked at a workload, adopted without a restart: on the
# workload's own metadata, because an annotation on the pod template would roll them.
ADOPTED_ANNOTATION = "license-keeper.io/adopted-license-fingerprint"
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


# --- text from elsewhere ---------------------------------------------------------------------------------

SHOWN_CHARS = 64


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A value another system sent (a row id, a date, a hostname, a reason) as it may appear in a reason, a
    log line or an Event: text or a number, printable characters only, at most ``limit`` characters."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return ""
    text = "".join(c if c.isprintable() else "?" for c in str(value)[: limit + 1])
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


@dataclass(frozen=True)
class AdminUrl:
    """A Kong Admin API address, parsed once and normalised: the one thing that decides TLS (``tls``).

    The scheme and host are lower-cased (``HTTPS://Kong`` is ``https://kong``), an IPv6 host keeps its
    brackets in ``str()``, the port is explicit or the scheme's, the base path has no trailing slash.
    """

    scheme: str  # "https" | "http"
    host: str  # lower case; an IPv6 address without brackets
    port: int
    path: str = ""  # a base path ("" or "/prefix"), for an Admin API behind a path-routing proxy

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def join(self, path: str) -> str:
        """The absolute URL of an Admin API ``path`` (which starts with ``/``)."""
        return f"{self}{path}"


ADMIN_SCHEMES = {"https": 443, "http": 80}


def parse_admin_url(value: str) -> AdminUrl:
    """``https://host:8444`` (any case) as an ``AdminUrl``; ValueError for anything that is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"admin-api needs an http(s)://HOST[:PORT] URL, got {value!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ADMIN_SCHEMES or not parts.hostname:
        raise ValueError(f"admin-api needs an http(s)://HOST[:PORT] URL, got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        # credentials belong in --deliver-admin-token-file; a URL ends up in labels and logs
        raise ValueError("admin-api URL must not carry credentials, a query or a fragment")
    return AdminUrl(scheme, parts.hostname.lower(), port or ADMIN_SCHEMES[scheme], parts.path.rstrip("/"))


def _admin_url(value: str) -> str:
    """The normalised URL text: the target's label and value (so ``HTTPS://X`` and ``https://x`` are one)."""
    url = parse_admin_url(value)
    given_port = urlsplit(value.strip()).port
    text = f"{url.scheme}://{f'[{url.host}]' if ':' in url.host else url.host}"
    return text + (f":{given_port}" if given_port else "") + url.path


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
    deployment: str = ""  # deployment_info: traditional, hybrid, dbless; "" when the node does not say
    hostname: str = ""  # system_info.hostname, bounded (shown)

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
                f"a newer /licenses row not written by the keeper wins (id {shown(newest.get('id'))}, "
                f"gateway license expires {shown(report.expiration_date)})"
            )
        return DeliveryState.DRIFT, "the gateway runs an older /licenses row"
    return DeliveryState.DRIFT, f"{HIDDEN_BY_ENV} (gateway license expires {shown(report.expiration_date)})"


# --- KongLicense -----------------------------------------------------------------------------------------

KONGLICENSE_API = "configuration.konghq.com/v1alpha1"
# Which keeper installation a KongLicense belongs to: "<namespace>/<secret>" of the keeper that created it. The
# name is cluster-wide, so two installations configured with the same name would otherwise overwrite each other.
OWNER_ANNOTATION = "license-keeper.io/owner"
KONGLICENSE_ADOPT_ANNOTATION = "license-keeper.io/adopt"  # as on the Secret: an explicit hand-over
MANAGED_BY = ("app.kubernetes.io/managed-by", "license-keeper")


def konglicense_object(name: str, document: str, owner: str) -> dict[str, Any]:
    return {
        "apiVersion": KONGLICENSE_API,
        "kind": "KongLicense",
        "metadata": {
            "name": name,
            "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
            "annotations": {OWNER_ANNOTATION: owner},
        },
        "rawLicenseString": document,
        "enabled": True,
    }


def _labels(obj: dict[str, Any]) -> dict[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}


def konglicense_owner(obj: dict[str, Any]) -> str | None:
    value = _annotations(obj.get("metadata")).get(OWNER_ANNOTATION)
    return value if isinstance(value, str) else None


def konglicense_handed_over(obj: dict[str, Any]) -> bool:
    return str(_annotations(obj.get("metadata")).get(KONGLICENSE_ADOPT_ANNOTATION, "")).lower() == "true"


def konglicense_ours(obj: dict[str, Any], owner: str) -> bool:
    """Created by this installation (our owner), explicitly handed over, or created by a keeper before owners
    were recorded (our label, no owner yet: the first keeper to see it records itself)."""
    recorded = konglicense_owner(obj)
    if recorded is not None:
        return recorded == owner or konglicense_handed_over(obj)
    return konglicense_handed_over(obj) or _labels(obj).get(MANAGED_BY[0]) == MANAGED_BY[1]


def plan_konglicense(obj: dict[str, Any] | None, document: str, owner: str) -> dict[str, Any] | None:
    """ "create", a merge patch, or None: nothing to change, or the object is not ours (foreign: left alone)."""
    if obj is None:
        return {"create": True}
    if not konglicense_ours(obj, owner):
        return None
    patch: dict[str, Any] = {}
    if obj.get("rawLicenseString") != document:
        patch["rawLicenseString"] = document
    if obj.get("enabled", True) is not True:
        patch["enabled"] = True
    if patch and konglicense_owner(obj) != owner:
        patch["metadata"] = {"annotations": {OWNER_ANNOTATION: owner, KONGLICENSE_ADOPT_ANNOTATION: None}}
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
    owner: str | None = None,
) -> tuple[DeliveryState, str]:
    if obj is None:
        return DeliveryState.PENDING, "KongLicense not created yet"
    name = _meta(obj, "name")
    if owner is not None and not konglicense_ours(obj, owner):
        recorded = konglicense_owner(obj)
        return DeliveryState.DRIFT, (
            f"KongLicense {name} exists and is not managed by this keeper ("
            + (f"owner {shown(recorded)}" if recorded else "created by someone else")
            + f"): left alone; annotate it {KONGLICENSE_ADOPT_ANNOTATION}=true to hand it over, or choose another "
            "name"
        )
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
        why = shown(refused[0].get("reason")) or "NotProgrammed"
        return DeliveryState.DRIFT, f"KongLicense {name} is not Programmed (reason {why})"
    if wrote_at is not None and now - wrote_at < grace:
        return DeliveryState.PENDING, f"KongLicense {name}: no controller has reported Programmed yet"
    return DeliveryState.DRIFT, (
        f"KongLicense {name}: no controller reports Programmed (is KIC running with the KongLicense controller on?)"
    )


# --- rolling restart -------------------------------------------------------------------------------------


# The pods read the license from the Secret when they start (KONG_LICENSE_DATA from its key `license`), not
# from the keeper's memory: a restart target rolls for what the Secret holds, read back every round.
SECRET_LICENSE_KEY = "license"


def secret_license(data: Mapping[str, bytes], key: str = SECRET_LICENSE_KEY) -> License | None:
    """The license a pod starting now would get from the Secret's ``key``; None if it holds none that parses."""
    raw = data.get(key)
    if not raw:
        return None
    try:
        return parse_license(raw.decode("utf-8"))
    except (UnicodeDecodeError, LicenseError):
        return None


LICENSE_ENV = "KONG_LICENSE_DATA"


def _annotations(metadata: dict[str, Any] | None) -> dict[str, Any]:
    return (metadata or {}).get("annotations") or {}


def _template(workload: dict[str, Any]) -> dict[str, Any]:
    return (workload.get("spec") or {}).get("template") or {}


def template_fingerprint(workload: dict[str, Any]) -> str | None:
    return _annotations(_template(workload).get("metadata")).get(FINGERPRINT_ANNOTATION)


def adopted_fingerprint(workload: dict[str, Any]) -> str | None:
    return _annotations(workload.get("metadata")).get(ADOPTED_ANNOTATION)


def recorded_fingerprint(workload: dict[str, Any]) -> str | None:
    """The license the pods were last started with, as recorded: the pod template's (rolled for it), else the
    workload's adoption (they already ran it when the target first looked)."""
    return template_fingerprint(workload) or adopted_fingerprint(workload)


def _license_env(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in container.get("env") or [] if isinstance(e, dict) and e.get("name") == LICENSE_ENV]


def _from_secret_key(env: dict[str, Any], secret: str) -> bool:
    ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
    return ref.get("name") == secret and ref.get("key") == SECRET_LICENSE_KEY


def reads_license_from(workload: dict[str, Any], secret: str) -> bool:
    """Every container that sets KONG_LICENSE_DATA takes it from the Secret's key `license`, and one does:
    then a pod runs whatever the Secret held when it started."""
    pod = _template(workload).get("spec") or {}
    containers = [c for c in (pod.get("initContainers") or []) + (pod.get("containers") or []) if isinstance(c, dict)]
    envs = [e for c in containers for e in _license_env(c)]
    return bool(envs) and all(_from_secret_key(e, secret) for e in envs)


def adoptable(workload: dict[str, Any], secret: str) -> bool:
    """Nothing recorded yet, and the pods read the license from the Secret: they run what it holds, so turning
    the target on must not roll them. (A pod started before the Secret last changed and never restarted since
    is the one case this misjudges: the gateway-mismatch alert tells, one manual restart fixes it.)"""
    return recorded_fingerprint(workload) is None and reads_license_from(workload, secret)


def is_paused(workload: dict[str, Any]) -> bool:
    return bool((workload.get("spec") or {}).get("paused"))


def restart_patch(fingerprint: str, *, drop_adopted: bool = False) -> dict[str, Any]:
    patch: dict[str, Any] = {"spec": {"template": {"metadata": {"annotations": {FINGERPRINT_ANNOTATION: fingerprint}}}}}
    if drop_adopted:  # the template records it from now on; a stale adoption would only mislead a reader
        patch["metadata"] = {"annotations": {ADOPTED_ANNOTATION: None}}
    return patch


def adopt_patch(fingerprint: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {ADOPTED_ANNOTATION: fingerprint}}}


@dataclass(frozen=True)
class RestartPlan:
    patch: dict[str, Any]  # a merge patch of the workload
    adopt: bool  # only record what the pods already run (no pod restarts); else roll them


def plan_restart(workload: dict[str, Any], in_secret: str | None, secret: str) -> RestartPlan | None:
    """Roll the pods for ``in_secret`` (the fingerprint of what Secret ``secret`` holds) or adopt it, or
    nothing: the Secret holds no license, it is what they were last started with, or paused (refused).

    Adoption is recorded even while paused: it restarts nothing, and left unrecorded a later change of the
    Secret would be adopted too instead of rolled.
    """
    if in_secret is None:
        return None
    if adoptable(workload, secret):
        return RestartPlan(adopt_patch(in_secret), adopt=True)
    if recorded_fingerprint(workload) == in_secret or is_paused(workload):
        return None
    return RestartPlan(restart_patch(in_secret, drop_adopted=adopted_fingerprint(workload) is not None), adopt=False)


# Whether a rollout is over, judged as `kubectl rollout status` judges it (kubectl's
# pkg/polymorphichelpers/rollout_status.go): "updated" counts alone are not enough, because a Deployment
# reports every replica updated while old pods still run and before any new pod is available.


@dataclass(frozen=True)
class RolloutStatus:
    done: bool  # every pod the rollout may replace runs the current template, as kubectl would say
    why: str  # for the report: what is left to do, or what was done
    stuck: bool = False  # it will not finish by itself (kubectl reports these as errors)


def _count(obj: dict[str, Any], section: str, key: str, default: int = 0) -> int:
    """An integer field as Go reads it (absent: the zero value, or the API server's default)."""
    value = (obj.get(section) or {}).get(key)
    return default if value is None else _int(value)


def _update_strategy(workload: dict[str, Any]) -> dict[str, Any]:
    return (workload.get("spec") or {}).get("updateStrategy") or {}


def generation_observed(workload: dict[str, Any]) -> bool:
    """The controller has seen the latest spec. A missing generation counts as 1 (the API server always sets
    one) and a missing observedGeneration as 0, so an object no controller has looked at is never done."""
    return _count(workload, "status", "observedGeneration") >= _count(workload, "metadata", "generation", 1)


def progress_deadline_exceeded(workload: dict[str, Any]) -> bool:
    """The Deployment controller gave up waiting for progress (spec.progressDeadlineSeconds)."""
    conditions = (workload.get("status") or {}).get("conditions") or []
    return any(
        isinstance(c, dict) and c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in conditions
    )


def rolls_on_template_change(workload: dict[str, Any]) -> bool:
    """StatefulSets and DaemonSets with updateStrategy OnDelete replace a pod only when it is deleted."""
    if workload.get("kind") not in ("StatefulSet", "DaemonSet"):
        return True
    return _update_strategy(workload).get("type", "RollingUpdate") == "RollingUpdate"


def statefulset_partition(workload: dict[str, Any]) -> int | None:
    """The rollingUpdate partition (ordinals below it are not updated); None without rollingUpdate.

    The API server defaults a missing partition to 0 whenever rollingUpdate is given.
    """
    rolling = _update_strategy(workload).get("rollingUpdate")
    return _int(rolling.get("partition")) if isinstance(rolling, dict) else None


def _deployment_status(workload: dict[str, Any]) -> RolloutStatus:
    if progress_deadline_exceeded(workload):
        return RolloutStatus(False, "exceeded its progress deadline (ProgressDeadlineExceeded)", stuck=True)
    replicas = _count(workload, "spec", "replicas", 1)
    updated = _count(workload, "status", "updatedReplicas")
    running = _count(workload, "status", "replicas")
    available = _count(workload, "status", "availableReplicas")
    if updated < replicas:
        return RolloutStatus(False, f"rolling out ({updated}/{replicas} updated)")
    if running > updated:
        return RolloutStatus(False, f"rolling out ({running - updated} old pods still running)")
    if available < updated:
        return RolloutStatus(False, f"rolling out ({available}/{updated} updated pods available)")
    return RolloutStatus(True, f"rolled out ({updated} updated pods available, no old pods left)")


def _statefulset_status(workload: dict[str, Any]) -> RolloutStatus:
    replicas = _count(workload, "spec", "replicas", 1)
    ready = _count(workload, "status", "readyReplicas")
    updated = _count(workload, "status", "updatedReplicas")
    if ready < replicas:
        return RolloutStatus(False, f"rolling out ({ready}/{replicas} pods ready)")
    partition = statefulset_partition(workload)
    if partition is not None:
        # kubectl: done once every ordinal at or above the partition is updated (the rest is held back)
        due = max(replicas - partition, 0)
        if updated < due:
            return RolloutStatus(False, f"rolling out ({updated}/{due} updated)")
        return RolloutStatus(True, f"rolled out ({updated} updated pods, all ready)")
    status = workload.get("status") or {}
    if status.get("updateRevision") != status.get("currentRevision"):
        return RolloutStatus(False, f"rolling out ({updated}/{replicas} updated)")
    return RolloutStatus(True, f"rolled out ({replicas} pods at the current revision, all ready)")


def _daemonset_status(workload: dict[str, Any]) -> RolloutStatus:
    desired = _count(workload, "status", "desiredNumberScheduled")
    updated = _count(workload, "status", "updatedNumberScheduled")
    available = _count(workload, "status", "numberAvailable")
    if updated < desired:
        return RolloutStatus(False, f"rolling out ({updated}/{desired} updated)")
    if available < desired:
        return RolloutStatus(False, f"rolling out ({available}/{desired} updated pods available)")
    return RolloutStatus(True, f"rolled out ({updated} updated pods available)")


def rollout_status(workload: dict[str, Any]) -> RolloutStatus:
    """Deployment, StatefulSet or DaemonSet, each by its own `kubectl rollout status` rules."""
    if not rolls_on_template_change(workload):
        return RolloutStatus(False, "uses updateStrategy OnDelete: pods restart only when deleted", stuck=True)
    if not generation_observed(workload):
        return RolloutStatus(False, "waiting for its controller to observe the latest change")
    kind = workload.get("kind")
    if kind == "StatefulSet":
        return _statefulset_status(workload)
    if kind == "DaemonSet":
        return _daemonset_status(workload)
    return _deployment_status(workload)


def rollout_finished(workload: dict[str, Any]) -> bool:
    return rollout_status(workload).done


def held_back_by_partition(workload: dict[str, Any]) -> int:
    """StatefulSet pods a rollingUpdate partition keeps on their old template (the ordinals below it)."""
    partition = statefulset_partition(workload) if workload.get("kind") == "StatefulSet" else None
    return min(partition or 0, _count(workload, "spec", "replicas", 1))


def _license_words(lic: License) -> str:
    return f"license {lic.fingerprint} (expires {lic.expiration_date.isoformat()})"


def diagnose_rollout(
    workload: dict[str, Any] | None, in_secret: License | None, held: License, label: str, *, secret: str
) -> tuple[DeliveryState, str]:
    """What the workload's pods run, judged from what the Secret holds (``in_secret``): only the held license
    in the Secret, the template rolled for it and a finished rollout make ``delivered``."""
    if workload is None:
        return DeliveryState.ERROR, f"{label} does not exist"
    if in_secret is None:
        return DeliveryState.DRIFT, (
            f"Secret {secret} holds no valid license (key {SECRET_LICENSE_KEY}): new pods of {label} start without "
            f"the held {_license_words(held)}; not restarted"
        )
    if in_secret.fingerprint != held.fingerprint:
        # the keeper's write of the held license failed or was refused (immutable, foreign, an API error)
        return DeliveryState.DRIFT, (
            f"Secret {secret} holds {_license_words(in_secret)}, not the held {_license_words(held)}: "
            f"{label} is rolled only for what the Secret holds (see the Secret's state in license-keeper status)"
        )
    carries = recorded_fingerprint(workload) == in_secret.fingerprint
    status = rollout_status(workload)
    if is_paused(workload) and not (carries and status.done):
        return DeliveryState.DRIFT, f"{label} is paused: not restarted (kubectl rollout resume, then it rolls)"
    if not carries:
        return (
            DeliveryState.PENDING,
            f"{label} pod template not rolled for (nor adopted with) the Secret's {_license_words(in_secret)} yet",
        )
    if status.stuck:
        return DeliveryState.DRIFT, f"{label} {status.why}"
    if not status.done:
        return DeliveryState.PENDING, f"{label} {status.why}"
    held_back = held_back_by_partition(workload)
    if held_back:
        # kubectl calls a partitioned rollout complete, but those pods still run the license they started with
        return DeliveryState.DRIFT, (
            f"{label} rolled out above its rollingUpdate partition; {held_back} pods below it keep their license "
            "until the partition is lowered"
        )
    how = "rolled for it" if template_fingerprint(workload) else "adopted: they read it from the Secret, not restarted"
    return DeliveryState.DELIVERED, (
        f"{label} runs pods started with the held {_license_words(held)}, which Secret {secret} holds ({how})"
    )
