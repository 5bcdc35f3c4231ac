"""The guide's web mode: textual-serve behind a guard.

textual-serve alone has no login and no Origin check: any web page the person
opens could open its websocket (cross-site WebSocket hijacking) and drive the
guide, which can erase a disk. So the server binds 127.0.0.1 only, and:

- the URL it opens carries a one-time token; redeeming it sets an HttpOnly,
  SameSite=Strict cookie and redirects to the bare URL (the token leaves the
  address bar and history at once);
- every request needs that cookie and the exact Host ``127.0.0.1:PORT``
  (a forged Host is how DNS rebinding reaches a local port);
- the websocket also needs the exact Origin ``http://127.0.0.1:PORT``;
- at most ``max_sessions`` websockets (each one is a guide process).

Refusals are a bare 403 (429 for the cap) with one sentence: nothing tells a
foreign page more.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import os
import secrets
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware
from textual_serve.server import Server

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
COOKIE = "anklume_guide"
DEFAULT_MAX_SESSIONS = 2
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _secret() -> str:
    return secrets.token_urlsafe(32)


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Guard:
    """Who may talk to the guide's server (pure: no I/O, tested on its own)."""

    port: int
    max_sessions: int = DEFAULT_MAX_SESSIONS
    token: str = field(default_factory=_secret)
    cookie: str = field(default_factory=_secret)
    token_used: bool = False
    sessions: int = 0

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def first_url(self) -> str:
        """The URL to open once: it carries the token."""
        return f"{self.origin}/?token={self.token}"

    def redeem(self, token: str) -> bool:
        """True once, for the right token; never again (a leaked URL is spent)."""
        if self.token_used or not _same(token, self.token):
            return False
        self.token_used = True
        return True

    def refusal(self, request: web.Request) -> web.Response | None:
        """Why this request may not go on, as the response to send; None if it may."""
        if request.host != self.host:
            return _refused(403, "wrong Host")
        if not _same(request.cookies.get(COOKIE), self.cookie):
            return _refused(403, "no session: open the link the guide printed")
        if request.path == "/ws":
            if request.headers.get("Origin") != self.origin:
                return _refused(403, "wrong Origin")
            if self.sessions >= self.max_sessions:
                return _refused(429, "too many guide sessions are open")
        return None


def _refused(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=_SAFE_HEADERS)


# The page may show only itself: no framing (clickjacking), nothing fetched
# from elsewhere (textual-serve's template asks Google for a font).
_SAFE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


def _csp(guard: Guard) -> str:
    return ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; "
            f"connect-src 'self' ws://{guard.host}; frame-ancestors 'none'")


def guard_middleware(guard: Guard) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" and "token" in request.query and request.host == guard.host:
            if not guard.redeem(request.query["token"]):
                return _refused(403, "this link was already used or is wrong")
            found = web.Response(status=302, headers={**_SAFE_HEADERS, "Location": "/"})
            found.set_cookie(COOKIE, guard.cookie, httponly=True, samesite="Strict", path="/")
            return found
        refused = guard.refusal(request)
        if refused is not None:
            log.info("guide web: refused %s %s", request.method, request.path)
            return refused
        if request.path != "/ws":
            response = await handler(request)
            response.headers.update(_SAFE_HEADERS)
            response.headers["Content-Security-Policy"] = _csp(guard)
            return response
        guard.sessions += 1
        try:
            return await handler(request)
        finally:
            guard.sessions -= 1

    return middleware


class _NoTracebacks(logging.Formatter):
    """textual-serve logs a session's failure with its traceback: one line only."""

    def formatException(self, ei: object) -> str:
        return ""

    def formatStack(self, stack_info: str) -> str:
        return ""


class GuardedServer(Server):
    """textual-serve's server with the guard in front, on 127.0.0.1 only."""

    def __init__(self, command: str, guard: Guard, title: str = "anklume") -> None:
        super().__init__(command, host=LOOPBACK, port=guard.port, title=title,
                         public_url=guard.origin)
        self.guard = guard

    def initialize_logging(self) -> None:
        handler = logging.StreamHandler()
        handler.setFormatter(_NoTracebacks("%(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler])

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(guard_middleware(self.guard))
        return app

    async def on_startup(self, app: web.Application) -> None:
        pass  # textual-serve prints its logo and the bare URL; the launcher says what to open


def guide_command(opening: str = "") -> str:
    """The command each browser session runs: the guide, in its own process."""
    return shlex.join([sys.executable, "-m", "anklume_desktop.guide",
                       *(["--open", opening] if opening else [])])


async def start(server: GuardedServer) -> web.AppRunner:
    """Listen on the guard's port (0: the kernel picks one; the guard learns it)."""
    # No access log: the first request's URL carries the token.
    runner = web.AppRunner(await server._make_app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, server.guard.port)
    await site.start()
    if server.guard.port == 0:
        sockets = runner.addresses
        server.guard.port = int(sockets[0][1])
        server.port, server.public_url = server.guard.port, server.guard.origin
    return runner


async def serve_until_stopped(server: GuardedServer, opened: Callable[[str], None]) -> None:
    runner = await start(server)
    try:
        opened(server.guard.first_url)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def launcher_page(url: str, directory: Path | None = None) -> Path:
    """A page only this user can read that sends the browser on to ``url``.

    Opening ``url`` itself would put the one-time token on the browser's
    command line, which every local user reads in /proc; the command line
    names this file instead (Jupyter does the same). The caller removes it
    once the server stops."""
    where = directory or Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix="anklume-guide-", suffix=".html", dir=where)  # 0600
    with os.fdopen(fd, "w") as page:
        page.write(f'<!doctype html><meta http-equiv="refresh" content="0;url={html.escape(url)}">'
                   f'<a href="{html.escape(url)}">the welcome guide</a>\n')
    return Path(name)
