"""`status` (the Secret's license, the leader) and `validate` (a document or backup, offline): the
report, its rendering for humans, and the exit code for scripts."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..config import ConfigError, Settings, duration_problem, parse_duration
from ..delivery import TargetReport
from ..license import (
    KONG_ERROR_NOTICE_DAYS,
    KONG_GRACE_PERIOD_DAYS,
    KONG_WARNING_NOTICE_DAYS,
    License,
    LicenseRecord,
)
from ..policy import LICENSE_KEYS, SecretSnapshot, license_state, record_from_secret, secret_state
from .backup import license_from_bytes
from .common import (
    EXIT_BAD,
    EXIT_EXPIRING,
    EXIT_UNKNOWN,
    EXIT_VALID,
    UnreadableInput,
    connect,
    delivery_options,
    duration_opt,
    emit,
    fail,
    fail_store,
    load_structured,
    opt,
    output_option,
    read_capped,
    run_async,
    secret_options,
    settings_from,
)
from .errors import KeeperCommand, exit_codes_epilog

__all__ = ["kong_outlook", "status", "validate"]


def kong_outlook(lic: License, now: datetime) -> str:
    """What Kong's gateways do about this license at ``now``, and when that changes (REFERENCE §9)."""
    expiry, grace_end = lic.kong_expires_at, lic.grace_period_ends_at
    start, end = lic.expiration_date.isoformat(), grace_end.date().isoformat()
    if now >= grace_end:
        return (
            f"the {KONG_GRACE_PERIOD_DAYS}-day grace period ended on {end}: the gateways' Admin API is "
            "read-only (only /licenses accepts writes)"
        )
    if now >= expiry:
        return (
            f"expired on {start}: gateways are in the {KONG_GRACE_PERIOD_DAYS}-day grace period (daily CRIT "
            f"log line); their Admin API turns read-only on {end}"
        )
    days = (expiry - now).total_seconds() / 86400
    after = f"gateways enter the {KONG_GRACE_PERIOD_DAYS}-day grace period on {start}; Admin API read-only on {end}"
    if days < KONG_ERROR_NOTICE_DAYS:
        return f"gateways log an ERR line daily (below {KONG_ERROR_NOTICE_DAYS} days left); {after}"
    if days < KONG_WARNING_NOTICE_DAYS:
        return f"gateways log a WARN line daily (below {KONG_WARNING_NOTICE_DAYS} days left); {after}"
    return f"no notice from the gateways yet (WARN from {KONG_WARNING_NOTICE_DAYS} days before expiry); {after}"


def license_summary(record: LicenseRecord | None, now: datetime, renew_before: float) -> dict[str, Any]:
    if record is None:
        return {"state": "missing"}
    lic = record.license
    if lic is None:
        return {"state": "invalid", "problem": record.problem}
    days = lic.days_left(now)
    return {
        "state": license_state(record, now, renew_before),
        "customer": lic.customer,
        "product": lic.product,
        "expiration_date": lic.expiration_date.isoformat(),
        "days_left": round(days, 2),
        "grace_period_end": lic.grace_period_ends_at.isoformat(),
        "kong": kong_outlook(lic, now),
        "id": record.id,
        "updated_at": record.updated_at,
        "updated_at_iso": datetime.fromtimestamp(record.updated_at, UTC).isoformat() if record.updated_at else None,
        "fingerprint": lic.fingerprint,
    }


def exit_code_for(state: str) -> int:
    return {"valid": EXIT_VALID, "expiring": EXIT_EXPIRING}.get(state, EXIT_BAD)


@click.command(cls=KeeperCommand, epilog=exit_codes_epilog("status"))
@secret_options
@duration_opt("renew-before", "Report 'expiring' (exit 1) when the license expires within this.")
@opt("lease-name", "Lease to report the leader from.  [default: <controller-name>-license-keeper]")
@delivery_options
@output_option()
def status(output: str, **flags: Any) -> None:
    """Show the license in the Secret, the leader, and what each delivery target runs.

    With --deliver (or LICENSE_KEEPER_DELIVER, as the keeper's pod has it), also reads back what each
    delivery target runs (read only: nothing is written) and lists it with its state.
    """
    from ..deliver import deliverer_from_settings, render_reports
    from ..election import read_holder
    from ..kube import KubeError
    from ..observe import setup_logging
    from ..store import SecretStore, StoreError

    settings = settings_from(**flags)
    setup_logging("text", "error")  # the report says it all; the read-back's own log lines would repeat it

    async def go() -> int:
        namespace, api = await connect(settings)
        try:
            store = SecretStore(api, namespace, settings.effective_secret_name)
            try:
                snapshot = await store.read()
            except StoreError as e:
                fail_store(e, api)
            holder = None
            try:
                lease = await read_holder(api, namespace, settings.effective_lease_name)
                holder = lease.holder if lease is not None else None
            except KubeError:  # status must work with only Secret read access
                holder = None
            deliverer = deliverer_from_settings(settings, api, namespace=namespace)
            try:
                now = datetime.now(UTC)
                deliveries = await deliverer.check(record_from_secret(snapshot, now=now))
            finally:
                await deliverer.close()
        finally:
            await api.close()
        report = status_report(snapshot, settings, namespace, holder, now)
        report["delivery"] = [delivery_summary(d) for d in deliveries]
        deliveries_text = [render_reports(deliveries)] if deliveries else []
        emit(report, output, lambda r: "\n".join([render_status(r), *deliveries_text]))
        return exit_code_for(report["state"])

    sys.exit(run_async(go()))


def delivery_summary(report: TargetReport) -> dict[str, Any]:
    """One target in `status -o json`; an admin-svc target lists its gateway pods."""
    out: dict[str, Any] = {"target": report.target, "state": report.state.value, "reason": report.reason}
    if report.pods:
        out["pods"] = [
            {"pod": p.pod, "address": p.address, "state": p.state.value, "reason": p.reason} for p in report.pods
        ]
    return out


def status_report(
    snapshot: SecretSnapshot, settings: Settings, namespace: str, holder: str | None, now: datetime
) -> dict[str, Any]:
    record = record_from_secret(snapshot, now=now)
    s_state = secret_state(snapshot)
    report: dict[str, Any] = {
        "secret": f"{namespace}/{settings.effective_secret_name}",
        "secret_state": s_state.value,
        "keys": sorted(k for k in snapshot.data if snapshot.data[k]) if snapshot.exists else [],
        "missing_keys": [k for k in LICENSE_KEYS if not snapshot.data.get(k)]
        if snapshot.exists
        else list(LICENSE_KEYS),
        "leader": holder,
        **license_summary(record, now, settings.renew_before),
    }
    if s_state.value == "foreign" and report["state"] in ("valid", "expiring"):
        report["note"] = "the Secret is not managed by license-keeper"
        report["state"] = "foreign"
    return report


def render_status(r: Mapping[str, Any]) -> str:
    rows = [
        ("Secret", r["secret"]),
        ("Secret state", r["secret_state"]),
        ("State", r["state"]),
        ("Customer", r.get("customer")),
        ("Product", r.get("product")),
        ("Expires", r.get("expiration_date")),
        ("Days left", r.get("days_left")),
        ("Kong", r.get("kong")),
        ("Updated at", f"{r.get('updated_at')} ({r.get('updated_at_iso')})" if r.get("updated_at") else None),
        ("License id", r.get("id")),
        ("Fingerprint", r.get("fingerprint")),
        ("Keys present", ", ".join(r["keys"]) or "(none)"),
        ("Keys missing", ", ".join(r["missing_keys"]) or "(none)"),
        ("Leader", r.get("leader") or "(unknown)"),
        ("Problem", r.get("problem")),
        ("Note", r.get("note")),
    ]
    return "\n".join(f"{k + ':':<14}{v}" for k, v in rows if v is not None)


# --- validate ---------------------------------------------------------------------------------------


@click.command(cls=KeeperCommand, epilog=exit_codes_epilog("validate"))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@duration_opt("renew-before", "Report 'expiring' (exit 1) when the license expires within this.")
@output_option()
def validate(file: Path, output: str, renew_before: str | None) -> None:
    """Check a license document offline (structure and dates; the signature cannot be checked offline).

    FILE holds the document (Kong's license file, the Konnect `payload`), a license-keeper backup (JSON or
    YAML), or '-' for stdin: whatever `restore` reads.
    """
    try:
        raw = read_capped(file)
    except ConfigError as e:
        fail(str(e), EXIT_UNKNOWN if isinstance(e, UnreadableInput) else EXIT_BAD)
    renew_before = renew_before or os.environ.get("LICENSE_KEEPER_RENEW_BEFORE")  # as its --help says
    try:
        window = parse_duration(renew_before) if renew_before else 7 * 86400.0
    except ValueError as e:
        fail(f"--renew-before: {e}", EXIT_UNKNOWN)
        return
    problem = duration_problem("renew_before", window)  # the same range as `run` and `status`
    if problem is not None:
        fail(f"--renew-before: {problem}", EXIT_UNKNOWN)
    summary = validate_summary(raw, window, datetime.now(UTC))
    emit(summary, output, lambda r: "\n".join(f"{k.replace('_', ' ').capitalize() + ':':<18}{v}" for k, v in r.items()))
    sys.exit(exit_code_for(summary["state"]))


def validate_summary(raw: bytes, window: float, now: datetime) -> dict[str, Any]:
    """The report of `validate` for the bytes of a document or of a backup: the reader `restore` uses."""
    try:
        record = license_from_bytes(raw, now)
    except ConfigError as e:
        try:
            structured = load_structured(raw)
        except ValueError:
            structured = None
        return _invalid(str(e), raw, structured)
    summary = license_summary(record, now, window)
    for k in ("id", "updated_at", "updated_at_iso"):
        summary.pop(k, None)
    return summary


def _invalid(problem: str, raw: bytes, structured: Any) -> dict[str, Any]:
    hint = input_hint(raw, structured)
    return {"state": "invalid", "problem": problem, **({"hint": hint} if hint else {})}


# --- hints: the usual ways a good license ends up in a file Kong would refuse ---------------------------

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def has_utf8_bom(raw: bytes) -> bool:
    return raw.startswith(UTF8_BOM)


def is_utf16(raw: bytes) -> bool:
    return raw.startswith(UTF16_BOMS)


def kic_payload_shape(data: Any) -> bool:
    """KIC's Secret data or a Konnect answer, `{"payload": "<document>", ...}`, not the document itself."""
    return isinstance(data, dict) and isinstance(data.get("payload"), str) and "license" not in data


def konnect_items_shape(data: Any) -> bool:
    """Konnect's list answer, `{"items": [{"payload": "<document>"}]}`."""
    items = data.get("items") if isinstance(data, dict) else None
    return isinstance(items, list) and bool(items) and kic_payload_shape(items[0])


def kubernetes_secret_shape(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == "Secret" and isinstance(data.get("data"), dict)


RAW_HINTS: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (
        has_utf8_bom,
        "FILE starts with a UTF-8 byte-order mark, which Kong does not accept; remove it: "
        "sed -i '1s/^\\xEF\\xBB\\xBF//' FILE",
    ),
    (is_utf16, "FILE is UTF-16 (it starts with a byte-order mark); Kong reads UTF-8: iconv -f UTF-16 -t UTF-8 FILE"),
)
SHAPE_HINTS: tuple[tuple[Callable[[Any], bool], str], ...] = (
    (
        kic_payload_shape,
        'FILE has KIC\'s {"payload": ...} shape (its Secret data, or a Konnect answer); the license document is '
        "the value of payload: jq -r .payload FILE",
    ),
    (
        konnect_items_shape,
        "FILE is a Konnect list answer; the license document is the first item's payload: "
        "jq -r '.items[0].payload' FILE",
    ),
    (
        kubernetes_secret_shape,
        "FILE is a Kubernetes Secret; the license document is base64 in .data.license: "
        "jq -r .data.license FILE | base64 -d",
    ),
)


def input_hint(raw: bytes, structured: Any) -> str | None:
    """What to do about an invalid FILE, when its bytes or its shape say what happened; None otherwise."""
    for looks_like, hint in RAW_HINTS:
        if looks_like(raw):
            return hint
    for has_shape, hint in SHAPE_HINTS:
        if has_shape(structured):
            return hint
    return None
