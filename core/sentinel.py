"""Following a Sentinel failover closely, so that no process keeps writing to a primary being replaced.

redis-py's Sentinel pool learns a new primary only at +switch-master (`SENTINEL MASTERS`, 5 s after a
SENTINEL FAILOVER here) and reconnects only on READONLY (when the old primary is demoted, ~10 s). Meanwhile
the old primary takes writes through the replica not yet re-pointed, and drops them when it is demoted:
acknowledged events lost (the ingest's WAIT narrows that, api/ingest.py) and, for the background writers
(count sync, acks), work undone and done again (counted twice). Here:
- every pool subscribes to each Sentinel's failover events; at `+try-failover` (the leader's first event,
  ~0.5 s before it sends SLAVEOF NO ONE: 4-5 Sentinel ticks) it fences: closes every connection, in use or
  not, and connects to no primary but the promoted one (or after FENCE_MAX, or when that Sentinel's
  failover aborts). `+selected-slave`, one tick before the promotion, was too close: a process stalled
  ~100 ms on a busy machine still wrote to the old primary after it (acknowledged, then dropped);
- the primary is asked with `SENTINEL GET-MASTER-ADDR-BY-NAME`, which names the promoted replica as soon
  as the Sentinels saw it promoted;
- a NOREPLICAS answer (min-replicas-to-write: a primary left without replicas) asks the Sentinels again.
What remains: a write the old primary ran after the promotion but before this process read the event (a
process stalled > ~0.5 s) is still lost. docs/scaling.md has the measurements.
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
# the leader's events, in order (tests/unit/test_sentinel_events.py has their text); the later ones fence a
# process whose subscription missed the first
FAILOVER_STARTS = ("+try-failover", "+selected-slave", "+failover-state-send-slaveof-noone")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def about(service: str, event: str) -> bool:
    """Does a Sentinel event's text concern `service`? An event on the primary itself names it first
    ('master faultline 127.0.0.1 6379': +try-failover, -failover-abort-*); one on a replica names the primary
    after '@' ('slave 127.0.0.1:6380 127.0.0.1 6380 @ faultline 127.0.0.1 6379': +selected-slave)."""
    return event.split(" ", 2)[:2] == ["master", service] or f" @ {service} " in f" {event} "


class FencedSentinelPool(SentinelConnectionPool):
    fenced_from: tuple[str, int] | None = None
    fenced_until = 0.0
    fenced_by: frozenset[int] = frozenset()  # the Sentinels whose failover fenced (all aborted: lifted)
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
            self.fenced_from, self.fenced_by = None, frozenset()
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

    def on_event(self, sentinel: int, channel: str, event: str) -> None:
        """One failover event of Sentinel number `sentinel` (its index in the manager's list)."""
        if not about(self.service_name, event):
            return
        if not channel.startswith("-failover-abort"):
            self.fenced_by = (self.fenced_by if self.fenced_from is not None else frozenset()) | {sentinel}
            self.fence()
        elif sentinel in self.fenced_by:
            # lifted once every Sentinel that fenced aborted: after a SIGKILL several try, the losers of the
            # vote abort while the leader's failover goes on
            self.fenced_by -= {sentinel}
            if not self.fenced_by:
                self.fenced_from = None

    def _watch(self) -> None:
        if self._watchers is None:
            self._watchers = [asyncio.ensure_future(self._listen(i, s))
                              for i, s in enumerate(self.sentinel_manager.sentinels)]

    async def _listen(self, index: int, sentinel: Redis) -> None:
        """One Sentinel's failover events (each publishes only its own: the failover leader is any of them)."""
        while True:
            pubsub = sentinel.pubsub()
            try:
                await pubsub.subscribe(*FAILOVER_STARTS)
                await pubsub.psubscribe("-failover-abort*")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None:
                        self.on_event(index, _text(message["channel"]), _text(message["data"]))
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
