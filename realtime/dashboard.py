"""Serves the pages a person opens in a browser: GET /dashboard (the live feed), GET /dashboard/groups/{fp} (one
group: its stack traces, hourly chart, state), GET /docs (Swagger UI), and
/dashboard/static/* (their JS and CSS, plus the Socket.IO client and Swagger UI that `make node` copies from
the npm packages into realtime/static/vendor/).

The dashboard holds no data: it asks for a token (or reads it from the URL fragment, which browsers never
send to the server) and then reads GET /errors and the live feed with it. Every page and every static file
carries a Content-Security-Policy that allows this origin's own files only: no inline script, no CDN.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("faultline.dashboard")
STATIC = Path(__file__).resolve().parent / "static"
VENDOR_CLIENT = STATIC / "vendor" / "socket.io.min.js"
VENDOR_SWAGGER = STATIC / "vendor" / "swagger-ui"
# Only our own scripts and styles, websockets to this origin: an injected group message cannot run code.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; base-uri 'none'; frame-ancestors 'none'")
# /docs: Swagger UI reads /openapi.json and sends "try it out" requests to this origin; nothing else.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class SecuredStatic:
    """StaticFiles whose every answer carries the dashboard's CSP: a page opened from /dashboard/static/
    (dashboard.html, docs.html) is as locked down as the same page served at /dashboard or /docs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_secured)


def _replace_cdn_docs(app: FastAPI) -> None:
    """FastAPI's /docs and /redoc pages load their scripts from a CDN, on this origin (a CDN compromise
    would run with the admin's session): drop them; /docs is served below from the npm package instead."""
    cdn_pages = {app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url} - {None}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in cdn_pages]
    app.redoc_url = None


def mount(app: FastAPI) -> None:
    for needed in (VENDOR_CLIENT, VENDOR_SWAGGER / "swagger-ui-bundle.js"):
        if not needed.exists():
            log.warning("%s is missing: run `make node` (the dashboard or /docs cannot work without it)", needed)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:  # a person who opens the bare URL wants the dashboard, not a 404
        return RedirectResponse("/dashboard", status_code=307)

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html", media_type="text/html",
                            headers={**PAGE_HEADERS, "Content-Security-Policy": CSP})

    @app.get("/dashboard/groups/{fingerprint}", include_in_schema=False)
    async def group_page(fingerprint: str) -> FileResponse:
        # the page reads the fingerprint from its own address; a bad one gets GET /errors/{fp}'s 4xx there
        return FileResponse(STATIC / "group.html", media_type="text/html",
                            headers={**PAGE_HEADERS, "Content-Security-Policy": CSP})

    _replace_cdn_docs(app)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", media_type="text/html",
                            headers={**PAGE_HEADERS, "Content-Security-Policy": DOCS_CSP})

    app.mount("/dashboard/static", SecuredStatic(StaticFiles(directory=STATIC, check_dir=True)),
              name="dashboard-static")
