"""CPU per event of one worker process alone: a quicker, quieter figure than `make bench` while tuning it.

    python -m loadtest.worker_cpu --events 10000 --db sqlite [--rate 1500] [--per-message 1] [--profile out.svg]

Why: `make bench` measures the workers beside 3 API nodes, nginx and wrk on the same 2 cores, ~5 min a run.
Here the tasks are made as the API makes them (the bench's event mix, api/ingest.py's event, core/tasks.py's
message; no dedup entries: the job-state updates find none, which costs Redis, not the worker, a little less)
and added at a paced rate while ONE real `faultline worker` process consumes them; its CPU time (utime +
stime) from the first message to the empty queue, divided by the events, is the figure. Paced, not a
backlog: under the bench the worker reads tens of messages at a time, never a full 200-message read, and a
backlog would flatter it.
Not a target on its own (targets are same-run ratios in `make bench`): compare runs of this same command.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from core import heartbeat
from core.broker import ensure_consumer_group
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings, sqlite_url
from core.tasks import persist_message
from faultline.mariadb import MariaDBServer
from faultline.procs import Child, FileSink
from faultline.services import RedisServer
from loadtest.payloads import PayloadMix
from loadtest.profile import py_spy


async def make_messages(settings: Settings, events: int, per_message: int) -> list[bytes]:
    """The bench's event mix as the API enqueues it (api/ingest.py's event dict, core/tasks.py's frame)."""
    from api.ingest import fingerprint_of
    from core.events import LogErrorIn, new_event_id
    from tests.integration.conftest import prepare

    pid = await prepare(settings)
    mix = PayloadMix(seed=7)
    messages = []
    for _ in range(0, events, per_message):
        body = []
        for _ in range(per_message):
            item = LogErrorIn.model_validate(mix.event())
            body.append({"event_id": new_event_id(), "project_id": pid, "fingerprint": fingerprint_of(pid, item),
                         "received_at": time.time(), "message": item.message, "level": item.level,
                         "service": item.service, "stack": item.stack, "context": item.context})
        messages.append(persist_message(body))
    redis, keys = make_redis(settings, timeout=5), Keys.from_settings(settings)
    await ensure_consumer_group(redis, keys)
    await redis.aclose()
    return messages


async def feed(settings: Settings, messages: list[bytes], rate: float) -> None:
    """XADD the messages back at `rate` per second, every 10 ms a share; returns once the queue is empty."""
    redis, keys = make_redis(settings, timeout=5), Keys.from_settings(settings)
    stream = keys.shard(0).stream
    start, sent = time.monotonic(), 0
    while sent < len(messages):
        due = min(len(messages), int((time.monotonic() - start) * rate) + 1)
        pipe = redis.pipeline(transaction=False)
        for data in messages[sent:due]:
            pipe.xadd(stream, {"data": data})
        await pipe.execute()
        sent = due
        await asyncio.sleep(0.01)
    while True:
        lengths = [await redis.xlen(s.stream) for s in keys.streams]
        if sum(lengths) == 0:
            break
        await asyncio.sleep(0.02)
    await redis.aclose()


async def started(settings: Settings) -> None:
    """Until the worker beats its heartbeat (imports and start-up are not part of the figure), then 2 s more."""
    redis, keys = make_redis(settings, timeout=5), Keys.from_settings(settings)
    while await heartbeat.read(redis, keys, "worker", "wcpu-1") is None:
        await asyncio.sleep(0.2)
    await redis.aclose()
    await asyncio.sleep(2)


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def run(args: argparse.Namespace, base: Path) -> None:
    redis_server = RedisServer(base / "redis", appendonly=False).start()
    mariadb: MariaDBServer | None = None
    try:
        if args.db == "mariadb":
            mariadb = MariaDBServer(base / "mariadb").start()
            db_url = mariadb.create_database(f"w_{uuid.uuid4().hex[:8]}")
        else:
            db_url = sqlite_url(base)
        settings = Settings(redis_url=redis_server.url, database_url=db_url, key_prefix="wcpu",
                            admin_token="t" * 24, rate_limit_enabled=False, node_name="wcpu")
        messages = await make_messages(settings, args.events, args.per_message)
        events = sum(m.count(b'"fingerprint"') for m in messages)
        from tests.integration.conftest import env_of

        sink = FileSink(base / "worker.log")
        child = Child("worker", [sys.executable, "-m", "faultline", "worker"],
                      env_of(settings, FAULTLINE_NODE_NAME="wcpu-1"), sink=sink, restart=False).start()
        try:
            await started(settings)
            assert child.pid is not None
            proc = psutil.Process(child.pid)
            spy = None
            if args.profile:
                spy = await asyncio.create_subprocess_exec(
                    py_spy(), "record", "-r", "200", "-p", str(child.pid), "-f",
                    "raw" if args.profile.endswith(".txt") else "flamegraph", "-o", args.profile,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await asyncio.sleep(1)
            idle_from = cpu(proc)
            await asyncio.sleep(5)
            idle = (cpu(proc) - idle_from) / 5  # what its own loops cost with nothing to do, per second
            before, t0 = cpu(proc), time.monotonic()
            await feed(settings, messages, args.rate)
            used, wall = cpu(proc) - before, time.monotonic() - t0
            if spy is not None:
                spy.send_signal(2)
                await asyncio.wait_for(spy.wait(), 30)
            print(f"{events} events in {len(messages)} messages, {wall:.1f} s: worker CPU {used:.2f} s = "
                  f"{used / events * 1e6:.0f} µs per event ({args.db}, {args.rate:.0f} messages/s); idle before: "
                  f"{idle * 1e3:.1f} ms CPU per s")
        finally:
            child.stop(timeout=15)
            sink.close()
    finally:
        if mariadb is not None:
            mariadb.stop()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--per-message", type=int, default=1, help="events per ingest turn (one message)")
    parser.add_argument("--rate", type=float, default=1500.0, help="messages per second fed to the worker")
    parser.add_argument("--db", choices=["sqlite", "mariadb"], default="sqlite")
    parser.add_argument("--profile", help="py-spy output (.svg flame graph, .txt raw stacks)")
    parser.add_argument("--keep", help="a directory for the servers' data and the worker's log, kept")
    args = parser.parse_args()
    if args.keep:
        asyncio.run(run(args, Path(args.keep)))
        return
    with tempfile.TemporaryDirectory(prefix="worker-cpu-") as base:
        asyncio.run(run(args, Path(base)))


if __name__ == "__main__":
    main()
