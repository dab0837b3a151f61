"""The Kong Admin API stand-in behaves as Kong documents it (REFERENCE §7): codes, bodies, precedence, metrics."""

from __future__ import annotations

import asyncio
import calendar
import datetime
import json
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from license_keeper.license import parse_license
from license_keeper.testing.kong import KongStandIn
from license_keeper.testing.licenses import make_document
from license_keeper.testing.tls import TLSMaterial

TOKEN = "admin-token-1"


@pytest.fixture
async def kong(tls_material: TLSMaterial) -> AsyncIterator[KongStandIn]:
    async with KongStandIn(tls=tls_material, token=TOKEN, slow_seconds=0.2) as standin:
        yield standin


async def call(
    kong: KongStandIn, method: str, path: str, body: Any = None, *, token: str | None = TOKEN, timeout: float = 5
) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(kong.tls.ca_file))
    headers = {"Kong-Admin-Token": token} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
        s.request(method, kong.address + path, json=body, headers=headers, ssl=ctx) as r,
    ):
        text = await r.text()
        if r.content_type == "application/json" and text:
            return r.status, json.loads(text)
        return r.status, text


async def test_token_required(kong: KongStandIn) -> None:
    status, body = await call(kong, "GET", "/licenses", token=None)
    assert status == 401 and "credentials" in body["message"]
    assert (await call(kong, "GET", "/licenses", token="wrong"))[0] == 401
    assert await call(kong, "GET", "/licenses") == (200, {"data": [], "next": None})


async def test_crud_codes_and_bodies(kong: KongStandIn) -> None:
    doc = make_document()
    status, row = await call(kong, "POST", "/licenses", {"payload": doc})
    assert status == 201 and row["payload"] == doc and set(row) >= {"id", "created_at", "updated_at", "checksum"}
    assert (await call(kong, "GET", f"/licenses/{row['id']}"))[0] == 200
    assert await call(kong, "GET", f"/licenses/{uuid.uuid4()}") == (404, {"message": "Not found"})
    # same payload under another id: unique violation
    other = str(uuid.uuid4())
    status, body = await call(kong, "PUT", f"/licenses/{other}", {"payload": doc})
    assert status == 409 and body["name"] == "unique constraint violation"
    # upsert under our own id with a new payload
    status, body = await call(kong, "PUT", f"/licenses/{other}", {"payload": make_document()})
    assert status == 200 and body["id"] == other
    status, body = await call(kong, "PUT", "/licenses/not-a-uuid", {"payload": make_document()})
    assert status == 400 and body["fields"] == {"id": "expected a valid UUID"}
    assert (await call(kong, "PATCH", f"/licenses/{uuid.uuid4()}", {"payload": make_document()}))[0] == 404
    assert (await call(kong, "DELETE", f"/licenses/{other}"))[0] == 204
    assert len((await call(kong, "GET", "/licenses"))[1]["data"]) == 1


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ("{not json", "could not decode license json"),
        ('{"license": {}}', "invalid license format"),
        (make_document(expiration_date="2024-13-40"), "invalid license expiration date"),
    ],
)
async def test_invalid_license_is_a_schema_violation(kong: KongStandIn, payload: str, problem: str) -> None:
    status, body = await call(kong, "POST", "/licenses", {"payload": payload})
    assert status == 400
    assert body == {
        "code": 2,
        "name": "schema violation",
        "message": f"schema violation (payload: {problem})",
        "fields": {"payload": problem},
    }


async def test_bad_signature_fails_validation(kong: KongStandIn) -> None:
    doc = make_document(signature="ab" * 40)
    kong.node.rejected_signatures = frozenset({"ab" * 40})
    status, body = await call(kong, "POST", "/licenses", {"payload": doc})
    assert status == 400 and body["fields"]["payload"] == "Unable to validate license: validation failed"


async def test_expired_license_is_accepted(kong: KongStandIn) -> None:
    doc = make_document(creation_date="2020-01-01", expiration_date="2021-01-01")
    assert (await call(kong, "POST", "/licenses", {"payload": doc}))[0] == 201
    assert (await call(kong, "GET", "/license/report"))[1]["license"]["license_expiration_date"] == "2021-01-01"


async def test_pagination_with_next(kong: KongStandIn) -> None:
    for _ in range(5):
        assert (await call(kong, "POST", "/licenses", {"payload": make_document()}))[0] == 201
    seen: list[str] = []
    path: str | None = "/licenses?size=2"
    pages = 0
    while path:
        status, body = await call(kong, "GET", path)
        assert status == 200
        seen += [r["id"] for r in body["data"]]
        path, pages = body["next"], pages + 1
    assert pages == 3 and len(set(seen)) == 5
    assert (await call(kong, "GET", "/licenses?size=0"))[0] == 400
    assert (await call(kong, "GET", "/licenses?offset=@@@"))[0] == 400


async def test_dbless_refuses_writes_with_405(tls_material: TLSMaterial) -> None:
    async with KongStandIn(tls=tls_material, database="off") as kong:
        status, body = await call(kong, "POST", "/licenses", {"payload": make_document()}, token=None)
        assert status == 405 and body["message"] == "cannot create 'licenses' entities when not using a database"
        status, body = await call(kong, "PUT", f"/licenses/{uuid.uuid4()}", {"payload": make_document()}, token=None)
        assert status == 405 and "cannot update" in body["message"]
        assert (await call(kong, "GET", "/licenses", token=None))[0] == 200


async def test_active_license_precedence_env_file_path_db(kong: KongStandIn) -> None:
    docs = {k: make_document(expiration_date=f"2030-0{i}-01") for i, k in enumerate(["env", "file", "path", "db"], 1)}
    await call(kong, "POST", "/licenses", {"payload": docs["db"]})
    node = kong.node
    node.env_license, node.file_license, node.path_license = docs["env"], docs["file"], docs["path"]
    for expected, clear in (("env", "env_license"), ("file", "file_license"), ("path", "path_license"), ("db", "")):
        report = (await call(kong, "GET", "/license/report"))[1]["license"]
        assert report["license_expiration_date"] == parse_license(docs[expected]).expiration_date.isoformat()
        assert report["license_key"] == parse_license(docs[expected]).license_key
        if clear:
            setattr(node, clear, None)


async def test_newest_row_wins(kong: KongStandIn) -> None:
    now = [100.0]
    kong.clock = lambda: now[0]
    old, new = make_document(expiration_date="2031-01-01"), make_document(expiration_date="2029-01-01")
    a = str(uuid.uuid4())
    await call(kong, "PUT", f"/licenses/{a}", {"payload": old})
    now[0] = 200
    await call(kong, "POST", "/licenses", {"payload": new})
    assert (await call(kong, "GET", "/license/report"))[1]["license"]["license_expiration_date"] == "2029-01-01"
    now[0] = 300
    await call(kong, "PUT", f"/licenses/{a}", {"payload": old})  # updated_at 300: newest again
    assert (await call(kong, "GET", "/license/report"))[1]["license"]["license_expiration_date"] == "2031-01-01"


async def test_root_report_and_metrics_follow_the_active_license(kong: KongStandIn) -> None:
    status, root = await call(kong, "GET", "/")
    assert status == 200 and "license" not in root
    report = (await call(kong, "GET", "/license/report"))[1]["license"]
    assert report == {"license_key": "UNLICENSED", "license_expiration_date": "UNLICENSED"}
    metrics = (await call(kong, "GET", "/metrics"))[1]
    assert "kong_enterprise_license_signature" not in metrics

    doc = make_document(expiration_date=datetime.date(2030, 6, 15))
    kong.node.env_license = doc
    lic = parse_license(doc)
    root = (await call(kong, "GET", "/"))[1]
    assert root["license"]["license_expiration_date"] == "2030-06-15" and "license_key" not in root["license"]
    metrics = (await call(kong, "GET", "/metrics"))[1]
    values = dict(line.split(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert float(values["kong_enterprise_license_signature"]) == float(f"{lic.kong_signature:.14g}")
    assert values["kong_enterprise_license_signature"] == f"{float(int(lic.signature[-34:], 16)):.14g}"
    assert int(values["kong_enterprise_license_expiration"]) == calendar.timegm((2030, 6, 15, 12, 0, 0)) - 86400


async def test_hybrid_data_planes_receive_the_cp_rows(tls_material: TLSMaterial) -> None:
    async with (
        KongStandIn(tls=tls_material, role="control_plane") as cp,
        KongStandIn(tls=tls_material, role="data_plane", database="off") as dp,
    ):
        cp.attach(dp)
        doc = make_document(expiration_date="2032-02-02")
        assert (await call(cp, "POST", "/licenses", {"payload": doc}, token=None))[0] == 201
        assert (await call(dp, "GET", "/license/report", token=None))[1]["license"]["license_expiration_date"] == (
            "2032-02-02"
        )
        assert (await call(dp, "POST", "/licenses", {"payload": make_document()}, token=None))[0] == 405
        cp.propagation_paused = True
        await call(cp, "POST", "/licenses", {"payload": make_document(expiration_date="2033-03-03")}, token=None)
        assert len(dp.node.rows) == 1
        # an env license on the DP hides the propagated rows
        dp.node.env_license = make_document(expiration_date="2028-08-08")
        assert (await call(dp, "GET", "/license/report", token=None))[1]["license"]["license_expiration_date"] == (
            "2028-08-08"
        )


@pytest.mark.parametrize(
    ("mode", "status"), [("server_error", 500), ("bad_gateway", 502), ("unauthorized", 401), ("forbidden", 403)]
)
async def test_error_modes(kong: KongStandIn, mode: str, status: int) -> None:
    await kong.set_mode(mode)
    assert (await call(kong, "GET", "/licenses"))[0] == status


async def test_html_mode(kong: KongStandIn) -> None:
    await kong.set_mode("html")
    status, body = await call(kong, "GET", "/licenses")
    assert status == 200 and body.startswith("<html>")


async def test_stall_closed_and_untrusted_tls(kong: KongStandIn) -> None:
    await kong.set_mode("stall")
    with pytest.raises(TimeoutError):
        await call(kong, "GET", "/licenses", timeout=0.5)
    await kong.set_mode("closed")
    with pytest.raises(aiohttp.ClientConnectorError):
        await call(kong, "GET", "/licenses")
    await kong.set_mode("tls_untrusted")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await call(kong, "GET", "/licenses")
    await kong.set_mode("normal")
    assert (await call(kong, "GET", "/licenses"))[0] == 200


def test_help_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "license_keeper.testing.kong", "serve", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--database" in proc.stdout


async def test_serve_in_another_process(tmp_path: Any) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "license_keeper.testing.kong",
        "serve",
        "--dir",
        str(tmp_path / "tls"),
        "--token-file",
        str(token),
        "--control-port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        ctx = ssl.create_default_context(cafile=info["ca_file"])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.put(info["control_url"] + "/env-license", json={"document": make_document()}) as r:
                assert (await r.json())["active_source"] == "env"
            async with s.get(info["address"] + "/license/report", ssl=ctx, headers={"Kong-Admin-Token": TOKEN}) as r:
                assert r.status == 200 and (await r.json())["license"]["license_key"] != "UNLICENSED"
            async with s.post(info["control_url"] + "/mode", json={"mode": "server_error"}) as r:
                assert (await r.json())["mode"] == "server_error"
            async with s.get(info["address"] + "/licenses", ssl=ctx) as r:
                assert r.status == 500
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
