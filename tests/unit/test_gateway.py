"""The gateway (python -m license_keeper.testing.gateway) as a process, started as Kong's chart starts Kong:
KONG_LICENSE_DATA in its environment, the Admin API on plain HTTP.

Every process here runs with trustme, cryptography, PyYAML and the test tools made unimportable (LAUNCH),
as in the keeper's image, so each test also shows the gateway needs only the runtime dependencies.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from license_keeper.license import parse_license
from license_keeper.testing.gateway import admin_listen, read_license_env, split_listen
from license_keeper.testing.licenses import leaks, make_document

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = {"message": "Enterprise license missing or expired"}
NOT_RUNTIME = ("trustme", "cryptography", "yaml", "pytest", "hypothesis")

# Runs the gateway module as `python -m` does, with the packages the runtime image lacks made unimportable.
# With SWAP_LICENSE set (tests only), SIGUSR1 puts it into KONG_LICENSE_DATA inside the running process: as
# close as a test gets to "the Secret changed" (nothing outside a process can change its environment).
LAUNCH = f"""
import os, runpy, signal, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {NOT_RUNTIME!r}:
            raise ImportError(name + " is not in the runtime image")
        return None
sys.meta_path.insert(0, Blocker())
def swap(*_):
    os.environ["KONG_LICENSE_DATA"] = os.environ["SWAP_LICENSE"]
    print("swapped", file=sys.stderr, flush=True)
signal.signal(signal.SIGUSR1, swap)
runpy.run_module("license_keeper.testing.gateway", run_name="__main__", alter_sys=True)
"""


def days_from_today(days: int) -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=days)


def gateway_env(license_data: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONG_")}
    if license_data is not None:
        env["KONG_LICENSE_DATA"] = license_data
    return {**env, **extra}


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any], stderr: Path) -> None:
        self.proc = proc
        self.info = info
        self.address: str = info["address"]
        self.stderr = stderr
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.address + path, json=body) as r:
            text = await r.text()
            return r.status, (json.loads(text) if r.content_type == "application/json" and text else text)

    def log(self) -> str:
        return self.stderr.read_text()

    async def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.log(), re.MULTILINE)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    async def change_environment(self) -> None:
        """Put SWAP_LICENSE into the running gateway's KONG_LICENSE_DATA (see LAUNCH)."""
        self.proc.send_signal(signal.SIGUSR1)
        assert await self.wait_for_log("^swapped$")

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds until exit)."""
        await self.session.close()
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 10)
        return code, time.monotonic() - started


@asynccontextmanager
async def gateway(tmp_path: Path, license_data: str | None, *args: str, **env: str) -> AsyncIterator[GatewayProcess]:
    stderr = tmp_path / f"gateway-{uuid.uuid4().hex[:6]}.log"
    listen = () if "KONG_ADMIN_LISTEN" in env else ("--listen", "127.0.0.1:0")
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LAUNCH,
            *listen,
            *args,
            env=gateway_env(license_data, **env),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line, stderr.read_text()
    gw = GatewayProcess(proc, json.loads(line), stderr)
    try:
        yield gw
    finally:
        code, _ = await gw.terminate()
        assert code == 0, gw.log()
        stdout = (await proc.stdout.read()).decode()
        # the license text, key or signature never reaches a log (the fingerprint is 16 hex characters)
        assert leaks(gw.log() + stdout) == []
        if license_data:
            assert license_data not in gw.log() + stdout


async def assert_read_only(gw: GatewayProcess) -> None:
    for method, path in [
        ("POST", "/services"),
        ("PUT", "/routes/r1"),
        ("PATCH", f"/plugins/{uuid.uuid4()}"),
        ("DELETE", "/consumers/c1"),
        ("POST", "/config"),
        ("POST", "/keyring/generate"),
    ]:
        assert await gw.call(method, path, {"name": "x"} if method != "DELETE" else None) == (403, FORBIDDEN)
    assert (await gw.call("GET", "/services")) == (200, {"data": [], "next": None})


async def assert_writable(gw: GatewayProcess) -> None:
    status, body = await gw.call("POST", "/services", {"name": "svc", "host": "example.test"})
    assert status == 201 and body["name"] == "svc" and uuid.UUID(body["id"])
    service = str(uuid.uuid4())
    status, body = await gw.call("PUT", f"/services/{service}", {"name": "svc"})
    assert status == 200 and body["id"] == service
    assert (await gw.call("PATCH", f"/services/{service}", {"retries": 3}))[0] == 200
    assert (await gw.call("DELETE", f"/services/{service}"))[0] == 204


async def report_license(gw: GatewayProcess) -> dict[str, str]:
    status, body = await gw.call("GET", "/license/report")
    assert status == 200
    return body["license"]


# --- licensed ------------------------------------------------------------------------------------------------


async def test_a_valid_license_runs_and_writes_pass(tmp_path: Path) -> None:
    doc = make_document(expiration_date=days_from_today(365))
    lic = parse_license(doc)
    async with gateway(tmp_path, doc) as gw:
        assert gw.address.startswith("http://127.0.0.1:")
        await assert_writable(gw)
        status, report = await gw.call("GET", "/license/report")
        assert status == 200
        assert report["license"] == {
            "license_key": lic.license_key,
            "license_expiration_date": lic.expiration_date.isoformat(),
        }
        assert report["deployment_info"] == {"type": "dbless"}
        assert report["kong_version"].startswith("3.15.")
        assert report["system_info"] == {"hostname": socket.gethostname()} == {"hostname": gw.info["hostname"]}
        for probe in ("/status", "/status/ready", "/"):
            assert (await gw.call("GET", probe))[0] == 200
        assert "kong_enterprise_license_expiration" in (await gw.call("GET", "/metrics"))[1]
        started = await gw.wait_for_log(r"\[notice\] .*\[gateway\] running (.*)$")
        assert started == [
            f"license {lic.fingerprint} from KONG_LICENSE_DATA, expires {lic.expiration_date}; "
            "license valid; Admin API read-write"
        ]
        assert not re.search(r"\[(warn|error|crit)\]", gw.log())  # a year left: Kong says nothing


async def test_base64_license_data_is_read_as_kong_does(tmp_path: Path) -> None:
    doc = make_document()
    async with gateway(tmp_path, base64.b64encode(doc.encode()).decode()) as gw:
        assert (await report_license(gw))["license_key"] == parse_license(doc).license_key
        await assert_writable(gw)


# --- without a valid license -------------------------------------------------------------------------------

UNLICENSED_CASES = {
    "expired_beyond_grace": (make_document(expiration_date=days_from_today(-40)), r"\[gateway\] running license "),
    "garbage": ("this is not a license", r"\[gateway\] running an invalid license from KONG_LICENSE_DATA"),
    "unset": (None, r"could not decode license JSON: No license found"),
}


@pytest.mark.parametrize("case", list(UNLICENSED_CASES))
async def test_without_a_valid_license_the_admin_api_is_read_only(tmp_path: Path, case: str) -> None:
    env_license, start_line = UNLICENSED_CASES[case]
    async with gateway(tmp_path, env_license) as gw:
        await assert_read_only(gw)
        assert await gw.wait_for_log(start_line)
        assert await gw.wait_for_log(r"Admin API read-only \(Enterprise license missing or expired\)$")
        if case != "expired_beyond_grace":
            assert (await report_license(gw))["license_key"] == "UNLICENSED"
        # keyring recovery stays open (it is not a license question); nothing is stored
        assert (await gw.call("POST", "/keyring/import/raw", {"data": "x"}))[0] == 201
        # /licenses stays writable: a broken license is refused as Kong refuses it, and changes nothing
        status, body = await gw.call("POST", "/licenses", {"payload": "{not json"})
        assert status == 400 and body["name"] == "schema violation"
        assert (await gw.call("POST", "/services", {}))[0] == 403
        # a valid license restores writes, as in Kong 3.15
        doc = make_document()
        status, row = await gw.call("PUT", f"/licenses/{uuid.uuid4()}", {"payload": doc})
        assert status == 200 and row["payload"] == doc
        await assert_writable(gw)
        assert (await report_license(gw))["license_key"] == parse_license(doc).license_key
        assert await gw.wait_for_log(r"from /licenses \(in memory until restart\).*Admin API read-write$")
        # deleting it takes the gateway back to KONG_LICENSE_DATA, read-only again
        assert (await gw.call("DELETE", f"/licenses/{row['id']}"))[0] == 204
        await assert_read_only(gw)


async def test_expired_beyond_grace_is_logged_as_kong_does(tmp_path: Path) -> None:
    date = days_from_today(-40)
    async with gateway(tmp_path, make_document(expiration_date=date)) as gw:
        lines = await gw.wait_for_log(r"\[crit\] \d+#0: .*$")
        assert lines == [
            f"[crit] {gw.proc.pid}#0: [lua] license_helpers.lua: log_license_state(): The Kong Enterprise license "
            f"expired on {date}. Please contact <support@konghq.com> to renew your license., context: ngx.timer"
        ]
        # an expired license is accepted on /licenses with Kong's WARN, and writes stay refused
        status, _ = await gw.call("POST", "/licenses", {"payload": make_document(expiration_date=date)})
        assert status == 201
        assert await gw.wait_for_log(
            r"\[warn\] .*The license being added is expired; some functionality may not be available$"
        )
        assert (await gw.call("POST", "/services", {}))[0] == 403


@pytest.mark.parametrize(
    ("days", "level", "message"),
    [
        (60, "warn", "The Kong Enterprise license will expire on {date}."),
        (10, "error", "The Kong Enterprise license will expire on {date}."),
        (-5, "crit", r"Your license is expired. You have (24|25) days left in the renewal grace period."),
    ],
)
async def test_expiry_lines_and_writes_before_the_grace_period_ends(
    tmp_path: Path, days: int, level: str, message: str
) -> None:
    date = days_from_today(days)
    async with gateway(tmp_path, make_document(expiration_date=date)) as gw:
        expected = re.escape(f"[{level}] ") + r"\d+#0: \[lua\] license_helpers\.lua: log_license_state\(\): "
        expected += message.format(date=date).replace(".", r"\.").replace("(24|25)", "(?:24|25)")
        assert await gw.wait_for_log(expected + r" Please contact <support@konghq\.com> to renew your license\.")
        await assert_writable(gw)  # in the grace period too


async def test_the_expiry_line_repeats_while_running(tmp_path: Path) -> None:
    # Kong logs it once a day; --notice-interval shortens the day for the test
    async with gateway(tmp_path, make_document(expiration_date=days_from_today(60)), "--notice-interval", "0.2") as gw:
        assert len(await gw.wait_for_log(r"\[warn\] .*will expire on", count=3)) >= 3


# --- read once, stop promptly ---------------------------------------------------------------------------------


async def test_a_changed_environment_changes_nothing(tmp_path: Path) -> None:
    first = make_document(expiration_date=days_from_today(365))
    second = make_document(expiration_date=days_from_today(60))
    async with gateway(tmp_path, first, "--notice-interval", "0.2", SWAP_LICENSE=second) as gw:
        await gw.change_environment()
        await asyncio.sleep(1.0)  # the daily line ran a few times since
        assert (await report_license(gw))["license_key"] == parse_license(first).license_key
        assert parse_license(second).fingerprint not in gw.log()
        assert "[warn]" not in gw.log()  # the 60-day license would have been warned about


async def test_garbage_stays_garbage_after_the_environment_changes(tmp_path: Path) -> None:
    async with gateway(tmp_path, "garbage", SWAP_LICENSE=make_document()) as gw:
        await gw.change_environment()
        await assert_read_only(gw)
        assert (await report_license(gw))["license_key"] == "UNLICENSED"


async def test_sigterm_exits_0_within_a_second(tmp_path: Path) -> None:
    async with gateway(tmp_path, make_document()) as gw:
        # an idle keep-alive connection must not hold the exit up
        assert (await gw.call("GET", "/status"))[0] == 200
        code, seconds = await gw.terminate()
        assert code == 0 and seconds < 1.0


async def test_admin_listen_from_kong_environment(tmp_path: Path) -> None:
    async with gateway(tmp_path, None, KONG_ADMIN_LISTEN="127.0.0.1:0 reuseport, 127.0.0.1:0 http2 ssl") as gw:
        assert gw.address.startswith("http://127.0.0.1:")
        assert (await gw.call("GET", "/status"))[0] == 200


# --- pure parts and the command line ---------------------------------------------------------------------------


def test_read_license_env() -> None:
    doc = make_document()
    assert read_license_env({}) is None
    assert read_license_env({"KONG_LICENSE_DATA": ""}) is None
    assert read_license_env({"KONG_LICENSE_DATA": doc}) == doc
    assert read_license_env({"KONG_LICENSE_DATA": base64.b64encode(doc.encode()).decode()}) == doc
    assert read_license_env({"KONG_LICENSE_DATA": base64.urlsafe_b64encode(doc.encode()).decode()}) == doc
    assert read_license_env({"KONG_LICENSE_DATA": "garbage"}) == "garbage"


@pytest.mark.parametrize(
    ("value", "listen"),
    [
        (None, "0.0.0.0:8001"),
        ("0.0.0.0:8001 reuseport backlog=16384, 0.0.0.0:8444 http2 ssl reuseport", "0.0.0.0:8001"),
        ("0.0.0.0:8444 http2 ssl", "0.0.0.0:8001"),
        ("off", "0.0.0.0:8001"),
        ("[::]:8001", "[::]:8001"),
    ],
)
def test_admin_listen(value: str | None, listen: str) -> None:
    assert admin_listen({} if value is None else {"KONG_ADMIN_LISTEN": value}) == listen


def test_split_listen() -> None:
    assert split_listen("0.0.0.0:8001") == ("0.0.0.0", 8001)
    assert split_listen("[::]:8001") == ("::", 8001)
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_listen("8001")


def test_help_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "license_keeper.testing.gateway", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--listen" in proc.stdout and "--notice-interval" in proc.stdout


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_names(path: Path) -> set[str]:
    return {_normalized(n) for n in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", path.read_text(), re.MULTILINE)}


def test_imports_only_runtime_dependencies() -> None:
    # Import the gateway and build its app with the non-runtime packages blocked, then list every imported
    # top-level module that is not the standard library: each must belong to requirements.lock (the image).
    code = LAUNCH.split("def swap")[0] + (
        "import json\n"
        "from license_keeper.testing.gateway import Gateway\n"
        "Gateway(None, hostname='h')._handle\n"
        "from aiohttp import web\n"
        "web.Application()\n"
        "tops = {m.partition('.')[0] for m, mod in list(sys.modules.items()) if getattr(mod, '__file__', None)}\n"
        "print(json.dumps(sorted(t for t in tops if t not in sys.stdlib_module_names and not t.startswith('_'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=gateway_env(None))
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout)
    distributions = metadata.packages_distributions()

    def owners(module: str) -> set[str]:
        return {_normalized(d) for d in distributions.get(module, [])}

    allowed = _lock_names(REPO / "requirements.lock")
    outside = {m: distributions.get(m) for m in modules if m != "license_keeper" and not owners(m) & allowed}
    assert "aiohttp" in modules and "license_keeper" in modules
    assert outside == {}, f"the gateway imports modules outside the runtime lock: {outside}"
