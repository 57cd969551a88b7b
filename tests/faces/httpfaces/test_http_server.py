"""The embedded HTTP server: real sockets on 127.0.0.1, a bare FastAPI app, no cloud core needed.

Covers port 0, a busy port (OSError naming the address), the body limit (declared and streamed), the
per-face error routing (validation, bad JSON and oversized bodies in the face's own shape, an
unexpected exception as the face's 500 without a traceback), and a stop that waits for a request in
flight.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tap_emulator.faces.http.routing import Failure, FailureKind, face_route_class
from tap_emulator.faces.http.server import HttpServer, start_http_server


class Item(BaseModel):
    name: str


def render(request: Request, failure: Failure) -> Response:
    return JSONResponse({"kind": failure.kind.value, "why": failure.message}, status_code=418)


def make_app(release: asyncio.Event | None = None) -> FastAPI:
    router = APIRouter(route_class=face_route_class(render, lambda error: isinstance(error, LookupError)))

    @router.post("/items")
    async def create(item: Item) -> dict[str, str]:
        return {"name": item.name}

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("unexpected")

    @router.get("/missing")
    async def missing() -> None:
        raise KeyError("k")

    @router.get("/slow")
    async def slow() -> dict[str, bool]:
        assert release is not None
        await release.wait()
        return {"done": True}

    app = FastAPI()
    app.include_router(router)
    return app


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    running = await start_http_server(make_app(), "127.0.0.1", 0, max_body=1024)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
def busy_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def url(server: HttpServer, path: str) -> str:
    return f"http://127.0.0.1:{server.address[1]}{path}"


async def test_port_zero_reports_the_bound_port(server: HttpServer) -> None:
    assert server.address[0] == "127.0.0.1" and 0 < server.address[1] < 65536
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(url(server, "/items"), json={"name": "a"})
    assert response.status_code == 200 and response.json() == {"name": "a"}


async def test_a_busy_port_is_an_oserror_naming_the_address(busy_port: int) -> None:
    with pytest.raises(
        OSError, match=rf"cannot listen for HTTP on 127.0.0.1:{busy_port}: Address already in use"
    ):
        await start_http_server(make_app(), "127.0.0.1", busy_port)


async def test_validation_and_bad_json_reach_the_face_renderer(server: HttpServer) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        missing = await client.post(url(server, "/items"), json={})
        wrong_type = await client.post(url(server, "/items"), json={"name": 5})
        bad_json = await client.post(
            url(server, "/items"), content=b"{not json", headers={"content-type": "application/json"}
        )
    for response in (missing, wrong_type, bad_json):
        assert response.status_code == 418, response.text
        assert response.json()["kind"] == "invalid"
    assert "name" in missing.json()["why"]


async def test_bodies_over_the_limit_are_refused_declared_or_streamed(server: HttpServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 512

    async with httpx.AsyncClient(timeout=5) as client:
        declared = await client.post(url(server, "/items"), content=b"x" * 2048)
        streamed = await client.post(url(server, "/items"), content=chunks())  # chunked, no Content-Length
        small = await client.post(url(server, "/items"), json={"name": "fits"})
    for response in (declared, streamed):
        assert response.status_code == 418
        assert response.json() == {"kind": "invalid", "why": "request body too large"}
    assert small.status_code == 200


async def test_unexpected_errors_are_the_faces_answer_without_a_traceback(
    server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(timeout=5) as client:
        boom = [await client.get(url(server, "/boom")) for _ in range(5)]
        domain = await client.get(url(server, "/missing"))
    assert all(r.status_code == 418 and r.json()["kind"] == FailureKind.INTERNAL.value for r in boom)
    assert domain.json()["kind"] == FailureKind.DOMAIN.value
    assert "Traceback" not in caplog.text
    # Five identical failures cost one log line (the rest are counted on the next line let through).
    assert caplog.text.count("GET /boom failed: RuntimeError") == 1


async def test_close_lets_a_request_in_flight_finish() -> None:
    release = asyncio.Event()
    running = await start_http_server(make_app(release), "127.0.0.1", 0)
    async with httpx.AsyncClient(timeout=10) as client:
        in_flight = asyncio.create_task(client.get(url(running, "/slow")))
        await asyncio.sleep(0.2)
        closing = asyncio.create_task(running.close())
        await asyncio.sleep(0.2)
        release.set()
        response = await asyncio.wait_for(in_flight, 10)
        await asyncio.wait_for(closing, 10)
    assert response.json() == {"done": True}
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=2) as client:
            await client.get(url(running, "/slow"))


async def test_connections_past_the_cap_are_turned_away() -> None:
    release = asyncio.Event()
    # uvicorn counts the arriving connection too: a cap of 3 serves two at once and turns the third away.
    running = await start_http_server(make_app(release), "127.0.0.1", 0, max_connections=3)
    try:
        async with httpx.AsyncClient(timeout=10) as first, httpx.AsyncClient(timeout=10) as second:
            held = [asyncio.create_task(c.get(url(running, "/slow"))) for c in (first, second)]
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient(timeout=10) as third:
                refused = await third.get(url(running, "/slow"))
            assert refused.status_code == 503
            release.set()
            assert [(await task).status_code for task in held] == [200, 200]
    finally:
        release.set()
        await running.close()
