"""Redis client factory and the Lua scripts every process shares."""

from __future__ import annotations

from importlib import resources

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, TimeoutError

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
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=pool_size or settings.redis_pool_size,
        timeout=t,
        socket_timeout=t,
        socket_connect_timeout=t,
        health_check_interval=30,
        retry=retry,  # with a pool given, redis-py takes the retry policy from the pool's connections
    )
    return Redis(connection_pool=pool)


def background_retry(retries: int = 3) -> Retry:
    """The retry policy of background processes' clients: 3 re-sends, 50 ms doubling up to 1 s."""
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), retries, supported_errors=(ConnectionError, TimeoutError))


def as_str(value: bytes | str) -> str:
    """Redis replies are bytes (decode_responses is off: payloads stay bytes end to end)."""
    return value.decode() if isinstance(value, bytes) else value


def load_script(redis: Redis, name: str) -> AsyncScript:
    """A script called by SHA (EVALSHA), reloaded transparently after a Redis restart."""
    source = resources.files("core.scripts").joinpath(f"{name}.lua").read_text()
    return redis.register_script(source)  # type: ignore[return-value]
