"""`make memsoak`: Redis memory of the real local stack under a steady ingest rate, over time.

Runs faultline.stack.Stack (nodes, nginx, workers, scheduler, Redis) and posts ~`--rate` events/s in
batches over `--groups` active fingerprints, with `--drift` new fingerprints per second (old ones go idle,
as real errors get fixed), and a short FAULTLINE_DEDUP_TTL so the dedup window fills early. Every
`--sample` s it records Redis `used_memory`, the per-group hash sizes and the remembered ids, and writes:

  loadtest/reports/memsoak-<time>.csv   memory and sizes over time
  loadtest/reports/memsoak-<time>.md    flatness once full, bytes per remembered id, the extrapolation to
                                        1,000 events/s x the default 900 s window, per-group bounds, counts

The run passes when memory is flat within 10 % once the dedup window and the idle horizon are full, the
extrapolation stays <= 64 MB, the live hash stays under its bound, and the DB holds every accepted event.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select

from core.db.engine import make_engine
from core.db.models import ErrorGroup
from core.keys import Keys
from core.redis import make_redis
from faultline.procs import FileSink
from faultline.stack import Stack, StackConfig
from loadtest.report import REPORTS

TARGET_MB = 64
DEFAULT_TTL, DEFAULT_RATE = 900, 1000
KEY_OVERHEAD = 40  # bytes per key MEMORY USAGE leaves out (keyspace + expires dict entries)


class Sender:
    def __init__(self, url: str, key: str, args: argparse.Namespace) -> None:
        self.client = httpx.AsyncClient(base_url=url, headers={"X-Faultline-Key": key}, timeout=10)
        self.args = args
        self.rng = random.Random(1)
        self.status: dict[str, int] = {}
        self.accepted = self.duplicates = 0
        self.recent: list[dict[str, Any]] = []
        self.slots = asyncio.Semaphore(32)
        self.started = time.monotonic()

    def event(self, t: float) -> dict[str, Any]:
        if self.recent and self.rng.random() < 0.01:  # an SDK retry: the same event again
            return self.rng.choice(self.recent)
        g = int(self.args.drift * t) + self.rng.randrange(self.args.groups)
        ev = {"message": f"ValueError: memsoak m-{g}", "service": f"svc{g % 7}", "fingerprint": f"m-{g}",
              "event_id": uuid.UUID(int=self.rng.getrandbits(128)).hex, "context": {"n": g}}
        self.recent = [*self.recent[-99:], ev]
        return ev

    async def post(self, events: list[dict[str, Any]]) -> None:
        async with self.slots:
            try:
                r = await self.client.post("/errors/batch", content=orjson.dumps({"events": events}),
                                           headers={"Content-Type": "application/json"})
                code = str(r.status_code)
                if r.status_code == 202:
                    self.accepted += r.json()["accepted"]
                    self.duplicates += r.json()["duplicates"]
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            self.status[code] = self.status.get(code, 0) + 1

    async def run(self, stop_at: float) -> None:
        period = self.args.batch / self.args.rate
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while time.monotonic() < stop_at:
            t = time.monotonic() - self.started
            task = asyncio.create_task(self.post([self.event(t) for _ in range(self.args.batch)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, self.started + n * period - time.monotonic()))
        await asyncio.gather(*tasks)
        await self.client.aclose()


async def sample(redis: Any, keys: Keys, ttl: int, buckets: int) -> dict[str, Any]:
    info = await redis.info("memory")
    secs, _ = await redis.time()
    length = math.ceil(ttl / buckets)
    cur = secs // length
    meta = await redis.hgetall(keys.dedup_meta)
    gen = cur // buckets  # ids written in this generation and the one before (core/scripts/_dedup.lua)
    ids = sum(int(v) for k, v in meta.items() if k.startswith(b"gn:") and gen - 1 <= int(k[3:]) <= gen)
    pipe = redis.pipeline(transaction=False)
    for k in (keys.live_counts, keys.feed_groups, keys.feed_emitted, keys.feed_last_seen, keys.pending_counts):
        pipe.hlen(k)
    pipe.xlen(keys.stream)
    pipe.memory_usage(keys.stream, samples=0)
    pipe.dbsize()
    live, groups, emitted, last, pending, stream, stream_mem, dbsize = await pipe.execute()
    # the task queue is bounded by the workers' pace, not by these structures, and client buffers come and
    # go with the requests in flight: both reported apart
    lean = info["used_memory"] - int(stream_mem or 0) - int(info.get("mem_clients_normal", 0))
    return {"used_memory": info["used_memory"], "without_queue": lean,
            "ids": ids, "live": live, "feed_groups": groups, "feed_emitted": emitted, "feed_last": last,
            "pending": pending, "stream": stream, "keys": dbsize}


async def dedup_footprint(redis: Any, keys: Keys) -> tuple[int, int, int, dict[str, int], tuple[float, float]]:
    """(MEMORY USAGE bytes, ids, keys, encodings, (bytes per key, bytes per id) fitted) of the dedup hashes.

    The fit (least squares of MEMORY USAGE over entries, per key) separates what a hash costs from what an
    entry costs, so the extrapolation to other rates and windows uses the right shard count."""
    size = ids = n = 0
    enc: dict[str, int] = {}
    points: list[tuple[int, int]] = []
    async for key in redis.scan_iter(match=keys.dedup_prefix + "*", count=1000):
        if key.decode() == keys.dedup_meta:
            continue
        pipe = redis.pipeline(transaction=False)
        pipe.memory_usage(key, samples=0)
        pipe.hlen(key)
        pipe.object("encoding", key)
        mem, length, encoding = await pipe.execute()
        if encoding is None:  # expired between SCAN and now
            continue
        size += int(mem or 0)
        ids += int(length)
        points.append((int(length), int(mem or 0)))
        n += 1
        enc[encoding.decode()] = enc.get(encoding.decode(), 0) + 1
    return size, ids, n, enc, fit(points)


def fit(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least squares mem = a + b * entries; returns (a, b)."""
    if len(points) < 2:
        return 0.0, 0.0
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b

async def soak(stack: Stack, args: argparse.Namespace, csv_path: Path) -> dict[str, Any]:
    settings = stack.settings()
    keys = Keys.from_settings(settings)
    redis = make_redis(settings, timeout=5)
    sender = Sender(stack.url, stack.ingest_key, args)
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    gen = asyncio.create_task(sender.run(start + args.duration))
    with csv_path.open("w", newline="") as f:
        writer: csv.DictWriter[str] | None = None
        while not gen.done():
            row = {"t": round(time.monotonic() - start, 1), **await sample(redis, keys, args.dedup_ttl, 10),
                   "accepted": sender.accepted}
            rows.append(row)
            if writer is None:
                writer = csv.DictWriter(f, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            with_timeout = asyncio.wait({gen}, timeout=args.sample)
            await with_timeout
    await gen
    footprint = await dedup_footprint(redis, keys)
    end_sample = await sample(redis, keys, args.dedup_ttl, 10)
    counted = await wait_counted(stack, redis, keys, sender.accepted)
    await redis.aclose()
    return {"rows": rows, "footprint": footprint, "end": end_sample, "sender": sender, "db_total": counted}


async def wait_counted(stack: Stack, redis: Any, keys: Keys, accepted: int, timeout: float = 300) -> int:
    """Wait for the queue and the pending counts to reach the DB; returns the DB's total."""
    engine = make_engine(stack.settings())
    deadline = time.monotonic() + timeout
    total = 0
    try:
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                total = int((await conn.execute(select(func.coalesce(func.sum(ErrorGroup.count), 0)))).scalar_one())
            if total >= accepted and not await redis.xlen(keys.stream):
                break
            await asyncio.sleep(2)
    finally:
        await engine.dispose()
    return total


def report(result: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    rows = result["rows"]
    length = math.ceil(args.dedup_ttl / 10)
    settle = max(args.dedup_ttl + length, args.idle + 2 * args.sync_interval) + 20
    tail = [r for r in rows if max(settle, args.duration / 2) <= r["t"] <= args.duration]  # while sending
    mems = [r["used_memory"] for r in tail] or [rows[-1]["used_memory"]]
    flat = max(mems) / min(mems)
    lean = [r["without_queue"] for r in tail] or [rows[-1]["without_queue"]]
    flat_lean = max(lean) / min(lean)
    queue_max = max((r["stream"] for r in tail), default=rows[-1]["stream"])
    size, ids, nkeys, enc, (per_key, per_entry) = result["footprint"]
    per_id = (size + nkeys * KEY_OVERHEAD) / max(ids, 1)
    other = result["end"]["without_queue"] - size - nkeys * KEY_OVERHEAD  # the queue backlog is not steady state
    # the default: 900-s generations of 900,000 ids -> 16,384 shards (_dedup.lua), 2 generations at most;
    # the window + the bucket being filled + about a bucket not yet swept
    bucket_ids = DEFAULT_RATE * math.ceil(DEFAULT_TTL / 10)
    shards = max(256, 2 ** math.ceil(math.log2(bucket_ids * 10 / 64)))
    ids_default = bucket_ids * 12
    keys_default = shards * 2
    per_id_default = (keys_default * (per_key + KEY_OVERHEAD) + ids_default * per_entry) / ids_default
    extrapolated = other + ids_default * per_id_default
    bound = args.groups + args.drift * (args.idle + 2 * args.sync_interval + 10)
    live_max = max((r["live"] for r in tail), default=rows[-1]["live"])
    fps_seen = args.groups + int(args.drift * args.duration)
    sender = result["sender"]
    rate = sender.accepted / args.duration
    # A queue backlog (workers slower than ingest on a busy machine) is not what this soak measures: the
    # verdict uses memory without the task stream when the queue grew, and says so.
    flat_ok = flat <= 1.10 or (queue_max > 1000 and flat_lean <= 1.10)
    ok = flat_ok and extrapolated <= TARGET_MB * 2**20 and live_max <= bound and result["db_total"] == sender.accepted
    end = result["end"]
    exact = "exact" if result["db_total"] == sender.accepted else "MISMATCH"
    table = [
        ("events accepted (rate) / duplicates / requests by status",
         f"{sender.accepted:,} ({rate:,.0f}/s) / {sender.duplicates:,} / {sender.status}"),
        ("DB total after the run", f"{result['db_total']:,} ({exact})"),
        ("used_memory first / last sample",
         f"{rows[0]['used_memory'] / 2**20:.1f} / {rows[-1]['used_memory'] / 2**20:.1f} MB"),
        (f"flatness once full (t >= {max(settle, args.duration / 2):.0f} s, {len(tail)} samples): max/min",
         f"{flat:.3f} (target <= 1.10)"),
        ("the same without the task stream (queue backlog) and client buffers / largest queue once full",
         f"{flat_lean:.3f} / {queue_max:,} tasks"),
        ("remembered ids at the end / dedup keys / encodings", f"{ids:,} / {nkeys:,} / {enc}"),
        (f"bytes per remembered id here (MEMORY USAGE + {KEY_OVERHEAD} B per key)", f"{per_id:.1f}"),
        ("fitted: bytes per hash key / per entry", f"{per_key:.0f} / {per_entry:.1f}"),
        (f"bytes per id at 1,000 ev/s x 900 s ({keys_default:,} keys, {ids_default / keys_default:.0f} ids each)",
         f"{per_id_default:.1f}"),
        ("everything else in Redis at the end (without queue backlog, client buffers)", f"{other / 2**20:.1f} MB"),
        (f"extrapolated: 1,000 ev/s x 900 s ({ids_default:,} ids) + everything else",
         f"{extrapolated / 2**20:.1f} MB (target <= {TARGET_MB})"),
        ("live hash max once full / bound: groups + drift x (idle + 2 sync + 10) / fingerprints ever",
         f"{live_max:,} / {bound:,.0f} / {fps_seen:,}"),
        ("feed hashes at the end: groups / emitted / last",
         f"{end['feed_groups']:,} / {end['feed_emitted']:,} / {end['feed_last']:,}"),
    ]
    command = (f'make memsoak ARGS="--duration {args.duration:g} --rate {args.rate:g} --groups {args.groups} '
               f'--drift {args.drift:g} --dedup-ttl {args.dedup_ttl} --idle {args.idle:g}"')
    md = "\n".join([
        f"# memsoak {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {'PASS' if ok else 'FAIL'}", "",
        f"`{command}`; {args.nodes} nodes, {args.workers} workers, sync every {args.sync_interval:g} s.", "",
        "| figure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in table], ""])
    return md, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make memsoak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600)
    p.add_argument("--rate", type=float, default=1000, help="events per second")
    p.add_argument("--batch", type=int, default=50, help="events per POST /errors/batch")
    p.add_argument("--groups", type=int, default=20_000, help="active fingerprints at any time")
    p.add_argument("--drift", type=float, default=20, help="new fingerprints per second (old ones go idle)")
    p.add_argument("--dedup-ttl", type=int, default=60)
    p.add_argument("--idle", type=float, default=60, help="FAULTLINE_LIVE_GROUP_IDLE")
    p.add_argument("--sync-interval", type=float, default=10)
    p.add_argument("--sample", type=float, default=5)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = REPORTS / f"memsoak-{stamp}"
    logs = sink = FileSink(f"{base}.log")

    env = {"FAULTLINE_DEDUP_TTL": str(args.dedup_ttl), "FAULTLINE_LIVE_GROUP_IDLE": str(args.idle),
           "FAULTLINE_SYNC_INTERVAL": str(args.sync_interval), "FAULTLINE_RATE_LIMIT_ENABLED": "false"}
    stack = Stack(StackConfig(base_dir=Path(f"/tmp/faultline-memsoak-{stamp}"), nodes=args.nodes,
                              workers=args.workers, port=0, env=env, sink=sink))
    try:
        stack.start()
        result = asyncio.run(soak(stack, args, Path(f"{base}.csv")))
    finally:
        stack.stop()
        logs.close()
    md, ok = report(result, args)
    Path(f"{base}.md").write_text(md)
    print(md)
    print(f"report: {base}.md, {base}.csv")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
