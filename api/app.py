"""create_app(settings): the FastAPI application of an API node (ingest + read API + /metrics)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from starlette.requests import Request
from starlette.responses import Response

from api import errors, openapi
from api.fastpath import IngestFront
from api.httpmetrics import HttpMetricsMiddleware
from api.ingest import Ingestor
from api.ratelimit import rate_limiting
from api.requestid import RequestIdMiddleware
from api.routes import alerts, dlq, groups, ingest, jobs, projects, sentry, triage
from core import metrics
from core.broker import ensure_consumer_group
from core.db.migrate import SchemaTooOld, require_current_schema
from core.drain import Drain
from core.redis import preload_scripts
from core.runtime import Runtime
from core.settings import Settings

log = logging.getLogger("faultline.api")


class NodeApp(FastAPI):
    """The FastAPI app, with the two ingest POSTs answered before it (api/fastpath.py says why)."""

    front: IngestFront | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        front = self.front
        if front is not None and front.handles(scope):
            return await front(scope, receive, send)
        return await super().__call__(scope, receive, send)


def create_app(settings: Settings, on_start: Callable[[Runtime, Drain], None] | None = None) -> FastAPI:
    """on_start: called with the process's Runtime and Drain once they exist (the composition root wires
    its pieces into both there). The Drain is app.state.drain from the start: the server drives it."""
    drain = Drain(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = app.state.runtime = Runtime.open(settings)
        try:  # an older schema: refuse with one clear log line rather than serve 500s on missing columns
            await require_current_schema(rt.engine, log)
        except SchemaTooOld:
            await rt.close()
            raise
        if on_start is not None:
            on_start(rt, drain)
        app.state.ingestor = Ingestor(rt)
        app.front.start(rt, app.state.ingestor)  # type: ignore[attr-defined]
        if limits is not None:
            limits.start(rt)
        try:
            await ensure_consumer_group(rt.redis, rt.keys)
            await preload_scripts(rt.redis)
            await rt.load_projects()
        except Exception as exc:  # Redis down at start: serve 503s until it is back, do not crash-loop
            log.warning("startup: %s", exc)
        try:
            await projects.mirror_now(rt)  # per-project quotas: DB -> the Redis copy ingest.lua reads
        except Exception as exc:  # keep_mirrored copies them once Redis and the DB answer
            log.warning("startup: quotas not copied to Redis: %s", exc)
        rt.spawn(rt.watch(), "watch")
        rt.spawn(metrics.watch_queue_depth(rt.redis, rt.keys), "queue-depth")
        rt.spawn(metrics.watch_loop_lag(), "loop-lag")
        rt.spawn(projects.keep_mirrored(rt), "quota-mirror")  # Redis lost the quotas? copy them again
        yield
        await drain.close(rt.close)

    # FastAPI's native OpenTelemetry hook looks up the tracer provider on every request (~3% of CPU);
    # Faultline exports Prometheus metrics instead.
    app = NodeApp(title="Faultline", version="0.1.0", lifespan=lifespan, default_response_class=ORJSONResponse,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.drain = drain
    errors.install(app)
    openapi.install(app, settings)  # documents the plain-Starlette ingest routes too
    app.include_router(ingest.router)
    app.include_router(groups.router)
    app.include_router(triage.router)
    app.include_router(jobs.router)
    app.include_router(dlq.router)
    app.include_router(projects.router)
    app.include_router(sentry.router)
    app.include_router(alerts.router)
    # Inside the metrics middleware (a 429 is counted like any response), before routing (a refused request
    # costs one limiter call, nothing else). None when FAULTLINE_RATE_LIMIT_ENABLED=false: zero cost.
    limits = rate_limiting(app, settings)
    # The two ingest POSTs, answered before FastAPI with the same request id, limiter and metrics (api/fastpath.py)
    app.front = IngestFront(limits)

    # Request count and latency per route, the two families the dashboards read (api/httpmetrics.py)
    app.add_middleware(HttpMetricsMiddleware, excluded=["/metrics", "/health.*"])
    app.add_middleware(RequestIdMiddleware)  # outermost of ours: every answer carries and logs the id

    if settings.metrics_port is None:  # else the gunicorn master serves them on that side port only
        @app.get("/metrics", include_in_schema=False)
        async def metrics_endpoint(_: Request) -> Response:
            body, ctype = metrics.render()
            return Response(body, media_type=ctype)

    return app
