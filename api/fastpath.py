"""POST /errors/log and /errors/batch answered before FastAPI: one ASGI call, no middleware chain.

Under `make bench` the layers between the server and the ingest handler were most of an API process's
framework cost (py-spy, in-process driver): Starlette's and FastAPI's own middlewares (server errors,
telemetry, body limit, exceptions), the router's match, Request/Response objects, and our request-id,
metrics and rate-limit middlewares, each a coroutine frame that every await of the request resumed through
and a `send` wrapper per response. NodeApp (api/app.py) hands these two POSTs to IngestFront, which does
what those layers did for them, in order, in one frame:
- the request id (api/requestid.py): the client's or a new one, echoed in X-Request-ID, in the access log;
- the rate limiter (api/ratelimit.py `Door.answer`): its check, folded into the ingest call or not, its
  refusal or its X-RateLimit headers;
- the handler (api/routes/ingest.py): an ApiError becomes its status and the one error body, a RedisError a
  503 with Retry-After (logged), anything else the logged JSON 500 of api/errors.py;
- the HTTP metrics (api/httpmetrics.py), as the route template, written through core/metrics.py's Deferred.
Every other request goes to FastAPI unchanged. The OpenAPI document lists both routes (api/openapi.py), and
the router keeps them too (api/routes/ingest.py), so another method on these paths is answered as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
from redis.exceptions import RedisError

from api.errors import ApiError, error_body
from api.httpmetrics import RouteMetrics
from api.incoming import Incoming
from api.ingest import Ingestor
from api.ratelimit import JSON, Answer, Door
from api.ratelimitguard import RateLimitGuard
from api.requestid import AccessLog, request_id
from api.routes.ingest import HANDLERS, Node
from core.runtime import Runtime

log = logging.getLogger("faultline.api")
UNAVAILABLE = orjson.dumps(error_body("unavailable", "event store unavailable, retry shortly"))
INTERNAL = orjson.dumps(error_body("internal", "internal error"))
Receive = Callable[..., Any]


def _headers(body: bytes, extra: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    headers = [JSON, (b"content-length", b"%d" % len(body))]
    if extra:
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    return headers


class IngestFront:
    def __init__(self, guard: RateLimitGuard | None) -> None:
        self.door = Door(guard) if guard is not None else None
        self.metrics = RouteMetrics(deferred=True)
        self.access_log = AccessLog()
        self._node: Node | None = None

    @staticmethod
    def handles(scope: MutableMapping[str, Any]) -> bool:
        return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in HANDLERS

    def start(self, runtime: Runtime, ingestor: Ingestor) -> None:
        """At lifespan start-up (each start: tests restart apps): what the handlers read, resolved once."""
        self._node = Node(runtime, ingestor)

    def node(self) -> Node:
        if self._node is None:  # a request before start-up: the logged 500, as before
            raise RuntimeError("the ingest path is not started")
        return self._node

    async def _answer(self, scope: MutableMapping[str, Any], receive: Receive) -> Answer:
        try:
            status, body, extra = await HANDLERS[scope["path"]](self.node(), Incoming(scope, receive))
        except ApiError as exc:
            status, body, extra = exc.status, orjson.dumps(error_body(exc.code, exc.message, exc.details)), exc.headers
        except RedisError as exc:
            log.warning("redis unavailable: %s", exc)
            status, body, extra = 503, UNAVAILABLE, {"Retry-After": "1"}
        return status, body, _headers(body, extra)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Callable[..., Any]) -> None:
        rid = request_id(scope)
        rid_text = rid.decode()
        scope.setdefault("state", {})["request_id"] = rid_text
        started = time.perf_counter()
        status = 0
        try:
            try:
                if self.door is not None:
                    answer = await self.door.answer(scope, lambda: self._answer(scope, receive))
                else:
                    answer = await self._answer(scope, receive)
            except Exception:  # what the server error middleware answered: logged, the one error body
                log.exception("unhandled error")
                answer = 500, INTERNAL, [JSON, (b"content-length", b"%d" % len(INTERNAL))]
            status, body, headers = answer
            headers.append((b"x-request-id", rid))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.record(scope["path"], "POST", status or 500, time.perf_counter() - started)
            self.access_log(scope, rid_text, status, started)
