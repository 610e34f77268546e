"""POST /errors/log and POST /errors/batch.

Plain Starlette endpoints, not FastAPI path operations: the hot path skips dependency solving and
response-model machinery (~25% of its CPU); it reads the key, the body and the project itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from api.body import parse_json, read_body, validate
from api.clientip import for_proxies
from api.deps import require_project
from api.errors import ApiError, json_response, validation_details
from api.ingest import Accepted, Ingestor, QueueFull, RateLimited
from api.ratelimit import folded_hit, limited_error
from core.events import BatchIn, LogErrorIn

EVENT_FIELDS = tuple(LogErrorIn.model_fields)
# A 1,000-event batch validates in ~10-30 ms of CPU; handing the loop back every 100 events keeps every
# other request on the node (health probes included) from waiting for all of it.
YIELD_EVERY = 100

router = APIRouter(tags=["ingest"])


def _ingestor(request: Request) -> Ingestor:
    return request.app.state.ingestor  # type: ignore[no-any-return]


def _from_proxy(request: Request) -> bool:
    """X-Edge-Request-ID decides event ids (a retried request counts once), so only our proxies may set it:
    from anyone else it would let a client pick the ids of its events, and collide with other requests'."""
    client = request.scope.get("client")
    return for_proxies(request.app.state.runtime.settings.trusted_proxies).peer_trusted(client[0] if client else None)


def _context(request: Request) -> dict[str, Any]:
    return {"max_depth": request.app.state.runtime.settings.max_depth}


def _event(raw: Any, context: dict[str, Any]) -> LogErrorIn:
    """One event, or ApiError(422) whose details name every bad field (unknown ones included)."""
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_request", "an event must be a JSON object",
                       [{"field": None, "problem": "an event must be a JSON object", "type": "dict_type"}])
    try:
        return LogErrorIn.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", "event does not match the schema",
                       validation_details(exc.errors(include_url=False, include_input=False), EVENT_FIELDS)) from None


def _accepted(a: Accepted) -> dict[str, Any]:
    if a.rate_limited_ms:  # [limits] not counted: the project's event quota is used up
        return {"status": "rate_limited", "event_id": a.event_id, "retry_after": _retry_after_s([a])}
    body: dict[str, Any] = {"status": "queued", "fingerprint": a.fingerprint, "event_id": a.event_id}
    if a.duplicate:
        body["duplicate"] = True  # accepted, not counted again
    if a.overflow:
        body["overflow"] = True  # counted into the project's "too many new groups" group
    return body


def _retry_after_s(accepted: list[Accepted]) -> int:
    """Integer seconds (Sentry SDKs drop a whole category on a fractional value), never 0."""
    return max(1, -(-max(a.rate_limited_ms for a in accepted) // 1000))


def _over_quota(accepted: list[Accepted], body: dict[str, Any] | None = None) -> Response:
    retry = _retry_after_s(accepted)
    message = f"the project's event quota is used up; retry in {retry} s"
    return json_response(429, {"error": "rate_limited", "message": message, "retry_after": retry, **(body or {})},
                         {"Retry-After": str(retry)})


async def _run(request: Request, project: int, items: list[LogErrorIn]) -> list[Accepted]:
    try:
        edge_id = request.headers.get("x-edge-request-id")
        if edge_id is not None and not (0 < len(edge_id) <= 64 and edge_id.isalnum() and _from_proxy(request)):
            edge_id = None
        # the rate limiter's check of this request, when it rides in the ingest call (api/ratelimit.py)
        return await _ingestor(request).ingest(project, items, edge_id, folded_hit(request.scope))
    except RateLimited as limited:
        raise limited_error(limited.decision) from None
    except QueueFull as full:
        raise ApiError(503, "backpressure", "ingest queue is full; retry later",
                       {"queue_depth": full.depth}, headers={"Retry-After": "5"}) from None


async def log_error(request: Request) -> Response:
    runtime = request.app.state.runtime
    project = await require_project(runtime, request.headers.get("x-faultline-key"))
    body = await read_body(request, runtime.settings.max_body_bytes)
    item = _event(parse_json(body), _context(request))
    [accepted] = await _run(request, project, [item])
    if accepted.rate_limited_ms:
        return _over_quota([accepted], {"event_id": accepted.event_id})
    return json_response(202, _accepted(accepted))


async def log_batch(request: Request) -> Response:
    runtime = request.app.state.runtime
    project = await require_project(runtime, request.headers.get("x-faultline-key"))
    limit = runtime.settings.batch_max_events
    body = await read_body(request, runtime.settings.max_body_bytes)
    data = parse_json(body)
    if isinstance(data, dict) and isinstance(data.get("events"), list) and len(data["events"]) > limit:
        raise ApiError(413, "batch_too_large", f"batch has {len(data['events'])} events; the limit is {limit}")
    batch = validate(BatchIn, data)
    results: list[dict[str, Any] | None] = [None] * len(batch.events)
    valid: list[tuple[int, LogErrorIn]] = []
    context = _context(request)
    for i, raw in enumerate(batch.events):
        if i and i % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let probes and other requests run between slices of a big batch
        try:
            valid.append((i, _event(raw, context)))
        except ApiError as exc:
            results[i] = {"index": i, "status": "invalid", "errors": exc.details}
    accepted: list[Accepted] = []
    if valid:
        accepted = await _run(request, project, [item for _, item in valid])
        for (i, _), acc in zip(valid, accepted, strict=True):
            results[i] = {"index": i, **_accepted(acc)}
    limited = [a for a in accepted if a.rate_limited_ms]
    summary = {
        "accepted": sum(a.counted for a in accepted),
        "duplicates": sum(a.duplicate for a in accepted),
        "rate_limited": len(limited),
        "invalid": len(batch.events) - len(valid),
        "results": results,
    }
    # [limits] per event: over-quota events are `rate_limited` (not counted), the others accepted; only
    # when nothing at all was accepted is the whole answer a 429. Retry-After either way when some were.
    if limited and len(limited) == len(accepted):
        return _over_quota(limited, summary)
    headers = {"Retry-After": str(_retry_after_s(limited))} if limited else None
    return json_response(202 if valid else 422, summary, headers)


router.add_route("/errors/log", log_error, methods=["POST"])
router.add_route("/errors/batch", log_batch, methods=["POST"])
