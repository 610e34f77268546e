"""Following a Sentinel failover closely, so that no process keeps writing to a primary being replaced.

redis-py's Sentinel pool learns a new primary only at +switch-master (`SENTINEL MASTERS`, 5 s after a
SENTINEL FAILOVER here) and reconnects only on READONLY (when the old primary is demoted, ~10 s). Meanwhile
the old primary takes writes through the replica not yet re-pointed, and drops them when it is demoted:
acknowledged events lost (the ingest's WAIT narrows that, api/ingest.py) and, for the background writers
(count sync, acks), work undone and done again (counted twice). Here:
- every pool subscribes to each Sentinel's failover events; at `+selected-slave` (published one Sentinel
  tick, 50-100 ms, before the chosen replica is promoted) it fences: closes every connection, in use or
  not, and connects to no primary but the promoted one (or after FENCE_MAX, if the failover came to nothing);
- the primary is asked with `SENTINEL GET-MASTER-ADDR-BY-NAME`, which names the promoted replica as soon
  as the Sentinels saw it promoted;
- a NOREPLICAS answer (min-replicas-to-write: a primary left without replicas) asks the Sentinels again.
What remains: a write the old primary ran after the promotion but before this process read the event (a
process stalled > 50 ms on a busy machine) is still lost. docs/scaling.md has the measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError, TimeoutError

FENCE_MAX = 15.0  # s without writes at most, if a failover is announced and never completes
FAILOVER_STARTS = ("+selected-slave", "+failover-state-send-slaveof-noone")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FencedSentinelPool(SentinelConnectionPool):
    fenced_from: tuple[str, int] | None = None
    fenced_until = 0.0
    _watchers: list[asyncio.Task[None]] | None = None

    async def get_master_address(self) -> Any:
        self._watch()
        address = None
        for sentinel in self.sentinel_manager.sentinels:
            try:
                reply = await sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service_name)
            except (ConnectionError, TimeoutError):
                continue
            if reply:
                address = (_text(reply[0]), int(reply[1]))
                break
        if address is None:
            address = await super().get_master_address()
        if self.fenced_from is not None:
            if address == self.fenced_from and time.monotonic() < self.fenced_until:
                raise ConnectionError(f"failover of {self.service_name} under way: waiting for the new primary")
            self.fenced_from = None
        if self.master_address != address:
            self.master_address = address
            await self.disconnect(inuse_connections=False)  # idle connections to the old one go
        return address

    def fence(self) -> None:
        """Stop using the current primary: close every connection; reconnect only to another one."""
        if self.master_address is None:
            return
        self.fenced_from, self.fenced_until = self.master_address, time.monotonic() + FENCE_MAX
        asyncio.ensure_future(self.disconnect(inuse_connections=True))

    def _watch(self) -> None:
        if self._watchers is None:
            self._watchers = [asyncio.ensure_future(self._listen(s)) for s in self.sentinel_manager.sentinels]

    async def _listen(self, sentinel: Redis) -> None:
        """One Sentinel's failover events (each publishes only its own: the failover leader is any of them)."""
        mark = f"@ {self.service_name} "
        while True:
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe(*FAILOVER_STARTS)
                await pubsub.psubscribe("-failover-abort*")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or mark not in _text(message["data"]) + " ":
                        continue
                    if _text(message["channel"]).startswith("-failover-abort"):
                        self.fenced_from = None
                    else:
                        self.fence()
            except asyncio.CancelledError:
                raise
            except Exception:  # that Sentinel is down or restarting: the others still speak
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


class FencedSentinelConnection(SentinelManagedConnection):
    """On NOREPLICAS (a primary left without replicas by a failover) ask the Sentinels; if the primary moved,
    drop this connection so the next call goes to the new one."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if str(exc).startswith("NOREPLICAS") and self.connection_pool.is_master:
                try:
                    moved = await self.connection_pool.get_master_address() != (self.host, self.port)
                except RedisError:
                    moved = True
                if moved:
                    await self.disconnect()
            raise


async def follow_primary(redis: Redis) -> None:
    """Ask the Sentinels for the primary now (a failover may have moved it); no-op on other clients."""
    pool = getattr(redis, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        with contextlib.suppress(RedisError):
            await pool.get_master_address()


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
