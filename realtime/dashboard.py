"""Serves the dashboard: GET /dashboard (the page) and /dashboard/static/* (its JS, CSS, and the Socket.IO
client that `make node` copies from the npm package into realtime/static/vendor/).

The page holds no data: it asks for a token (or reads it from the URL fragment, which browsers never send
to the server) and then reads GET /errors and the live feed with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

log = logging.getLogger("faultline.dashboard")
STATIC = Path(__file__).resolve().parent / "static"
VENDOR_CLIENT = STATIC / "vendor" / "socket.io.min.js"
# Only our own scripts and styles, websockets to this origin: an injected group message cannot run code.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; base-uri 'none'; frame-ancestors 'none'")


def mount(app: FastAPI) -> None:
    if not VENDOR_CLIENT.exists():
        log.warning("%s is missing: run `make node` (the dashboard cannot connect without it)", VENDOR_CLIENT)

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CSP,
                                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    app.mount("/dashboard/static", StaticFiles(directory=STATIC, check_dir=True), name="dashboard-static")
