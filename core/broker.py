"""The taskiq broker every worker uses: Redis stream, consumer group, acked at-least-once delivery.

On top of taskiq-redis's RedisStreamBroker:
- idle reclaim on a timer: a dead worker's unacked messages are claimed after `redeliver_after` seconds
  even when no new message arrives (the stock broker only reclaims after a fetch that returned something);
- ack = XACK + XDEL, batched (core/acks.py): XLEN is the queue depth, the stream never grows with history;
- RetryMiddleware (core/retry.py): exponential backoff with jitter, then the dead-letter list;
- one stream per key shard (core/keys.py). On one server (or Sentinel's primary) ONE reader reads every
  shard's stream with one XREADGROUP and reclaims them with one pipeline, so 16 shards cost what 1 does.
  On Redis Cluster, one reader per shard (its own blocking XREADGROUP and reclaim): the cluster client
  refuses an XREADGROUP over several slots, and a loop per shard keeps a failover of one primary from
  stalling the others;
- a direct route (workers/persist.py) takes persist tasks from the readers in whole reads, around taskiq's
  per-message receiver; every other task goes through taskiq as before;
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
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from taskiq import AckableMessage
from taskiq.serializers.orjson_serializer import ORJSONSerializer
from taskiq_redis import RedisStreamBroker

from core.acks import AckBatcher
from core.backoff import Backoff
from core.heartbeat import Progress
from core.keys import Keys
from core.redis import as_str, is_cluster, make_redis
from core.settings import Settings

log = logging.getLogger("faultline.broker")
READ_LINGER = 0.025  # s at most between a short read and the next one (see _read)
MIN_PER_STREAM = 32  # messages per stream and read when one XREADGROUP reads many streams (see _read)
Delivery = tuple[str, str, bytes, dict[str, Any]]  # stream, message id, raw message, the message parsed
Fetched = list[tuple[str, bytes, dict[bytes, bytes]]]  # stream, message id, fields


class DirectRoute(Protocol):
    """Takes some tasks straight from the readers, a whole read at a time (workers/persist.py)."""

    task_names: frozenset[str]

    async def room(self) -> None:
        """Returns once the route takes more messages: the readers' backpressure."""

    def take(self, batch: list[Delivery]) -> None:
        """Owns the batch from now on: acks each message once it is done (or parked for a retry)."""


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
        # redis-py; one blocked connection per reader plus acks and reclaims
        self.redis = redis or make_redis(settings, pool_size=16 + 2 * keys.shards, timeout=5.0, retries=3)
        self.progress = Progress()  # published by the worker's heartbeat (core/heartbeat.py)
        self.reclaim_every = max(0.5, min(5.0, settings.redeliver_after / 3))
        # half the writer's batch delay: two reads per batch still fill it, and no more reads than that
        self.read_linger = min(READ_LINGER, settings.write_batch_delay / 2)
        self.direct: DirectRoute | None = None
        shared = AckBatcher(self.redis, settings, keys.consumer_group)
        self._acks = {k.stream: AckBatcher(self.redis, settings, keys.consumer_group) if is_cluster(self.redis)
                      else shared for k in keys.streams}
        self._readers: list[asyncio.Task[None]] = []
        self._stopping = False

    def stop_reading(self) -> None:
        """SIGTERM: the readers stop now (a reclaim or read in flight included), so a stopping worker
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

    async def ack_many(self, msg_ids: list[tuple[str, str]]) -> None:
        """One XACK + XDEL per stream for many (stream, message id)s, in one round trip on one server
        (batched further with concurrent acks)."""
        by_batcher: dict[int, tuple[AckBatcher, list[tuple[str, str]]]] = {}
        for stream, msg_id in msg_ids:
            batcher = self._acks[stream]
            by_batcher.setdefault(id(batcher), (batcher, []))[1].append((stream, msg_id))
        await asyncio.gather(*(b.ack_many(ids) for b, ids in by_batcher.values()))

    def _ack_generator(self, id: Any, queue_name: Any) -> Callable[[], Awaitable[None]]:
        msg_id = as_str(id)
        batcher = self._acks[queue_name]

        async def _ack() -> None:
            await batcher.ack_many([(queue_name, msg_id)])

        return _ack

    def reader_streams(self) -> list[list[str]]:
        """The streams of each reader: all in one on one server, one each on a cluster (module docstring)."""
        streams = [k.stream for k in self.keys.streams]
        return [[s] for s in streams] if is_cluster(self.redis) else [streams]

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """The readers (reclaim + XREADGROUP forever) into one queue. A Redis error (restart, failover's
        UNBLOCKED/READONLY/MOVED, a blip) waits with backoff and goes on; NOGROUP (a restart that lost the
        data) recreates the groups. Only an error waiting cannot fix (or an outage past
        loop_give_up_after) ends a reader, which ends this generator, which ends the receiver, which ends
        the worker process non-zero (workers/main.py): never alive-but-idle."""
        # bounded: a reader waits while the receiver is behind instead of fetching without limit
        inbox: asyncio.Queue[tuple[str, bytes, bytes]] = asyncio.Queue(maxsize=self.count or 200)
        readers = self._readers = [
            asyncio.create_task(self._read(streams, inbox), name=f"reader {' '.join(streams[:2])}"
                                + (f" (+{len(streams) - 2})" if len(streams) > 2 else ""))
            for streams in self.reader_streams()]
        get: asyncio.Future[tuple[str, bytes, bytes]] | None = None
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
            if get is not None:
                get.cancel()  # the generator closed while waiting (not "destroyed but pending")
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read(self, streams: list[str], inbox: asyncio.Queue[tuple[str, bytes, bytes]]) -> None:
        name = streams[0] if len(streams) == 1 else f"{len(streams)} streams"
        backoff = Backoff.for_loop(f"stream listener {self.consumer_name} {name}", log, self.settings)
        # XREADGROUP's COUNT is per stream: over many streams, a share of it (at least MIN_PER_STREAM, so a
        # shard that takes most of the traffic is not throttled), which keeps one read near `count` messages
        per_stream = self.count or 200
        if len(streams) > 1:
            per_stream = max(MIN_PER_STREAM, -(-per_stream // len(streams)))
        next_reclaim = 0.0
        while not self._stopping:  # besides the cancel: a client library that swallowed it cannot keep it going
            got: Fetched = []
            try:
                if self.direct is not None:
                    await self.direct.room()
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.reclaim_every
                    got += await self._reclaim(streams)
                fetched: Any = await self.redis.xreadgroup(
                    self.consumer_group_name, self.consumer_name, dict.fromkeys(streams, ">"), block=self.block,
                    count=per_stream,
                )
                full = False
                for stream, messages in fetched or []:
                    full = full or len(messages) >= per_stream
                    got += [(as_str(stream), mid, msg) for mid, msg in messages if msg]
                backoff.ok()
                self.progress.mark_fetch(len(got))
            except Exception as exc:
                self.progress.mark_attempt()
                if _is_nogroup(exc):
                    with contextlib.suppress(Exception):  # if Redis is still failing, the next round retries
                        await self._declare_consumer_group()
                        log.warning("consumer group %s of %s was missing (Redis lost its data?): recreated",
                                    self.consumer_group_name, name)
                await self._hand_over(got, inbox)  # what was reclaimed before the error still goes out
                await backoff.failed(exc)
                continue
            await self._hand_over(got, inbox)
            if got and not full:
                # A read that found only a few messages: wait a moment before the next, so reads come back
                # with dozens of messages instead of one or two (an XREADGROUP's client CPU is mostly per
                # call: 7-15 % of a worker under the bench). Invisible in latency: the batch writer collects
                # for 50 ms anyway.
                await asyncio.sleep(self.read_linger)

    async def _hand_over(self, got: Fetched, inbox: asyncio.Queue[tuple[str, bytes, bytes]]) -> None:
        """Direct-route tasks to their route, a whole read at once (all shards); the rest to taskiq."""
        direct: list[Delivery] = []
        rest = []
        for stream, mid, msg in got:
            data = msg.get(b"data", b"")
            parsed = self._direct_message(data)
            if parsed is None:
                rest.append((stream, mid, data))
            else:
                direct.append((stream, as_str(mid), data, parsed))
        if self.direct is not None and direct:
            self.direct.take(direct)
        for item in rest:  # last: a full inbox (slow taskiq tasks) does not hold the direct ones back
            await inbox.put(item)

    def _direct_message(self, data: bytes) -> dict[str, Any] | None:
        if self.direct is None:
            return None
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None  # taskiq's receiver logs it and acks it
        return msg if isinstance(msg, dict) and msg.get("task_name") in self.direct.task_names else None

    async def _reclaim(self, streams: list[str]) -> Fetched:
        """Claim messages idle longer than redeliver_after (their consumer died or hung): one round trip."""
        args: dict[str, Any] = {"min_idle_time": self.idle_timeout, "start_id": "0-0",
                                "count": self.unacknowledged_batch_size}
        if len(streams) == 1:  # a cluster's reader: a plain call, as before
            replies = [await self.redis.xautoclaim(streams[0], self.consumer_group_name, self.consumer_name, **args)]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for stream in streams:
                pipe.xautoclaim(stream, self.consumer_group_name, self.consumer_name, **args)
            replies = await pipe.execute()
        claimed: Fetched = []
        for stream, reply in zip(streams, replies, strict=True):
            got = [(stream, mid, msg) for mid, msg in reply[1] if msg]
            if got:
                log.warning("reclaimed %d messages of %s from dead or stuck consumers", len(got), stream)
            claimed += got
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
