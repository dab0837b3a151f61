"""The seeded fault soak: three keeper replicas, each behind its own fault proxy, a scripted Konnect,
an admin adversary and process faults, judged by invariants against the API server's audit log.

Everything here is synchronous and runs in the test's thread; the Konnect stand-in runs in its own
thread and event loop, each fault proxy in its own, and the keepers are real processes. Each replica
has its own ServiceAccount (license-keeper-0/1/2, identical rules) so the audit log names the replica
that made each request; the replica's Lease identity is its POD_NAME (keeper-0/1/2).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import random
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from license_keeper.license import LicenseRecord
from license_keeper.policy import (
    MANAGED_BY_LABEL,
    SecretSnapshot,
    desired_secret,
    is_better,
    rank,
)
from license_keeper.testing.controlplane import AuditEntry, AuditTail, ControlPlane
from license_keeper.testing.faultproxy import FaultProxy
from license_keeper.testing.keeper import KeeperProcess, KonnectEndpoint, keeper_rules
from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.licenses import leaks, make_record

from .schedule import REPLICAS, Step, plan

SECRET = "kong-license"
LEASE = "kong-license-keeper"
UTC = datetime.UTC

# Short timings so a step is a second or two; the ratios are the defaults' (15/10/2).
KEEPER_FLAGS = (
    "--polling-period=1s",
    "--initial-polling-period=1s",
    "--leader-elect-lease-duration=4s",
    "--leader-elect-renew-deadline=3s",
    "--leader-elect-retry-period=500ms",
    "--konnect-timeout=3s",
    "--resync-period=5s",  # /healthz then fails after 15 s without a fresh view: invariant 7 gets windows
)
LEASE_SECONDS = 4.0


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Limits:
    repair: float = 10.0  # invariant 5
    ready: float = 5.0  # invariant 6
    boot: float = 30.0  # process start until its probe port answers (interpreter start on a loaded machine)
    converge: float = 60.0  # invariant 9
    settle: float = 5.0  # a path counts as "up" once it has been up this long (watch reconnect)
    # After a stall heals, requests sent during it stay unanswered (a black hole never answers): the path
    # counts as up only once the keeper's own request timeout (30 s) has had time to end them.
    stall_grace: float = 35.0
    # Requests per second a replica may send while every answer is an error: lease retries every 0.5 s,
    # a watch and a re-read with backoff stay far below; ~25/s is the reconnect storm of issue 9 #2.
    error_rate: float = 12.0
    stale: float = 25.0  # invariant 7: a view older than this must show in /healthz (3 x 5 s re-read + slack)
    dwell: float = 0.5  # each step's pause after its action

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            repair=_env_float("SOAK_REPAIR_LIMIT", 10.0),
            ready=_env_float("SOAK_READY_LIMIT", 5.0),
            settle=_env_float("SOAK_SETTLE", 5.0),
            stall_grace=_env_float("SOAK_STALL_GRACE", 35.0),
            stale=_env_float("SOAK_STALE_LIMIT", 25.0),
            dwell=_env_float("SOAK_DWELL", 0.5),
        )


class Violation(AssertionError):
    def __init__(self, invariant: int, detail: str) -> None:
        super().__init__(f"invariant {invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(UTC)


# --- plumbing ---------------------------------------------------------------------------------------------


class ThreadLoop:
    """An event loop in a thread, for the async Konnect stand-in under a synchronous driver."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="soak-konnect", daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class ScriptedKonnect(KonnectStandIn):
    """The stand-in, recording each license it actually served (the keeper got a 200 with it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.served: list[tuple[datetime.datetime, LicenseRecord]] = []

    def _license_body(self, record: LicenseRecord) -> dict[str, Any]:
        self.served.append((now_utc(), record))
        return super()._license_body(record)


def snapshot_of(obj: dict[str, Any] | None) -> SecretSnapshot:
    if obj is None:
        return SecretSnapshot.missing()
    meta = obj.get("metadata") or {}
    data = {k: base64.b64decode(v or "") for k, v in (obj.get("data") or {}).items()}
    return SecretSnapshot(
        exists=True,
        data=data,
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        immutable=bool(obj.get("immutable")),
        resource_version=meta.get("resourceVersion"),
        uid=meta.get("uid"),
    )


def key_record(s: SecretSnapshot, key: str) -> LicenseRecord | None:
    """The license one key of the Secret holds (``payload`` or ``license``), with the Secret's id/updated_at."""
    if not s.exists or not s.data.get(key):
        return None
    try:
        document = s.data[key].decode("utf-8")
        updated = s.data.get("updated_at", b"0").decode("ascii").strip()
        updated_at = int(updated) if updated.isdigit() and len(updated) <= 20 else 0
    except UnicodeDecodeError:
        return LicenseRecord(document="", id="", updated_at=0, source=key)
    return LicenseRecord(
        document=document, id=s.data.get("id", b"").decode("utf-8", "replace"), updated_at=updated_at, source=key
    )


def fingerprint(record: LicenseRecord | None) -> str | None:
    lic = record.license if record is not None else None
    return lic.fingerprint if lic is not None else None


@dataclass(frozen=True)
class Version:
    """One state of the Secret as the admin watch saw it."""

    seen: datetime.datetime
    type: str  # ADDED, MODIFIED, DELETED, LIST (after a (re)list), GAP (a relist may have skipped versions)
    snapshot: SecretSnapshot

    @property
    def rv(self) -> str | None:
        return self.snapshot.resource_version


class SecretHistory:
    """Every version of the Secret, from an admin watch straight to the API server (not via proxies)."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.namespace = namespace
        self.versions: list[Version] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = ssl.create_default_context(cafile=str(cp.ca_file))
        self._thread = threading.Thread(target=self._run, name="soak-history", daemon=True)

    def start(self) -> SecretHistory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def latest(self) -> Version | None:
        with self._lock:
            return self.versions[-1] if self.versions else None

    def _add(self, kind: str, snap: SecretSnapshot) -> None:
        with self._lock:
            last = self.versions[-1] if self.versions else None
            if (
                kind == "LIST"
                and last is not None
                and last.rv == snap.resource_version
                and last.snapshot.exists == snap.exists
            ):
                return  # a relist that found nothing new
            self.versions.append(Version(now_utc(), kind, snap))

    def _open(self, query: str, timeout: float) -> Any:
        base = f"{self.cp.server}/api/v1/namespaces/{self.namespace}/secrets"
        req = urllib.request.Request(f"{base}?fieldSelector=metadata.name%3D{SECRET}{query}")
        req.add_header("Authorization", f"Bearer {self.cp.admin_token}")
        return urllib.request.urlopen(req, context=self._ctx, timeout=timeout)

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    with self._open("", 5) as r:
                        listing = json.load(r)
                    rv = listing["metadata"]["resourceVersion"]
                    items = listing.get("items") or []
                    kind = "LIST" if not self.versions else "GAP"
                    self._add(kind, snapshot_of(items[0] if items else None))
                with self._open(
                    f"&watch=true&resourceVersion={rv}&timeoutSeconds=20&allowWatchBookmarks=true", 30
                ) as r:
                    for line in r:
                        if self._stop.is_set():
                            return
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event["type"] == "ERROR":
                            rv = None if obj.get("code") == 410 else rv
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                        if event["type"] == "BOOKMARK":
                            continue
                        self._add(
                            event["type"], SecretSnapshot.missing() if event["type"] == "DELETED" else snapshot_of(obj)
                        )
            except (OSError, ValueError, KeyError, urllib.error.URLError):
                # API server restart: resume from the last resourceVersion; a relist marks a possible gap.
                time.sleep(0.3)


# --- the license script -----------------------------------------------------------------------------------


class Licenses:
    """The licenses of one run: a ladder of ever better ones, and worse ones to tempt the keeper."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.today = now_utc().date()
        self.base = int(time.time()) - 200_000  # updated_at values stay in the past
        self.top = self.base
        self.rungs = 0
        self.all: dict[str, LicenseRecord] = {}  # fingerprint -> record, for reading metrics
        self.ladder: list[LicenseRecord] = []

    def _keep(self, record: LicenseRecord) -> LicenseRecord:
        fp = fingerprint(record)
        if fp is not None:
            self.all.setdefault(fp, record)
        return record

    def _days(self, n: int) -> datetime.date:
        return self.today + datetime.timedelta(days=n)

    def newer(self) -> LicenseRecord:
        self.rungs += 1
        self.top += 100
        record = self._keep(make_record(updated_at=self.top, expiration_date=self._days(100 + self.rungs)))
        self.ladder.append(record)
        return record

    def older(self) -> LicenseRecord:
        return self._keep(
            make_record(updated_at=self.base - self.rng.randint(1, 10_000), expiration_date=self._days(50))
        )

    def expired(self) -> LicenseRecord:
        self.top += 1
        return self._keep(
            make_record(
                updated_at=self.top,
                creation_date=self._days(-400),
                expiration_date=self._days(-self.rng.randint(1, 30)),
            )
        )

    def invalid(self) -> LicenseRecord:
        self.top += 1
        return LicenseRecord(
            document='{"license": {"payload": "not a license"}}', id="bad", updated_at=self.top, source="konnect"
        )

    def reserve(self, record: LicenseRecord) -> LicenseRecord:
        """The same document and id served again with a newer updated_at (a better record by policy)."""
        self.top += 1
        return LicenseRecord(document=record.document, id=record.id, updated_at=self.top, source="konnect")

    def downgrade_of(self, current: LicenseRecord | None) -> LicenseRecord:
        """A valid license worse than ``current``: an earlier rung, or an older one."""
        worse = [r for r in self.ladder if current is None or rank(r, now_utc()) < rank(current, now_utc())]
        return self.rng.choice(worse) if worse else self.older()


# --- replicas ---------------------------------------------------------------------------------------------


@dataclass
class Replica:
    index: int
    name: str  # Lease identity (POD_NAME)
    username: str  # audit user (its own ServiceAccount)
    proxy: FaultProxy
    keeper: KeeperProcess
    down: bool = False  # stopped by the schedule
    path_up_since: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    heal_at: int | None = None  # step at which the proxy fault / downtime ends
    stalled: bool = False  # the current proxy fault leaves requests unanswered
    fault_started: tuple[float, int, str] | None = None  # (when, requests through the proxy so far, fault)
    exits: int = 0  # exits the schedule did not ask for (restarted as a kubelet would)
    unhealthy_in_a_row: int = 0

    @property
    def alive(self) -> bool:
        return self.keeper.proc is not None and self.keeper.proc.poll() is None

    @property
    def path_up(self) -> bool:
        return not self.proxy.rules

    def path_settled(self, settle: float) -> bool:
        return self.path_up and time.monotonic() - self.path_up_since >= settle


# --- the soak ---------------------------------------------------------------------------------------------


@dataclass
class Figures:
    seed: int
    steps: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    keeper_writes: int = 0
    justified: int = 0
    repair_times: list[float] = field(default_factory=list)
    error_answer_rates: list[float] = field(default_factory=list)
    ready_times: list[float] = field(default_factory=list)
    boot_times: list[float] = field(default_factory=list)
    convergence: float | None = None
    unplanned_exits: int = 0
    liveness_restarts: int = 0
    elapsed: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "steps": self.steps,
            "faults": dict(sorted(self.faults.items())),
            "checks": dict(sorted(self.checks.items())),
            "violations": self.violations,
            "keeper_writes": self.keeper_writes,
            "justified_writes": self.justified,
            "max_repair_s": round(max(self.repair_times), 2) if self.repair_times else None,
            "repairs_measured": len(self.repair_times),
            "max_ready_s": round(max(self.ready_times), 2) if self.ready_times else None,
            "max_requests_per_s_on_error_answers": (
                round(max(self.error_answer_rates), 1) if self.error_answer_rates else None
            ),
            "readiness_measured": len(self.ready_times),
            "max_boot_s": round(max(self.boot_times), 2) if self.boot_times else None,
            "convergence_s": round(self.convergence, 2) if self.convergence is not None else None,
            "unplanned_exits": self.unplanned_exits,
            "liveness_restarts": self.liveness_restarts,
            "elapsed_s": round(self.elapsed, 1),
        }


class Soak:
    def __init__(
        self,
        cp: ControlPlane,
        workdir: Path,
        seed: int,
        steps: int,
        *,
        limits: Limits | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cp = cp
        self.workdir = workdir
        self.seed = seed
        self.schedule = plan(seed, steps)
        self.limits = limits or Limits.from_env()
        self.log = log
        self.rng = random.Random(seed * 7919 + 1)  # license contents; independent of the schedule's stream
        self.namespace = f"soak-{seed}-{int(time.time()) % 100000}"
        self.figures = Figures(seed)
        self.licenses = Licenses(self.rng)
        self.replicas: list[Replica] = []
        self.step: Step | None = None
        self.entries: list[AuditEntry] = []
        self.audit = AuditTail(cp.audit_log)
        self.tokens: list[datetime.datetime] = []  # justifications for keeper writes (damage, better served)
        self.best_offered: LicenseRecord | None = None
        self.adversary_rvs: set[str] = set()
        self.hold: dict[str, int] = {}  # adversary holds (unlabel, immutable) and konnect mode -> heal step
        self.served_seen = 0
        self.versions_judged = 0
        self.apiserver_up_since = time.monotonic()
        self.konnect_record: LicenseRecord | None = None
        self._loop: ThreadLoop | None = None
        self.konnect: ScriptedKonnect | None = None
        self.history: SecretHistory | None = None
        self.t0 = time.monotonic()

    # --- setup and teardown ------------------------------------------------------------------------

    def setup(self) -> None:
        self.audit.read()  # judge only this run's entries
        self.cp.create_namespace(self.namespace)
        self._loop = ThreadLoop()
        first = self.licenses.newer()
        self.konnect_record = first
        self.konnect = ScriptedKonnect(tls_dir=self.workdir / "konnect-tls", record=first)
        self._loop.call(self.konnect.start())
        self.history = SecretHistory(self.cp, self.namespace).start()
        endpoint = KonnectEndpoint.of(self.konnect)
        for i in range(REPLICAS):
            sa = self.cp.service_account(self.namespace, f"license-keeper-{i}", keeper_rules(SECRET, LEASE))
            proxy = FaultProxy(
                self.cp.server, self.cp.ca_file, tls_dir=self.workdir / "proxy-tls", name=f"p{i}"
            ).start()
            kubeconfig = proxy.write_kubeconfig(
                self.workdir / f"keeper-{i}.kubeconfig", token=sa.token, user=sa.name, namespace=self.namespace
            )
            keeper = KeeperProcess(
                kubeconfig=kubeconfig,
                namespace=self.namespace,
                konnect=endpoint,
                workdir=self.workdir / "keepers",
                name=f"keeper-{i}",
                args=KEEPER_FLAGS,
            )
            self.replicas.append(Replica(i, keeper.name, sa.username, proxy, keeper))
        for r in self.replicas:
            self._start(r, measure=False)
        self._wait(lambda: self._good_secret(first), 30, "the first license stored")
        self._note_offered(first, None)

    def close(self) -> None:
        for r in self.replicas:
            r.keeper.kill()
            r.proxy.stop()
        if self.history is not None:
            self.history.stop()
        if self.konnect is not None and self._loop is not None:
            self._loop.call(self.konnect.stop())
        if self._loop is not None:
            self._loop.close()
        if not self.cp.etcd_running:
            self.cp.start_etcd()
        if not self.cp.apiserver_running:
            self.cp.start_apiserver()

    # --- running -------------------------------------------------------------------------------------

    def run(self) -> Figures:
        started = self.t0 = time.monotonic()
        try:
            self.setup()
            for step in self.schedule:
                self.step = step
                self._heal_due(step.index)
                self._apply(step)
                time.sleep(self.limits.dwell)
                self._supervise()
                self._check_continuous()
                self.figures.steps += 1
            self.step = None
            self._converge()
            self._check_final()
        except Violation as v:
            self.figures.violations.append(str(v))
            raise SoakFailure(self, v) from None
        finally:
            self.figures.elapsed = time.monotonic() - started
            self.close()
        return self.figures

    def _fault(self, key: str) -> None:
        self.figures.faults[key] += 1

    # --- the API as admin -----------------------------------------------------------------------------

    @property
    def secret_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"

    def read_secret(self) -> dict[str, Any] | None:
        resp = self.cp.request("GET", f"{self.secret_path}/{SECRET}")
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise OSError(f"GET secret: HTTP {resp.status}")
        return resp.body

    def _admin_write(self, method: str, path: str, body: dict[str, Any] | None, what: str) -> bool:
        try:
            resp = self.cp.request(method, path, body)
        except OSError as e:
            self.log(f"  adversary {what}: {type(e).__name__} (API server down?)")
            return False
        if resp.status >= 300:
            self.log(f"  adversary {what}: HTTP {resp.status}")
            return False
        rv = (resp.body.get("metadata") or {}).get("resourceVersion")
        if rv and method != "DELETE":
            self.adversary_rvs.add(rv)
        return True

    def _put_secret(self, obj: dict[str, Any], what: str) -> bool:
        obj = {k: v for k, v in obj.items() if k != "status"}
        obj["metadata"] = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
        return self._admin_write("PUT", f"{self.secret_path}/{SECRET}", obj, what)

    def _create_secret(
        self, data: dict[str, bytes], labels: dict[str, str], annotations: dict[str, str], what: str
    ) -> bool:
        body = {
            "metadata": {"name": SECRET, "labels": labels, "annotations": annotations},
            "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        return self._admin_write("POST", self.secret_path, body, what)

    def lease_holder(self) -> tuple[str | None, float]:
        """(holderIdentity, seconds since its renewTime) as the admin reads the Lease."""
        resp = self.cp.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{LEASE}")
        if resp.status != 200:
            return None, float("inf")
        spec = resp.body.get("spec") or {}
        renew = spec.get("renewTime")
        age = float("inf")
        if renew:
            age = (now_utc() - datetime.datetime.fromisoformat(renew.replace("Z", "+00:00"))).total_seconds()
        return spec.get("holderIdentity") or None, age

    # --- actions ---------------------------------------------------------------------------------------

    def _apply(self, step: Step) -> None:
        self.log(f"{time.monotonic() - self.t0:7.1f}s {step.describe()}")
        self._fault(f"{step.kind}:{step.arg}" if step.arg else step.kind)
        if step.kind == "konnect":
            self._konnect(step)
        elif step.kind == "adversary":
            self._adversary(step)
        elif step.kind == "proxy":
            self._proxy(step)
        elif step.kind == "process":
            self._process(step)
        elif step.kind == "apiserver":
            self.cp.stop_apiserver()
            time.sleep(0.5)
            self.cp.start_apiserver()
            self.apiserver_up_since = time.monotonic()
        elif step.kind == "etcd":
            self.cp.stop_etcd()
            time.sleep(0.5)
            self.cp.start_etcd()
            self.cp.wait_ready(60)
            self.apiserver_up_since = time.monotonic()

    def _konnect_mode(self, mode: str) -> None:
        assert self.konnect is not None and self._loop is not None
        self._loop.call(self.konnect.set_mode(mode))

    def _konnect(self, step: Step) -> None:
        assert self.konnect is not None
        arg = step.arg
        if arg in ("newer", "older", "expired", "invalid", "reserve", "not_found"):
            record: LicenseRecord | None
            if arg == "not_found":
                record = None
            elif arg == "reserve":
                record = self.licenses.reserve(self.best_offered or self.licenses.newer())
            else:
                record = getattr(self.licenses, arg)()
            self.konnect_record = record
            self.konnect.serve(record)
            return
        self._konnect_mode(arg)
        self.hold["konnect"] = step.index + step.hold

    def _adversary(self, step: Step) -> None:
        if "unlabel" in self.hold or "immutable" in self.hold:
            self.log("  (skipped: the Secret is handed away or immutable for now)")
            self._fault("adversary:skipped")
            return
        try:
            obj = self.read_secret()
        except OSError:
            obj = None
        before = snapshot_of(obj)
        arg = step.arg
        at = now_utc()
        done = False
        if arg == "delete":
            done = obj is not None and self._admin_write("DELETE", f"{self.secret_path}/{SECRET}", None, arg)
        elif arg in ("corrupt_payload", "corrupt_license") and obj is not None:
            key = arg.split("_")[1]
            obj.setdefault("data", {})[key] = base64.b64encode(
                b'{"license": "corrupt' + bytes([self.rng.randrange(256)]) + b'"}'
            ).decode()
            done = self._put_secret(obj, arg)
        elif arg in ("downgrade", "downgrade_payload"):
            current = key_record(before, "payload") or key_record(before, "license")
            older = self.licenses.downgrade_of(current if current is not None and current.valid else None)
            want = desired_secret(older)
            keys = ("payload", "id", "updated_at") if arg == "downgrade_payload" else tuple(want.data)
            if obj is None:
                done = self._create_secret(want.data, want.labels, {}, arg)
            else:
                for k in keys:
                    obj.setdefault("data", {})[k] = base64.b64encode(want.data[k]).decode()
                done = self._put_secret(obj, arg)
        elif arg == "restore_newer":
            record = self.licenses.newer()
            want = desired_secret(record)
            if obj is None:
                done = self._create_secret(want.data, want.labels, want.annotations, arg)
            else:
                obj["data"] = {
                    **(obj.get("data") or {}),
                    **{k: base64.b64encode(v).decode() for k, v in want.data.items()},
                }
                obj["metadata"]["labels"] = {**(obj["metadata"].get("labels") or {}), **want.labels}
                obj["metadata"]["annotations"] = {**(obj["metadata"].get("annotations") or {}), **want.annotations}
                done = self._put_secret(obj, arg)
            if done:
                self.tokens.append(at)
                self._note_offered(record, at)
            return
        elif arg == "unlabel" and obj is not None:
            obj["metadata"]["labels"] = {
                k: v for k, v in (obj["metadata"].get("labels") or {}).items() if k != MANAGED_BY_LABEL
            }
            if self._put_secret(obj, arg):
                self.hold["unlabel"] = step.index + step.hold
            return
        elif arg == "immutable" and obj is not None:
            obj["immutable"] = True
            if self._put_secret(obj, arg):
                self.hold["immutable"] = step.index + step.hold
            return
        if not done:
            self._fault("adversary:noop")
            return
        self.tokens.append(at)
        self._measure_repair(before, arg)

    def _proxy(self, step: Step) -> None:
        r = self.replicas[step.target or 0]
        p = r.proxy
        arg = step.arg
        r.fault_started = (time.monotonic(), sum(p.stats()["requests"].values()), arg)
        if arg == "cut":
            p.cut()
            return
        if arg == "cut_watch":
            p.set_mode("cut_after", bytes=0, watch=True)
            p.cut()
        elif arg == "cut_after":
            p.set_mode("cut_after", bytes=40 + (step.index * 37) % 400)
        elif arg == "delay":
            p.set_mode("delay", seconds=1.5)
        elif arg == "reset_watch":
            p.set_mode("reset", watch=True)
            p.cut()
        elif arg == "events_503":
            p.set_mode("503", methods={"POST", "PATCH"}, path=r"/events")
        elif arg == "events_stall":
            p.set_mode("stall", methods={"POST", "PATCH"}, path=r"/events")
        else:  # stall, 503, 502, 429, partition
            p.set_mode(arg, retry_after=1) if arg == "429" else p.set_mode(arg)
        r.heal_at = step.index + step.hold
        r.stalled = r.stalled or arg in ("stall", "events_stall")

    def _process(self, step: Step) -> None:
        r = self.replicas[step.target or 0]
        if r.down or not r.alive:
            self._fault("process:skipped")
            return
        if step.arg == "sigkill":
            r.keeper.kill()
        else:
            try:
                r.keeper.terminate(10)
            except subprocess.TimeoutExpired:
                self.log(f"  {r.name} did not stop within 10 s of SIGTERM; killing it")
                r.keeper.kill()
        if step.arg == "restart":
            self._start(r)
        else:
            r.down = True
            r.heal_at = step.index + step.hold

    def _start(self, r: Replica, measure: bool = True) -> None:
        r.keeper.start()
        r.down = False
        r.started = time.monotonic()
        r.unhealthy_in_a_row = 0
        if measure:
            self._measure_ready(r)

    def _heal_due(self, index: int) -> None:
        for r in self.replicas:
            if r.heal_at is not None and r.heal_at <= index:
                r.heal_at = None
                if r.proxy.rules:
                    self._heal_path(r)
                if r.down:
                    self._start(r)
        for key, due in list(self.hold.items()):
            if due <= index:
                self._heal_hold(key)

    def _heal_path(self, r: Replica) -> None:
        self._check_backoff(r)
        r.proxy.set_mode("pass")
        r.path_up_since = time.monotonic() + (self.limits.stall_grace if r.stalled else 0.0)
        r.stalled = False

    def _check_backoff(self, r: Replica) -> None:
        """Error answers (503, 502, 429) must slow the replica down, not start a retry storm (issue 9, #2)."""
        if r.fault_started is None:
            return
        since, before, fault = r.fault_started
        r.fault_started = None
        took = time.monotonic() - since
        if fault not in ("503", "502", "429") or took < 1.0:
            return
        rate = (sum(r.proxy.stats()["requests"].values()) - before) / took
        self.figures.error_answer_rates.append(rate)
        self.figures.checks["3b backoff on error answers"] += 1
        if rate > self.limits.error_rate:
            raise Violation(
                3,
                f"{r.name} sent {rate:.1f} requests/s for {took:.1f} s while its API path answered {fault} "
                f"(limit {self.limits.error_rate:.0f}/s): a retry storm, not a backoff",
            )

    def _heal_hold(self, key: str) -> None:
        del self.hold[key]
        if key == "konnect":
            self._konnect_mode("license")
            return
        obj = self.read_secret()
        if obj is None:
            return
        if key == "unlabel":
            obj["metadata"].setdefault("labels", {})[MANAGED_BY_LABEL] = "license-keeper"
            self._put_secret(obj, "relabel")
        # An immutable Secret cannot be made mutable: delete it and create it again as it was.
        elif key == "immutable" and self._admin_write(
            "DELETE", f"{self.secret_path}/{SECRET}", None, "immutable->delete"
        ):
            self.tokens.append(now_utc())  # a keeper may recreate it before we do (a justified write)
            meta = obj["metadata"]
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            self._create_secret(data, meta.get("labels") or {}, meta.get("annotations") or {}, "immutable->recreate")

    def heal_all(self) -> None:
        for key in list(self.hold):
            self._heal_hold(key)
        if self.konnect is not None:
            # Konnect is back and serves the best license it ever served.
            best = max(
                (rec for _, rec in self.konnect.served if rec.valid),
                key=lambda rec: rank(rec, now_utc()),
                default=self.konnect_record,
            )
            self.konnect.serve(best)
            self._konnect_mode("license")
        if not self.cp.etcd_running:
            self.cp.start_etcd()
        if not self.cp.apiserver_running:
            self.cp.start_apiserver()
        for r in self.replicas:
            r.heal_at = None
            if r.proxy.rules:
                self._heal_path(r)
            # Those that exited by themselves are restarted by the supervision that follows, and counted there.
            if r.down:
                self._start(r, measure=False)

    # --- supervision (what the kubelet would do) -------------------------------------------------------

    def _supervise(self) -> None:
        for r in self.replicas:
            if r.down:
                continue
            if not r.alive:
                code = r.keeper.proc.returncode if r.keeper.proc else None
                self.log(f"  {r.name} exited by itself (code {code}); restarting it as the kubelet would")
                r.exits += 1
                self.figures.unplanned_exits += 1
                self._start(r)
                continue
            if r.keeper.healthy():
                r.unhealthy_in_a_row = 0
            else:
                r.unhealthy_in_a_row += 1
                if r.unhealthy_in_a_row >= 3 and time.monotonic() - r.started > 10:
                    self.log(f"  {r.name} failed /healthz 3 times; restarting it (liveness)")
                    self.figures.liveness_restarts += 1
                    r.keeper.kill()
                    self._start(r, measure=False)

    # --- invariants --------------------------------------------------------------------------------------

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> float:
        start = time.monotonic()
        while True:
            try:
                if cond():
                    return time.monotonic() - start
            except OSError:
                pass
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(interval)

    def _good_secret(self, at_least: LicenseRecord | None = None, floor: tuple[Any, ...] | None = None) -> bool:
        s = snapshot_of(self.read_secret())
        if not s.exists or s.immutable or s.labels.get(MANAGED_BY_LABEL) != "license-keeper":
            return False
        now = now_utc()
        records = [key_record(s, "payload"), key_record(s, "license")]
        if any(r is None or r.license is None or r.license.is_expired(now) for r in records):
            return False
        if at_least is not None and any(rank(r, now) < rank(at_least, now) for r in records):
            return False
        return floor is None or all(f is None or rank(r, now) >= f for r, f in zip(records, floor, strict=True))

    def _leader_path_up(self) -> Replica | None:
        """The replica holding a fresh Lease, if it is alive and its API path has been up for a while."""
        if not (self.cp.apiserver_running and self.cp.etcd_running):
            return None
        if time.monotonic() - self.apiserver_up_since < self.limits.settle:
            return None
        holder, age = self.lease_holder()
        for r in self.replicas:
            if r.name == holder and age < LEASE_SECONDS and r.alive and r.path_settled(self.limits.settle):
                return r
        return None

    def _measure_repair(self, before: SecretSnapshot, what: str) -> None:
        leader = self._leader_path_up()
        if leader is None:
            self.figures.checks["5 repair not measured (no leader with its path up)"] += 1
            return
        now = now_utc()
        floor = tuple(
            rank(rec, now) if rec is not None and rec.valid else None
            for rec in (key_record(before, "payload"), key_record(before, "license"))
        )
        self.figures.checks["5 repair"] += 1
        try:
            took = self._wait(lambda: self._good_secret(floor=floor), self.limits.repair, "repair")
        except TimeoutError:
            raise Violation(
                5,
                f"after adversary '{what}' the Secret was not good again within {self.limits.repair:.0f} s "
                f"(leader {leader.name}, its path up, API server up); Secret now: {self._describe_secret()}",
            ) from None
        self.figures.repair_times.append(took)
        self.log(f"  repaired in {took:.2f} s by {leader.name}")
        self._check_all_ready()

    def _describe_secret(self) -> str:
        s = snapshot_of(self.read_secret())
        if not s.exists:
            return "missing"
        parts = []
        for key in ("payload", "license"):
            rec = key_record(s, key)
            fp = fingerprint(rec)
            parts.append(f"{key}={'invalid' if rec is not None and fp is None else fp}")
        return (
            f"rv={s.resource_version} label={s.labels.get(MANAGED_BY_LABEL)} immutable={s.immutable} "
            f"updated_at={s.data.get('updated_at', b'').decode(errors='replace')} " + " ".join(parts)
        )

    def _measure_ready(self, r: Replica) -> None:
        """Invariant 6 after a (re)start. The clock starts when the keeper's probe port first answers: on
        this shared two-core machine the interpreter's own start (imports) alone can take seconds, which is
        recorded as a separate figure and bounded by ``Limits.boot``."""
        if not r.path_settled(0) or not self._secret_valid():
            return
        self.figures.checks["6 ready after start"] += 1
        try:
            boot = self._wait(lambda: r.keeper._get(r.keeper.probe_port, "/readyz")[0] != 0, self.limits.boot, "up")
        except TimeoutError:
            raise Violation(6, f"{r.name}'s probe port not up {self.limits.boot:.0f} s after its start") from None
        self.figures.boot_times.append(boot)
        try:
            took = self._wait(r.keeper.ready, self.limits.ready, "ready", 0.05)
        except TimeoutError:
            raise Violation(
                6,
                f"{r.name} not ready {self.limits.ready:.0f} s after its probe port came up "
                "with a valid Secret and its path up",
            ) from None
        self.figures.ready_times.append(took)

    def _secret_valid(self) -> bool:
        try:
            s = snapshot_of(self.read_secret())
        except OSError:
            return False
        rec = key_record(s, "license") or key_record(s, "payload")
        return rec is not None and rec.license is not None and not rec.license.is_expired(now_utc())

    def _check_all_ready(self) -> None:
        """Invariant 6 after the Secret became valid again: every replica with its path up is ready in 5 s."""
        for r in self.replicas:
            if r.down or not r.alive or not r.path_settled(self.limits.settle):
                continue
            self.figures.checks["6 ready after repair"] += 1
            try:
                self._wait(r.keeper.ready, self.limits.ready, "ready", 0.1)
            except TimeoutError:
                raise Violation(
                    6, f"{r.name} not ready within {self.limits.ready:.0f} s of the Secret being valid again"
                ) from None

    def _note_offered(self, record: LicenseRecord, at: datetime.datetime | None) -> None:
        if is_better(record, self.best_offered, now_utc()):
            self.best_offered = record

    def _read_audit(self) -> None:
        self.entries.extend(e for e in self.audit.read() if e.namespace == self.namespace)

    def _usernames(self) -> dict[str, Replica]:
        return {r.username: r for r in self.replicas}

    def keeper_secret_writes(self) -> list[AuditEntry]:
        users = self._usernames()
        return [
            e
            for e in self.entries
            if e.username in users
            and e.resource == "secrets"
            and e.name in (SECRET, None)
            and e.verb in ("create", "update", "patch")
            and e.ok
        ]

    def _check_continuous(self) -> None:
        self._read_audit()
        self._take_served()
        self._check_no_delete()
        self._check_one_writer()
        self._check_justified()
        self._check_no_downgrade()
        self._check_health_and_leaks()

    def _take_served(self) -> None:
        assert self.konnect is not None
        served = self.konnect.served[self.served_seen :]
        self.served_seen += len(served)
        for at, record in served:
            if is_better(record, self.best_offered, now_utc()):
                self.best_offered = record
                self.tokens.append(at)

    def _check_no_delete(self) -> None:
        users = self._usernames()
        self.figures.checks["1 no delete"] += 1
        for e in self.entries:
            if e.username in users and e.resource == "secrets" and e.verb in ("delete", "deletecollection"):
                raise Violation(1, f"{users[e.username].name} sent {e.verb} on the Secret: {e.brief()}")

    def _check_one_writer(self) -> None:
        """Invariant 4: each keeper write was received while its replica held the Lease (last Lease write)."""
        users = self._usernames()
        lease_writes = [
            e
            for e in self.entries
            if e.username in users and e.resource == "leases" and e.verb in ("create", "update", "patch") and e.ok
        ]
        for w in self.keeper_secret_writes():
            self.figures.checks["4 one writer"] += 1
            received = w.received or w.at
            assert received is not None
            before = [e for e in lease_writes if e.at is not None and e.at < received]
            if not before:
                raise Violation(4, f"{users[w.username].name} wrote the Secret before any Lease was held: {w.brief()}")
            last = before[-1]
            if last.username != w.username:
                raise Violation(
                    4,
                    f"{users[w.username].name} wrote the Secret while {users[last.username].name} held the Lease: "
                    f"{w.brief()} / lease: {last.brief()}",
                )
            assert last.at is not None
            if (received - last.at).total_seconds() > LEASE_SECONDS:
                raise Violation(
                    4,
                    f"{users[w.username].name} wrote the Secret {(received - last.at).total_seconds():.1f} s after "
                    f"its last Lease renewal (lease {LEASE_SECONDS:.0f} s): {w.brief()}",
                )

    def _check_justified(self) -> None:
        """Invariant 3: the k-th keeper write needs k-1 justifications (damage, better license) before it."""
        writes = self.keeper_secret_writes()
        self.figures.keeper_writes = len(writes)
        self.figures.justified = len(self.tokens) + 1
        self.figures.checks["3 justified"] += 1
        tokens = sorted(self.tokens)
        for k, w in enumerate(writes, start=1):
            at = w.received or w.at
            assert at is not None
            available = 1 + sum(1 for t in tokens if t <= at)
            if k > available:
                raise Violation(
                    3,
                    f"keeper write #{k} ({w.brief()}) with only {available} justification(s) before it "
                    "(adversary damage, better license served, create): a write with nothing changed",
                )

    def _check_no_downgrade(self) -> None:
        """Invariant 2: a keeper-written version holds, in each key, a license at least as good as before."""
        assert self.history is not None
        with self.history._lock:
            versions = list(self.history.versions)
        now = now_utc()
        for i in range(max(1, self.versions_judged), len(versions)):
            v, prev = versions[i], versions[i - 1]
            if v.type in ("DELETED", "GAP", "LIST") or v.rv in self.adversary_rvs or not prev.snapshot.exists:
                continue
            self.figures.checks["2 no downgrade"] += 1
            for key in ("payload", "license"):
                old, new = key_record(prev.snapshot, key), key_record(v.snapshot, key)
                if rank(new, now) < rank(old, now):
                    raise Violation(
                        2,
                        f"a keeper write (rv {v.rv}) made `{key}` worse: {fingerprint(old)} "
                        f"(updated_at {old.updated_at if old else None}) -> {fingerprint(new)} "
                        f"(updated_at {new.updated_at if new else None})",
                    )
        self.versions_judged = len(versions)

    def _check_health_and_leaks(self) -> None:
        """Invariant 7 (a stale view shows in /healthz) and 8 (no license material in metrics)."""
        latest = self.history.latest() if self.history else None
        if latest is None:
            return
        actual = latest.snapshot
        actual_rec = key_record(actual, "license") or key_record(actual, "payload")
        since = latest.seen
        for r in self.replicas:
            if r.down or not r.alive:
                continue
            try:
                text = r.keeper._get(r.keeper.metrics_port, "/metrics")[1]
            except OSError:
                continue
            self.figures.checks["8 metrics clean"] += 1
            found = leaks(text)
            if found:
                raise Violation(8, f"{r.name}'s metrics carry license material: {found}")
            path_since = datetime.datetime.fromtimestamp(
                time.time() - (time.monotonic() - max(r.path_up_since, r.started)), UTC
            )
            window = (now_utc() - max(since, path_since)).total_seconds()
            if window < self.limits.stale:
                continue
            held_fp = _metric_label(text, "license_keeper_license_info", "fingerprint")
            state = _metric_label(text, "license_keeper_secret_state", "state")
            held = self.licenses.all.get(held_fp or "")
            stale = (not actual.exists and state == "present") or (
                actual_rec is not None
                and actual_rec.valid
                and held is not None
                and is_better(actual_rec, held, now_utc())
            )
            self.figures.checks["7 health honest"] += 1
            if stale and r.keeper.healthy():
                raise Violation(
                    7,
                    f"{r.name}'s view of the Secret is {window:.0f} s stale (holds {held_fp}, state {state}; "
                    f"the Secret: {self._describe_secret()}) yet /healthz answers 200",
                )

    # --- the end ------------------------------------------------------------------------------------------

    def _converge(self) -> None:
        self.log("heal everything; waiting for convergence")
        self.heal_all()
        self.time_healed = time.monotonic()
        self._read_audit()
        self._take_served()
        expected = self.best_offered
        assert expected is not None
        self.figures.checks["9 convergence"] += 1
        self.figures.convergence = self._await_convergence(expected)
        self._check_all_ready()

    def _await_convergence(self, expected: LicenseRecord) -> float:
        """Invariant 9. The kubelet keeps supervising while the faults heal: a replica may still exit by design
        then (it lost its Lease to the last fault's answers), and only its restart lets everything converge."""

        def converged() -> bool:
            self._supervise()
            return self._converged(expected)

        try:
            return self._wait(converged, self.limits.converge, "convergence", 0.5)
        except TimeoutError:
            raise Violation(
                9,
                f"not converged {self.limits.converge:.0f} s after the last fault: leaders by metrics "
                f"{self._leaders()}, Lease {self.lease_holder()}, replicas {self._replica_states()}, "
                f"expected {fingerprint(expected)} (updated_at {expected.updated_at}), "
                f"Secret: {self._describe_secret()}",
            ) from None

    def _converged(self, expected: LicenseRecord) -> bool:
        leaders = self._leaders()
        holder, age = self.lease_holder()
        return (
            leaders == [holder]
            and age < LEASE_SECONDS
            and all(r.keeper.ready() for r in self.replicas)
            and self._good_secret(at_least=expected)
        )

    def _leaders(self) -> list[str]:
        return [r.name for r in self.replicas if r.alive and r.keeper.metric("license_keeper_leader") == 1]

    def _replica_states(self) -> dict[str, str]:
        def state(r: Replica) -> str:
            now = "ready" if r.keeper.ready() else "running, not ready" if r.alive else "exited"
            return f"{now}, {r.exits} unplanned exit(s)"

        return {r.name: state(r) for r in self.replicas}

    def _check_final(self) -> None:
        time.sleep(1.0)
        self._supervise()  # to the end, as in every step
        self._check_continuous()
        for r in self.replicas:
            self.figures.checks["8 logs clean"] += 1
            found = leaks(r.keeper.logs())
            if found:
                raise Violation(8, f"{r.name} logged license material: {found}")
        resp = self.cp.request("GET", f"/api/v1/namespaces/{self.namespace}/events")
        text = "\n".join(f"{e.get('reason')} {e.get('message')}" for e in resp.body.get("items", []))
        self.figures.checks["8 events clean"] += 1
        found = leaks(text)
        if found:
            raise Violation(8, f"Events carry license material: {found}")

    def audit_tail(self, n: int = 50) -> tuple[list[str], list[str]]:
        """The last ``n`` entries on the Secret and Events, and the last Lease writes (reads left out)."""
        with contextlib.suppress(OSError):
            self._read_audit()
        main = [e for e in self.entries if e.resource != "leases"]
        leases = [e for e in self.entries if e.resource == "leases" and e.verb not in ("get", "list", "watch")]
        return [e.brief() for e in main[-n:]], [e.brief() for e in leases[-10:]]


def _metric_label(text: str, name: str, label: str) -> str | None:
    """The label value of the sample of ``name`` whose value is 1 (one-hot and info gauges)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and line.rstrip().endswith(" 1.0"):
            inner = line[len(name) + 1 : line.index("}")]
            for part in inner.split(","):
                k, _, v = part.partition("=")
                if k == label:
                    return v.strip('"')
    return None


class SoakFailure(AssertionError):
    """A violated invariant, with what is needed to replay it: seed, step, and the last audit entries."""

    def __init__(self, soak: Soak, violation: Violation) -> None:
        step = soak.step.describe() if soak.step is not None else "after the last step (convergence/final checks)"
        main, leases = soak.audit_tail(50)
        tail = "\n".join(f"  {line}" for line in main)
        lease_tail = "\n".join(f"  {line}" for line in leases)
        super().__init__(
            f"SOAK FAILED seed={soak.seed} steps={len(soak.schedule)} at {step}\n{violation}\n"
            f"replay: make soak SEED={soak.seed} STEPS={len(soak.schedule)}\n"
            f"replicas (Lease identity, audit user): {[(r.name, r.username) for r in soak.replicas]}\n"
            f"last 50 audit entries on the Secret and Events (namespace {soak.namespace}):\n{tail}\n"
            f"last 10 Lease writes:\n{lease_tail}"
        )
        self.violation = violation
