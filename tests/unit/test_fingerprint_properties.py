"""Property tests of grouping (hypothesis): linear time whatever the input, same bug with other volatile
values -> same group, different bugs -> different groups."""

from __future__ import annotations

import time
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.events import MAX_MESSAGE, MAX_STACK
from core.fingerprint import default_fingerprint

# Characters and fragments the patterns care about: their own syntax is what makes a regex backtrack.
FRAGMENTS = [*" \n\t.-_@:'\"()<>$x0aF1/\\", "at ", 'File "', ", line ", ", in ", "Error", "0x", "deadbeef", ".js:",
             "(", "a-", "1.2", "@b.c"]
unit = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=8).map("".join)


def cpu_of(message: str, stack: str | None) -> float:
    reps = 3
    started = time.process_time()
    for _ in range(reps):
        default_fingerprint(1, "svc", message, stack)
    return (time.process_time() - started) / reps


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(unit, st.booleans())
def test_cpu_grows_at_most_linearly(piece: str, in_stack: bool) -> None:
    """CPU at 4n against n, for a repeated unit: a quadratic pattern shows ~16x; linear work <= 4x. The
    factor allows 8x plus 2 ms of noise, so a shared machine cannot fail it, and a quadratic one still does."""
    limit = MAX_STACK if in_stack else MAX_MESSAGE
    big = (piece * (limit // len(piece) + 1))[:limit]
    small = big[: limit // 4]

    def run(text: str) -> float:
        return cpu_of("m", text) if in_stack else cpu_of(text, None)

    run(small)  # warm caches
    t_small, t_big = run(small), run(big)
    assert t_big <= 8 * t_small + 0.002, (piece, t_small, t_big)


KINDS = [
    st.integers(min_value=0, max_value=10**12).map(str),
    st.uuids().map(str),
    st.integers(min_value=2**32, max_value=2**64).map(lambda n: f"{n:x}a"),  # hex ids with a letter
    st.text(alphabet="abcdef", min_size=8, max_size=16),  # ... or only letters, as one id in ~2,500 is
    st.uuids().map(lambda u: str(u).upper()),
    st.integers(min_value=0, max_value=2**32).map(lambda n: f"0x{n:x}"),
    st.from_regex(r"[a-z]{1,8}\.[a-z]{1,8}@[a-z]{2,8}\.(com|org|io)", fullmatch=True),
    st.text(alphabet="abc xyz123-", max_size=20).map(lambda s: f"'{s}'"),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
]
volatile = st.one_of(*KINDS)
# the same kind of value in a slot, two different draws (a number and a UUID in one slot are two messages)
slot_pairs = st.lists(st.sampled_from(KINDS).flatmap(lambda kind: st.tuples(kind, kind)), min_size=3, max_size=3)
TEMPLATES = [
    "KeyError: user {} not found in cache {}",
    "Timeout after {} ms talking to {} (request {})",
    "ValueError: invalid literal for int() with base 10: {}",
    "Connection refused by {} for {}",
]
PY_STACK = 'Traceback (most recent call last):\n  File "app/{m}.py", line {a}, in {f}\n' \
           '    do()\n  File "app/db.py", line {b}, in query\nKeyError: {v}\n'


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(TEMPLATES), slot_pairs, st.integers(1, 9999), st.integers(1, 9999))
def test_same_bug_with_other_volatile_values_is_one_group(template: str, pairs: list[tuple[str, str]],
                                                           line_a: int, line_b: int) -> None:
    one, two = [a for a, _ in pairs], [b for _, b in pairs]
    stack_one = PY_STACK.format(m="views", a=line_a, f="handler", b=line_b, v=one[0])
    stack_two = PY_STACK.format(m="views", a=line_b, f="handler", b=line_a, v=two[0])
    assert default_fingerprint(1, "web", template.format(*one), stack_one) == default_fingerprint(
        1, "web", template.format(*two), stack_two)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(TEMPLATES), st.lists(volatile, min_size=3, max_size=3),
       st.sampled_from(["handler", "checkout", "render"]), st.sampled_from(["fetch", "save", "close"]),
       st.from_regex(r"[A-Za-z]{3,12}", fullmatch=True))
def test_different_bugs_are_different_groups(template: str, values: list[str], fn: str, other_fn: str,
                                             word: str) -> None:
    stack = PY_STACK.format(m="views", a=1, f=fn, b=2, v=values[0])
    base = default_fingerprint(1, "web", template.format(*values), stack)
    # another function in the stack, another non-volatile word in the message, another service, project
    moved = stack.replace(f", in {fn}", f", in {other_fn}x")
    assert base != default_fingerprint(1, "web", template.format(*values), moved)
    assert base != default_fingerprint(1, "web", f"{word}: " + template.format(*values), stack)
    assert base != default_fingerprint(1, "jobs", template.format(*values), stack)
    assert base != default_fingerprint(2, "web", template.format(*values), stack)


def test_uuid_strategy_is_normalised_like_any_uuid() -> None:
    a = default_fingerprint(1, "s", f"lost {uuid.uuid4()}", None)
    assert a == default_fingerprint(1, "s", f"lost {uuid.uuid4()}", None)
