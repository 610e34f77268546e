"""Grouping: which events are "the same error". Pure functions, no I/O, linear time whatever the input.

The default fingerprint hashes service + error type + the message with its volatile parts replaced
(UUIDs, hex ids, numbers, quoted values, e-mail and IP addresses) + the top stack frames without line
numbers, so one bug hit with different data - or after a deploy that moved its line - is one group.
A client-chosen fingerprint wins, hashed with the project so projects never share a group.

This runs on the request path, on text an attacker writes, so every step is bounded and linear:
- message: quoted values are replaced in one scan; then, since no other volatile pattern spans whitespace,
  the text is normalised word by word and only until the 1,024 characters the result keeps are filled
  (words that cannot hold a volatile part are not even matched). Every pattern is tried only where a
  match can start and never re-scans what it has passed: possessive runs where a failed match would
  otherwise retry from every character (the old e-mail pattern did: "a-" * 4096 took 0.26 s).
- stack: only its first and last STACK_EDGE_LINES lines are read (Python prints the innermost frame last,
  JS and Java first, so the frames that decide the group are in those edges), each pattern is one linear
  scan of that window, and no pattern crosses a line (the old `^\\s*` under MULTILINE re-scanned every
  following blank line: 8,192 newlines took 4.2 s).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import islice

TOP_FRAMES = 5
MAX_NORMALIZED = 1024  # characters of normalised message kept in the fingerprint
MAX_MESSAGE_SCAN = 16_384  # characters of a message read at all (the event model allows 8,192)
# Characters of words matched against the volatile patterns, after quoted values were replaced. The kept
# 1,024 characters are nearly always filled first; only a message made of long volatile tokens (4x
# shorter once replaced) reaches it. It bounds the CPU of one event to well under a millisecond.
MAX_WORD_SCAN = 4096
STACK_EDGE_LINES = 200  # lines read from each end of a stack
MAX_STACK_SCAN = 65_536  # characters of a stack read at all (the event model's limit), half from each end
_ERROR_TYPE_SPAN = 512  # an exception type name is never longer

_QUOTED = re.compile(r"'[^']*+'|\"[^\"]*+\"")
# a word without a digit or "@" holds no volatile part unless it has a run of 8 hex letters (a UUID or hex id)
_NEEDS_WORK = re.compile(r"[\d@]")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
# `\b[\w.+-]+@...` tried from every character is quadratic on "a-a-a-...". Equivalent and linear: start only
# where a run of [\w.+-] starts, keep its leading non-word characters (the old `\b` began after them).
_EMAIL = re.compile(r"(?<![\w.+-])(?=\w)[\w.+-]++@[\w-]++\.[\w.-]+\b")
_EMAIL_AFTER_PUNCT = re.compile(r"(?<![\w.+-])([.+-]++)(?=\w)[\w.+-]++@[\w-]++\.[\w.-]+\b")  # rare: ".a@b.c"
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d++)?\b")
_HEX0X = re.compile(r"\b0x[0-9a-fA-F]++\b")
# only tried at a word boundary, and a run of hex digits has one: each run is scanned a bounded number of times.
# A letter is required (all digits is a number), a digit is not: one id in (6/16)^8 is letters only
# ("deadbeefca"), and leaving those alone split one bug into two groups.
_HEX = re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b")
_NUM = re.compile(r"\d++(?:\.\d++)?")

_ERROR_TYPE = re.compile(r"([A-Za-z_][\w.]*(?:Error|Exception|Fault|Warning|Exit|Interrupt))\b")
_ERROR_TYPE_LINE = re.compile(
    r"^[^\S\n]*+([A-Za-z_][\w.]*(?:Error|Exception|Fault|Warning|Exit|Interrupt))\b", re.MULTILINE)
# Python: File "app/db.py", line 42, in get_user      JS: at getUser (src/db.js:42:7)  /  at src/db.js:42:7
_PY_FRAME = re.compile(r'File "([^"\n]++)", line \d++, in ([^\s]++)')
_JS_FRAME = re.compile(r"at (?:([^\s]++) \()?([^\s()]+?):\d++(?::\d++)?\)?[^\S\n]*+$", re.MULTILINE)
_GENERIC_FRAME = re.compile(  # Java-style
    r"^[^\S\n]*+(?:at[^\S\n]++)?([\w.$<>]++)\(([^():\n]++)(?::\d++)?\)", re.MULTILINE)


_DIGIT = re.compile(r"\d")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{8}")


def _normalize_word(word: str) -> str:
    """The volatile parts of one word. Each pattern runs only when the word can hold its match (checked with
    a plain substring test or a regex with a literal/charset prefix, which scans at C speed): most words of
    a message, and every word of "a-a-a-..." or "....", are not matched at all."""
    digit = _DIGIT.search(word) is not None
    hex_run = len(word) >= 8 and _HEX_RUN.search(word) is not None
    if len(word) >= 32 and (digit or hex_run):
        word = _UUID.sub("<uuid>", word)
    if "@" in word:
        word = _EMAIL.sub("<email>", word)  # a plain replacement: no Python call per match
        if "@" in word:
            word = _EMAIL_AFTER_PUNCT.sub(r"\1<email>", word)
    if not digit:
        return _HEX.sub("<hex>", word) if hex_run else word
    if "." in word:
        word = _IP.sub("<ip>", word)
    if "0x" in word:
        word = _HEX0X.sub("<hex>", word)
    if len(word) >= 8:
        word = _HEX.sub("<hex>", word)
    return _NUM.sub("<num>", word)


# Quoted values replaced at most: each adds 5 non-space characters, so past this many the words are beyond
# MAX_WORD_SCAN and never read. The same result, for a fifth of the work on a message of 8,191 quote marks.
_MAX_QUOTED = MAX_WORD_SCAN // len("<str>") + 1


def normalize_message(message: str) -> str:
    text = _QUOTED.sub("<str>", message[:MAX_MESSAGE_SCAN].strip(), count=_MAX_QUOTED)
    words: list[str] = []
    size = scanned = 0
    for word in text.split():
        scanned += len(word)
        if scanned > MAX_WORD_SCAN:
            break
        if _NEEDS_WORK.search(word) or (len(word) >= 8 and _HEX_RUN.search(word)):
            word = _normalize_word(word)
        words.append(word)
        size += len(word) + 1
        if size > MAX_NORMALIZED:
            break
    return " ".join(words)[:MAX_NORMALIZED]


def _window(stack: str) -> str:
    """The part of a stack that is read: at most STACK_EDGE_LINES lines from each end."""
    if len(stack) > MAX_STACK_SCAN:
        stack = stack[:MAX_STACK_SCAN // 2] + "\n" + stack[-MAX_STACK_SCAN // 2:]
    if stack.count("\n") < 2 * STACK_EDGE_LINES:
        return stack
    head = stack.split("\n", STACK_EDGE_LINES)[:STACK_EDGE_LINES]
    tail = stack.rsplit("\n", STACK_EDGE_LINES)[-STACK_EDGE_LINES:]
    return "\n".join(head + tail)


def error_type(message: str, stack: str | None) -> str:
    match = _ERROR_TYPE.match(message[:_ERROR_TYPE_SPAN * 2].lstrip()[:_ERROR_TYPE_SPAN])
    if match:
        return match.group(1)
    if stack:
        last = None
        for last in _ERROR_TYPE_LINE.finditer(_window(stack.strip())):  # noqa: B007 - the last line that names one
            pass
        if last is not None:
            return last.group(1)
    return ""


def stack_frames(stack: str | None, limit: int = TOP_FRAMES) -> list[str]:
    """The innermost `limit` frames as "file:function", line numbers dropped."""
    if not stack:
        return []
    text = _window(stack)
    py = [f"{f}:{fn}" for f, fn in _PY_FRAME.findall(text)]
    if py:
        return py[-limit:]  # Python prints the innermost frame last
    js = [f"{f}:{fn or '?'}" for fn, f in islice(_JS_FRAME.findall(text), limit)]
    if js:
        return js  # JS and Java print the innermost frame first
    return [f"{m.group(2)}:{m.group(1)}" for m in islice(_GENERIC_FRAME.finditer(text), limit)]


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@lru_cache(maxsize=4096)
def client_fingerprint(project_id: int, value: str) -> str:
    # cached: clients send the same few fingerprints over and over (a hot group's every event); bounded, so
    # a client inventing fingerprints only churns it (512 characters at most each: ~3 MB)
    return _digest(("client", str(project_id), value))


def default_fingerprint(
    project_id: int, service: str, message: str, stack: str | None, exc_type: str | None = None
) -> str:
    kind = exc_type if exc_type is not None else error_type(message, stack)
    frames = stack_frames(stack)
    return _digest(("auto", str(project_id), service, kind, normalize_message(message), *frames))

