"""The pure-ASGI request metrics: route templates as the dashboards group them, status classes, exclusions.

handler_of reads what FastAPI/Starlette leave in the scope after routing (a private detail of the installed
versions): these cases fail first if an upgrade moves it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from api.httpmetrics import LATENCY, REQUESTS, HttpMetricsMiddleware
from core.metrics import DEFERRED


async def _plain(_: Request) -> Response:
    return Response(b"{}", status_code=202, media_type="application/json")


def _app() -> FastAPI:
    app = FastAPI()
    router = APIRouter()
    router.add_route("/t/log", _plain, methods=["POST"])  # a plain Starlette route, as the ingest routes are

    @router.get("/t/groups/{fingerprint}")
    async def group(fingerprint: str) -> dict[str, str]:
        return {"fp": fingerprint}

    prefixed = APIRouter(prefix="/t/admin")

    @prefixed.get("/{item}")
    async def item(item: int) -> dict[str, int]:
        return {"item": item}

    @app.get("/t/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(router)
    app.include_router(prefixed)
    app.add_middleware(HttpMetricsMiddleware, excluded=["/metrics", "/health.*"])
    return app


def _count(handler: str, method: str, status: str) -> float:
    return REQUESTS.labels(handler, method, status)._value.get()


async def test_templates_status_classes_and_exclusions() -> None:
    cases = [("POST", "/t/log", "/t/log", "2xx"), ("GET", "/t/groups/abc", "/t/groups/{fingerprint}", "2xx"),
             ("GET", "/t/admin/7", "/t/admin/{item}", "2xx"), ("GET", "/t/admin/x", "/t/admin/{item}", "4xx"),
             ("GET", "/t/nothing-here", "none", "4xx"), ("DELETE", "/t/log", "/t/log", "4xx")]
    before = {c: _count(c[2], c[0], c[3]) for c in cases}
    latency_before = LATENCY.labels("/t/log", "POST", "2xx")._sum.get()
    health_before = _count("/t/health/live", "GET", "2xx")
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        for method, path, _, _ in cases:
            await client.request(method, path)
        assert (await client.get("/t/health/live")).status_code == 200
    for case in cases:
        assert _count(case[2], case[0], case[3]) == before[case] + 1, case
    assert LATENCY.labels("/t/log", "POST", "2xx")._sum.get() > latency_before
    assert _count("/t/health/live", "GET", "2xx") == health_before  # probes are not recorded


async def test_deferred_writes_add_up_to_the_direct_ones() -> None:
    """core/metrics.py's Deferred writes a histogram child's own sum and bucket values (prometheus_client's
    private layout, pinned here): after its flush the samples are those of observing each value directly."""
    direct, deferred = LATENCY.labels("/t/direct", "POST", "2xx"), LATENCY.labels("/t/deferred", "POST", "2xx")
    count_direct, count_deferred = REQUESTS.labels("/t/direct", "POST", "2xx"), REQUESTS.labels("/t/deferred", "POST",
                                                                                                 "2xx")
    for seconds in (0.0, 0.001, 0.0011, 0.003, 0.025, 0.7, 5.0, 60.0):  # on bounds, between them, past the last
        direct.observe(seconds)
        count_direct.inc()
        DEFERRED.observe(deferred, seconds)
        DEFERRED.inc(count_deferred)
    assert count_deferred._value.get() == 0  # not written yet: the flush is a loop timer
    await asyncio.sleep(DEFERRED.FLUSH_S * 2)
    def samples(child: Any) -> list[tuple[str, float]]:
        return [(s.name, s.value) for s in child.collect()[0].samples if not s.name.endswith("_created")]

    assert samples(deferred) == samples(direct)
    assert count_deferred._value.get() == count_direct._value.get() == 8
