"""The drain of an API process: one object owning its state, its phases and its hooks.

    serving -SIGTERM-> draining -drain_delay-> stopping -in-flight done-> closing -pools closed-> stopped

- draining: readiness answers 503 from the first instant, but the node keeps serving for
  FAULTLINE_DRAIN_DELAY so a load balancer (kube-proxy, ingress-nginx, our nginx) stops sending it
  traffic before its listener closes.
- stopping: listener closed, clients told to reconnect elsewhere (reconnect hooks), in-flight requests finish.
- closing: buffers flushed (flush hooks), Redis and DB pools closed (the lifespan shutdown).
Every phase is logged with its duration and the time since SIGTERM; the whole sequence must fit in
FAULTLINE_SHUTDOWN_TIMEOUT, and `budget()` says how much of it is left for the in-flight wait.

Who drives it: faultline/uvicorn_worker.py (signals, listener), api/app.py's lifespan (`close`). Who joins
it: whatever the composition root wires, by `on_reconnect` / `on_flush` (realtime/server.py). Who reads it:
the readiness probe (health/checks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from core.settings import Settings

log = logging.getLogger("faultline.drain")
Hook = Callable[[], Awaitable[None]]

SERVING, DRAINING, STOPPING, CLOSING, STOPPED = "serving", "draining", "stopping", "closing", "stopped"
# SIGINT / a failed start go straight to stopping: no load balancer to wait for.
TRANSITIONS = {SERVING: {DRAINING, STOPPING}, DRAINING: {STOPPING}, STOPPING: {CLOSING}, CLOSING: {STOPPED}}
# Kept back from the in-flight wait for flush + closing pools (measured: ~0.05 s; 3 s leaves room for a
# DB pool whose server is slow to answer the close).
CLOSE_RESERVE = 3.0


class IllegalTransition(RuntimeError):
    pass


class Drain:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = SERVING
        self.started: float | None = None  # monotonic time of SIGTERM (or of the stop, without one)
        self.phases: list[tuple[str, float]] = []
        self._reconnect: list[Hook] = []
        self._flush: list[Hook] = []
        self._reconnected = False
        self._in_flight_since: float | None = None

    @property
    def draining(self) -> bool:
        """Not ready for new traffic: true from the first instant of SIGTERM to the end."""
        return self.state != SERVING

    def on_reconnect(self, hook: Hook) -> None:
        """Runs once the listener is closed, before open connections are (tell clients to go elsewhere)."""
        self._reconnect.append(hook)

    def on_flush(self, hook: Hook) -> None:
        """Runs before the Redis and DB pools close (empty buffers, stop loops that use the pools)."""
        self._flush.append(hook)

    def move(self, new: str) -> None:
        if new not in TRANSITIONS.get(self.state, set()):
            raise IllegalTransition(f"{self.state} -> {new}")
        log.info("drain: %s -> %s", self.state, new)
        self.state = new

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase and log it with the time since SIGTERM (an operator reading the log wants both)."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._note(name, start)

    def _note(self, name: str, start: float) -> None:
        took = time.monotonic() - start
        self.phases.append((name, took))
        since = f"{time.monotonic() - self.started:.3f}s" if self.started else "-"
        log.info("shutdown phase %-16s took %.3fs (since SIGTERM %s)", name, took, since)

    def begin(self) -> bool:
        """SIGTERM: readiness turns 503 now. Safe inside a signal handler (no I/O, no awaits).
        Returns False when a drain is already under way (a second SIGTERM changes nothing)."""
        if self.state != SERVING:
            return False
        self.started = time.monotonic()
        self.move(DRAINING)
        return True

    async def hold(self) -> None:
        """Keep serving for drain_delay while the load balancers notice the 503s."""
        with self.phase("drain delay"):
            await asyncio.sleep(self.settings.drain_delay)

    def stop_accepting(self) -> None:
        if self.started is None:  # not via SIGTERM: the clock starts now
            self.started = time.monotonic()
        self.move(STOPPING)

    async def reconnect_clients(self) -> None:
        """Tell long-lived clients (Socket.IO) to reconnect to another node; runs once. What follows, up to
        the lifespan shutdown, is the in-flight wait."""
        if not self._reconnected:
            self._reconnected = True
            with self.phase("reconnect clients"):
                await _run(self._reconnect, "reconnect")
        self._in_flight_since = time.monotonic()

    def budget(self) -> float:
        """Seconds left for in-flight requests so the whole sequence ends inside shutdown_timeout."""
        elapsed = time.monotonic() - (self.started or time.monotonic())
        return max(1.0, self.settings.shutdown_timeout - elapsed - CLOSE_RESERVE)

    async def close(self, close_pools: Hook) -> None:
        """The lifespan shutdown: clients told (once), in-flight wait ended, buffers flushed, pools closed."""
        if self._in_flight_since is None:  # no listener drain before us (tests, a failed start)
            await self.reconnect_clients()
        else:
            self._note("finish in-flight", self._in_flight_since)
        if self.state == STOPPING:
            self.move(CLOSING)
        with self.phase("flush"):
            await _run(self._flush, "flush")
        with self.phase("close pools"):
            await close_pools()

    def finish(self) -> float:
        """Called after the pools closed: logs the total and whether it fit the timeout."""
        total = time.monotonic() - (self.started or time.monotonic())
        if self.state == STOPPING:  # the lifespan shutdown did not run (forced exit)
            self.move(CLOSING)
        self.move(STOPPED)
        fits = total <= self.settings.shutdown_timeout
        (log.info if fits else log.error)("drain: stopped %.3fs after SIGTERM (limit %.1fs)%s", total,
                                          self.settings.shutdown_timeout, "" if fits else " - OVER LIMIT")
        return total


async def _run(hooks: list[Hook], what: str) -> None:
    for hook in hooks:
        try:
            await hook()
        except Exception as exc:  # one failing hook must not keep the pools open
            log.warning("%s hook %r failed: %s", what, hook, exc)
