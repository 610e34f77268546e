"""Sentry ingest: POST /api/<project_id>/envelope/ and /api/<project_id>/store/, for unmodified Sentry SDKs.

Plain Starlette endpoints like /errors/log (no dependency solving on the hot path). Sequence: key from the
headers or query (refused before the body is read), body read with the compressed limit, decompressed with
the decompressed limit, envelope parsed (every event item validated before anything is ingested: a bad
envelope is refused whole), event items normalised (core/sentry/) and handed to the same Ingestor as
/errors/log (dedup by event_id, one count, same feed). Other known item types are counted, not stored.
Answers are what SDKs expect: 200 {"id": ...}; 429 + Retry-After + X-Sentry-Rate-Limits when full.
CORS headers on every answer of these routes (browser SDKs), and a preflight answer for OPTIONS.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from api.clientip import for_proxies
from api.deps import require_project
from api.errors import ApiError, error_body, validation_details
from api.ingest import QueueFull
from core import metrics
from core.events import LogErrorIn, normalize_event_id
from core.runtime import Runtime
from core.sentry.auth import AuthError, agreed_key, key_from_auth_header, parse_dsn
from core.sentry.decompress import DecodeError, TooLarge, decompress
from core.sentry.envelope import COUNTED_TYPES, EnvelopeError, event_payload, parse_envelope
from core.sentry.normalize import to_log_error
from core.sentry.ratelimits import rate_limits_header

router = APIRouter(tags=["sentry"])

CORS = {"Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": "X-Sentry-Rate-Limits, Retry-After, X-Sentry-Error"}
PREFLIGHT = {**CORS, "Access-Control-Allow-Methods": "POST, OPTIONS",
             "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, X-Sentry-Auth, Authorization, "
                                             "sentry-trace, baggage",
             "Access-Control-Max-Age": "86400"}
# When the ingest queue is full only events are refused; sessions, transactions... are not queued anyway.
FULL_RETRY_S = 5
FULL_LIMITS = f"{FULL_RETRY_S}:error;default;security:key:queue_full"  # = rate_limits_header(...) with these


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={**CORS, **(headers or {})})


def _header_keys(request: Request) -> list[str | None]:
    return [key_from_auth_header(request.headers.get("x-sentry-auth")),
            key_from_auth_header(request.headers.get("authorization")),
            request.query_params.get("sentry_key")]


async def _project(runtime: Runtime, path_project: int, keys: list[str | None]) -> int:
    project = await require_project(runtime, agreed_key(keys))  # the same lookup as X-Faultline-Key
    if project != path_project:
        raise AuthError(403, "project_mismatch", "this key belongs to another project than the URL names")
    return project


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ApiError(413 if declared.isdigit() else 400, "body_too_large" if declared.isdigit()
                       else "invalid_content_length", f"the body limit is {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection before the body ended") from None
    return bytes(body)


async def _body(request: Request, runtime: Runtime) -> bytes:
    s = runtime.settings
    raw = await _read(request, s.sentry_max_compressed_bytes)
    try:
        return decompress(raw, request.headers.get("content-encoding"), s.sentry_max_decompressed_bytes)
    except TooLarge as exc:
        raise ApiError(413, "body_too_large", str(exc)) from None


class OverQuota(Exception):
    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("the project's event quota is used up")
        self.retry_after_s = max(1, -(-retry_after_ms // 1000))  # whole seconds, never 0


async def _ingest(request: Request, project: int, events: list[LogErrorIn]) -> list[str]:
    edge_id = request.headers.get("x-edge-request-id")
    # Only our proxy may choose the ids of events sent without one (as in api/routes/ingest.py).
    peer = request.scope.get("client")
    trusted = for_proxies(request.app.state.runtime.settings.trusted_proxies).peer_trusted(peer[0] if peer else None)
    if edge_id is not None and not (0 < len(edge_id) <= 64 and edge_id.isalnum() and trusted):
        edge_id = None
    accepted = await request.app.state.ingestor.ingest(project, events, edge_id)
    # A per-project quota (when the ingest script has one) marks events it did not count: tell the SDK.
    limited = max((getattr(a, "rate_limited_ms", 0) for a in accepted), default=0)
    if limited:
        raise OverQuota(limited)
    return [a.event_id for a in accepted]


async def _answer(request: Request, handler: Any) -> Response:
    try:
        return await handler(request, request.app.state.runtime)
    except (ApiError, AuthError, DecodeError, EnvelopeError) as exc:
        return _json(exc.status, error_body(exc.code, exc.message))
    except ValidationError as exc:  # normalisation keeps every field in bounds; a guard, not a path
        return _json(400, error_body("invalid_event", "the event cannot be normalised",
                                     validation_details(exc.errors(include_url=False, include_input=False))))
    except QueueFull:
        return _json(429, error_body("backpressure", "ingest queue is full; retry later"),
                     {"Retry-After": str(FULL_RETRY_S), "X-Sentry-Rate-Limits": FULL_LIMITS})
    except OverQuota as over:
        limits = rate_limits_header(request.url.path, over.retry_after_s, "error;default;security", "project",
                                    "usage_exceeded")
        return _json(429, error_body("rate_limited", f"the project's event quota is used up; retry in "
                                     f"{over.retry_after_s} s"), {"Retry-After": str(over.retry_after_s),
                                                                  "X-Sentry-Rate-Limits": limits or ""})
    except RedisError:
        return _json(503, error_body("unavailable", "event store unavailable, retry shortly"), {"Retry-After": "1"})


def _event_id(value: Any) -> str | None:
    try:
        return normalize_event_id(value) if isinstance(value, str) and len(value) <= 64 else None
    except ValueError:
        return None


async def _envelope(request: Request, runtime: Runtime) -> Response:
    path_project = request.path_params["project_id"]
    keys = _header_keys(request)
    if any(keys):  # refuse a wrong key before reading (and decompressing) the body
        await _project(runtime, path_project, keys)
    header, items = parse_envelope(await _body(request, runtime), runtime.settings.sentry_max_event_bytes)
    dsn = header.get("dsn")
    if dsn is not None:
        dsn_key, dsn_project = parse_dsn(dsn) if isinstance(dsn, str) else (None, None)
        if dsn_key is None:
            raise AuthError(401, "invalid_dsn", "the envelope header's dsn is not a Sentry DSN")
        if dsn_project != str(path_project):
            raise AuthError(403, "project_mismatch", "the envelope's dsn names another project than the URL")
        keys.append(dsn_key)
    project = await _project(runtime, path_project, keys)
    header_id = _event_id(header.get("event_id"))
    event_items = [(i, item) for i, item in enumerate(items) if item.type == "event"]
    fallback = header_id if len(event_items) == 1 else None
    events = [to_log_error(event_payload(item, i), fallback) for i, item in event_items]
    ids = await _ingest(request, project, events) if events else []
    for item in items:
        metrics.SENTRY_ITEMS.labels(item.type if item.type == "event" or item.type in COUNTED_TYPES
                                    else "unknown").inc()
    return _json(200, {"id": ids[0] if ids else header_id})


async def _store(request: Request, runtime: Runtime) -> Response:
    project = await _project(runtime, request.path_params["project_id"], _header_keys(request))
    body = await _body(request, runtime)
    limit = runtime.settings.sentry_max_event_bytes
    if len(body) > limit:
        raise ApiError(413, "item_too_large", f"the event is {len(body)} bytes; the limit is {limit}")
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ApiError(400, "invalid_event", "the body must be a JSON object")
    [event_id] = await _ingest(request, project, [to_log_error(event)])
    metrics.SENTRY_ITEMS.labels("event").inc()
    return _json(200, {"id": event_id})


async def envelope(request: Request) -> Response:
    return await _answer(request, _envelope)


async def store(request: Request) -> Response:
    return await _answer(request, _store)


async def preflight(_: Request) -> Response:
    return Response(status_code=200, headers=PREFLIGHT)


for _path in ("/api/{project_id:int}/envelope/", "/api/{project_id:int}/store/"):
    router.add_route(_path, envelope if _path.endswith("envelope/") else store, methods=["POST"])
    router.add_route(_path, preflight, methods=["OPTIONS"])
