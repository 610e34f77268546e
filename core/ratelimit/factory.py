"""Build the policy and the limiter backend that the settings select."""

from __future__ import annotations

from redis.asyncio import Redis

from core.keys import Keys
from core.ratelimit.limiter import Limiter, MemoryLimiter
from core.ratelimit.policy import RatePolicy
from core.ratelimit.redis_limiter import RedisLimiter
from core.settings import Settings


def policy_of(settings: Settings) -> RatePolicy:
    return RatePolicy.parse(settings.rate_limits, settings.rate_limit_routes)


def make_limiter(settings: Settings, redis: Redis, keys: Keys) -> Limiter:
    """`memory`: one node without Redis (each process counts alone); `redis`: exact across nodes."""
    if settings.rate_limit_backend == "memory":
        return MemoryLimiter()
    return RedisLimiter(redis, keys)
