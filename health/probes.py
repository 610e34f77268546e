"""Liveness and readiness probes, in the terminus shape {"status", "info", "error", "details"}.

- /health/live: this process only (event loop responsive, memory under FAULTLINE_MEMORY_LIMIT_MB). Never a
  dependency check: a Redis outage must not make Kubernetes restart every pod at once.
- /health/ready: can this node take ingest now: Redis reachable, not draining, queue below its hard limit.
  The DB, the disk and the queue figures are reported too but do not decide: a slow DB fills the queue,
  ingest sheds with 503 past the soft limit, and taking every node out would turn that into an outage.
- /health: both, for people (200 only when both pass).
"""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from core.runtime import Runtime
from health import checks
from health.checks import Check

router = APIRouter(tags=["health"])
LIVE_REQUIRED = {"event_loop", "memory"}
READY_REQUIRED = {"redis", "drain", "queue"}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def terminus(details: dict[str, Check], required: set[str]) -> tuple[int, dict[str, object]]:
    """status is "ok" unless a required check is down; a down check that is only reported shows in
    "error" with "required": false, so a person sees it without the probe failing."""
    info = {k: v for k, v in details.items() if v["status"] == "up"}
    error = {k: v if k in required else {**v, "required": False}
             for k, v in details.items() if v["status"] != "up"}
    healthy = not (required & error.keys())
    return (200 if healthy else 503), {"status": "ok" if healthy else "error", "info": info, "error": error,
                                       "details": details}


def _respond(details: dict[str, Check], required: set[str]) -> Response:
    status, body = terminus(details, required)
    headers = {"Cache-Control": "no-store"}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def live_checks(rt: Runtime) -> dict[str, Check]:
    return {"event_loop": await checks.event_loop(rt), "memory": checks.memory(rt)}


async def ready_checks(rt: Runtime) -> dict[str, Check]:
    drain = checks.drain(rt)  # read first: 503 from the very first instant of a drain
    redis, queue, database = await asyncio.gather(checks.redis(rt), checks.queue(rt), checks.database(rt))
    return {"redis": redis, "drain": drain, "queue": queue, "database": database, "disk": checks.disk(rt)}


@router.get("/health/live")
async def live(request: Request) -> Response:
    return _respond(await live_checks(_runtime(request)), LIVE_REQUIRED)


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    return _respond(await ready_checks(_runtime(request)), READY_REQUIRED)


@router.get("/health")
async def health(request: Request) -> Response:
    rt = _runtime(request)
    details = {**await live_checks(rt), **await ready_checks(rt)}
    return _respond(details, LIVE_REQUIRED | READY_REQUIRED)
