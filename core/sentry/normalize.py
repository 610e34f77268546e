"""A Sentry event (store body or envelope `event` item, untrusted JSON) -> the payload /errors/log takes.

The main exception is the LAST of `exception.values` (Sentry orders the chain outermost first); frames are
oldest first, the crashing one last. Everything Sentry-specific that samples should keep (the exception chain
with its frames, tags, user, release, environment, server name, SDK, logentry template) goes into `context`
under "sentry", trimmed to fit the context size limit: frames are dropped from the outermost end first.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from core.events import MAX_CONTEXT_BYTES, MAX_MESSAGE, MAX_SERVICE, MAX_STACK, MAX_TAGS, LogErrorIn, normalize_event_id
from core.sentry.grouping import group_key

MAX_EXCEPTIONS = 16
MAX_FRAMES = 64  # per exception, innermost kept (grouping and the stack view both want the crash site)
_LEVELS = {"debug": "debug", "info": "info", "log": "info", "warning": "warning", "warn": "warning",
           "error": "error", "fatal": "fatal", "critical": "fatal"}


def _s(value: Any, limit: int = 512) -> str | None:
    """A bounded string without NUL characters (the ingest model refuses them), or None."""
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)[:limit].replace("\x00", "")


def _frames(raw: Any) -> list[dict[str, Any]]:
    frames = raw.get("frames") if isinstance(raw, dict) else None
    if not isinstance(frames, list):
        return []
    out = []
    for f in frames[-MAX_FRAMES:]:
        if not isinstance(f, dict):
            continue
        frame = {"filename": _s(f.get("filename") or f.get("abs_path")), "function": _s(f.get("function"), 256),
                 "module": _s(f.get("module")), "lineno": f.get("lineno") if isinstance(f.get("lineno"), int) else None,
                 "in_app": f.get("in_app") if isinstance(f.get("in_app"), bool) else None}
        out.append({k: v for k, v in frame.items() if v is not None})
    return out


def exception_chain(event: dict[str, Any]) -> list[dict[str, Any]]:
    exc = event.get("exception")
    values = exc.get("values") if isinstance(exc, dict) else exc
    if not isinstance(values, list):
        return []
    chain = []
    for e in values[-MAX_EXCEPTIONS:]:
        if not isinstance(e, dict):
            continue
        item = {"type": _s(e.get("type"), 256), "value": _s(e.get("value"), 2048), "module": _s(e.get("module")),
                "frames": _frames(e.get("stacktrace"))}
        chain.append({k: v for k, v in item.items() if v is not None})
    return chain


def message_of(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """(formatted message, template) from `logentry` (or the legacy `message` object / string)."""
    entry = event.get("logentry")
    if not isinstance(entry, dict):
        entry = event.get("message") if isinstance(event.get("message"), dict) else None
    if entry is None:
        text = _s(event.get("message"), MAX_MESSAGE)
        return text, text
    template = _s(entry.get("message"), MAX_MESSAGE)
    formatted = _s(entry.get("formatted"), MAX_MESSAGE)
    params = entry.get("params")
    if formatted is None and template is not None and isinstance(params, list) and params:
        formatted = _format(template, params)
    return formatted or template, template or formatted


_PLACEHOLDER = re.compile(r"%[sdirf%]")


def _format(template: str, params: list[Any]) -> str:
    """printf-style `%s`/`%d`/... filled in order, `%%` -> `%`. Not `template % params`: a width such as
    `%999999999s` would make Python build a gigabyte string; here the output is bounded by MAX_MESSAGE."""
    values = iter(params)

    def fill(match: re.Match[str]) -> str:
        if match.group() == "%%":
            return "%"
        value = next(values, None)
        return match.group() if value is None else str(value)[:1024]

    return _PLACEHOLDER.sub(fill, template[:MAX_MESSAGE])[:MAX_MESSAGE]


def _render_stack(chain: list[dict[str, Any]]) -> str | None:
    lines: list[str] = []
    for exc in chain:
        for f in exc.get("frames", ()):
            lines.append(f'  File "{f.get("filename") or f.get("module") or "?"}", line {f.get("lineno", "?")}, '
                         f'in {f.get("function") or "?"}')
        lines.append(f"{exc.get('type') or 'Error'}: {exc.get('value') or ''}")
    text = "\n".join(lines)
    return text[-MAX_STACK:] if lines else None


def _tags(raw: Any) -> dict[str, str]:
    pairs = raw.items() if isinstance(raw, dict) else (p for p in raw if isinstance(p, list) and len(p) == 2) \
        if isinstance(raw, list) else ()
    return {str(k)[:200].replace("\x00", ""): str(v)[:200].replace("\x00", "") for k, v in list(pairs)[:MAX_TAGS]}


def _fit(ctx: dict[str, Any]) -> dict[str, Any]:
    """Shrink the context until it serialises under the limit: fewer frames, then no frames, then less."""
    for keep in (MAX_FRAMES, 16, 4, 0):
        for exc in ctx.get("exception", ()):
            exc["frames"] = exc.get("frames", [])[-keep:] if keep else []
        if len(orjson.dumps({"sentry": ctx})) <= MAX_CONTEXT_BYTES:
            return ctx
    for name in ("tags", "user", "exception", "logentry"):
        ctx.pop(name, None)
        if len(orjson.dumps({"sentry": ctx})) <= MAX_CONTEXT_BYTES:
            return ctx
    return {k: ctx[k] for k in ("platform", "sdk") if k in ctx}


def to_log_error(event: dict[str, Any], fallback_event_id: str | None = None) -> LogErrorIn:
    chain = exception_chain(event)
    formatted, template = message_of(event)
    if chain:
        main = chain[-1]
        message = f"{main.get('type') or 'Error'}: {main['value']}" if main.get("value") else main.get("type", "")
    else:
        message = formatted or ""
    fingerprint = group_key(event, chain, template)  # before _fit trims frames
    tags = _tags(event.get("tags"))
    platform = _s(event.get("platform"), 64)
    sdk: dict[str, Any] = event["sdk"] if isinstance(event.get("sdk"), dict) else {}
    user: dict[str, Any] = event["user"] if isinstance(event.get("user"), dict) else {}
    ctx: dict[str, Any] = {
        "platform": platform, "environment": _s(event.get("environment"), 256),
        "release": _s(event.get("release"), 256), "server_name": _s(event.get("server_name"), 256),
        "transaction": _s(event.get("transaction"), 256), "logger": _s(event.get("logger"), 256),
        "sdk": {k: _s(sdk.get(k), 128) for k in ("name", "version") if sdk.get(k) is not None} or None,
        "user": {k: _s(user.get(k), 256) for k in ("id", "username", "email", "ip_address")
                 if user.get(k) is not None} or None,
        "tags": tags or None,
        "logentry": {"message": template, "formatted": formatted} if template and template != formatted else None,
        "exception": [dict(e) for e in chain] or None,  # copies: _fit replaces their frame lists
    }
    ctx = _fit({k: v for k, v in ctx.items() if v is not None})
    event_id = None
    for candidate in (event.get("event_id"), fallback_event_id):
        if isinstance(candidate, str):
            try:
                event_id = normalize_event_id(candidate)
                break
            except ValueError:
                continue
    return LogErrorIn(
        message=(message or "<no message>")[:MAX_MESSAGE],
        stack=_render_stack(chain),
        service=(tags.get("service") or platform or "sentry")[:MAX_SERVICE],
        level=_LEVELS.get(str(event.get("level", "error")).lower(), "error"),  # type: ignore[arg-type]
        context={"sentry": ctx},
        fingerprint=fingerprint,
        event_id=event_id,
    )
