"""Grouping: which events are "the same error". Pure functions, no I/O, linear time whatever the input.

The default fingerprint hashes service + error type + the message with its volatile parts replaced
(UUIDs, hex ids, numbers, quoted values, e-mail and IP addresses) + the top stack frames without line
numbers, so one bug hit with different data - or after a deploy that moved its line - is one group.
A client-chosen fingerprint wins, hashed with the project so projects never share a group.

This runs on the request path, on text an attacker writes, so every step is bounded and linear:
- the message is cut to MAX_NORMALIZED_INPUT characters before normalising (the result is cut to 1,024
  anyway), and every pattern below is tried only where a match can start (a run boundary) and never
  re-scans text it has passed: no nested or overlapping quantifiers, possessive runs where a failed match
  would otherwise retry from every character (the old e-mail pattern did: "a-" * 4096 took 0.26 s);
- a stack is split into lines once (str.splitlines) and only its first and last STACK_EDGE_LINES lines,
  each cut to MAX_LINE characters, are matched one line at a time (the old multi-line `^\\s*` re-scanned
  every following blank line: 8,192 newlines took 4.2 s). Python prints the innermost frame last, JS and
  Java first, so the frames that decide the group are always in those edges.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable

TOP_FRAMES = 5
MAX_NORMALIZED_INPUT = 4096  # characters of a message that can influence its group
STACK_EDGE_LINES = 200  # lines read from each end of a stack
MAX_LINE = 1024  # characters of one stack line that are matched
_ERROR_TYPE_SPAN = 512  # an exception type name is never longer

_EMAIL_START = re.compile(r"(?<![\w.+-])([\w.+-]++)@[\w-]++\.[\w.-]+\b")
_WORD = re.compile(r"\w")


def _email(match: re.Match[str]) -> str:
    # The local part starts at its first word boundary, as `\b[\w.+-]+@` would place it; searching only
    # from run starts (above) and fixing the start here is what keeps this linear.
    local = match.group(1)
    start = match.start()
    prev = match.string[start - 1] if start else ""
    was_word = bool(prev) and bool(_WORD.match(prev))
    for i, ch in enumerate(local):
        is_word = bool(_WORD.match(ch))
        if is_word != was_word:
            return local[:i] + "<email>"
        was_word = is_word
    return match.group(0)  # no boundary in the local part: not an address


_VOLATILE: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"), "<uuid>"),
    (_EMAIL_START, _email),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d++)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-fA-F]++\b"), "<hex>"),
    # only tried at a word boundary, and a run of hex digits has one: each run is scanned a bounded number of times
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"'[^']*+'|\"[^\"]*+\""), "<str>"),
    (re.compile(r"\d++(?:\.\d++)?"), "<num>"),
]
_ERROR_TYPE = re.compile(r"([A-Za-z_][\w.]*(?:Error|Exception|Fault|Warning|Exit|Interrupt))\b")
# Python: File "app/db.py", line 42, in get_user      JS: at getUser (src/db.js:42:7)  /  at src/db.js:42:7
_PY_FRAME = re.compile(r'File "([^"]++)", line \d++, in (\S++)')
_JS_FRAME = re.compile(r"at (?:(\S++) \()?([^\s()]+?):\d++(?::\d++)?\)?\s*+$")
_GENERIC_FRAME = re.compile(r"(?:at\s++)?([\w.$<>]++)\(([^():]++)(?::\d++)?\)")  # Java-style


def normalize_message(message: str) -> str:
    text = message[:MAX_NORMALIZED_INPUT].strip()
    for pattern, placeholder in _VOLATILE:
        text = pattern.sub(placeholder, text)
    return " ".join(text.split())[:1024]


def _lines(stack: str, split_lines: bool = False) -> list[str]:
    lines = stack.splitlines() if split_lines else stack.split("\n")
    if len(lines) > 2 * STACK_EDGE_LINES:
        lines = lines[:STACK_EDGE_LINES] + lines[-STACK_EDGE_LINES:]
    return [line[:MAX_LINE] for line in lines]


def _type_in(line: str) -> str | None:
    match = _ERROR_TYPE.match(line.lstrip()[:_ERROR_TYPE_SPAN])
    return match.group(1) if match else None


def error_type(message: str, stack: str | None) -> str:
    found = _type_in(message)
    if found:
        return found
    if stack:
        for line in reversed(_lines(stack.strip(), split_lines=True)):
            found = _type_in(line)
            if found:
                return found
    return ""


def stack_frames(stack: str | None, limit: int = TOP_FRAMES) -> list[str]:
    """The innermost `limit` frames as "file:function", line numbers dropped."""
    if not stack:
        return []
    lines = _lines(stack)
    py = [f"{f}:{fn}" for line in lines for f, fn in _PY_FRAME.findall(line)]
    if py:
        return py[-limit:]  # Python prints the innermost frame last
    js = [f"{m.group(2)}:{m.group(1) or '?'}" for line in lines if (m := _JS_FRAME.search(line))]
    if js:
        return js[:limit]  # JS and Java print the innermost frame first
    frames = []
    for line in lines:
        m = _GENERIC_FRAME.match(line.lstrip())
        if m:
            frames.append(f"{m.group(2)}:{m.group(1)}")
            if len(frames) == limit:
                break
    return frames


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
