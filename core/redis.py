"""Redis client factory and the Lua scripts every process shares.

`FAULTLINE_REDIS_URL` picks the client:
- `redis://`, `rediss://`, `unix://`: one server (a blocking pool, see `make_redis`);
- `redis+sentinel://[:password@]h1:p1,h2:p2/service[/db]`: the primary that the Sentinels name; its pool asks
  them again whenever it opens a connection, so a failover is followed on the next reconnect;
- `redis+cluster://[:password@]h1:p1,h2:p2`: Redis Cluster (seed nodes; the client learns the slot map and
  follows MOVED/ASK). Every script's keys share one slot (core/keys.py shards them).
Every module gets its client here (or through core/runtime.py), never from its own `from_url`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import Redis as SyncRedis
from redis.cluster import ClusterNode as SyncNode
from redis.cluster import RedisCluster as SyncCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ConnectionError,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
)
from redis.sentinel import Sentinel as SyncSentinel

from core.rawpipeline import evalsha_many
from core.sentinel import FencedSentinelConnection, FencedSentinelPool
from core.settings import Settings


def make_redis(settings: Settings, *, pool_size: int | None = None, timeout: float | None = None,
               retries: int = 0) -> Redis:
    """A client whose every call fails within `timeout` instead of hanging.

    BlockingConnectionPool: a burst above the pool size waits for a free connection (bounded by the same
    timeout) rather than raising MaxConnectionsError, which would surface as a 500.

    `retries`: how often redis-py re-sends a call that met a ConnectionError/TimeoutError, with exponential
    backoff (50 ms doubling, capped at 1 s). Background processes pass a few (a blip then never reaches
    their loops). The API's hot path keeps 0: a retry there could stretch a call past its 1 s budget, and
    re-sending a non-idempotent script after a timeout is the caller's decision, not the client's.
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
        cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                               max_connections=size, health_check_interval=30, **common)
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


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # "single", "sentinel" or "cluster"
    hosts: list[tuple[str, int]]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_url(url: str) -> RedisTarget:
    """The parts of a FAULTLINE_REDIS_URL; a single-server URL is left to redis-py (kind "single")."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+sentinel", "redis+cluster"):
        return RedisTarget("single", [])
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{parts.scheme} URL: bad host:port {item!r}")
        hosts.append((host.strip("[]"), int(port)))
    secret = unquote(password) or None
    if parts.scheme == "redis+cluster":
        return RedisTarget("cluster", hosts, username=unquote(user) or None, password=secret)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs the service name: redis+sentinel://h1:p1,h2:p2/service")
    db = int(path[1]) if len(path) > 1 else 0
    # one password for the data nodes and the Sentinels (`faultline up --redis sentinel` sets both alike)
    return RedisTarget("sentinel", hosts, path[0], db, unquote(user) or None, secret, secret)


def make_sync_redis(url: str, timeout: float = 5.0) -> SyncRedis:
    """A blocking client for the CLI's and the tools' few calls, from the same URL kinds."""
    target = parse_url(url)
    if target.kind == "cluster":
        return cast(SyncRedis, SyncCluster(startup_nodes=[SyncNode(h, p) for h, p in target.hosts],
                                            password=target.password, username=target.username,
                                            socket_timeout=timeout, socket_connect_timeout=timeout))
    if target.kind == "sentinel":
        sentinel = SyncSentinel(target.hosts, sentinel_kwargs={"password": target.sentinel_password,
                                                               "socket_timeout": timeout},
                                password=target.password, username=target.username, socket_timeout=timeout)
        return sentinel.master_for(target.service, db=target.db)
    return SyncRedis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


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


def load_script(redis: Redis, name: str) -> AsyncScript:
    """A script called by SHA (EVALSHA), reloaded transparently after a Redis restart."""
    return redis.register_script(script_source(name))  # type: ignore[return-value]


class NotReplicated(RedisError):
    """WAIT saw fewer replicas holding a call's writes than required: treat the call as unanswered."""


class ReplicatedScript:
    """A script call answered only once `replicas` replicas hold its writes: EVALSHA then WAIT, pipelined on
    ONE connection (WAIT counts the replicas that reached that connection's last write). Sentinel's
    fencing against a failover that drops acknowledged writes (docs/scaling.md); with replicas=0 it is the
    plain script call, unchanged."""

    def __init__(self, script: AsyncScript, replicas: int, timeout: float) -> None:
        self.script, self.replicas, self.timeout_ms = script, replicas, max(1, int(timeout * 1000))

    @property
    def sha(self) -> str:
        return str(self.script.sha)

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if not self.replicas:
            return await self.script(keys=keys, args=args)
        redis = self.script.registered_client
        for _ in range(2):
            pipe = redis.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            result, acked = await pipe.execute(raise_on_error=False)
            if isinstance(result, NoScriptError):  # a promoted replica has no scripts; NOSCRIPT ran nothing
                self.script.sha = await redis.script_load(self.script.script)
                continue
            if isinstance(result, BaseException):
                raise result
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < self.replicas:
                raise NotReplicated(f"{acked} of {self.replicas} replicas confirmed within {self.timeout_ms} ms")
            return result
        raise NoScriptError("script not loaded after SCRIPT LOAD")
