"""The OpenAPI entries of POST /errors/log and /errors/batch.

Those two are plain Starlette routes (api/routes/ingest.py: FastAPI's dependency solving and response
models cost ~25% of the hot path's CPU), so FastAPI does not see them. Their schema is added here, built
from the same pydantic model that validates the events, once, when /openapi.json is first asked for:
the request path is not touched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from core.events import LogErrorIn
from core.settings import Settings

_ERROR = {"$ref": "#/components/schemas/ApiError"}
_EXAMPLE = {"message": "TypeError: x is undefined", "service": "web", "level": "error",
            "stack": "TypeError: x is undefined\n    at render (src/app.js:42:7)",
            "context": {"user_id": 42, "route": "/checkout"}}


def _error_responses(*codes: tuple[int, str]) -> dict[str, Any]:
    return {str(code): {"description": text, "content": {"application/json": {"schema": _ERROR}}}
            for code, text in codes}


def _common(settings: Settings) -> list[tuple[int, str]]:
    return [(400, "malformed JSON, invalid UTF-8 or an empty body"),
            (401, "missing or unknown X-Faultline-Key"),
            (413, f"body over {settings.max_body_bytes} bytes"),
            (415, "Content-Type is not application/json"),
            (429, "rate limited (Retry-After in seconds)"),
            (503, "queue full or Redis unavailable: nothing was counted, retry after Retry-After")]


def ingest_paths(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) of the two ingest routes."""
    event = LogErrorIn.model_json_schema(ref_template="#/components/schemas/{model}")
    event["description"] = (
        f"One error event. Unknown fields are refused (422 naming them). `context` may nest at most "
        f"{settings.max_depth} levels and hold no NUL characters nor numbers past 64 bits; duplicate keys: the "
        "last one wins.")
    accepted = {"type": "object", "required": ["status", "fingerprint", "event_id"], "properties": {
        "status": {"type": "string", "enum": ["queued"]}, "fingerprint": {"type": "string"},
        "event_id": {"type": "string"}, "duplicate": {"type": "boolean"}}}
    batch = {"type": "object", "required": ["events"], "additionalProperties": False, "properties": {
        "events": {"type": "array", "minItems": 1, "maxItems": settings.batch_max_events,
                   "items": {"$ref": "#/components/schemas/LogErrorIn"}}}}
    result = {"type": "object", "required": ["index", "status"], "properties": {
        "index": {"type": "integer"}, "status": {"type": "string", "enum": ["queued", "invalid"]},
        "fingerprint": {"type": "string"}, "event_id": {"type": "string"}, "duplicate": {"type": "boolean"},
        "errors": {"type": "array", "items": {"type": "object"}}}}
    summary = {"type": "object", "required": ["accepted", "duplicates", "invalid", "results"], "properties": {
        "accepted": {"type": "integer"}, "duplicates": {"type": "integer"}, "invalid": {"type": "integer"},
        "results": {"type": "array", "items": {"$ref": "#/components/schemas/BatchResult"}}}}
    api_error = {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string"}, "message": {"type": "string"}, "details": {}}}
    security: list[dict[str, list[str]]] = [{"IngestKey": []}]

    def body(ref: str, example: Any) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{ref}"}, "example": example}}}

    def ok(ref: str, text: str) -> dict[str, Any]:
        schema = {"$ref": f"#/components/schemas/{ref}"}
        return {"description": text, "content": {"application/json": {"schema": schema}}}

    paths = {
        "/errors/log": {"post": {
            "tags": ["ingest"], "summary": "Report one error", "operationId": "log_error", "security": security,
            "requestBody": body("LogErrorIn", _EXAMPLE),
            "responses": {"202": ok("Accepted", "accepted and counted once (a repeated event_id: duplicate)"),
                          **_error_responses(*_common(settings), (422, "the event does not match the schema; "
                                                                  "details name each bad field"))}}},
        "/errors/batch": {"post": {
            "tags": ["ingest"], "summary": f"Report up to {settings.batch_max_events} errors at once",
            "operationId": "log_batch", "security": security,
            "requestBody": body("BatchIn", {"events": [_EXAMPLE, {"message": "KeyError: 'user'"}]}),
            "responses": {"202": ok("BatchSummary", "at least one event accepted; invalid ones are marked "
                                    "`invalid` with their errors, the others queued"),
                          **_error_responses(*_common(settings), (422, "no event was valid (the summary says why), "
                                                                  "or the body is not {\"events\": [...]}"))}}},
    }
    schemas = {"LogErrorIn": event, "BatchIn": batch, "Accepted": accepted, "BatchResult": result,
               "BatchSummary": summary, "ApiError": api_error}
    return paths, schemas


def install(app: FastAPI, settings: Settings) -> None:
    """Wrap app.openapi so the generated schema also documents the ingest routes (built once, cached)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            paths, schemas = ingest_paths(settings)
            schema.setdefault("paths", {}).update(paths)
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(schemas)
            components.setdefault("securitySchemes", {})["IngestKey"] = {
                "type": "apiKey", "in": "header", "name": "X-Faultline-Key"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
