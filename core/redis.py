"""Redis client factory and the Lua scripts every process shares.

`FAULTLINE_REDIS_URL` picks the client (core/redisurl.py parses it): one server (a blocking pool, see
`make_redis`); Sentinel (the primary the Sentinels name, followed closely: core/sentinel.py); Redis Cluster
(seed nodes; the client learns the slot map and follows MOVED/ASK; every script's keys share one slot,
core/keys.py shards them). Every module gets its client here (or through core/runtime.py), never from its
own `from_url`.

A call may run twice: redis-py sends a call again when its connection broke before the reply came (clients
with `retries`), and the API re-runs an unanswered ingest call itself (api/ingestrun.py). So every script
and write must be safe to run again, e.g. flush_start.lua keeps the batch its first run made.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, SlotNotCoveredError, TimeoutError

from core.clusterclient import ClusterClient
from core.rawpipeline import evalsha_many
from core.redisurl import parse_url
from core.sentinel import FencedSentinelConnection, FencedSentinelPool
from core.settings import Settings


def make_redis(settings: Settings, *, pool_size: int | None = None, timeout: float | None = None,
               retries: int = 0) -> Redis:
    """A client whose every call fails within `timeout` instead of hanging.

    BlockingConnectionPool: a burst above the pool size waits for a free connection (bounded by the same
    timeout) rather than raising MaxConnectionsError, which would surface as a 500.

    `retries`: how often redis-py re-sends a call that met a ConnectionError/TimeoutError, with exponential
    backoff (50 ms doubling, capped at 1 s). Background processes pass a few (a blip then never reaches
    their loops), so what they call must be safe to run twice (see above). The API's hot path keeps 0: a
    retry there could stretch a call past its budget, and its ingest re-run is its own (api/ingestrun.py).
    """
    t = settings.redis_timeout if timeout is None else timeout
    retry = background_retry(retries) if retries > 0 else Retry(NoBackoff(), 0)
    size = pool_size or settings.redis_pool_size
    target = parse_url(settings.redis_url)
    common: dict[str, Any] = {"socket_timeout": t, "socket_connect_timeout": t, "retry": retry,
                              "password": target.password, "username": target.username}
    if target.kind == "cluster":
        # No blocking pool in the cluster client: past max_connections a call raises MaxConnectionsError.
        # The pool is per node and sized like the single server's; the ingest path bounds its own calls in
        # flight (api/ingestcall.py), so the per-node bound is only met by a runaway burst.
        # reinitialize_steps=0: on MOVED, only patch that slot (a failover's MOVED names the promoted replica).
        # redis-py's default (5) reloads the whole map on every 5th MOVED by closing EVERY connection of every
        # node, those in use too: a CLUSTER FAILOVER moves 5-6 of our 16 shard slots, so each process did it,
        # failing calls in flight on healthy primaries ("'NoneType' object has no attribute 'writelines'";
        # a lost reply re-sent: the count sync's lost batch of issue 12) and slowing ingest past its
        # deadline (a 503). A dead node (connection errors) still reloads the map, lazily.
        cluster = ClusterClient(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                               max_connections=size, health_check_interval=30, reinitialize_steps=0, **common)
        return cast(Redis, cluster)  # speaks every command Faultline uses on one slot at a time
    if target.kind == "sentinel":
        sentinel = Sentinel(target.hosts, sentinel_kwargs={"socket_timeout": t, "socket_connect_timeout": t,
                                                           "password": target.sentinel_password},
                            **common)
        return sentinel.master_for(target.service, db=target.db, max_connections=size, health_check_interval=30,
                                   connection_pool_class=FencedSentinelPool,
                                   connection_class=FencedSentinelConnection)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=size,
        timeout=t,
        socket_timeout=t,
        socket_connect_timeout=t,
        health_check_interval=30,
        retry=retry,  # with a pool given, redis-py takes the retry policy from the pool's connections
    )
    return Redis(connection_pool=pool)


async def replace_hash(redis: Redis, key: str, mapping: Mapping[str, str | int | float],
                       ttl: int | None = None) -> None:
    """Make `key` exactly `mapping` (with its TTL), atomically for readers: written aside, then RENAMEd over.

    Not MULTI: redis-py 8.1's async cluster client fails a transaction on a slot its first connection does
    not serve ("Future attached to a different loop"). The side key shares the key's hash tag (same slot)."""
    if not mapping:
        await redis.delete(key)
        return
    for attempt in range(3):
        side = f"{key}:new:{uuid.uuid4().hex[:8]}"
        pipe = redis.pipeline(transaction=False)
        pipe.hset(side, mapping=dict(mapping))  # type: ignore[arg-type]
        if ttl is not None:
            pipe.expire(side, ttl)
        await pipe.execute()
        try:
            await redis.rename(side, key)  # a cluster pipeline refuses RENAME
            return
        except ResponseError as exc:
            # "no such key": a failover between the write and the RENAME lost the side key (written to the
            # old primary, not replicated yet): write it again on the new one. It ended a worker's heartbeat
            # as "not a dependency error" in tests/e2e/test_redis_cluster.py's primary kill.
            if "no such key" not in str(exc).lower() or attempt == 2:
                raise


def transport_glitch(exc: BaseException | None) -> bool:
    """A failover's errors that redis-py does not raise as RedisError: SlotNotCoveredError (a dead primary's
    slots until its replica takes over: it ended worker loops as "not a dependency error"), and an
    AttributeError/RuntimeError from redis-py's own connection code (8.1's async clients writing to a
    transport a failover just closed: "'NoneType' object has no attribute 'writelines'")."""
    if isinstance(exc, SlotNotCoveredError):
        return True
    if not isinstance(exc, AttributeError | RuntimeError):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "/redis/" in tb.tb_frame.f_code.co_filename


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


def background_retry(retries: int = 3) -> Retry:
    """The retry policy of background processes' clients: 3 re-sends, 50 ms doubling up to 1 s."""
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries, supported_errors=(ConnectionError, TimeoutError))


def as_str(value: bytes | str) -> str:
    """Redis replies are bytes (decode_responses is off: payloads stay bytes end to end)."""
    return value.decode() if isinstance(value, bytes) else value


async def preload_scripts(redis: Redis) -> None:
    """SCRIPT LOAD every script (on a cluster: on every primary), so the first calls after start-up do not
    each pay a NOSCRIPT round trip. A primary promoted later has none: the first EVALSHA there answers
    NOSCRIPT and redis-py's Script loads it and calls again (a NOSCRIPT call ran nothing, so this is safe
    for ingest too). Files named `_*.lua` are pieces other scripts include, not scripts."""
    for entry in resources.files("core.scripts").iterdir():
        if entry.name.endswith(".lua") and not entry.name.startswith("_"):
            await redis.script_load(script_source(entry.name.removesuffix(".lua")))


_INCLUDE = re.compile(r"^--#include (_[a-z_]+\.lua)$", re.MULTILINE)


@cache  # the files do not change while a process runs; the retry pump loads its script 5 times a second
def script_source(name: str) -> str:
    """core/scripts/<name>.lua with each `--#include _piece.lua` line replaced by that file (one level): Redis
    scripts cannot load modules, and the limiter's window must be the same code in both scripts using it."""
    scripts = resources.files("core.scripts")
    return _INCLUDE.sub(lambda m: scripts.joinpath(m.group(1)).read_text(), scripts.joinpath(f"{name}.lua").read_text())


async def evalsha_pipelined(redis: Redis, script: AsyncScript,
                            calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
    """Many calls of one script in one round trip (a pipeline), each call's reply or error in its place.
    execute_command: a cluster pipeline refuses pipe.evalsha, and sends this one to its keys' slot's node.
    Redis restarted or flushed its scripts: a NOSCRIPT call ran nothing, so load it and send those again."""
    results: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _attempt in range(2):
        if not is_cluster(redis):  # one server: one write on one connection, without the Pipeline's overhead
            for i, result in zip(todo, await evalsha_many(redis, script.sha, [calls[i] for i in todo]),
                                 strict=True):
                results[i] = result
        else:
            async with redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                for i, result in zip(todo, await pipe.execute(raise_on_error=False), strict=True):
                    results[i] = result
        todo = [i for i in todo if isinstance(results[i], NoScriptError)]
        if not todo:
            break
        await redis.script_load(script.script)
    return results


class PackedScript:
    """A script called as one EVALSHA packed by core/rawpipeline.py on a pooled connection, instead of
    redis-py's Script call (its command packer, ~0.6 us an argument, and execute_command's hooks): for a
    hot call with many arguments, on one server or Sentinel (a cluster client routes by slot: keep the
    AsyncScript there). Same outcomes: its reply, or its error raised; NOSCRIPT loads the script and sends
    it again (evalsha_pipelined); no retry of its own (callers that re-send, like ingest, decide)."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        if is_cluster(redis):
            raise ValueError("PackedScript is for one server or Sentinel: a cluster routes calls by slot")
        self.redis, self.script = redis, script

    @property
    def sha(self) -> str:
        return str(self.script.sha)

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        (result,) = await evalsha_pipelined(self.redis, self.script, [(keys, args)])
        if isinstance(result, BaseException):
            raise result
        return result


def load_script(redis: Redis, name: str) -> AsyncScript:
    """A script called by SHA (EVALSHA), reloaded transparently after a Redis restart."""
    return redis.register_script(script_source(name))  # type: ignore[return-value]
