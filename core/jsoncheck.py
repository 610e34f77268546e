"""Checks on client JSON values that the schema cannot express, in one bounded, iterative walk.

Why each rule:
- depth: orjson parses 1,024 levels but serialises only 254, so a deep `context` used to pass validation and
  fail with a TypeError (a 500) when the event was queued; and nothing reads an error's context 30 levels down.
  The walk is iterative (no Python recursion) and stops at the first node past the limit.
- size: the walk gives up after `max_nodes` values, so its work is bounded however wide the value is (a
  value of more nodes than the context byte limit would be refused for its size anyway: each node is >= 1 byte).
- NUL characters: they truncate strings in C-based tools (log shippers, terminals, some DB drivers) and are
  never part of a real error report.
- numbers past 64 bits: orjson silently turns an integer past 2^64 into a float (lossy), other JSON parsers
  keep it, overflow or refuse it. Refusing what 64 bits cannot hold keeps every reader of the event agreeing.
Duplicate keys in an object are not an error: the last one wins (orjson's and JSON.parse's rule).
"""

from __future__ import annotations

import math
from typing import Any

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1  # unsigned 64-bit: the largest integer orjson keeps exact
FLOAT_MAX = 2.0**63  # a float at or past this is an integer that lost its precision, or not a count at all


class JsonCheckError(ValueError):
    pass


def check_string(value: str, what: str = "string") -> None:
    if "\x00" in value:
        raise JsonCheckError(f"{what} contains a NUL character (\\u0000)")


def check_value(value: Any, max_depth: int, max_nodes: int) -> None:
    """Raise JsonCheckError naming the problem and where (a dotted path) if `value` breaks a rule.

    Depth counts containers: {} is 1 level, {"a": []} 2. Linear in the nodes visited, at most max_nodes."""
    if not is_clean(value, max_depth, max_nodes):
        _explain(value, max_depth, max_nodes)


def is_clean(value: Any, max_depth: int, max_nodes: int) -> bool:
    """True when `value` breaks no rule: the walk of every accepted event, without the dotted paths the error
    messages need (building them cost more than the checks, ~8 us for a two-key context). False when it
    may break one, or holds anything but the types JSON parsing gives: _explain then walks again and names it.
    Counts all the nodes it visits, as _explain does, so it gives up past max_nodes too."""
    kind = type(value)
    if kind is not dict and kind is not list:
        return _scalar_ok(value) and max_nodes >= 1
    pending: list[tuple[Any, int]] = [(value, 1)]
    seen = 1
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            return False
        if type(node) is dict:
            for key in node:
                if type(key) is not str or "\x00" in key:
                    return False
            children = node.values()
        else:
            children = node
        seen += len(children)
        if seen > max_nodes:
            return False
        for item in children:
            kind = type(item)
            if kind is str:
                if "\x00" in item:
                    return False
            elif kind is dict or kind is list:
                pending.append((item, depth + 1))
            elif not _scalar_ok(item):
                return False
    return True


def _scalar_ok(item: Any) -> bool:
    kind = type(item)
    if kind is str:
        return "\x00" not in item
    if kind is int:
        return INT_MIN <= item <= INT_MAX  # type: ignore[no-any-return]
    if kind is float:
        return math.isfinite(item) and abs(item) < FLOAT_MAX
    return item is None or kind is bool


def _explain(value: Any, max_depth: int, max_nodes: int) -> None:
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(value, 1, ())]
    seen = 0
    while stack:
        node, depth, path = stack.pop()
        seen += 1
        if seen > max_nodes:
            raise JsonCheckError(f"has more than {max_nodes} values")
        if isinstance(node, dict):
            if depth > max_depth:
                raise JsonCheckError(f"nests deeper than {max_depth} levels (at {_where(path)})")
            for key, item in node.items():
                check_string(key, f"key {_where((*path, key))!r}")
                stack.append((item, depth + 1, (*path, key)))
        elif isinstance(node, list):
            if depth > max_depth:
                raise JsonCheckError(f"nests deeper than {max_depth} levels (at {_where(path)})")
            stack.extend((item, depth + 1, (*path, str(i))) for i, item in enumerate(node))
        elif isinstance(node, str):
            check_string(node, f"value at {_where(path)}")
        elif isinstance(node, bool) or node is None:
            continue
        elif isinstance(node, int):
            if not INT_MIN <= node <= INT_MAX:
                raise JsonCheckError(f"number at {_where(path)} does not fit in 64 bits: send it as a string")
        elif isinstance(node, float):
            if not math.isfinite(node) or abs(node) >= FLOAT_MAX:
                raise JsonCheckError(f"number at {_where(path)} is out of range (|x| < 2^63): send it as a string")


def _where(path: tuple[str, ...]) -> str:
    text = ".".join(path) or "top level"
    return text if len(text) <= 120 else text[:117] + "..."
