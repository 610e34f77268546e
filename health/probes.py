"""Liveness and readiness probes.

/health/live checks this process only (a Redis outage must not restart every pod);
/health/ready says whether this node can take ingest now (Redis reachable, not draining, queue under
its hard limit). Bodies use the terminus shape {"status", "info", "error", "details"}.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from core.runtime import Runtime

router = APIRouter(tags=["health"])
CHECK_TIMEOUT = 0.5


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _answer(checks: dict[str, dict[str, Any]], required: set[str]) -> Response:
    ok = {k: v for k, v in checks.items() if v["status"] == "up"}
    bad = {k: v for k, v in checks.items() if v["status"] != "up"}
    healthy = not (required & bad.keys())
    body = {"status": "ok" if healthy else "error", "info": ok, "error": bad, "details": checks}
    return Response(orjson.dumps(body), status_code=200 if healthy else 503, media_type="application/json")


async def _redis_check(rt: Runtime) -> dict[str, Any]:
    try:
        await asyncio.wait_for(rt.redis.ping(), CHECK_TIMEOUT)
        return {"status": "up"}
    except Exception as exc:
        return {"status": "down", "message": str(exc) or type(exc).__name__}


@router.get("/health/live")
async def live() -> Response:
    return _answer({"event_loop": {"status": "up"}}, {"event_loop"})


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    rt = _runtime(request)
    checks = {
        "redis": await _redis_check(rt),
        "drain": {"status": "down" if rt.draining else "up"},
        "queue": {"status": "up" if rt.queue_depth < rt.settings.queue_hard_limit else "down",
                  "depth": rt.queue_depth, "backpressure": rt.queue_depth >= rt.settings.queue_soft_limit},
    }
    return _answer(checks, {"redis", "drain", "queue"})
