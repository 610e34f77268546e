"""The taskiq broker every worker uses: Redis stream, consumer group, acked at-least-once delivery.

On top of taskiq-redis's RedisStreamBroker:
- idle reclaim on a timer: a dead worker's unacked messages are claimed after `redeliver_after` seconds
  even when no new message arrives (the stock broker only reclaims after a fetch that returned something);
- ack = XACK + XDEL, batched: acknowledged entries leave the stream, so XLEN is the queue depth and the
  stream never grows with history;
- RetryMiddleware (core/retry.py): exponential backoff with jitter, then the dead-letter list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from taskiq import AckableMessage
from taskiq_redis import RedisStreamBroker

from core.backoff import Backoff, retryable
from core.heartbeat import Progress
from core.keys import Keys
from core.redis import background_retry
from core.settings import Settings

log = logging.getLogger("faultline.broker")


class _AckBatcher:
    """Collects acks for ~2 ms and sends them as one XACK + XDEL pipeline."""

    def __init__(self, broker: FaultlineBroker) -> None:
        self.broker = broker
        self.ids: list[str] = []
        self.done: asyncio.Future[None] | None = None

    async def ack(self, msg_id: str) -> None:
        self.ids.append(msg_id)
        if self.done is None:
            self.done = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.002, lambda: asyncio.ensure_future(self._flush()))
        await asyncio.shield(self.done)

    async def _flush(self) -> None:
        ids, done = self.ids, self.done
        self.ids, self.done = [], None
        assert done is not None
        # XACK + XDEL are idempotent: retry through a Redis outage, but only while it still matters. Past
        # redeliver_after another worker reclaims the messages anyway (the writes are idempotent too).
        backoff = Backoff.for_loop(f"ack of {len(ids)} messages", log, self.broker.settings)
        deadline = time.monotonic() + self.broker.settings.redeliver_after
        while True:
            try:
                async with Redis(connection_pool=self.broker.connection_pool) as conn:
                    pipe = conn.pipeline(transaction=False)
                    pipe.xack(self.broker.queue_name, self.broker.consumer_group_name, *ids)
                    pipe.xdel(self.broker.queue_name, *ids)
                    await pipe.execute()
                backoff.ok()
                done.set_result(None)
                return
            except Exception as exc:  # unacked messages are redelivered later: nothing is lost
                if time.monotonic() > deadline or not retryable(exc):
                    log.warning("ack of %d messages failed: %s; they will be redelivered", len(ids), exc)
                    done.set_exception(exc)
                    done.exception()  # mark retrieved even if no waiter is left
                    return
                await asyncio.sleep(backoff.next_delay(exc))


class FaultlineBroker(RedisStreamBroker):
    def __init__(self, settings: Settings, consumer_name: str | None = None) -> None:
        keys = Keys(settings.key_prefix)
        super().__init__(
            settings.redis_url,
            queue_name=keys.stream,
            consumer_group_name=keys.consumer_group,
            consumer_name=consumer_name or f"{settings.node_name}-{uuid.uuid4().hex[:6]}",
            consumer_id="0",  # also deliver what the API queued before the group existed
            xread_block=1000,
            xread_count=200,
            idle_timeout=int(settings.redeliver_after * 1000),
            max_connection_pool_size=64,
            socket_timeout=10,
            socket_connect_timeout=5,
            retry=background_retry(),  # a blip on XACK or XREADGROUP is retried inside redis-py
        )
        self.settings = settings
        self.keys = keys
        self.progress = Progress()  # published by the worker's heartbeat (core/heartbeat.py)
        self._next_reclaim = 0.0
        self.reclaim_every = max(0.5, min(5.0, settings.redeliver_after / 3))
        self._acks = _AckBatcher(self)

    async def _declare_consumer_group(self) -> None:
        await ensure_consumer_group(Redis(connection_pool=self.connection_pool), self.keys)

    def _ack_generator(self, id: Any, queue_name: Any) -> Callable[[], Awaitable[None]]:
        msg_id = id.decode() if isinstance(id, bytes) else id

        async def _ack() -> None:
            await self._acks.ack(msg_id)

        return _ack

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Reclaim + XREADGROUP forever. A Redis error (restart, failover's UNBLOCKED/READONLY/MOVED, a blip)
        waits with backoff and goes on; NOGROUP (a restart that lost the data) recreates the group. Only an
        error waiting cannot fix (or an outage past loop_give_up_after) ends the generator, which ends the
        receiver, which ends the worker process non-zero (workers/main.py): never alive-but-idle."""
        backoff = Backoff.for_loop(f"stream listener {self.consumer_name}", log, self.settings)
        async with Redis(connection_pool=self.connection_pool) as conn:
            while True:
                for msg_id, msg in await self._fetch(conn, backoff):
                    yield AckableMessage(data=msg[b"data"], ack=self._ack_generator(msg_id, self.queue_name))

    async def _fetch(self, conn: Redis, backoff: Backoff) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """One reclaim (when due) and one blocking read; on error, what was reclaimed so far after a backoff."""
        got: list[tuple[bytes, dict[bytes, bytes]]] = []
        try:
            if time.monotonic() >= self._next_reclaim:
                self._next_reclaim = time.monotonic() + self.reclaim_every
                got += await self._reclaim(conn)
            fetched: Any = await conn.xreadgroup(
                self.consumer_group_name, self.consumer_name, {self.queue_name: ">"},
                block=self.block, count=self.count,
            )
        except Exception as exc:
            self.progress.mark_attempt()
            if _is_nogroup(exc):
                with contextlib.suppress(Exception):  # if Redis is still failing, the next round retries
                    await self._declare_consumer_group()
                    log.warning("consumer group %s was missing (Redis lost its data?): recreated",
                                self.consumer_group_name)
            await backoff.failed(exc)
            return got
        backoff.ok()
        for _stream, messages in fetched or []:
            got += [(mid, msg) for mid, msg in messages if msg]
        self.progress.mark_fetch(len(got))
        return got

    async def _reclaim(self, conn: Redis) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Claim messages idle longer than redeliver_after (their consumer died or hung)."""
        reply = await conn.xautoclaim(
            self.queue_name, self.consumer_group_name, self.consumer_name,
            min_idle_time=self.idle_timeout, start_id="0-0", count=self.unacknowledged_batch_size,
        )
        claimed = [(mid, msg) for mid, msg in reply[1] if msg]
        if claimed:
            log.warning("reclaimed %d messages from dead or stuck consumers", len(claimed))
        return claimed


def _is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def ensure_consumer_group(redis: Redis, keys: Keys) -> None:
    """Create the stream and its group at id 0, so nothing queued before any worker started is missed."""
    try:
        await redis.xgroup_create(keys.stream, keys.consumer_group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
