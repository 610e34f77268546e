"""python-socketio's Redis manager, made to ride out Redis restarts.

The stock AsyncRedisManager (5.x) has two weak spots in an outage:
- its listener retries with a delay doubling to 60 s and never shrinking until it reconnects: after a
  2-minute outage the live feed stays dead for up to another minute, and it logs an error per attempt;
- a failed publish is retried once and then dropped silently, so the coalescer cannot tell.
Here the listener uses core/backoff.py (cap: loop_backoff_max, one warning + one "recovered" line per
outage) and a failed publish raises, so the feed coalescer backs off and logs like every other loop.
Connections get a connect timeout and a health check, so a half-dead socket is noticed.

Redis Cluster: python-socketio has no cluster manager (its issue #1172), so `ClusterRedisManager` below
rides on redis-py's cluster client with sharded pub/sub (SPUBLISH/SSUBSCRIBE): the channel lives on the
primary of its slot only, instead of every message crossing the whole cluster bus. After a failover the
listener's connection breaks, and the same backoff loop subscribes again on the slot's new primary.
Sentinel URLs are handled by the stock manager (`redis+sentinel://`). `make_manager` picks the class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import socketio

from core.backoff import Backoff
from core.redis import make_redis
from core.redisurl import parse_url
from core.settings import Settings

log = logging.getLogger("faultline.pubsub")
OWNER_CHECK = 2.0  # s between checks that the cluster listener is subscribed where the channel lives
PROBE_LATE = 2 * OWNER_CHECK  # s: the listener's own probe not back by then = it hears nothing: resubscribe
PROBE_PREFIX = b"\x00faultline-probe:"  # never a Socket.IO message (those are JSON or pickle)


class ResilientRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, settings: Settings, channel: str, write_only: bool = False) -> None:
        options: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_keepalive": True,
                                   "health_check_interval": 10}
        if write_only:  # a publish to a frozen Redis fails in 2 s instead of stalling the coalescer; not for
            options["socket_timeout"] = 2.0  # the listener, whose idle blocking read would time out too
        url, target = settings.redis_url, parse_url(settings.redis_url)
        if target.kind == "sentinel":  # python-socketio spells it .../db/service, and the Sentinels' password
            hosts = ",".join(f"{h}:{p}" for h, p in target.hosts)  # goes in sentinel_kwargs
            auth = f":{quote(target.password, safe='')}@" if target.password else ""
            url = f"redis+sentinel://{auth}{hosts}/{target.db}/{target.service}"
            options["sentinel_kwargs"] = {"password": target.sentinel_password, "socket_connect_timeout": 2.0}
        super().__init__(url, channel=channel, write_only=write_only, logger=log, redis_options=options)
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
                return await self._send(self.json.dumps(data))
            except Exception:
                await self._close()
                if last:
                    raise
        return None

    async def _send(self, payload: str) -> Any:
        return await self.redis.publish(self.channel, payload)  # type: ignore[attr-defined]

    def _listener_backoff(self) -> Backoff:
        backoff = Backoff.for_loop(f"socket.io listener {self.channel}", log, self.settings)
        backoff.give_up_after = None  # the API node keeps serving ingest; the feed comes back with Redis
        backoff.is_retryable = lambda exc: True
        return backoff

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        backoff = self._listener_backoff()
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


class ClusterRedisManager(ResilientRedisManager):
    """Socket.IO's manager over Redis Cluster: sharded pub/sub on the channel's slot (see module doc)."""

    def _redis_connect(self) -> None:
        client: Any = make_redis(self.settings, pool_size=4, timeout=2.0 if self.write_only else 30.0)
        self.redis, self.pubsub, self.connected = client, client.pubsub(), True

    async def _send(self, payload: str) -> Any:
        return await self.redis.spublish(self.channel, payload)  # type: ignore[attr-defined]

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        backoff = self._listener_backoff()
        while True:
            try:
                self._redis_connect()
                # a new cluster client learns the slot map on its first command; SSUBSCRIBE looks the
                # channel's node up in that map without asking, so it failed with SlotNotCoveredError on
                # every attempt (the cross-node feed never arrived): load the map first
                await self.redis.initialize()  # type: ignore[attr-defined]
                await self.pubsub.ssubscribe(self.channel)  # type: ignore[attr-defined]
                backoff.ok()
                checked = heard = time.monotonic()
                probe = PROBE_PREFIX + uuid.uuid4().hex.encode()
                while True:
                    # bounded: with its node dead, redis-py's per-node pub/sub may retry its connection
                    # inside this call for as long as the client's 30 s timeout: that is an error here
                    message = await asyncio.wait_for(self.pubsub.get_sharded_message(  # type: ignore[attr-defined]
                        ignore_subscribe_messages=True, timeout=1.0), OWNER_CHECK + 1.0)
                    if message is not None:
                        data = message.get("data")
                        if isinstance(data, bytes) and data.startswith(PROBE_PREFIX):
                            heard = time.monotonic() if data == probe else heard
                        else:
                            yield message
                    if time.monotonic() - checked > OWNER_CHECK:
                        checked = time.monotonic()
                        await self._check_owner()
                        # End to end: the listener hears its own probe through the channel, or it is deaf
                        # (a subscription a failover left on a node that no longer serves the slot raised
                        # nothing and delivered nothing: seen in tests/e2e/test_redis_cluster.py).
                        if checked - heard > PROBE_LATE:
                            raise ConnectionError(f"channel {self.channel}: own probe not heard for "
                                                  f"{checked - heard:.0f}s: subscribing again")
                        await asyncio.wait_for(self.redis.spublish(self.channel, probe),  # type: ignore[attr-defined]
                                               OWNER_CHECK + 1.0)
            except Exception as exc:
                await self._close()
                await backoff.failed(exc)

    async def _check_owner(self) -> None:
        """Still subscribed on the primary that serves the channel's slot? After that node was SIGKILLed the
        listener raised nothing and delivered nothing again: the feed from the other nodes stopped for good
        (seen in tests/e2e/test_redis_cluster.py). Refresh the slot map (every OWNER_CHECK) and subscribe
        again where the channel lives now."""
        client: Any = self.redis
        await asyncio.wait_for(client.initialize(), OWNER_CHECK + 1.0)  # its connects have the 30 s timeout
        owner = client.get_node_from_key(self.channel).name
        if set(self.pubsub.node_pubsub_mapping) != {owner}:  # type: ignore[attr-defined]
            raise ConnectionError(f"channel {self.channel} moved to {owner}: subscribing there")

    async def _listen(self) -> AsyncIterator[Any]:
        channel = self.channel.encode()
        async for message in self._redis_listen_with_retries():
            if message.get("channel") == channel and message.get("type") == "smessage" and "data" in message:
                yield message["data"]


def make_manager(settings: Settings, channel: str, write_only: bool = False) -> ResilientRedisManager:
    """The Socket.IO client manager for FAULTLINE_REDIS_URL's kind of Redis."""
    kind = parse_url(settings.redis_url).kind
    cls = ClusterRedisManager if kind == "cluster" else ResilientRedisManager
    return cls(settings, channel, write_only=write_only)
