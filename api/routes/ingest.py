"""POST /errors/log and POST /errors/batch.

Not FastAPI path operations: api/fastpath.py calls these handlers straight from the ASGI scope, before
FastAPI's routing, dependency solving and Request/Response objects (~25 % of the hot path's CPU). A handler
reads the key, the body and the project itself and returns (status, JSON bytes, headers); a client error
is an ApiError (api/errors.py), answered with the one error body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from api.body import parse_json, validate
from api.clientip import for_proxies
from api.deps import require_project
from api.errors import ApiError, validation_details
from api.incoming import Incoming
from api.ingest import Accepted, Ingestor, QueueFull, RateLimited
from api.ratelimit import folded_hit, limited_error
from core.eventcheck import EventIn, quick_event
from core.events import BatchIn, LogErrorIn
from core.runtime import Runtime

Reply = tuple[int, bytes, dict[str, str] | None]  # status, JSON body, extra headers

EVENT_FIELDS = tuple(LogErrorIn.model_fields)
# A 1,000-event batch validates in ~10-30 ms of CPU; handing the loop back every 100 events keeps every
# other request on the node (health probes included) from waiting for all of it.
YIELD_EVERY = 100

router = APIRouter(tags=["ingest"])


class Node:
    """What the ingest handlers read from the app, resolved once per process instead of per request."""

    def __init__(self, runtime: Runtime, ingestor: Ingestor) -> None:
        self.runtime, self.ingestor = runtime, ingestor
        settings = runtime.settings
        self.max_body, self.batch_max = settings.max_body_bytes, settings.batch_max_events
        self.max_depth = settings.max_depth
        self.context = {"max_depth": settings.max_depth}
        self.proxies = for_proxies(settings.trusted_proxies)

    def from_proxy(self, scope: MutableMapping[str, Any]) -> bool:
        """X-Edge-Request-ID decides event ids (a retried request counts once), so only our proxies may set
        it: from anyone else it would let a client pick the ids of its events, and collide with others'."""
        client = scope.get("client")
        return self.proxies.peer_trusted(client[0] if client else None)


def _event(raw: Any, context: dict[str, Any]) -> LogErrorIn | EventIn:
    """One event, or ApiError(422) whose details name every bad field (unknown ones included). A plainly valid
    one is checked by hand (core/eventcheck.py), anything else by LogErrorIn."""
    if type(raw) is dict:
        quick = quick_event(raw, context["max_depth"])
        if quick is not None:
            return quick
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


def _over_quota(accepted: list[Accepted], body: dict[str, Any] | None = None) -> Reply:
    retry = _retry_after_s(accepted)
    message = f"the project's event quota is used up; retry in {retry} s"
    return 429, orjson.dumps({"error": "rate_limited", "message": message, "retry_after": retry, **(body or {})}), \
        {"Retry-After": str(retry)}


async def _run(node: Node, req: Incoming, project: int, items: list[LogErrorIn | EventIn]) -> list[Accepted]:
    try:
        edge_id = req.edge_id
        if edge_id is not None and not (0 < len(edge_id) <= 64 and edge_id.isalnum() and node.from_proxy(req.scope)):
            edge_id = None
        # the rate limiter's check of this request, when it rides in the ingest call (api/ratelimit.py)
        return await node.ingestor.ingest(project, items, edge_id, folded_hit(req.scope))
    except RateLimited as limited:
        raise limited_error(limited.decision) from None
    except QueueFull as full:
        raise ApiError(503, "backpressure", "ingest queue is full; retry later",
                       {"queue_depth": full.depth}, headers={"Retry-After": "5"}) from None


async def log_error(node: Node, req: Incoming) -> Reply:
    project = await require_project(node.runtime, req.key)
    body = await req.body(node.max_body)
    item = _event(parse_json(body), node.context)
    [accepted] = await _run(node, req, project, [item])
    if accepted.rate_limited_ms:
        return _over_quota([accepted], {"event_id": accepted.event_id})
    return 202, orjson.dumps(_accepted(accepted)), None


async def log_batch(node: Node, req: Incoming) -> Reply:
    project = await require_project(node.runtime, req.key)
    limit = node.batch_max
    body = await req.body(node.max_body)
    data = parse_json(body)
    if isinstance(data, dict) and isinstance(data.get("events"), list) and len(data["events"]) > limit:
        raise ApiError(413, "batch_too_large", f"batch has {len(data['events'])} events; the limit is {limit}")
    batch = validate(BatchIn, data)
    results: list[dict[str, Any] | None] = [None] * len(batch.events)
    valid: list[tuple[int, LogErrorIn | EventIn]] = []
    context = node.context
    for i, raw in enumerate(batch.events):
        if i and i % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let probes and other requests run between slices of a big batch
        try:
            valid.append((i, _event(raw, context)))
        except ApiError as exc:
            results[i] = {"index": i, "status": "invalid", "errors": exc.details}
    accepted: list[Accepted] = []
    if valid:
        accepted = await _run(node, req, project, [item for _, item in valid])
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
    return 202 if valid else 422, orjson.dumps(summary), headers


HANDLERS: dict[str, Callable[[Node, Incoming], Awaitable[Reply]]] = {"/errors/log": log_error,
                                                                     "/errors/batch": log_batch}


def _endpoint(handler: Callable[[Node, Incoming], Awaitable[Reply]]) -> Callable[[Request], Awaitable[Response]]:
    """The same handler as a Starlette route. POSTs never reach it (api/fastpath.py answers them first); it
    keeps the routes in the router, so another method on these paths is answered as before (405)."""
    async def endpoint(request: Request) -> Response:
        state = request.app.state
        status, body, headers = await handler(Node(state.runtime, state.ingestor), Incoming(request.scope,
                                                                                            request.receive))
        return Response(body, status_code=status, media_type="application/json", headers=headers)
    return endpoint


for _path, _handler in HANDLERS.items():
    router.add_route(_path, _endpoint(_handler), methods=["POST"], name=_handler.__name__)
