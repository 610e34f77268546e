"""POST /errors/log and /errors/batch answered before FastAPI's routing: a pure ASGI middleware.

Under `make bench` the layers between our middlewares and the ingest handler (Starlette's exception
middleware, FastAPI's exit-stack middleware, the router's match over every route, the Request and Response
objects and their header views) were ~25 % of an API process's CPU per request (py-spy, in-process driver).
Installed as the innermost of our middlewares, this answers the two ingest POSTs itself, so the request id,
the HTTP metrics and the rate limiter (api/requestid.py, api/httpmetrics.py, api/ratelimit.py) still wrap
them exactly as before; every other request goes on to FastAPI unchanged.

It keeps the answers FastAPI's handlers gave (api/errors.py): an ApiError becomes its status and the one
error body, a RedisError a 503 with Retry-After (logged), anything else propagates to the server error
middleware (the logged JSON 500). The OpenAPI document lists both routes (api/openapi.py), and the router
keeps them too (api/routes/ingest.py), so another method on these paths is answered as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.datastructures import State

from api.errors import ApiError, error_body
from api.incoming import Incoming
from api.routes.ingest import HANDLERS, Node

log = logging.getLogger("faultline.api")
ASGIApp = Callable[..., Any]
JSON = (b"content-type", b"application/json")
UNAVAILABLE = orjson.dumps(error_body("unavailable", "event store unavailable, retry shortly"))


class _Route:
    """What api/httpmetrics.py reads from scope["route"] to label the request (the route template)."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_ROUTES = {path: _Route(path) for path in HANDLERS}


def _headers(body: bytes, extra: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    headers = [JSON, (b"content-length", b"%d" % len(body))]
    if extra:
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    return headers


class IngestFastPath:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state  # the FastAPI app's: runtime and ingestor appear there at lifespan start-up
        self._node: Node | None = None

    def node(self) -> Node:
        node = self._node
        if node is None or node.ingestor is not self.state.ingestor:  # a new lifespan (tests restart apps)
            node = self._node = Node(self.state.runtime, self.state.ingestor)
        return node

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        handler = HANDLERS.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            return await self.app(scope, receive, send)
        scope["route"] = _ROUTES[scope["path"]]
        extra: dict[str, str] | None
        try:
            status, body, extra = await handler(self.node(), Incoming(scope, receive))
        except ApiError as exc:
            status, body, extra = exc.status, orjson.dumps(error_body(exc.code, exc.message, exc.details)), exc.headers
        except RedisError as exc:
            log.warning("redis unavailable: %s", exc)
            status, body, extra = 503, UNAVAILABLE, {"Retry-After": "1"}
        await send({"type": "http.response.start", "status": status, "headers": _headers(body, extra)})
        await send({"type": "http.response.body", "body": body})
        return None
