"""Redis client factory and the Lua scripts every process shares."""

from __future__ import annotations

from importlib import resources

from redis.asyncio import BlockingConnectionPool, Redis
from redis.commands.core import AsyncScript

from core.settings import Settings


def make_redis(settings: Settings, *, pool_size: int | None = None, timeout: float | None = None) -> Redis:
    """A client whose every call fails within `timeout` instead of hanging.

    BlockingConnectionPool: a burst above the pool size waits for a free connection (bounded by the same
    timeout) rather than raising MaxConnectionsError, which would surface as a 500.
    """
    t = settings.redis_timeout if timeout is None else timeout
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=pool_size or settings.redis_pool_size,
        timeout=t,
        socket_timeout=t,
        socket_connect_timeout=t,
        health_check_interval=30,
    )
    return Redis(connection_pool=pool)


def as_str(value: bytes | str) -> str:
    """Redis replies are bytes (decode_responses is off: payloads stay bytes end to end)."""
    return value.decode() if isinstance(value, bytes) else value


def load_script(redis: Redis, name: str) -> AsyncScript:
    """A script called by SHA (EVALSHA), reloaded transparently after a Redis restart."""
    source = resources.files("core.scripts").joinpath(f"{name}.lua").read_text()
    return redis.register_script(source)  # type: ignore[return-value]
