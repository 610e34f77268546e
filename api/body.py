"""Reading a JSON body safely: content type, size limit (before reading it all), UTF-8, JSON syntax."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from api.errors import ApiError, validation_details


async def read_body(request: Request, limit: int) -> bytes:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json",
                       {"received": ctype or None})
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_content_length", "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went away mid-body (a timeout, a killed load generator): nothing was accepted.
        raise ApiError(400, "client_disconnected", "the client closed the connection before the body ended") from None
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty")
    return body


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)  # also rejects invalid UTF-8 and lone surrogates
    except orjson.JSONDecodeError as exc:
        code = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
        raise ApiError(400, code, f"body is not valid JSON: {exc}") from None


def validate(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", "request does not match the schema",
                       validation_details(exc.errors(include_url=False, include_input=False))) from None
