"""CPU per event of the /errors/batch path in ONE API process, and Redis's, without nginx, wrk or workers.

    python -m loadtest.batch_cpu --requests 300 --batch 100 --concurrency 6 [--profile out.txt|.svg]

Why: `make bench` puts the batch path beside 3 nodes, nginx, wrk, 2 workers and MariaDB on 2 cores: a run
takes minutes and its µs per event move by 10-20 % between runs. Here the app (faultline.asgi.create, its
lifespan run) is called straight through ASGI with the bench's bodies (loadtest/wrk/ingest.lua's event
mix: 60 % of events in 5 hot groups, 30 % in 50 warm, 10 % in a 20k tail, unique event ids) by
`--concurrency` tasks, so requests coalesce into script calls as on a node (~5 requests in flight per node
under the bench's -c16 over 3 nodes). Figures: this process's CPU per accepted event (the driver's own
share is a prebuilt body and a JSON parse of the reply), the Redis server's CPU per event (INFO cpu) and
the commands it is made of (INFO commandstats). No worker runs: the stream is trimmed as it goes.
Compare runs of this same command (base vs branch), never its µs with `make bench`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis as redis_sync

from core.settings import Settings, sqlite_url
from faultline.services import RedisServer
from loadtest.profile import py_spy

KEY = "batch-cpu-ingest-key-0123456789"


def bodies(count: int, batch: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        events = []
        for _ in range(batch):
            r = rng.random()
            g = f"hot-{rng.randint(0, 4)}" if r < 0.6 else f"warm-{rng.randint(0, 49)}" if r < 0.9 \
                else f"tail-{rng.randint(0, 19999)}"
            events.append({"message": f"TimeoutError: upstream timed out after 30s ({g})", "service": "checkout",
                           "level": "error", "stack": f'File "app/{g}.py", line 42, in handler',
                           "context": {"path": f"/api/{g}"}, "fingerprint": g,
                           "event_id": f"{rng.getrandbits(128):032x}"})
        out.append(orjson.dumps({"events": events}))
    return out


async def post(app: Any, body: bytes) -> tuple[int, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/errors/batch", "raw_path": b"/errors/batch", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"node"), (b"content-type", b"application/json"),
                         (b"content-length", b"%d" % len(body)), (b"x-faultline-key", KEY.encode())]}
    sent = False
    reply: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            reply["status"] = message["status"]
        elif message["type"] == "http.response.body":
            reply["body"] = reply.get("body", b"") + message.get("body", b"")

    await app(scope, receive, send)
    return reply["status"], reply["body"]


def redis_figures(url: str) -> tuple[float, dict[str, tuple[int, int]]]:
    client = redis_sync.Redis.from_url(url)
    try:
        cpu: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
        stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    finally:
        client.close()
    return (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()})


async def drive(app: Any, work: list[bytes], concurrency: int) -> tuple[int, int]:
    """Posts every body, `concurrency` at a time; (accepted events, non-202 answers)."""
    queue = list(reversed(work))
    accepted = bad = 0

    async def one() -> None:
        nonlocal accepted, bad
        while queue:
            status, body = await post(app, queue.pop())
            if status == 202:
                accepted += orjson.loads(body)["accepted"]
            else:
                bad += 1

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return accepted, bad


async def run(args: argparse.Namespace, base: Path) -> None:
    from faultline.asgi import create
    from tests.integration.conftest import prepare

    server = RedisServer(base / "redis", appendonly=False).start()
    try:
        settings = Settings(redis_url=server.url, database_url=sqlite_url(base), key_prefix="bcpu",
                            admin_token="t" * 24, rate_limit_enabled=False, node_name="bcpu",
                            queue_soft_limit=10**9)
        await prepare(settings, KEY)
        app = create(settings)
        work = bodies(args.requests + args.warmup, args.batch)
        async with app.router.lifespan_context(app):
            await drive(app, work[:args.warmup], args.concurrency)
            gc.freeze()  # as a served process does (faultline/gunicorn_conf.py post_worker_init)
            spy = None
            if args.profile:
                spy = await asyncio.create_subprocess_exec(
                    py_spy(), "record", "-r", "200", "-p", str(os.getpid()), "-f",
                    "raw" if args.profile.endswith(".txt") else "flamegraph", "-o", args.profile,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await asyncio.sleep(1)
            redis_cpu0, stats0 = redis_figures(server.url)
            cpu0, t0 = time.process_time(), time.monotonic()
            accepted, bad = await drive(app, work[args.warmup:], args.concurrency)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            redis_cpu1, stats1 = redis_figures(server.url)
            if spy is not None:
                spy.send_signal(2)
                await asyncio.wait_for(spy.wait(), 30)
        events = max(1, accepted)
        print(f"{accepted} events accepted in {args.requests} requests ({bad} not 202), {wall:.2f} s: "
              f"API process {cpu / events * 1e6:.1f} µs/event, redis {(redis_cpu1 - redis_cpu0) / events * 1e6:.1f}"
              f" µs/event")
        rows = []
        for name, (calls, usec) in stats1.items():
            c0, u0 = stats0.get(name, (0, 0))
            if calls > c0:
                rows.append((usec - u0, calls - c0, name))
        for usec, calls, name in sorted(rows, reverse=True)[:10]:
            print(f"  {name:<12} {calls / events:7.3f} calls/event {usec / events:7.2f} µs/event")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--profile", help="py-spy output (.svg flame graph, .txt raw stacks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batch-cpu-") as base:
        asyncio.run(run(args, Path(base)))


if __name__ == "__main__":
    main()
