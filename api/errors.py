"""Every error a client can cause becomes a clear 4xx JSON body; an unavailable dependency a fast 503."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("faultline.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return body


def validation_details(errors: list[Any], known: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One entry per problem, naming the field. `known`: the model's fields, listed when one is unknown."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        problem = e.get("msg")
        if e.get("type") == "extra_forbidden" and known:
            problem = f"unknown field; the fields are {', '.join(known)}"
        out.append({"field": ".".join(loc)[:200] or None, "problem": problem, "type": e.get("type")})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return json_response(exc.status, error_body(exc.code, exc.message, exc.details), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return json_response(422, error_body("invalid_request", "request does not match the schema",
                                             validation_details(list(exc.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_response(exc.status_code, error_body(code, str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(RedisError)
    async def _redis(_: Request, exc: RedisError) -> Response:
        log.warning("redis unavailable: %s", exc)
        return json_response(503, error_body("unavailable", "event store unavailable, retry shortly"),
                             {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return json_response(500, error_body("internal", "internal error"))
