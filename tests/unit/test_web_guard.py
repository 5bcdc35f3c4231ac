"""The guide's web mode refuses whoever is not the person who opened it
(anklume_desktop/web_guard.py), over real HTTP on 127.0.0.1, no browser."""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from anklume_desktop.web_guard import COOKIE, Guard, GuardedServer, start

# Each accepted websocket runs this: a process that lives until the server
# writes to it (its "quit"), needing no daemon: the guard is under test.
COMMAND = shlex.join([sys.executable, "-c", "import sys; sys.stdin.read(1)"])


@pytest.fixture
async def served() -> AsyncIterator[tuple[GuardedServer, aiohttp.ClientSession]]:
    server = GuardedServer(COMMAND, Guard(port=0, max_sessions=1))
    runner: web.AppRunner = await start(server)
    # No cookie jar: each test says which cookie it sends.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        try:
            yield server, http
        finally:
            await runner.cleanup()


async def session_cookie(server: GuardedServer, http: aiohttp.ClientSession) -> str:
    async with http.get(server.guard.first_url, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "/"
        cookie = resp.cookies[COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        return cookie.value


def ws_headers(server: GuardedServer, cookie: str | None, origin: str | None = None,
               host: str | None = None) -> dict[str, str]:
    headers = {"Host": host or server.guard.host, "Origin": origin or server.guard.origin}
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return headers


async def ws_status(server: GuardedServer, http: aiohttp.ClientSession,
                    headers: dict[str, str]) -> int:
    url = f"{server.guard.origin}/ws?width=80&height=24"
    try:
        async with http.ws_connect(url, headers=headers) as ws:
            await ws.close()
            return 101
    except aiohttp.WSServerHandshakeError as e:
        return e.status


def test_binds_loopback_only() -> None:
    assert GuardedServer(COMMAND, Guard(port=0)).host == "127.0.0.1"


async def test_the_token_is_exchanged_once_for_a_cookie(served: tuple[
        GuardedServer, aiohttp.ClientSession]) -> None:
    server, http = served
    cookie = await session_cookie(server, http)
    async with http.get(f"{server.guard.origin}/",
                        headers={"Cookie": f"{COOKIE}={cookie}"}) as resp:
        assert resp.status == 200
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert "fonts.googleapis.com" not in resp.headers["Content-Security-Policy"]
    async with http.get(server.guard.first_url, allow_redirects=False) as again:
        assert again.status == 403  # a leaked link is already spent


async def test_no_token_no_cookie_is_refused(served: tuple[
        GuardedServer, aiohttp.ClientSession]) -> None:
    server, http = served
    async with http.get(f"{server.guard.origin}/") as resp:
        assert resp.status == 403
    async with http.get(f"{server.guard.origin}/?token=wrong") as resp:
        assert resp.status == 403
    assert not server.guard.token_used  # a wrong guess does not spend the real one
    assert await ws_status(server, http, ws_headers(server, None)) == 403
    assert await ws_status(server, http, ws_headers(server, "forged")) == 403


async def test_websocket_needs_cookie_origin_and_host(served: tuple[
        GuardedServer, aiohttp.ClientSession]) -> None:
    server, http = served
    cookie = await session_cookie(server, http)
    port = server.guard.port
    assert await ws_status(server, http, ws_headers(
        server, cookie, origin="http://evil.example")) == 403
    assert await ws_status(server, http, ws_headers(
        server, cookie, origin=f"http://localhost:{port}")) == 403
    assert await ws_status(server, http, ws_headers(
        server, cookie, host=f"evil.example:{port}")) == 403  # DNS rebinding
    assert await ws_status(server, http, ws_headers(server, cookie)) == 101


async def test_a_forged_host_cannot_redeem_the_token(served: tuple[
        GuardedServer, aiohttp.ClientSession]) -> None:
    server, http = served
    url = server.guard.first_url
    async with http.get(url, headers={"Host": f"evil.example:{server.guard.port}"},
                        allow_redirects=False) as resp:
        assert resp.status == 403
    assert not server.guard.token_used


async def test_sessions_are_capped(served: tuple[GuardedServer, aiohttp.ClientSession]) -> None:
    server, http = served
    cookie = await session_cookie(server, http)
    url = f"{server.guard.origin}/ws?width=80&height=24"
    async with http.ws_connect(url, headers=ws_headers(server, cookie)):
        assert server.guard.sessions == 1
        assert await ws_status(server, http, ws_headers(server, cookie)) == 429


def test_guard_redeems_only_the_right_token_once() -> None:
    guard = Guard(port=1234)
    assert not guard.redeem("x" * len(guard.token))
    assert guard.redeem(guard.token)
    assert not guard.redeem(guard.token)
    assert guard.first_url.startswith("http://127.0.0.1:1234/?token=")
