"""Many EVALSHA calls in one write on one pooled connection: redis-py's own connection API, no Pipeline object.

Why not `redis.pipeline()`: on hot paths with a call per key shard on ONE server (the live feed's takes,
core/feed.py; the limiter's batches) a loop turn's calls go out together, and redis-py 8.1's Pipeline costs
~100 us of client CPU per execute on top of packing and parsing (command stack, HIMPORT preflight, retry
wrapper, observability hooks, reset), measured with loadtest-style CPU timing: one 2-call pipeline ~330 us
against ~220 us this way.

Packing is done here too: redis-py packs every argument through its Encoder (~0.6-1.5 us each), and a
script's SHA and keys seldom change; their RESP is packed once and cached (`_HEADS`, `_KEYS`), the rest is
the same RESP redis-py writes (tests/unit/test_rawpipeline.py compares them).

What this keeps from the Pipeline: one packed write, every reply read before returning (the socket never
desyncs: an error reply is read whole and returned in its place), a connection that failed or was
interrupted half-way is disconnected before it goes back to the pool, and the pool's own bounds (the
BlockingConnectionPool timeout; Sentinel's pool and its fenced connections, core/sentinel.py, whose
read_response still runs). Single server or Sentinel only: a cluster client routes per slot (core/redis.py
keeps its pipeline there).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import DataError, ResponseError

_HEADS: dict[str, bytes] = {}  # sha -> RESP of "EVALSHA sha"
_KEYS: dict[str, dict[str | bytes, bytes]] = {}  # encoding -> key -> its RESP bulk string, packed once
HEADS_MAX = 4096  # keys: one per script key and key shard in practice; a bound against callers varying keys


def _bulk(value: Any, encoding: str) -> bytes:
    """One RESP bulk string, encoded as redis-py's Encoder does (bool refused, floats by repr)."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode(encoding)
    elif isinstance(value, bool):
        raise DataError("Invalid input of type: 'bool'. Convert to a bytes, string, int or float first.")
    elif isinstance(value, int):
        data = b"%d" % value
    elif isinstance(value, float):
        data = repr(value).encode()
    elif isinstance(value, memoryview):
        data = value.tobytes()
    else:
        raise DataError(f"Invalid input of type: {type(value).__name__!r}. Convert to a bytes, string, int or "
                        "float first.")
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack_evalsha(sha: str, calls: list[tuple[list[Any], list[Any]]], encoding: str = "utf-8") -> bytes:
    """The RESP of `EVALSHA sha len(keys) *keys *args` for each call, in one buffer. Keys are cached one by
    one, not as a whole list: a one-server ingest call carries a section of keys per key shard it touches,
    any of 2^16 combinations with 16 shards, while each key is one of 10 per shard (issue 12 must-show 6:
    redis-py's packer spent ~0.6 us per argument, ~4 us per event on the sections' keys alone)."""
    head = _HEADS.get(sha)
    if head is None:
        head = _HEADS[sha] = b"$7\r\nEVALSHA\r\n" + _bulk(sha, encoding)
    cache = _KEYS.setdefault(encoding, {})
    parts: list[bytes] = []
    for keys, args in calls:
        parts.append(b"*%d\r\n" % (3 + len(keys) + len(args)))
        parts.append(head)
        parts.append(b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys)))
        for k in keys:
            packed = cache.get(k) if isinstance(k, str | bytes) else _bulk(k, encoding)  # 1 == 1.0 == True
            if packed is None:
                if len(cache) >= HEADS_MAX:
                    cache.clear()
                packed = cache[k] = _bulk(k, encoding)
            parts.append(packed)
        parts.extend(_bulk(a, encoding) for a in args)
    return b"".join(parts)


async def evalsha_many(redis: Redis, sha: str, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
    """The reply of each (keys, args) call of script `sha`, or its ResponseError (NOSCRIPT included) in its
    place; a connection or timeout error is raised for the whole batch, like a pipeline's."""
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(pack_evalsha(sha, calls, conn.encoder.encoding))
        replies: list[Any] = []
        for _ in calls:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # an error reply is read whole: the next reply follows in order
                replies.append(exc)
        return replies
    except BaseException:
        # half-sent or half-read (timeout, cancellation, broken socket): never hand it to another caller
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)
