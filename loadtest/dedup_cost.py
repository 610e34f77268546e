"""Redis CPU per event with the dedup window empty vs full: `python -m loadtest.dedup_cost [--ttl 20]`.

ingest.lua looks a new event id up in every time bucket of the dedup window that exists (core/dedup.py:
`dedup_buckets` + 1 hashes), so the script's cost per event grows while the window fills, for
`dedup_ttl` (900 s by default) after a start: a fresh stack, a `make bench` case and the first 15 minutes
of a soak all run with fewer buckets than the steady state. This measures both ends on a private
redis-server through the real `Ingestor`: a fresh key prefix (one bucket) against one whose window was
filled by a steady stream for ttl + one bucket (every bucket present, each with its ids). A short ttl
stands for the default one: the layout is the same, only the bucket length differs.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import redis as redis_sync

from api.ingest import Ingestor
from core.events import LogErrorIn
from core.runtime import Runtime
from core.settings import Settings
from faultline.services import RedisServer


def _events(n: int) -> list[LogErrorIn]:  # new ids every time, 5 hot groups + a tail, like the bench mix
    return [LogErrorIn(message="boom", service="dedup-cost", fingerprint=f"g{i % 5 if i % 10 < 6 else i % 500}",
                       event_id=uuid.uuid4().hex) for i in range(n)]


async def _ingest(ingestor: Ingestor, events: list[LogErrorIn], in_flight: int = 64) -> None:
    for start in range(0, len(events), in_flight):
        await asyncio.gather(*(ingestor.ingest(1, [e]) for e in events[start:start + in_flight]))


def _open(server: RedisServer, ttl: int, buckets: int, db: str) -> tuple[Runtime, Ingestor, redis_sync.Redis]:
    """A runtime on a fresh key prefix (its own dedup window), its Ingestor, and a plain client for stats."""
    settings = Settings(redis_url=server.url, key_prefix=f"d{uuid.uuid4().hex[:6]}", database_url=db,
                        rate_limit_enabled=False, queue_soft_limit=10_000_000, ingest_budget=5.0,
                        redis_timeout=5.0, dedup_ttl=ttl, dedup_buckets=buckets)
    rt = Runtime.open(settings)
    return rt, Ingestor(rt), redis_sync.Redis.from_url(server.url)


async def _measure(server: RedisServer, ttl: int, buckets: int, events: int, fill_rate: int,
                   db: str) -> dict[str, float]:
    rt, ingestor, stats = _open(server, ttl, buckets, db)
    assert server.proc is not None and server.proc.process is not None
    proc = psutil.Process(server.proc.process.pid)
    out: dict[str, float] = {}
    try:
        for phase in ("empty", "full"):
            if phase == "full":  # a steady stream for the whole window and one bucket more
                until = time.monotonic() + ttl + ttl / buckets + 1
                while time.monotonic() < until:
                    tick = time.monotonic()
                    await _ingest(ingestor, _events(fill_rate // 4))
                    await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
            stats.config_resetstat()
            cpu = sum(proc.cpu_times()[:2])
            await _ingest(ingestor, _events(events))
            out[phase + "_cpu"] = (sum(proc.cpu_times()[:2]) - cpu) / events * 1e6
            cmd = stats.info("commandstats").get("cmdstat_evalsha", {})
            out[phase] = float(cmd.get("usec", 0)) / events
    finally:
        stats.close()
        await rt.close()
    return out


def _stored_ids(stats: redis_sync.Redis, rt: Runtime) -> int:
    meta = rt.keys.dedup_meta.encode()
    return sum(int(stats.hlen(k)) for k in stats.scan_iter(match=rt.keys.dedup_prefix + "*", count=1000)
               if k != meta)


async def _memory(server: RedisServer, ttl: int, buckets: int, rate: int, db: str) -> tuple[float, float]:
    """A steady `rate` for 5 windows; from the third on, every second: ids stored (expired ones not yet
    swept included) / ids sent in the last window. Returns (min, max): how flat the id part of memory stays
    (the window's ids plus the bucket being filled and what is not swept yet: 1.0 .. ~1.2 is flat)."""
    rt, ingestor, stats = _open(server, ttl, buckets, db)
    ratios: list[float] = []
    sent: list[float] = []  # when each tick's events were sent (a busy machine falls behind `rate`)
    try:
        start = time.monotonic()
        next_sample = start + 2 * ttl
        while time.monotonic() < start + 5 * ttl:
            tick = time.monotonic()
            await _ingest(ingestor, _events(rate // 4))
            sent.append(tick)
            if tick >= next_sample:
                in_window = sum(rate // 4 for t in sent if t > tick - ttl)
                ratios.append(_stored_ids(stats, rt) / in_window)
                next_sample += 1
            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
    finally:
        stats.close()
        await rt.close()
    return min(ratios), max(ratios)


async def main_async(ttl: int, buckets: list[int], events: int, fill_rate: int, rounds: int,
                     memory: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        db = f"sqlite+aiosqlite:///{Path(tmp) / 'f.db'}"
        try:
            print(f"dedup window {ttl} s, {events} single events per phase, 64 in flight")
            print("round  buckets  µs in EVALSHA per event: window empty  full  full/empty"
                  "  | redis-server CPU µs per event: empty  full  full/empty")
            for r in range(rounds):
                for nb in buckets:
                    m = await _measure(server, ttl, nb, events, fill_rate, db)
                    ratio, cpu_ratio = m["full"] / m["empty"], m["full_cpu"] / m["empty_cpu"]
                    print(f"{r + 1:>5}  {nb:>7}  {m['empty']:>33.1f}  {m['full']:>4.1f}  {ratio:>10.2f}"
                          f"  | {m['empty_cpu']:>36.1f}  {m['full_cpu']:>4.1f}  {cpu_ratio:>10.2f}")
            if memory:
                print(f"ids stored / ids sent in the last window, {fill_rate}/s, windows 3-5: min  max")
                for nb in buckets:
                    low, high = await _memory(server, ttl, nb, fill_rate, db)
                    print(f"buckets {nb:>3}: {low:.2f}  {high:.2f}")
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ttl", type=int, default=20, help="dedup window, s (stands for the default 900)")
    parser.add_argument("--buckets", default="10", help="dedup_buckets values to compare, e.g. 10,1")
    parser.add_argument("--events", type=int, default=6400)
    parser.add_argument("--fill-rate", type=int, default=400, help="events/s while the window fills")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--memory", action="store_true", help="also: how flat the stored ids stay (5 windows)")
    args = parser.parse_args()
    asyncio.run(main_async(args.ttl, [int(b) for b in args.buckets.split(",")], args.events, args.fill_rate,
                           args.rounds, args.memory))


if __name__ == "__main__":
    main()
