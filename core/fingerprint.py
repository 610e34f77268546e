"""Grouping: which events are "the same error". Pure functions, no I/O.

The default fingerprint hashes service + error type + the message with its volatile parts replaced
(UUIDs, hex ids, numbers, quoted values, e-mail and IP addresses) + the top stack frames without line
numbers, so one bug hit with different data - or after a deploy that moved its line - is one group.
A client-chosen fingerprint wins, hashed with the project so projects never share a group.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

TOP_FRAMES = 5

_VOLATILE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), "<email>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<num>"),
]
_ERROR_TYPE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Fault|Warning|Exit|Interrupt))\b")
# Python: File "app/db.py", line 42, in get_user      JS: at getUser (src/db.js:42:7)  /  at src/db.js:42:7
_PY_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')
_JS_FRAME = re.compile(r"at (?:(\S+) \()?([^\s()]+?):\d+(?::\d+)?\)?\s*$", re.MULTILINE)
_GENERIC_FRAME = re.compile(r"^\s*(?:at\s+)?([\w.$<>]+)\(([^():]+)(?::\d+)?\)", re.MULTILINE)  # Java-style


def normalize_message(message: str) -> str:
    text = message.strip()
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return " ".join(text.split())[:1024]


def error_type(message: str, stack: str | None) -> str:
    match = _ERROR_TYPE.match(message)
    if match:
        return match.group(1)
    if stack:
        for line in reversed(stack.strip().splitlines()):
            match = _ERROR_TYPE.match(line)
            if match:
                return match.group(1)
    return ""


def stack_frames(stack: str | None, limit: int = TOP_FRAMES) -> list[str]:
    """The innermost `limit` frames as "file:function", line numbers dropped."""
    if not stack:
        return []
    py = [f"{f}:{fn}" for f, fn in _PY_FRAME.findall(stack)]
    if py:
        return py[-limit:]  # Python prints the innermost frame last
    js = [f"{f}:{fn or '?'}" for fn, f in _JS_FRAME.findall(stack)]
    if js:
        return js[:limit]  # JS and Java print the innermost frame first
    return [f"{f}:{fn}" for fn, f in _GENERIC_FRAME.findall(stack)][:limit]


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def client_fingerprint(project_id: int, value: str) -> str:
    return _digest(("client", str(project_id), value))


def default_fingerprint(
    project_id: int, service: str, message: str, stack: str | None, exc_type: str | None = None
) -> str:
    kind = exc_type if exc_type is not None else error_type(message, stack)
    frames = stack_frames(stack)
    return _digest(("auto", str(project_id), service, kind, normalize_message(message), *frames))


def frames_fingerprint(project_id: int, service: str, exc_type: str, frames: list[str]) -> str:
    """For structured (Sentry) events: type + in-app frames identify the bug."""
    return _digest(("frames", str(project_id), service, exc_type, *frames))
