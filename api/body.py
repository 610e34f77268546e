"""Reading a JSON body safely: content type, size limit (before reading it all), UTF-8, JSON syntax.

Every step is linear in the body and bounded by max_body_bytes; every failure is a 4xx with a JSON body.
Invalid JSON (syntax, invalid UTF-8, lone surrogate escapes, 1e999, nesting past orjson's 1,024 levels) is
refused whole, also for a batch: without a parse there are no events to judge one by one.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from api.errors import ApiError, validation_details


def check_declared(ctype: str, declared: str | None, limit: int) -> None:
    """What the headers alone tell: not JSON (415), or a Content-Length that is no number or over the limit."""
    if ctype != "application/json" and ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json",
                       {"received": ctype or None})
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "invalid_content_length", "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}")


async def read_body(request: Request, limit: int) -> bytes:
    check_declared(request.headers.get("content-type", ""), request.headers.get("content-length"), limit)
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


# A JSON token of an already-parsed prefix (its strings are terminated): a string, or a structural character.
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},:]')
_LOCATE_SPAN = 32_768  # bytes of prefix walked to name the field: bounded work on a request we refuse anyway
_PATH_PARTS = 3  # "events.3.context" names the field; the 1,000 levels below it do not help


def _path_at(body: bytes, pos: int) -> str | None:
    """The dotted path (e.g. "events.3.context") of the value opening at byte `pos` of a body whose prefix
    orjson has parsed, or None when the prefix is too long to walk."""
    if pos > _LOCATE_SPAN:
        return None
    frames: list[list[Any]] = []  # [kind, key or index of the child being read, expecting a key]
    for match in _TOKEN.finditer(body, 0, pos):
        tok = match.group()
        top = frames[-1] if frames else None
        if tok[0] == 0x22:  # '"'
            if top is not None and top[0] == b"{" and top[2]:
                top[1], top[2] = tok[1:-1].decode("utf-8", "replace"), False
        elif tok in (b"{", b"["):
            frames.append([tok, None, True] if tok == b"{" else [tok, 0, False])
        elif tok in (b"}", b"]"):
            frames.pop()
        elif tok == b"," and top is not None:
            if top[0] == b"{":
                top[2] = True
            else:
                top[1] += 1
    parts = [str(f[1]) for f in frames if f[1] is not None]
    return ".".join(parts[:_PATH_PARTS]) or None


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)  # also rejects invalid UTF-8 and lone surrogates
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            where = _path_at(body, exc.pos)
            raise ApiError(422, "nesting_too_deep", "the body nests deeper than JSON parsing allows (1024 levels)"
                           + (f" at {where}" if where else ""), {"field": where}) from None
        code = "invalid_utf8" if "utf-8" in str(exc).lower() else "invalid_json"
        raise ApiError(400, code, f"body is not valid JSON: {exc}") from None


def validate(model: type[BaseModel], data: Any, context: dict[str, Any] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", "request does not match the schema",
                       validation_details(exc.errors(include_url=False, include_input=False))) from None
