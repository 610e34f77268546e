"""The taskiq broker every worker uses: Redis stream, consumer group, acked at-least-once delivery.

On top of taskiq-redis's RedisStreamBroker:
- idle reclaim on a timer: a dead worker's unacked messages are claimed after `redeliver_after` seconds
  even when no new message arrives (the stock broker only reclaims after a fetch that returned something);
- ack = XACK + XDEL, batched: acknowledged entries leave the stream, so XLEN is the queue depth and the
  stream never grows with history;
- RetryMiddleware (core/retry.py): exponential backoff with jitter, then the dead-letter list;
- one stream per key shard (core/keys.py): one reader loop per shard (its own blocking XREADGROUP and its
  own reclaim), all feeding the one receiver. A cluster client refuses one XREADGROUP over several slots,
  and a loop per shard keeps a failover of one primary from stalling the others.
- the client comes from core/redis.py (single server, Sentinel or Cluster); taskiq-redis's own pool is
  never used (its `kick` is not either: ingest enqueues from its Lua script).
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
from taskiq.serializers.orjson_serializer import ORJSONSerializer
from taskiq_redis import RedisStreamBroker

from core.backoff import Backoff, retryable
from core.heartbeat import Progress
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings

log = logging.getLogger("faultline.broker")
READ_LINGER = 0.01  # s between a short read and the next one (see _read_shard)


class _AckBatcher:
    """Collects acks of one shard's stream for ~2 ms and sends them as one XACK + XDEL pipeline."""

    def __init__(self, broker: FaultlineBroker, stream: str) -> None:
        self.broker = broker
        self.stream = stream
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
                pipe = self.broker.redis.pipeline(transaction=False)
                pipe.xack(self.stream, self.broker.consumer_group_name, *ids)
                pipe.xdel(self.stream, *ids)
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
    def __init__(self, settings: Settings, consumer_name: str | None = None, keys: Keys | None = None,
                 redis: Redis | None = None) -> None:
        keys = keys or Keys.from_settings(settings)
        super().__init__(
            "redis://127.0.0.1",  # taskiq-redis's pool stays unused (and unconnected): see self.redis
            queue_name=keys.shard(0).stream,
            consumer_group_name=keys.consumer_group,
            consumer_name=consumer_name or f"{settings.node_name}-{uuid.uuid4().hex[:6]}",
            consumer_id="0",  # also deliver what the API queued before the group existed
            xread_block=1000,
            xread_count=200,
            idle_timeout=int(settings.redeliver_after * 1000),
        )
        self.settings = settings
        self.keys = keys
        # Every message is orjson's output (core/tasks.py, core/retry.py): orjson reads it back at ~1/5 of
        # the stdlib json's CPU, which py-spy showed at ~10 % of a busy worker.
        self.serializer = ORJSONSerializer()
        # socket timeout above the 1 s block of XREADGROUP; a blip on XACK or XREADGROUP is retried inside
        # redis-py; one blocked connection per shard plus acks and reclaims
        self.redis = redis or make_redis(settings, pool_size=16 + 2 * keys.shards, timeout=5.0, retries=3)
        self.progress = Progress()  # published by the worker's heartbeat (core/heartbeat.py)
        self.reclaim_every = max(0.5, min(5.0, settings.redeliver_after / 3))
        self._acks = {k.stream: _AckBatcher(self, k.stream) for k in keys.streams}
        self._readers: list[asyncio.Task[None]] = []
        self._stopping = False

    def stop_reading(self) -> None:
        """SIGTERM: the shard readers stop now (a reclaim or read in flight included), so a stopping worker
        takes no more messages, whatever the receiver is doing; listen() then ends cleanly."""
        self._stopping = True
        for t in self._readers:
            t.cancel()

    async def _declare_consumer_group(self) -> None:
        await ensure_consumer_group(self.redis, self.keys)

    async def shutdown(self) -> None:
        await super().shutdown()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def _ack_generator(self, id: Any, queue_name: Any) -> Callable[[], Awaitable[None]]:
        msg_id = id.decode() if isinstance(id, bytes) else id
        batcher = self._acks[queue_name]

        async def _ack() -> None:
            await batcher.ack(msg_id)

        return _ack

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """One reader per shard (reclaim + XREADGROUP forever) into one queue. A Redis error (restart,
        failover's UNBLOCKED/READONLY/MOVED, a blip) waits with backoff and goes on; NOGROUP (a restart that
        lost the data) recreates the group. Only an error waiting cannot fix (or an outage past
        loop_give_up_after) ends a reader, which ends this generator, which ends the receiver, which ends
        the worker process non-zero (workers/main.py): never alive-but-idle."""
        # bounded: a reader waits while the receiver is behind instead of fetching without limit
        inbox: asyncio.Queue[tuple[str, bytes, bytes]] = asyncio.Queue(maxsize=self.count or 200)
        readers = self._readers = [asyncio.create_task(self._read_shard(k.stream, inbox), name=f"reader {k.stream}")
                                   for k in self.keys.streams]
        try:
            while True:
                get = asyncio.ensure_future(inbox.get())
                done, _ = await asyncio.wait([get, *readers], return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    if self._stopping:
                        return
                    ended = next(t for t in readers if t.done())
                    raise RuntimeError(f"{ended.get_name()} ended") from (None if ended.cancelled()
                                                                           else ended.exception())
                stream, msg_id, data = get.result()
                yield AckableMessage(data=data, ack=self._ack_generator(msg_id, stream))
        finally:
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read_shard(self, stream: str, inbox: asyncio.Queue[tuple[str, bytes, bytes]]) -> None:
        backoff = Backoff.for_loop(f"stream listener {self.consumer_name} {stream}", log, self.settings)
        next_reclaim = 0.0
        while not self._stopping:  # besides the cancel: a client library that swallowed it cannot keep it going
            got: list[tuple[bytes, dict[bytes, bytes]]] = []
            try:
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.reclaim_every
                    got += await self._reclaim(stream)
                fetched: Any = await self.redis.xreadgroup(
                    self.consumer_group_name, self.consumer_name, {stream: ">"}, block=self.block, count=self.count,
                )
                for _stream, messages in fetched or []:
                    got += [(mid, msg) for mid, msg in messages if msg]
                backoff.ok()
                self.progress.mark_fetch(len(got))
            except Exception as exc:
                self.progress.mark_attempt()
                if _is_nogroup(exc):
                    with contextlib.suppress(Exception):  # if Redis is still failing, the next round retries
                        await self._declare_consumer_group()
                        log.warning("consumer group %s of %s was missing (Redis lost its data?): recreated",
                                    self.consumer_group_name, stream)
                for mid, msg in got:  # what was reclaimed before the error still goes out
                    await inbox.put((stream, mid, msg[b"data"]))
                await backoff.failed(exc)
                continue
            for mid, msg in got:
                await inbox.put((stream, mid, msg[b"data"]))
            if 0 < len(got) < (self.count or 200):
                # A read that found only a few messages: wait a moment before the next, so reads come back
                # with dozens of messages instead of one or two (an XREADGROUP's client CPU is mostly per
                # call: 7-15 % of a worker under the bench). Invisible in latency: the batch writer collects
                # for 50 ms anyway.
                await asyncio.sleep(READ_LINGER)

    async def _reclaim(self, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Claim messages idle longer than redeliver_after (their consumer died or hung)."""
        reply = await self.redis.xautoclaim(
            stream, self.consumer_group_name, self.consumer_name,
            min_idle_time=self.idle_timeout, start_id="0-0", count=self.unacknowledged_batch_size,
        )
        claimed = [(mid, msg) for mid, msg in reply[1] if msg]
        if claimed:
            log.warning("reclaimed %d messages of %s from dead or stuck consumers", len(claimed), stream)
        return claimed


def _is_nogroup(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


async def ensure_consumer_group(redis: Redis, keys: Keys) -> None:
    """Create every shard's stream and group at id 0, so nothing queued before any worker started is missed."""
    for shard in keys.streams:
        try:
            await redis.xgroup_create(shard.stream, shard.consumer_group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
