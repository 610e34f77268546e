"""The ASGI app of one API node: FastAPI routes + probes (+ the Socket.IO server around them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api.app import create_app
from api.clientip import ClientIp
from core.runtime import Runtime, ShutdownHook
from core.settings import Settings, get_settings
from health import probes
from realtime import dashboard
from realtime.server import RealtimeServer, SocketIORoute


def create(settings: Settings | None = None, drain_hooks: Sequence[ShutdownHook] = (),
           flush_hooks: Sequence[ShutdownHook] = ()) -> Any:
    """drain_hooks run on SIGTERM once the listener is closed, before open connections are (e.g. tell
    Socket.IO clients to reconnect to another node); flush_hooks run before the Redis and DB pools close.
    Both are how the pieces this module wires together join the drain without importing each other."""
    settings = settings or get_settings()

    # Socket.IO feed: its drain hook closes websockets before uvicorn does; its limits see the client IP
    # behind trusted proxies as the HTTP limiter does
    live = RealtimeServer(settings, resolve_ip=ClientIp(settings.trusted_proxies).resolve)

    def wire(rt: Runtime) -> None:
        rt.drain_hooks.extend(drain_hooks)
        rt.flush_hooks.extend(flush_hooks)
        live.attach(rt)

    app = create_app(settings, on_runtime=wire)
    app.include_router(probes.router)
    dashboard.mount(app)
    app.add_middleware(SocketIORoute, sio=live.sio, limits=live.limits)
    return app
