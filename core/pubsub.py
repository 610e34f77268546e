"""python-socketio's Redis manager, made to ride out Redis restarts.

The stock AsyncRedisManager (5.x) has two weak spots in an outage:
- its listener retries with a delay doubling to 60 s and never shrinking until it reconnects: after a
  2-minute outage the live feed stays dead for up to another minute, and it logs an error per attempt;
- a failed publish is retried once and then dropped silently, so the coalescer cannot tell.
Here the listener uses core/backoff.py (cap: loop_backoff_max, one warning + one "recovered" line per
outage) and a failed publish raises, so the feed coalescer backs off and logs like every other loop.
Connections get a connect timeout and a health check, so a half-dead socket is noticed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio

from core.backoff import Backoff
from core.settings import Settings

log = logging.getLogger("faultline.pubsub")


class ResilientRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, settings: Settings, channel: str, write_only: bool = False) -> None:
        super().__init__(settings.redis_url, channel=channel, write_only=write_only, logger=log,
                         redis_options={"socket_connect_timeout": 2.0, "socket_keepalive": True,
                                        "health_check_interval": 10})
        self.settings = settings

    async def _close(self) -> None:
        redis: Any = self.redis  # type: ignore[has-type]
        self.redis, self.pubsub, self.connected = None, None, False
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()

    async def _publish(self, data: Any) -> Any:
        """Publish; after an error reconnect and try once more; then raise (the caller backs off)."""
        for last in (False, True):
            try:
                if not self.connected:
                    self._redis_connect()
                return await self.redis.publish(self.channel, self.json.dumps(data))  # type: ignore[attr-defined]
            except Exception:
                await self._close()
                if last:
                    raise
        return None

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        backoff = Backoff.for_loop(f"socket.io listener {self.channel}", log, self.settings)
        backoff.give_up_after = None  # the API node keeps serving ingest; the feed comes back with Redis
        backoff.is_retryable = lambda exc: True
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)  # type: ignore[attr-defined]
                backoff.ok()
                async for message in self.pubsub.listen():  # type: ignore[attr-defined]
                    yield message
            except Exception as exc:
                await self._close()
                await backoff.failed(exc)
