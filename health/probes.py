"""Liveness and readiness probes, in the terminus shape {"status", "info", "error", "details"}.

- /health/live: this process only (event loop responsive, memory under FAULTLINE_MEMORY_LIMIT_MB). Never a
  dependency check: a Redis outage must not make Kubernetes restart every pod at once.
- /health/ready: can THIS node serve now: not draining, its event loop responsive. Nothing shared decides
  it: Redis, the queue, the DB and the disk are the same for every node, so a check on them would take every
  node out of rotation at once (the ingress then answers 503 to everything, live feed and read API
  included). They are reported, not required; shared trouble is shed by the app itself (ingest answers a
  fast 503 + Retry-After when Redis is down or the queue is past its soft limit).
- /health: both, for people (200 only when both pass).

Who sees what: every caller gets the status of each check ({"status": "up"|"down"}); the figures, error
texts and paths (a Redis or DB error names hosts, users, file paths) only with the admin token, and in the
log, where a check going down or coming back is written once per change.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from core import access
from core.runtime import Runtime
from health import checks
from health.checks import Check

router = APIRouter(tags=["health"])
LIVE_REQUIRED = {"event_loop", "memory"}
READY_REQUIRED = {"drain", "event_loop"}
log = logging.getLogger("faultline.health")
_last_down: dict[str, bool] = {}  # check name -> was down at the last probe (log changes, not every probe)


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


def _log_changes(details: dict[str, Check]) -> None:
    for name, check in details.items():
        down = check["status"] != "up"
        if _last_down.get(name, False) != down:
            _last_down[name] = down
            if down:
                log.warning("health check %s down: %s", name, orjson.dumps(check).decode())
            else:
                log.info("health check %s up again", name)


def _is_admin(request: Request) -> bool:
    rt = _runtime(request)
    principal = access.authenticate(rt.settings, access.bearer(request.headers.get("authorization")))
    return principal is not None and principal.role == "admin"


def _respond(request: Request, details: dict[str, Check], required: set[str]) -> Response:
    _log_changes(details)
    if not _is_admin(request):
        details = {name: {"status": check["status"]} for name, check in details.items()}
    status, body = terminus(details, required)
    headers = {"Cache-Control": "no-store"}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def live_checks(rt: Runtime) -> dict[str, Check]:
    return {"event_loop": await checks.event_loop(rt), "memory": checks.memory(rt)}


async def ready_checks(rt: Runtime) -> dict[str, Check]:
    drain = checks.drain(rt)  # read first: 503 from the very first instant of a drain
    loop, redis, queue, database = await asyncio.gather(checks.event_loop(rt), checks.redis(rt), checks.queue(rt),
                                                        checks.database(rt))
    return {"drain": drain, "event_loop": loop, "redis": redis, "queue": queue, "database": database,
            "disk": checks.disk(rt)}


@router.get("/health/live")
async def live(request: Request) -> Response:
    return _respond(request, await live_checks(_runtime(request)), LIVE_REQUIRED)


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    return _respond(request, await ready_checks(_runtime(request)), READY_REQUIRED)


@router.get("/health")
async def health(request: Request) -> Response:
    rt = _runtime(request)
    details = {**await live_checks(rt), **await ready_checks(rt)}
    # for people: every dependency counts here (a monitor wants to see Redis down), unlike the probes
    return _respond(request, details, LIVE_REQUIRED | READY_REQUIRED | {"redis", "queue"})
