"""Sentry-style grouping of a normalised event, as a string for the pipeline's client `fingerprint` field
(which core/fingerprint.py `client_fingerprint` hashes with the project, so projects never share a group).

Order, as Sentry users expect it:
  1. the event's `fingerprint` array, `{{ default }}` standing for the default grouping below;
  2. in-app frames (module or file + function, no line numbers: a moved line or other data is the same bug)
     with the exception types of the chain;
  3. exception type + the value with its volatile parts (ids, numbers, quoted data) replaced;
  4. the message template (`logentry.message` before its params are filled in), also normalised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from core.fingerprint import normalize_message

MAX_FINGERPRINT_PARTS = 32


def _frame_key(frame: dict[str, Any]) -> str:
    where = frame.get("module") or frame.get("filename") or frame.get("abs_path") or "?"
    return f"{where}:{frame.get('function') or '?'}"


def default_grouping(exceptions: Sequence[dict[str, Any]], template: str | None) -> str:
    """The default grouping key (before hashing) of an event's exception chain or message."""
    in_app = [(e, [f for f in e.get("frames", ()) if f.get("in_app") is True]) for e in exceptions]
    if any(frames for _, frames in in_app):
        parts = ["frames"]
        for exc, frames in in_app:
            parts.append(f"type={exc.get('type') or ''}")
            parts.extend(_frame_key(f) for f in frames)
        return "\n".join(parts)
    if exceptions:
        return "\n".join(["exception"] + [f"{e.get('type') or ''}: {normalize_message(e.get('value') or '')}"
                                          for e in exceptions])
    return "message\n" + normalize_message(template or "")


def _variable(name: str, default: str, event: dict[str, Any], exceptions: Sequence[dict[str, Any]]) -> str | None:
    main = exceptions[-1] if exceptions else {}
    values = {"default": default, "type": main.get("type"), "error.type": main.get("type"),
              "value": main.get("value"), "error.value": main.get("value"), "level": event.get("level"),
              "transaction": event.get("transaction"), "message": event.get("message")}
    if name not in values:
        return None
    value = values[name]
    return value if isinstance(value, str) else ""


def group_key(event: dict[str, Any], exceptions: Sequence[dict[str, Any]], template: str | None) -> str:
    """What `fingerprint` the pipeline gets: `sentry:<sha256>` of the grouping (bounded length, any input)."""
    default = default_grouping(exceptions, template)
    custom = event.get("fingerprint")
    if isinstance(custom, list) and custom:
        parts = []
        for raw in custom[:MAX_FINGERPRINT_PARTS]:
            text = raw if isinstance(raw, str) else str(raw)
            stripped = text.strip()
            if stripped.startswith("{{") and stripped.endswith("}}"):
                value = _variable(stripped[2:-2].strip().lower(), default, event, exceptions)
                text = value if value is not None else text
            parts.append(text[:1024])
        # ["{{ default }}"] alone is the default grouping, as in Sentry: same group as without it.
        key = default if parts == [default] else "custom\n" + "\x00".join(parts)
    else:
        key = default
    return "sentry:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
