"""An ingest request read straight from its ASGI scope: the few headers the route needs, and its body.

The ingest routes are answered before FastAPI's routing (api/fastpath.py), so they get no Starlette
Request: building one, its Headers view and its body stream cost more than the route's own checks. The
checks are those of api/body.py (`read_body`), with the same status codes and bodies: content type (415),
Content-Length (400/413, before reading), the size limit while reading (413), a client gone mid-body (400),
an empty body (400). Header names are lower case in ASGI; the first occurrence wins, as in Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.body import check_declared
from api.errors import ApiError

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_WANTED = frozenset({b"content-type", b"content-length", b"x-faultline-key", b"x-edge-request-id"})


class Incoming:
    __slots__ = ("ctype", "edge_id", "key", "length", "receive", "scope")

    def __init__(self, scope: MutableMapping[str, Any], receive: Receive) -> None:
        self.scope, self.receive = scope, receive
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in found:
                found[name] = value
        self.ctype = found.get(b"content-type", b"").decode("latin-1")
        length = found.get(b"content-length")
        self.length = None if length is None else length.decode("latin-1")
        key = found.get(b"x-faultline-key")
        self.key = None if key is None else key.decode("latin-1")
        edge = found.get(b"x-edge-request-id")
        self.edge_id = None if edge is None else edge.decode("latin-1")

    async def body(self, limit: int) -> bytes:
        check_declared(self.ctype, self.length, limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                # The client went away mid-body (a timeout, a killed load generator): nothing was accepted.
                raise ApiError(400, "client_disconnected", "the client closed the connection before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            if not message.get("more_body", False):
                if not chunks:  # the usual case: the whole body in one message (nginx buffers it)
                    body = chunk
                    break
                chunks.append(chunk)
                body = b"".join(chunks)
                break
            chunks.append(chunk)
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty")
        return body  # type: ignore[no-any-return]
