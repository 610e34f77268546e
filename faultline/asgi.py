"""The ASGI app of one API node: FastAPI routes + probes (+ the Socket.IO server around them)."""

from __future__ import annotations

from typing import Any

from api.app import create_app
from api.clientip import ClientIp
from core.settings import Settings, get_settings
from health import probes
from realtime import dashboard
from realtime.route import SocketIORoute
from realtime.server import RealtimeServer


def create(settings: Settings | None = None) -> Any:
    settings = settings or get_settings()
    # Socket.IO feed: joins the process's drain (core/drain.py) when the app starts; its limits see the
    # client IP behind trusted proxies as the HTTP limiter does
    live = RealtimeServer(settings, resolve_ip=ClientIp(settings.trusted_proxies).resolve)
    app = create_app(settings, on_start=live.attach)
    app.include_router(probes.router)
    dashboard.mount(app)
    app.add_middleware(SocketIORoute, sio=live.sio, limits=live.limits)
    return app
