"""The ASGI door of /socket.io/: requests for it go to the Socket.IO server (realtime/server.py), the rest to
FastAPI; a client over its connect window is refused here with a 429 JSON body (or a closed upgrade)."""

from __future__ import annotations

from typing import Any

import orjson
import socketio

from realtime.limits import SocketLimits


class SocketIORoute:
    """ASGI middleware sending /socket.io/ to the Socket.IO server and the rest to FastAPI, which keeps
    its own lifespan (`app.add_middleware(SocketIORoute, sio=..., limits=...)`). With `limits`, a client over
    its connect window (or with too many bad tokens) is refused here, before engine.io does any work."""

    def __init__(self, app: Any, sio: socketio.AsyncServer, limits: SocketLimits | None = None) -> None:
        self.app = app
        self.sio_app = socketio.ASGIApp(sio, socketio_path="socket.io")
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/socket.io/"):
            if self.limits is not None:
                wait = await self.limits.admit_connect(self.limits.client_of(scope))
                if wait:
                    return await _refuse(scope, send, wait)
            await self.sio_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _refuse(scope: dict[str, Any], send: Any, wait: int) -> None:
    if scope["type"] == "websocket":  # closing before accepting: the server answers the upgrade with 403
        await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})
        return
    body = orjson.dumps({"error": "rate_limited", "message": f"too many connection attempts; retry in {wait} s"})
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", str(wait).encode())]})
    await send({"type": "http.response.body", "body": body})
