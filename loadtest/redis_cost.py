"""Redis CPU per ingested event, by key-shard count: `python -m loadtest.redis_cost [--shards 1,16]`.

Drives the real ingest path (api/ingest.py `Ingestor`: fingerprint, per-shard script calls) against a
private redis-server, request by request (like /errors/log) and in 100-event batches (like /errors/batch),
then reads the server's own accounting: `INFO commandstats` (µs inside EVALSHA) and the redis-server
process's CPU (everything: parsing, replies, AOF). docs/scaling.md turns these figures into capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from api.ingest import Ingestor
from core.events import LogErrorIn
from core.runtime import Runtime
from core.settings import Settings
from faultline.services import RedisServer


async def _measure(server: RedisServer, shards: int, events: int, batch: int, db: str) -> dict[str, float]:
    settings = Settings(redis_url=server.url, redis_shards=shards, key_prefix=f"c{uuid.uuid4().hex[:6]}",
                        database_url=db, rate_limit_enabled=False, queue_soft_limit=10_000_000,
                        ingest_budget=5.0, redis_timeout=5.0)  # a busy shared machine: no 503s
    rt = Runtime.open(settings)
    ingestor = Ingestor(rt)
    await ingestor.ingest(1, [LogErrorIn(message="warm-up")])
    await rt.redis.config_resetstat()
    assert server.proc is not None and server.proc.process is not None
    proc = psutil.Process(server.proc.process.pid)
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    sent = 0
    while sent < events:
        # 64 requests in flight, as an API node has under load: they coalesce into shared script calls
        # 5,000 groups (the client's fingerprint: messages with numbers would all group together)
        await asyncio.gather(*(ingestor.ingest(1, [LogErrorIn(message="boom", service="bench",
                                                              fingerprint=f"g{(sent + i * batch + j) % 5000}")
                                                   for j in range(batch)])
                               for i in range(64)))
        sent += 64 * batch
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    wall = time.perf_counter() - t0
    stats = await rt.redis.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {})
    await rt.close()
    return {"events": sent, "redis_cpu_us_per_event": cpu / sent * 1e6,
            "evalsha_us_per_event": float(evalsha.get("usec", 0)) / sent,
            "calls_per_event": float(evalsha.get("calls", 0)) / sent, "wall_s": wall}


async def main_async(shard_counts: list[int], events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", appendonly=True).start()
        db = f"sqlite+aiosqlite:///{Path(tmp) / 'f.db'}"
        try:
            print("shards  shape        events  redis CPU µs/event  EVALSHA µs/event  calls/event")
            for batch, shape in ((1, "1 per req"), (100, "100 per req")):
                for shards in shard_counts:
                    r = await _measure(server, shards, events, batch, db)
                    print(f"{shards:>6}  {shape:<11} {r['events']:>7}  {r['redis_cpu_us_per_event']:>18.1f}"
                          f"  {r['evalsha_us_per_event']:>16.1f}  {r['calls_per_event']:>11.3f}")
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="1,16")
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main_async([int(s) for s in args.shards.split(",")], args.events))


if __name__ == "__main__":
    main()
