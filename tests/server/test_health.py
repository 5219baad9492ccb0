"""Operational routes and middleware behaviour: /healthz (ok / degraded), /metrics (counters
move), request ids, JSON errors for unknown routes and methods, one-line 500s."""

import logging
import shutil

import pytest
from aiohttp import web

from server.app import create_app
from server.config import ServerConfig
from shared.protocol.paths import HEALTHZ, METRICS, VAULTS
from tests.server.conftest import Api, ApiFactory, ClientFactory, Owner, blob, object_url


async def test_healthz_is_ok(api: Api) -> None:
    reply = await api.get(HEALTHZ)
    assert reply.status == 200
    assert reply.json()["status"] == "ok"
    assert reply.json()["version"]


async def test_healthz_is_degraded_when_vaults_folder_is_not_writable(api: Api) -> None:
    shutil.rmtree(api.config.vaults_dir)
    api.config.vaults_dir.write_bytes(b"not a folder")  # even root cannot create files in it
    reply = await api.get(HEALTHZ)
    assert (reply.status, reply.json()["status"]) == (503, "degraded")


async def test_metrics_count_requests_and_bytes(api: Api, owner: Owner) -> None:
    data = b"m" * 5000
    await api.put_object(owner.token, "laptop", data)
    await api.get(object_url("laptop", blob(data)), token=owner.token)
    await api.put_object(owner.token, "laptop", b"y", key=blob(b"z"))  # rejected
    reply = await api.get(METRICS)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body.decode()
    route = "/api/v1/vaults/{vault}/objects/{kind}/{name}"
    assert f'cairn_http_requests_total{{method="PUT",route="{route}",status="201"}} 1.0' in text
    assert f'cairn_http_requests_total{{method="GET",route="{route}",status="200"}} 1.0' in text
    assert "cairn_uploaded_bytes_total 5001.0" in text
    assert "cairn_downloaded_bytes_total 5000.0" in text
    assert 'cairn_objects_stored_total{kind="packs"} 1.0' in text
    assert 'cairn_objects_rejected_total{reason="integrity"} 1.0' in text
    assert "cairn_http_request_duration_seconds_bucket" in text


async def test_metrics_of_two_apps_are_separate(make_api: ApiFactory) -> None:
    first, second = await make_api(), await make_api()
    await first.get(HEALTHZ)
    assert 'route="/healthz"' in (await first.get(METRICS)).body.decode()
    assert 'route="/healthz"' not in (await second.get(METRICS)).body.decode()


async def test_request_id_is_echoed_or_made(api: Api) -> None:
    given = await api.get(HEALTHZ, headers={"X-Request-Id": "abc-123"})
    made = await api.get(HEALTHZ, headers={"X-Request-Id": "bad id with spaces"})
    assert given.headers["X-Request-Id"] == "abc-123"
    assert made.headers["X-Request-Id"] not in ("", "bad id with spaces")


async def test_unknown_route_is_404_json(api: Api) -> None:
    reply = await api.get("/api/v1/nothing-here")
    assert (reply.status, reply.code) == (404, "not_found")


async def test_wrong_method_is_405_json_with_allow(api: Api) -> None:
    reply = await api.request("PATCH", VAULTS)
    assert (reply.status, reply.code) == (405, "method_not_allowed")
    assert set(reply.headers["Allow"].split(",")) == {"GET", "POST"}


async def test_unexpected_exception_is_one_line_500(aiohttp_client: ClientFactory,
                                                    server_config: ServerConfig,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(server_config)

    async def boom(request: web.Request) -> web.StreamResponse:
        raise RuntimeError("secret internals")

    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="server.middlewares"):
        resp = await client.get("/boom")
        body = await resp.json()
    assert resp.status == 500
    assert body["error"]["code"] == "internal"
    assert "secret internals" not in body["error"]["message"]
    assert resp.headers["X-Request-Id"] in body["error"]["message"]
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)
