"""The hot path: validated events -> fingerprint -> ONE Redis script call (dedup, count, enqueue).

No SQL here. The script (core/scripts/ingest.lua) also sheds load when the queue passes its soft limit.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import orjson

from core import metrics
from core.events import LogErrorIn, new_event_id
from core.fingerprint import client_fingerprint, default_fingerprint
from core.redis import load_script
from core.runtime import Runtime
from core.tasks import message_frame


@dataclass(slots=True)
class Accepted:
    event_id: str
    fingerprint: str
    duplicate: bool
    first_seen: bool  # the first event of its group Redis has seen


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


class Ingestor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = runtime.keys
        self.script = load_script(runtime.redis, "ingest")

    async def ingest(self, project_id: int, items: list[LogErrorIn], edge_id: str | None = None) -> list[Accepted]:
        """`edge_id`: the load balancer's id of this request, the same when it retries the request on
        another node; events without an event_id get one derived from it, so a retry counts nothing twice."""
        settings = self.runtime.settings
        now = time.time()
        head, tail = message_frame()
        keys = [self.keys.stream, self.keys.pending_counts, self.keys.live_counts,
                self.keys.feed_dirty, self.keys.feed_groups]
        args: list[str | bytes | int] = [settings.dedup_ttl, settings.queue_soft_limit, head, tail]
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
            out.append(Accepted(event_id, fp, False, False))
        with metrics.timed(metrics.REDIS_SECONDS, "ingest"):
            result = await self.script(keys=keys, args=args)
        if result[0] == -1:
            metrics.EVENTS.labels("shed").inc(len(items))
            raise QueueFull(int(result[1]))
        for acc, total in zip(out, result[1:], strict=True):
            acc.duplicate = total == 0
            acc.first_seen = total == 1
        dup = sum(a.duplicate for a in out)
        metrics.EVENTS.labels("accepted").inc(len(out) - dup)
        if dup:
            metrics.EVENTS.labels("duplicate").inc(dup)
        return out
