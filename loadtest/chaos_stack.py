"""The stack a chaos run breaks: started fresh per fault, supervised from a thread, watched, read back.

Supervision is `Stack.supervise_once()` every 0.5 s from a background thread, as `faultline up` does it.
The queue monitor samples the queue depth (stream + delayed retries) every 0.2 s for the recovery times.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import redis as redis_sync
from sqlalchemy import text

from core.db.engine import make_engine
from core.keys import Keys
from faultline.procs import LogSink
from faultline.stack import Stack
from loadtest.targets import generous_limits, start_ours


def start_stack(base: Path, sink: LogSink, env: dict[str, str], nodes: int = 3, db: str = "mariadb") -> Stack:
    """3 nodes, nginx, 2 workers, 1 scheduler, MariaDB (by default); the limiter on with limits nothing reaches (so its
    Redis call is on the hot path, as in production, and 429s would show a limiter that misbehaves)."""
    # limiter=None: these settings as given, the quotas left at their defaults (the benchmark turns them off)
    return start_ours(base, sink, nodes=nodes, db=db,
                      env={"FAULTLINE_RATE_LIMIT_ENABLED": "true", "FAULTLINE_RATE_LIMITS": generous_limits(), **env})


class Supervisor:
    """Runs the stack's supervisor every `every` s; `hold()` pauses it (a fault that must stay down)."""

    def __init__(self, stack: Stack, log: LogSink, every: float = 0.5) -> None:
        self.stack = stack
        self.log = log
        self.every = every
        self.errors = 0
        self._held = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held while a supervision round runs
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-supervisor")

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def hold(self) -> None:
        with self._lock:
            self._held.set()

    def release(self) -> None:
        self._held.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                if self._held.is_set():
                    continue
                try:
                    self.stack.supervise_once()  # restarts dead nodes, workers, Redis, MariaDB and nginx
                except Exception as exc:  # a supervisor round that fails is retried next round
                    self.errors += 1
                    self.log(f"chaos       | supervise_once failed: {exc!r}")


class QueueMonitor:
    """Samples (time, queue depth or None when Redis does not answer)."""

    def __init__(self, stack: Stack, every: float = 0.2) -> None:
        self.stack = stack
        self.every = every
        self.samples: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="chaos-monitor")

    def start(self) -> QueueMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        keys = Keys.from_settings(self.stack.settings())
        client = redis_client(self.stack)
        while not self._stop.wait(self.every):
            try:
                pipe = client.pipeline(transaction=False)
                pipe.xlen(keys.stream)
                pipe.zcard(keys.retries)
                depth: int | None = sum(int(x) for x in pipe.execute())
            except redis_sync.RedisError:
                depth = None
            self.samples.append((time.monotonic(), depth))
        client.close()


def redis_client(stack: Stack, timeout: float = 0.5) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(stack.settings().redis_url, socket_timeout=timeout,
                                     socket_connect_timeout=timeout)


def wait_settled(stack: Stack, timeout: float) -> tuple[bool, float, dict[str, Any]]:
    """Until every task is written and every count synced (stream, retries, pending and flushing counts
    all empty); then one more sync interval so a sync in flight has committed.
    Returns (settled, seconds, the last state seen: what was still not empty)."""
    keys = Keys.from_settings(stack.settings())
    start = time.monotonic()
    state: dict[str, Any] = {}
    client = redis_client(stack, timeout=2.0)
    try:
        while time.monotonic() - start < timeout:
            try:
                pipe = client.pipeline(transaction=False)
                pipe.xlen(keys.stream)
                pipe.zcard(keys.retries)
                pipe.exists(keys.pending_counts)
                pipe.scard(keys.flushing_batches)
                state = dict(zip(("stream", "retries", "pending_counts", "flushing_batches"), pipe.execute(),
                                 strict=True))
                if not any(state.values()):
                    time.sleep(stack.settings().sync_interval + 0.5)
                    return True, time.monotonic() - start, state
            except redis_sync.RedisError as exc:
                state = {"redis_error": str(exc)}
            time.sleep(0.3)
        return False, time.monotonic() - start, state
    finally:
        client.close()


def db_rows(stack: Stack) -> tuple[dict[str, int], int, set[str]]:
    """(fingerprint -> count, groups whose details a worker never wrote, event ids of the sample rows)."""
    async def read() -> tuple[dict[str, int], int, set[str]]:
        engine = make_engine(stack.settings(), pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT fingerprint, count, message FROM error_groups"))).all()
                samples: list[str] = list((await conn.execute(text("SELECT event_id FROM samples"))).scalars())
        finally:
            await engine.dispose()
        return {str(r[0]): int(r[1]) for r in rows}, sum(1 for r in rows if r[2] is None), set(map(str, samples))

    return asyncio.run(read())


def dead_letter_records(stack: Stack) -> list[bytes]:
    client = redis_client(stack, timeout=2.0)
    try:
        raw = client.lrange(Keys.from_settings(stack.settings()).dead_letters, 0, -1)
        return [r if isinstance(r, bytes) else str(r).encode() for r in raw]
    finally:
        client.close()


def run_sql(stack: Stack, statement: str) -> None:
    """Server-side SQL through the app's own URL (a trigger body holds ';', which the CLI client would split)."""
    async def go() -> None:
        engine = make_engine(stack.settings(), pool_size=1, max_overflow=0)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(go())


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def worker_restarts(stack: Stack) -> dict[str, int]:
    roles: dict[str, Any] = {"worker": stack.workers, "node": stack.nodes, "scheduler": stack.schedulers}
    return {role: sum(c.restarts for c in children) for role, children in roles.items()}
