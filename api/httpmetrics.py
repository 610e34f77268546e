"""Per-route request count and latency for Prometheus: a pure ASGI middleware with the names and labels
prometheus-fastapi-instrumentator gave them (the dashboards and alerts read these).

Why not the instrumentator: under `make bench` it was ~7 % self and the largest Python layer of the
single-event route (py-spy, loadtest/reports): per request it builds a Request, matches the path against
every route a second time (the router already did), builds a Response and Headers from the raw ones, an
Info object, and gathers an empty list of async callbacks. Here the router's own match is read back from
scope["route"] after the app ran, and the labelled children are cached, so a request costs two dict
lookups and three multiprocess value writes (counter, histogram bucket, histogram sum).

  http_requests_total{handler, method, status}                 status grouped: "2xx", "4xx", ...
  http_request_duration_seconds{handler, method, status}       buckets around the latency targets
handler = the route template ("/errors/{fingerprint}"), the mount path for a mounted app, "none" for a
path no route matched; paths matching `excluded` (/metrics, probes) are not recorded.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter, Histogram

from core.metrics import DEFERRED

# Around the targets (p95 <= 10 ms, p99 <= 25 ms): the client library's default buckets start at 5 ms and
# grow coarse fast, which cannot tell 2 ms from 9 ms on the dashboard's per-route p95 panel.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LABELS = ("handler", "method", "status")
REQUESTS = Counter("http_requests_total", "Total number of requests by method, status and handler.", LABELS)
LATENCY = Histogram("http_request_duration_seconds", "Duration of HTTP requests in seconds", LABELS,
                    buckets=BUCKETS)

Scope = dict[str, Any]
ASGIApp = Callable[..., Any]


def handler_of(scope: Scope) -> str | None:
    """The full template of the route the router picked, else None (no route matched).

    FastAPI leaves the route it picked inside an included router in scope["fastapi"] (its whole template,
    router prefixes included; plain Starlette routes such as the ingest ones are found only there), and
    Starlette's router the one it picked in scope["route"] (the app's own routes and mounts).
    tests/unit/test_http_metrics.py pins both on the installed versions."""
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    path = getattr(getattr(context, "starlette_route", None), "path_format", None) \
        or getattr(context, "path_format", None)
    if isinstance(path, str):
        return path
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


class RouteMetrics:
    """The labelled children, cached: recording a request costs a dict lookup and the value writes.
    `deferred`: through core/metrics.py's Deferred (the ingest POSTs, api/fastpath.py), else written at once."""

    def __init__(self, deferred: bool = False) -> None:
        self.deferred = deferred
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, handler: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((handler, method, status))
        if children is None:
            key = (handler, method, f"{str(status)[0]}xx")
            children = self._children[(handler, method, status)] = (REQUESTS.labels(*key), LATENCY.labels(*key))
        if self.deferred:
            DEFERRED.inc(children[0])
            DEFERRED.observe(children[1], max(seconds, 0.0))
        else:
            children[0].inc()
            children[1].observe(max(seconds, 0.0))


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, excluded: Sequence[str] = ()) -> None:
        self.app = app
        self.excluded = [re.compile(p) for p in excluded]
        self.metrics = RouteMetrics()
        self._skip: dict[str, bool] = {}  # handler -> excluded? (templates and "none": a small set)

    def _is_excluded(self, handler: str) -> bool:
        found = self._skip.get(handler)
        if found is None:
            found = any(p.search(handler) for p in self.excluded)
            if len(self._skip) < 1000:  # raw paths of unmatched requests are many: cache only a bounded set
                self._skip[handler] = found
        return found

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # an exception that escapes the app is answered 500 by the server error middleware

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        handler = handler_of(scope)
        if self._is_excluded(handler if handler is not None else scope.get("path", "")):
            return
        self.metrics.record(handler or "none", scope["method"], status, seconds)
