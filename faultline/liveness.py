"""Liveness pings the supervisor (faultline/procs.py) sends to its children, as uvicorn's multiprocess
supervisor pings its workers: a process that is alive but hung (stopped, deadlocked) misses several pings in a
row and is SIGKILLed, then restarted like one that died.

A ping answers True (alive), False (a miss) or None (no verdict: what it asks through is itself down). Each
kind of child is asked in its own language: an API node its /health/live over HTTP (answered from its event
loop); a worker or a scheduler the freshness of its heartbeat in Redis (written by its event loop every
core/heartbeat.INTERVAL s) — no verdict while Redis does not answer, so a Redis outage never restarts them.
The servers too (faultline/supervise.py): Redis and Sentinel a PING, nginx a request it answers itself, MariaDB
a real login and COM_PING — any answer counts, an error reply included; silence for SERVER_MISSES pings does not.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import asyncmy  # type: ignore[import-untyped]
import redis

from core.heartbeat import INTERVAL
from core.redisurl import make_sync_redis

Ping = Callable[[], bool | None]
# A beat older than this is a miss: 5 beats lost, well past a loop that is merely busy (a beat is one small
# pipeline), and under the key's TTL so the probe reads an old beat rather than nothing.
STALE_BEATS = 5
STALE_AFTER = STALE_BEATS * INTERVAL


def http_ok(url: str, timeout: float = 2.0) -> Ping:
    def ping() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return bool(r.status == 200)
        except Exception:
            return False

    return ping


def heartbeat_fresh(redis_url: str, key: str, stale_after: float = STALE_AFTER) -> Ping:
    """The heartbeat hash at `key` (core/heartbeat.py: field "beat", unix seconds) is fresh."""
    client = make_sync_redis(redis_url, timeout=1.0)  # any FAULTLINE_REDIS_URL scheme (single, Sentinel, Cluster)

    def ping() -> bool | None:
        try:
            beat = client.hget(key, "beat")
        except redis.RedisError:
            return None
        return beat is not None and time.time() - float(beat) < stale_after  # type: ignore[arg-type]

    return ping


# A server (Redis, MariaDB, nginx) is hung after this many silent pings in a row, 2 s apart with a 2 s timeout:
# 16-32 s, longer than the 10 s freeze the chaos kit applies on purpose (loadtest/chaos_faults.py) and than
# any pause of a loaded server seen here, far shorter than "until someone notices".
SERVER_MISSES = 8


def tcp_answers(host: str, port: int, hello: bytes, timeout: float = 2.0) -> Ping:
    """Any bytes back within `timeout` after sending `hello` (b"": the server speaks first)."""
    def ping() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if hello:
                    sock.sendall(hello)
                return bool(sock.recv(64))
        except OSError:
            return False

    return ping


def mysql_answers(host: str, port: int, user: str, password: str | None, timeout: float = 2.0) -> Ping:
    """A login and COM_PING. Not a bare TCP greeting: MariaDB counts a client that hangs up mid-handshake
    against max_connect_errors and blocks the host after 100 of them; a refused login answers too."""
    async def one() -> bool:
        try:
            conn = await asyncmy.connect(host=host, port=port, user=user, password=password or "",
                                         connect_timeout=timeout)
        except asyncmy.errors.OperationalError as exc:  # e.g. 1045 access denied: it answered
            return bool(exc.args and isinstance(exc.args[0], int) and exc.args[0] < 2000)
        try:
            await conn.ping(reconnect=False)
            return True
        finally:
            conn.close()

    def ping() -> bool:
        # a loop of its own on a thread of its own: the caller may be running an event loop already (a test
        # calling supervise_once from a coroutine), where asyncio.run refuses and every ping would be a miss
        answered: list[bool] = []

        def run() -> None:
            try:
                answered.append(asyncio.run(asyncio.wait_for(one(), timeout)))
            except Exception:
                answered.append(False)

        thread = threading.Thread(target=run, name="mysql ping", daemon=True)
        thread.start()
        thread.join(timeout + 1.0)
        return bool(answered and answered[0])

    return ping


@dataclass
class Liveness:
    """Ping every `every` s; `misses` failed pings in a row = hung."""

    ping: Ping
    every: float = 2.0
    misses: int = 3
    grace: float = 60.0  # a (re)started child that never answered gets this long to boot
    missed: int = 0
    last: float = 0.0
    seen_live: bool = False  # answered once since its (re)start: from then on every miss counts

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def reset(self) -> None:
        self.missed, self.seen_live = 0, False

    def probe(self, started_at: float) -> bool:
        """True when the child has now missed `misses` pings in a row."""
        self.last = time.monotonic()
        ok = self.ping()
        if ok:
            self.missed, self.seen_live = 0, True
        elif ok is False and (self.seen_live or self.last - started_at >= self.grace):
            self.missed += 1
        return self.missed >= self.misses
