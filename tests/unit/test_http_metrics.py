"""The pure-ASGI request metrics: route templates as the dashboards group them, status classes, exclusions.

handler_of reads what FastAPI/Starlette leave in the scope after routing (a private detail of the installed
versions): these cases fail first if an upgrade moves it."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response

from api.httpmetrics import LATENCY, REQUESTS, HttpMetricsMiddleware


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
