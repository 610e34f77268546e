"""What the Sentinel fencing costs: the ingest call with and without `WAIT 1` (Settings.redis_wait_replicas),
`python -m loadtest.wait_cost [--events 6400]`.

A private primary with one replica (loopback, AOF on both), the real `Ingestor`, runs alternating 0/1/0/1
so both see the same machine: request latency with one request in flight (the added round trip and the
replica's acknowledgement), and with 64 in flight (coalesced, as an API node under load) the throughput and
the primary's CPU per event. docs/scaling.md quotes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
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


def _event(i: int) -> LogErrorIn:
    return LogErrorIn(message="boom", service="bench", fingerprint=f"g{i % 5000}")


async def _measure(primary: RedisServer, wait: int, events: int, db: str) -> dict[str, float]:
    settings = Settings(redis_url=primary.url, key_prefix=f"w{uuid.uuid4().hex[:6]}", database_url=db,
                        rate_limit_enabled=False, queue_soft_limit=10_000_000, ingest_budget=5.0,
                        redis_timeout=5.0, redis_wait_replicas=wait)
    rt = Runtime.open(settings)
    ingestor = Ingestor(rt)
    await ingestor.ingest(1, [_event(0)])
    latencies = []
    for i in range(500):  # one request in flight
        t = time.perf_counter()
        await ingestor.ingest(1, [_event(i)])
        latencies.append(time.perf_counter() - t)
    assert primary.proc is not None and primary.proc.process is not None
    proc = psutil.Process(primary.proc.process.pid)
    cpu0, t0, sent = sum(proc.cpu_times()[:2]), time.perf_counter(), 0
    while sent < events:  # 64 in flight
        await asyncio.gather(*(ingestor.ingest(1, [_event(sent + i)]) for i in range(64)))
        sent += 64
    cpu, wall = sum(proc.cpu_times()[:2]) - cpu0, time.perf_counter() - t0
    await rt.close()
    latencies.sort()
    return {"p50_ms": statistics.median(latencies) * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
            "events_per_s": sent / wall, "primary_cpu_us_per_event": cpu / sent * 1e6}


async def main_async(events: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        primary = RedisServer(Path(tmp) / "primary", appendonly=True).start()
        replica = RedisServer(Path(tmp) / "replica", appendonly=True,
                              extra_args=["--replicaof", "127.0.0.1", str(primary.port)]).start()
        db = f"sqlite+aiosqlite:///{Path(tmp) / 'f.db'}"
        try:
            print("WAIT  p50 ms (1 in flight)  p99 ms  events/s (64 in flight)  primary CPU µs/event")
            for _ in range(rounds):
                for wait in (0, 1):
                    r = await _measure(primary, wait, events, db)
                    print(f"{wait:>4}  {r['p50_ms']:>22.2f}  {r['p99_ms']:>6.2f}  {r['events_per_s']:>23.0f}"
                          f"  {r['primary_cpu_us_per_event']:>20.1f}")
        finally:
            replica.stop()
            primary.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=6400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main_async(args.events, args.rounds))


if __name__ == "__main__":
    main()
