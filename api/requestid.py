"""X-Request-ID on every request and response, and a cheap access log that carries it.

nginx passes the client's id (or generates one); a node reached directly generates its own. The id is put
in scope["state"] (request.state.request_id for routes) and echoed in the response so one id ties the
client, the edge log and every node's log together.

What is logged, and why not everything: a log line costs ~10-20 µs of Python (formatting + I/O), a few %
of a ~300 µs request, and at 2,000 req/s per node it would be the largest volume we write. So: 5xx at
WARNING, 4xx at INFO (the interesting failures), 429 sampled 1 in 100 (a limited client retrying in a loop
would otherwise flood the log at its own rate), 2xx/3xx only when DEBUG is on.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any

log = logging.getLogger("faultline.access")
# What we accept from outside: short and free of spaces/control characters (no log injection).
VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
SAMPLE_429 = 100
MAX_LOGGED_PATH = 512
# Control characters (CR/LF would start a forged log line, ESC would drive a terminal) and DEL are escaped.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def loggable_path(scope: MutableMapping[str, Any]) -> str:
    """The path as the client sent it (still percent-encoded, so %0A stays three harmless characters),
    with anything non-printable escaped and the length capped: a log line can never be split or forged."""
    raw = scope.get("raw_path")
    text = raw.decode("latin-1") if isinstance(raw, bytes) else scope.get("path", "")
    text = text[:MAX_LOGGED_PATH].encode("ascii", "backslashreplace").decode("ascii").translate(_ESCAPES)
    return text


def request_id(scope: MutableMapping[str, Any]) -> bytes:
    """The client's (or the edge's) X-Request-ID when it is a valid one, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if VALID_ID.match(value):
                return value  # type: ignore[no-any-return]
            break
    return uuid.uuid4().hex.encode()


class AccessLog:
    """The access log line of a finished request, at the level its status deserves (see above)."""

    def __init__(self) -> None:
        self._throttled = itertools.count()

    def __call__(self, scope: MutableMapping[str, Any], request_id: str, status: int, started: float) -> None:
        if status >= 500 or status == 0:
            level = logging.WARNING
        elif status == 429:
            if next(self._throttled) % SAMPLE_429:
                return
            level = logging.INFO
        elif status >= 400:
            level = logging.INFO
        else:
            level = logging.DEBUG
        if not log.isEnabledFor(level):
            return
        client = scope.get("client")
        # the socket peer is the proxy when there is one (uvicorn's proxy-headers rewrite is off: the app
        # trusts X-Forwarded-For only from FAULTLINE_TRUSTED_PROXIES); what the proxy says, as it says it
        forwarded = next((v for k, v in scope["headers"] if k == b"x-forwarded-for"), None)
        log.log(level, "rid=%s %s %s %d %.1fms client=%s%s", request_id, scope["method"], loggable_path(scope), status,
                (time.perf_counter() - started) * 1000, client[0] if client else "-",
                f" forwarded={forwarded[:100].decode('latin-1')!r}" if forwarded else "")


class RequestIdMiddleware:
    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self._log = AccessLog()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any],
                       send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id(scope)
        request_id_ = rid.decode()
        scope.setdefault("state", {})["request_id"] = request_id_
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._log(scope, request_id_, status, started)
