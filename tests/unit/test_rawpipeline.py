"""core/rawpipeline.pack_evalsha writes byte for byte what redis-py's own packer writes (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from core.rawpipeline import pack_evalsha

SHA = "0123456789abcdef0123456789abcdef01234567"
ARG = st.one_of(st.binary(max_size=64), st.text(max_size=32), st.integers(-(2**63), 2**63 - 1),
                st.floats(allow_nan=False, allow_infinity=False), st.binary(min_size=7000, max_size=7000))
KEYS = st.lists(st.text(min_size=1, max_size=24), max_size=12)


def reference(calls: list[tuple[list[Any], list[Any]]]) -> bytes:
    return b"".join(Connection().pack_commands([("EVALSHA", SHA, len(k), *k, *a) for k, a in calls]))


@given(st.lists(st.tuples(KEYS, st.lists(ARG, max_size=20)), min_size=1, max_size=5))
def test_same_bytes_as_redis_py(calls: list[tuple[list[Any], list[Any]]]) -> None:
    assert pack_evalsha(SHA, calls) == reference(calls)
    assert pack_evalsha(SHA, calls) == reference(calls)  # again, through the cached heads


def test_ingest_shaped_calls() -> None:
    keys = [f"{{fl:{shard}}}:counts:live" for shard in range(10)]
    args: list[Any] = ["{fl:3}:dd:", 86400, 6, 12500, b"\x01head", b"tail", 1234567, 1789000000000, 0, 0.5,
                       "{fl:3}:ng:", 16, 4_000_000_000, b"\x00\xff" * 3, "fp-\u00e9", memoryview(b"event")]
    assert pack_evalsha(SHA, [(keys, args), (keys[:3], args[:4])]) == reference([(keys, args), (keys[:3], args[:4])])


@pytest.mark.parametrize("bad", [True, None, object()])
def test_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(DataError):
        reference([([], [bad])])
    with pytest.raises(DataError):
        pack_evalsha(SHA, [([], [bad])])
