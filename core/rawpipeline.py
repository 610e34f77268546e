"""Many EVALSHA calls in one write on one pooled connection: redis-py's own connection API, no Pipeline object.

Why not `redis.pipeline()`: on hot paths with a call per key shard on ONE server (the live feed's takes,
core/feed.py; the limiter's batches) a loop turn's calls go out together, and redis-py 8.1's Pipeline costs
~100 us of client CPU per execute on top of packing and parsing (command stack, HIMPORT preflight, retry
wrapper, observability hooks, reset), measured with loadtest-style CPU timing: one 2-call pipeline ~330 us
against ~220 us this way.

Packing is done here too: redis-py packs every argument through its Encoder (~1.5 us each), and a script
call's keys and SHA seldom change per shard; their RESP is packed once and
cached (`_HEADS`), the rest is the same RESP redis-py writes (tests/unit/test_rawpipeline.py compares them).

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

_HEADS: dict[tuple[str, tuple[str, ...]], bytes] = {}  # (sha, keys) -> RESP of "EVALSHA sha numkeys keys..."
HEADS_MAX = 4096  # one entry per script and key shard in practice; a bound against a caller varying keys


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
    """The RESP of `EVALSHA sha len(keys) *keys *args` for each call, in one buffer."""
    parts: list[bytes] = []
    for keys, args in calls:
        cached = (sha, tuple(keys))
        head = _HEADS.get(cached)
        if head is None:
            if len(_HEADS) >= HEADS_MAX:
                _HEADS.clear()
            head = _HEADS[cached] = b"".join([b"$7\r\nEVALSHA\r\n", _bulk(sha, encoding), _bulk(len(keys), encoding),
                                              *(_bulk(k, encoding) for k in keys)])
        parts.append(b"*%d\r\n" % (3 + len(keys) + len(args)))
        parts.append(head)
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
