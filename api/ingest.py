"""The hot path: validated events -> fingerprint -> ONE Redis script call (dedup, count, enqueue).

No SQL here. The script (core/scripts/ingest.lua) also sheds load when the queue passes its soft limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import orjson

from core import metrics
from core.events import LogErrorIn, new_event_id
from core.fingerprint import client_fingerprint, default_fingerprint
from core.ratelimit.quota import overflow_fingerprint
from core.redis import load_script
from core.runtime import Runtime
from core.tasks import message_frame


@dataclass(slots=True)
class Accepted:
    event_id: str
    fingerprint: str
    duplicate: bool
    first_seen: bool  # the first event of its group Redis has seen
    # [limits] > 0: NOT counted, the project's quota is used up; one more event fits in this many ms
    rate_limited_ms: int = 0
    overflow: bool = False  # counted into the project's "too many new groups" group (fingerprint is its)

    @property
    def counted(self) -> bool:
        return not self.duplicate and not self.rate_limited_ms


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"queue depth {depth}")
        self.depth = depth


def derived_event_id(edge_id: str, index: int) -> str:
    return hashlib.blake2b(f"{edge_id}:{index}".encode(), digest_size=16).hexdigest()


def fingerprint_of(project_id: int, item: LogErrorIn) -> str:
    if item.fingerprint:
        return client_fingerprint(project_id, item.fingerprint)
    return default_fingerprint(project_id, item.service, item.message, item.stack)


@dataclass(slots=True)
class _Pending:
    keys: list[str]
    args: list[bytes | str]
    future: asyncio.Future[tuple[list[int], list[int]]]


class Ingestor:
    """Requests that arrive in the same event-loop turn share ONE script call and ONE queued task.

    Under load a node has tens of requests in flight; coalescing them costs no latency (the flush runs
    later in the same loop turn) and turns N Redis round trips + N worker tasks into 1 + 1. The script
    stays atomic per call, and each request still gets its own per-event results.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = runtime.keys
        self.script = load_script(runtime.redis, "ingest")
        self._pending: list[_Pending] = []
        self._calls: set[asyncio.Task[None]] = set()  # strong references: the loop only keeps weak ones

    async def ingest(self, project_id: int, items: list[LogErrorIn], edge_id: str | None = None) -> list[Accepted]:
        """`edge_id`: the load balancer's id of this request, the same when it retries the request on
        another node; events without an event_id get one derived from it, so a retry counts nothing twice."""
        now = time.time()
        keys: list[str] = []
        args: list[bytes | str] = []
        out: list[Accepted] = []
        for index, item in enumerate(items):
            event_id = item.event_id or (derived_event_id(edge_id, index) if edge_id else new_event_id())
            fp = fingerprint_of(project_id, item)
            event = {"event_id": event_id, "project_id": project_id, "fingerprint": fp, "received_at": now,
                     "message": item.message, "level": item.level, "service": item.service}
            if item.stack is not None:
                event["stack"] = item.stack
            if item.context is not None:
                event["context"] = item.context
            keys.append(self.keys.event(event_id))
            args.append(fp)
            args.append(orjson.dumps(event))
            args.append(str(project_id))  # [limits] the script's quota and group cap are per project
            out.append(Accepted(event_id, fp, False, False))
        loop = asyncio.get_running_loop()
        pending = _Pending(keys, args, loop.create_future())
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append(pending)
        totals, outcomes = await pending.future
        for acc, total, outcome in zip(out, totals, outcomes, strict=True):
            acc.first_seen = total == 1
            if outcome < 0:  # [limits] over the project's quota: dropped, counted per project by the script
                acc.rate_limited_ms = -outcome
            else:
                acc.duplicate = total == 0
                if outcome == 1:
                    acc.overflow = True
                    acc.fingerprint = overflow_fingerprint(project_id)
        dup = sum(a.duplicate for a in out)
        limited = sum(a.rate_limited_ms > 0 for a in out)
        metrics.EVENTS.labels("accepted").inc(len(out) - dup - limited)
        if dup:
            metrics.EVENTS.labels("duplicate").inc(dup)
        if limited:
            metrics.EVENTS_DROPPED.labels("rate_limited").inc(limited)
        return out

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._call(batch))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[_Pending]) -> None:
        settings = self.runtime.settings
        head, tail = message_frame()
        k = self.keys
        keys = [k.stream, k.pending_counts, k.live_counts, k.feed_dirty, k.feed_groups,
                k.quota_conf, k.quota_state, k.dropped]
        args: list[str | bytes | int] = [settings.dedup_ttl, settings.queue_soft_limit, head, tail,
                                         settings.project_quota_per_second, settings.project_quota_per_minute,
                                         settings.project_new_groups_per_hour,
                                         1 if settings.rate_limit_enabled else 0,
                                         k.new_groups(""), k.feed_index("")]
        for p in batch:
            keys += p.keys
            args += p.args
        try:
            with metrics.timed(metrics.REDIS_SECONDS, "ingest"):
                result = await self.script(keys=keys, args=args)
        except BaseException as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if result[0] == -1:
            metrics.EVENTS.labels("shed").inc(sum(len(p.keys) for p in batch))
            for p in batch:
                p.future.set_exception(QueueFull(int(result[1])))
            return
        offset, total = 1, len(result) // 2  # {accepted, totals..., outcomes...}
        for p in batch:
            n = len(p.keys)
            if not p.future.done():  # a request whose client went away still had its events counted
                p.future.set_result(([int(x) for x in result[offset:offset + n]],
                                     [int(x) for x in result[total + offset:total + offset + n]]))
            offset += n
