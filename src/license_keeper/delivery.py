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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .license import License, LicenseError, parse_license

__all__ = [
    "ADOPTED_ANNOTATION",
    "DEFAULT_GRACE_SECONDS",
    "DELIVERY_STATES",
    "FINGERPRINT_ANNOTATION",
    "POD_STATES",
    "AdminUrl",
    "DeliveryState",
    "GatewayPod",
    "PodReport",
    "PodState",
    "ReportedLicense",
    "RestartPlan",
    "TargetReport",
    "TargetSpec",
    "diagnose_admin",
    "diagnose_konglicense",
    "diagnose_pod",
    "diagnose_rollout",
    "konglicense_object",
    "konglicense_winner",
    "license_row_id",
    "newest_row",
    "next_pod_report",
    "oldest_behind",
    "parse_admin_url",
    "parse_target",
    "plan_admin",
    "plan_konglicense",
    "plan_restart",
    "pod_counts",
    "pod_takes_writes",
    "pods_staying_in_drift",
    "rollout_finished",
    "rollout_status",
    "secret_license",
    "service_dns_name",
    "service_pods",
    "shown",
    "summarize_pods",
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
    pods: tuple[PodReport, ...] = ()  # admin-svc: one per gateway pod found, by name


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
    kind: str  # "admin-api" | "admin-svc" | "konglicense" | "restart"
    value: str  # the URL, "<namespace>/<service>[:port-name]", the KongLicense name, or "deployment/<name>"

    @property
    def label(self) -> str:
        """The metric label and the name in logs: the spec as given (no credentials can be in it)."""
        return f"{self.kind}={self.value}"

    @property
    def workload(self) -> tuple[str, str]:
        kind, _, name = self.value.partition("/")
        return kind, name

    @property
    def service(self) -> tuple[str, str, str | None]:
        """admin-svc: (namespace, service, port name or None)."""
        namespace, _, rest = self.value.partition("/")
        name, _, port = rest.partition(":")
        return namespace, name, port or None


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")  # IANA_SVC_NAME, as Service ports are named


def _admin_service(value: str) -> str:
    namespace, slash, rest = value.partition("/")
    name, colon, port = rest.partition(":")
    if not slash or not _DNS_LABEL.match(namespace) or not _DNS_LABEL.match(name):
        raise ValueError(f"admin-svc needs <namespace>/<service>[:port-name], got {value!r}")
    if colon and not _PORT_NAME.match(port):
        raise ValueError(f"admin-svc port must be the Service port's name (e.g. admin-tls), got {port!r}")
    return value


def parse_target(text: str) -> TargetSpec:
    """``admin-api=https://host:8444``, ``admin-svc=<namespace>/<service>[:port-name]``, ``konglicense=<name>``,
    ``restart=deployment/<name>``; ValueError else."""
    kind, sep, value = text.strip().partition("=")
    kind, value = kind.strip().lower(), value.strip()
    if not sep or not value:
        raise ValueError(
            f"not a delivery target: {text!r} "
            "(use admin-api=URL, admin-svc=NAMESPACE/SERVICE[:PORT], konglicense=NAME or restart=KIND/NAME)"
        )
    if kind == "admin-api":
        return TargetSpec(kind, _admin_url(value))
    if kind == "admin-svc":
        return TargetSpec(kind, _admin_service(value))
    if kind == "konglicense":
        if not _DNS_NAME.match(value):
            raise ValueError(f"konglicense name must be a lowercase DNS name, got {value!r}")
        return TargetSpec(kind, value)
    if kind == "restart":
        wkind, _, name = value.partition("/")
        if wkind.lower() not in RESTART_KINDS or not _DNS_NAME.match(name):
            raise ValueError(f"restart target must be deployment/<name> or statefulset/<name>, got {value!r}")
        return TargetSpec(kind, f"{wkind.lower()}/{name}")
    raise ValueError(f"unknown delivery target kind {kind!r} (admin-api, admin-svc, konglicense, restart)")


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


# --- admin Service discovery: every gateway pod, and what each runs -----------------------------------------
#
# ``admin-svc=<namespace>/<service>[:port-name]`` names the gateways by their admin Service: one entry per ready
# endpoint (pod) of its EndpointSlices (discovery.k8s.io/v1), as Kong Ingress Controller finds them with
# --kong-admin-svc. Reads go to every pod; a /licenses write goes to one pod per database (any DB-backed pod, a
# hybrid control plane), never to a DB-less pod or a data plane.

# KIC's default --kong-admin-svc-port-names, then the Kong chart's plain admin port names.
DEFAULT_ADMIN_PORT_NAMES = ("admin-tls", "kong-admin-tls", "admin", "kong-admin")
_TLS_APP_PROTOCOLS = ("https", "kubernetes.io/https", "kubernetes.io/wss", "wss")
_PLAIN_APP_PROTOCOLS = ("http", "kubernetes.io/http", "kubernetes.io/h2c", "ws", "kubernetes.io/ws")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class GatewayPod:
    """One ready endpoint of the admin Service: a gateway pod's Admin API."""

    name: str  # the pod's name (targetRef), else its address and port
    address: str  # an IPv4 or IPv6 address
    port: int
    tls: bool  # from the port's appProtocol, else its name

    @property
    def url(self) -> AdminUrl:
        return AdminUrl("https" if self.tls else "http", self.address.lower(), self.port)


def slice_port(endpoint_slice: dict[str, Any], port_name: str | None) -> dict[str, Any] | None:
    """The slice's port for the Admin API: the named one; unnamed, the only one, else a usual admin name."""
    ports = [p for p in endpoint_slice.get("ports") or [] if isinstance(p, dict) and _int(p.get("port"))]
    if port_name is not None:
        return next((p for p in ports if p.get("name") == port_name), None)
    if len(ports) == 1:
        return ports[0]
    by_name = {p.get("name"): p for p in ports}
    return next((by_name[n] for n in DEFAULT_ADMIN_PORT_NAMES if n in by_name), None)


def port_is_tls(port: dict[str, Any]) -> bool:
    """https by appProtocol when the Service sets one, else by name: admin-tls, kong-admin-tls, *https*."""
    protocol = str(port.get("appProtocol") or "").lower()
    if protocol in _TLS_APP_PROTOCOLS:
        return True
    if protocol in _PLAIN_APP_PROTOCOLS:
        return False
    name = str(port.get("name") or "").lower()
    return "tls" in name or "https" in name


def endpoint_ready(endpoint: dict[str, Any]) -> bool:
    """Ready as EndpointSlice consumers must read it: an unset ``ready`` counts as ready, and a terminating
    pod is not ready (the endpoint controller sets ready false for it)."""
    conditions = endpoint.get("conditions") or {}
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def _pod_name(endpoint: dict[str, Any], address: str, port: int) -> str:
    ref = endpoint.get("targetRef") or {}
    if ref.get("kind") == "Pod" and isinstance(ref.get("name"), str) and ref["name"]:
        return shown(ref["name"], 253)
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def service_pods(slices: Iterable[dict[str, Any]], port_name: str | None) -> list[GatewayPod]:
    """Every ready endpoint of the Service's EndpointSlices, once each (a pod may be listed in two slices
    while they are rewritten), sorted by name."""
    found: dict[tuple[str, int], GatewayPod] = {}
    for endpoint_slice in slices:
        if endpoint_slice.get("addressType") not in ("IPv4", "IPv6"):
            continue
        port = slice_port(endpoint_slice, port_name)
        if port is None:
            continue
        number, tls = _int(port.get("port")), port_is_tls(port)
        for endpoint in endpoint_slice.get("endpoints") or []:
            addresses = endpoint.get("addresses") if isinstance(endpoint, dict) else None
            if not addresses or not isinstance(addresses[0], str) or not endpoint_ready(endpoint):
                continue
            address = addresses[0]  # consumers use the first (the API allows only one today)
            found.setdefault((address, number), GatewayPod(_pod_name(endpoint, address, number), address, number, tls))
    return sorted(found.values(), key=lambda p: (p.name, p.address, p.port))


def service_dns_name(namespace: str, service: str) -> str:
    """The name a pod's certificate is verified against when the pod is reached at its address (KIC: the
    admin Service's DNS name, as a certificate issued for the Service holds it)."""
    return f"{service}.{namespace}.svc"


class PodState(enum.StrEnum):
    DELIVERED = "delivered"  # the pod reports the held license
    PENDING = "pending"  # not yet: a write or a new held license within the grace period
    DRIFT = "drift"  # it runs something else, and the reason says why
    UNREACHABLE = "unreachable"  # its Admin API did not answer as Kong (transport, TLS, auth, bad answer)


POD_STATES = tuple(s.value for s in PodState)
# Worst first when a target sums its pods up: what is known to be wrong outranks what cannot be told.
_POD_SEVERITY = {PodState.DELIVERED: 0, PodState.PENDING: 1, PodState.UNREACHABLE: 2, PodState.DRIFT: 3}
_AS_TARGET_STATE = {
    PodState.DELIVERED: DeliveryState.DELIVERED,
    PodState.PENDING: DeliveryState.PENDING,
    PodState.DRIFT: DeliveryState.DRIFT,
    PodState.UNREACHABLE: DeliveryState.ERROR,
}


@dataclass(frozen=True)
class PodReport:
    pod: str
    address: str  # host:port
    state: PodState
    reason: str
    since: float  # wall clock: when the pod entered this state
    rounds: int = 1  # consecutive rounds in this state
    behind_since: float | None = None  # wall clock: since when it has not run the held license (None: it does)


def next_pod_report(previous: PodReport | None, pod: GatewayPod, state: PodState, reason: str, now: float) -> PodReport:
    """This round's report of ``pod``, carrying over since when it has been in its state and behind."""
    same = previous is not None and previous.state is state
    behind: float | None = None
    if state is not PodState.DELIVERED:
        kept = previous.behind_since if previous is not None else None
        behind = kept if kept is not None else now
    return PodReport(
        pod=pod.name,
        address=pod.url.netloc,
        state=state,
        reason=reason,
        since=previous.since if same and previous is not None else now,
        rounds=previous.rounds + 1 if same and previous is not None else 1,
        behind_since=behind,
    )


def pod_takes_writes(report: ReportedLicense, configuration: tuple[str, str] | None) -> bool | None:
    """Whether a /licenses write on this pod reaches its gateways: a DB-backed node (traditional) or a hybrid
    control plane. False for DB-less pods and data planes (never written); None: ask ``GET /`` (its
    ``configuration``: (database, role)) first."""
    if report.deployment == "traditional":
        return True
    if report.deployment == "dbless":
        return False
    if configuration is None:
        return None
    database, role = configuration
    return database not in ("off", "") and role != "data_plane"


def _age(now: float, since: float) -> str:
    return f"{max(0.0, now - since):.0f} s"


def diagnose_pod(
    held: License,
    report: ReportedLicense,
    *,
    rows: list[dict[str, Any]] | None,
    our_id: str,
    wrote_at: float | None,
    held_since: float,
    now: float,
    grace: float = DEFAULT_GRACE_SECONDS,
) -> tuple[PodState, str]:
    """What one pod runs, against the held license. ``rows`` are the /licenses rows of its database (None for
    DB-less pods and data planes, which have none to read); ``held_since`` is when the held license became
    the one to deliver, so a pod a restart target has not rolled yet is pending, not drift, for ``grace``."""
    expires = held.expiration_date.isoformat()
    if runs_license(report, held):
        return PodState.DELIVERED, f"runs the held license (expires {expires})"
    if now - held_since < grace:
        return PodState.PENDING, f"runs another license; the held one is {_age(now, held_since)} new"
    if report.deployment == "hybrid" and rows is None:
        return PodState.DRIFT, (
            f"runs another license (expires {shown(report.expiration_date)}), not the held one (expires {expires}): "
            "a data plane runs what its control plane sends; is the control plane's target delivered?"
        )
    if report.deployment == "dbless" or rows is None:
        if report.unlicensed:
            return PodState.DRIFT, "runs no license (KONG_LICENSE_DATA empty or not set)"
        return PodState.DRIFT, (
            f"runs one from KONG_LICENSE_DATA (expires {shown(report.expiration_date)}), not the held one "
            f"(expires {expires}): a DB-less pod reads the Secret at start only; restart it (a restart target "
            "rolls them)"
        )
    state, reason = diagnose_admin(held, rows, report, our_id, wrote_at=wrote_at, now=now, grace=grace)
    return (PodState.PENDING if state is DeliveryState.PENDING else PodState.DRIFT), reason


def worst_pod_state(pods: Iterable[PodReport]) -> PodState:
    return max((p.state for p in pods), key=lambda s: _POD_SEVERITY[s], default=PodState.DELIVERED)


def pod_counts(pods: Iterable[PodReport]) -> dict[str, int]:
    counts = dict.fromkeys(POD_STATES, 0)
    for pod in pods:
        counts[pod.state.value] += 1
    return counts


POD_REASONS_SHOWN = 3


def summarize_pods(pods: list[PodReport], service: str) -> tuple[DeliveryState, str]:
    """The target's state (the worst pod's) and one line with counts and the pods that are behind."""
    if not pods:
        return DeliveryState.PENDING, f"no ready gateway pods behind Service {service}"
    running = sum(1 for p in pods if p.state is PodState.DELIVERED)
    head = f"{running} of {len(pods)} gateway pods run the held license"
    behind = sorted((p for p in pods if p.state is not PodState.DELIVERED), key=lambda p: -_POD_SEVERITY[p.state])
    parts = [head, *(f"{p.pod}: {p.state.value}: {p.reason}" for p in behind[:POD_REASONS_SHOWN])]
    if len(behind) > POD_REASONS_SHOWN:
        parts.append(f"and {len(behind) - POD_REASONS_SHOWN} more")
    return _AS_TARGET_STATE[worst_pod_state(pods)], "; ".join(parts)


def oldest_behind(pods: Iterable[PodReport], now: float) -> float:
    """Seconds the pod longest off the held license has been so (0 when every pod runs it)."""
    return max((now - p.behind_since for p in pods if p.behind_since is not None), default=0.0)


def pods_staying_in_drift(previous: TargetReport | None, report: TargetReport, stay: float) -> list[PodReport]:
    """Pods that have now been in drift for ``stay`` seconds, and were not yet at the previous report: one
    Event each, once per episode (a pod that leaves drift and comes back is a new episode)."""
    before = {p.pod: p for p in previous.pods} if previous is not None else {}
    out = []
    for pod in report.pods:
        if pod.state is not PodState.DRIFT or report.at - pod.since < stay:
            continue
        prev = before.get(pod.pod)
        told = (
            previous is not None
            and prev is not None
            and prev.state is PodState.DRIFT
            and prev.since == pod.since
            and previous.at - prev.since >= stay
        )
        if not told:
            out.append(pod)
    return out
