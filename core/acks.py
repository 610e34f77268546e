"""Acknowledgements, batched: XACK + XDEL of everything acked within ~2 ms in one round trip (a pipeline for
one stream; one script call for several key shards' streams on one server, core/scripts/ack.lua).

XDEL as well as XACK: acknowledged entries leave the stream, so XLEN is the queue depth and the stream never
grows with history. Batched: under the single-event ingest every event is a message, and one round trip per
message was a few % of a worker by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from core.backoff import Backoff, retryable
from core.redis import PackedScript, is_cluster, load_script

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from core.settings import Settings

log = logging.getLogger("faultline.broker")
ACK_LINGER = 0.002  # s: acks of one batch of tasks finish within this of each other


class AckBatcher:
    """Acks of one or more streams: one batcher for every stream on one server (a read over all shards is
    acked in one round trip), one per stream on a cluster (a primary failing over delays its own acks)."""

    def __init__(self, redis: Redis, settings: Settings, group: str) -> None:
        self.redis = redis
        self.settings = settings
        self.group = group
        self.ids: dict[str, list[str]] = {}
        self.done: asyncio.Future[None] | None = None
        # several streams (key shards on one server): one script call (core/scripts/ack.lua) acks them all
        self.script = None if is_cluster(redis) else PackedScript(redis, load_script(redis, "ack"))

    async def ack_many(self, msg_ids: Iterable[tuple[str, str]]) -> None:
        """Ack these (stream, message id)s with whatever else is acked within ACK_LINGER; raises if the ack
        failed for good (the messages are then redelivered after redeliver_after: never lost)."""
        for stream, msg_id in msg_ids:
            self.ids.setdefault(stream, []).append(msg_id)
        if self.done is None:
            loop = asyncio.get_running_loop()
            self.done = loop.create_future()
            loop.call_later(ACK_LINGER, lambda: asyncio.ensure_future(self._flush()))
        await asyncio.shield(self.done)

    async def _flush(self) -> None:
        ids, done = self.ids, self.done
        self.ids, self.done = {}, None
        assert done is not None
        n = sum(len(v) for v in ids.values())
        # XACK + XDEL are idempotent: retry through a Redis outage, but only while it still matters. Past
        # redeliver_after another worker reclaims the messages anyway (the writes are idempotent too).
        backoff = Backoff.for_loop(f"ack of {n} messages", log, self.settings)
        deadline = time.monotonic() + self.settings.redeliver_after
        while True:
            try:
                if len(ids) > 1 and self.script is not None:
                    args: list[str | int] = [self.group]
                    for stream_ids in ids.values():
                        args += [len(stream_ids), *stream_ids]
                    await self.script(keys=list(ids), args=args)
                else:
                    pipe = self.redis.pipeline(transaction=False)
                    for stream, stream_ids in ids.items():
                        pipe.xack(stream, self.group, *stream_ids)
                        pipe.xdel(stream, *stream_ids)
                    await pipe.execute()
                backoff.ok()
                done.set_result(None)
                return
            except Exception as exc:  # unacked messages are redelivered later: nothing is lost
                if time.monotonic() > deadline or not retryable(exc):
                    log.warning("ack of %d messages failed: %s; they will be redelivered", n, exc)
                    done.set_exception(exc)
                    done.exception()  # mark retrieved even if no waiter is left
                    return
                await asyncio.sleep(backoff.next_delay(exc))
