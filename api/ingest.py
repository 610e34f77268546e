"""The hot path: validated events -> fingerprint -> Redis script calls (dedup, count, enqueue).

No SQL here. The script (core/scripts/ingest.lua) also sheds load when the queue passes its soft limit; the
calls themselves, their coalescing and the 503-means-not-counted protocol are api/ingestcall.py's.

Key shards (core/keys.py): an event goes to the shard of its fingerprint. On one server one script call
carries every shard's events (a section each), so a request is counted all or none. On Redis Cluster the
script runs once per shard (each call single-slot), concurrently, and a request whose events span shards is
counted all-or-none per shard: if one shard's call fails the request
gets its 503 while the other shards' events stay counted, so a client resending with the same event ids
(the SDKs do; nginx's retry keeps the edge id, from which missing ids are derived) has each counted once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from api.ingestcall import QueueFull, ShardCalls
from api.ingestrun import Pending, StoreUnavailable
from core import metrics
from core.dedup import dedup_args
from core.eventcheck import EventIn
from core.events import LogErrorIn, new_event_id
from core.fingerprint import client_fingerprint, default_fingerprint
from core.ratelimit.limiter import Decision
from core.ratelimit.quota import overflow_fingerprint
from core.ratelimit.redis_limiter import FoldedHit
from core.runtime import Runtime

__all__ = ["Accepted", "Ingestor", "QueueFull", "RateLimited", "StoreUnavailable"]
ACCEPTED, DUPLICATE = metrics.EVENTS.labels("accepted"), metrics.EVENTS.labels("duplicate")  # once per request


@dataclass(slots=True)
class Accepted:
    event_id: str
    fingerprint: str
    duplicate: bool
    first_seen: bool  # the first event of its group Redis has seen
    # > 0: NOT counted, the project's quota is used up; one more event fits in this many ms
    rate_limited_ms: int = 0
    overflow: bool = False  # counted into the project's "too many new groups" group (fingerprint is its)

    @property
    def counted(self) -> bool:
        return not self.duplicate and not self.rate_limited_ms


class RateLimited(Exception):
    """The request rate limiter, folded into the ingest call, refused the request: nothing was counted."""

    def __init__(self, decision: Decision) -> None:
        super().__init__("rate limited")
        self.decision = decision


def derived_event_id(edge_id: str, index: int) -> str:
    return hashlib.blake2b(f"{edge_id}:{index}".encode(), digest_size=16).hexdigest()


def fingerprint_of(project_id: int, item: LogErrorIn | EventIn) -> str:
    if item.fingerprint:
        return client_fingerprint(project_id, item.fingerprint)
    return default_fingerprint(project_id, item.service, item.message, item.stack)


class Ingestor:
    """Turns a request's events into script arguments per key shard, and the script's answers into one
    Accepted per event (ShardCalls makes the calls)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.keys = runtime.keys
        self.calls = ShardCalls(runtime)

    @property
    def script(self) -> Any:
        """The ingest script the calls use (tests wrap it to lose replies)."""
        return self.calls.script

    @script.setter
    def script(self, value: Any) -> None:
        self.calls.script = value

    async def ingest(self, project_id: int, items: Sequence[LogErrorIn | EventIn], edge_id: str | None = None,
                     limit: FoldedHit | None = None) -> list[Accepted]:
        """`edge_id`: the load balancer's id of this request, the same when it retries the request on
        another node; events without an event_id get one derived from it, so a retry counts nothing twice.
        `limit`: the request's rate-limiter check (one key shard only, api/ratelimit.py), decided in the same
        script call before anything is counted; RateLimited when it refuses."""
        now = time.time()
        by_shard: dict[int, tuple[list[bytes | str | int], list[int]]] = {}
        out: list[Accepted] = []
        shard_of = self.keys.shard_of
        for index, item in enumerate(items):
            if index and index % 100 == 0:
                await asyncio.sleep(0)  # a 1,000-event batch must not hold the loop (health probes, others)
            event_id = item.event_id or (derived_event_id(edge_id, index) if edge_id else new_event_id())
            fp = fingerprint_of(project_id, item)
            event = {"event_id": event_id, "project_id": project_id, "fingerprint": fp, "received_at": now,
                     "message": item.message, "level": item.level, "service": item.service}
            if item.stack is not None:
                event["stack"] = item.stack
            if item.context is not None:
                event["context"] = item.context
            shard = shard_of(fp)
            part = by_shard.get(shard)
            if part is None:
                part = by_shard[shard] = ([], [])
            seed, digest = dedup_args(project_id, event_id)
            # per event: seed, digest, fingerprint, event JSON, project id (the script's quota and new-group
            # cap are per project)
            part[0].extend((seed, digest, fp, orjson.dumps(event), project_id))
            part[1].append(index)
            out.append(Accepted(event_id, fp, False, False))
        loop = asyncio.get_running_loop()
        parts = []
        if limit is not None and len(by_shard) != 1:
            raise ValueError("a folded limiter check needs the request on one key shard")
        for shard, (args, positions) in by_shard.items():
            pending = Pending(args, len(positions), loop.create_future(), positions, limit)
            self.calls.submit(shard, pending)
            parts.append(pending)
        totals, outcomes = [0] * len(out), [0] * len(out)
        # every shard's answer is awaited (none is left unretrieved) before a failure is raised
        results: list[Any]
        if len(parts) == 1:  # the common case (one key shard): no gather machinery per request
            try:
                results = [await parts[0].future]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(*(p.future for p in parts), return_exceptions=True)
        for p, result in zip(parts, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            for pos, total, outcome in zip(p.positions, *result, strict=True):
                totals[pos], outcomes[pos] = total, outcome
        if limit is not None and limit.decision is not None and not limit.decision.allowed:
            raise RateLimited(limit.decision)
        for acc, total, outcome in zip(out, totals, outcomes, strict=True):
            acc.first_seen = total == 1
            if outcome < 0:  # over the project's quota: dropped, counted per project by the script
                acc.rate_limited_ms = -outcome
            else:
                acc.duplicate = total == 0
                if outcome == 1:
                    acc.overflow = True
                    acc.fingerprint = overflow_fingerprint(project_id)
        dup = sum(a.duplicate for a in out)
        limited = sum(a.rate_limited_ms > 0 for a in out)
        if len(out) - dup - limited:  # written by core/metrics.py's Deferred: a few writes per 50 ms, not per request
            metrics.DEFERRED.inc(ACCEPTED, len(out) - dup - limited)
        if dup:
            metrics.DEFERRED.inc(DUPLICATE, dup)
        if limited:
            metrics.EVENTS_DROPPED.labels("rate_limited").inc(limited)
        return out
