"""The drain state machine of an API process, driven by SIGTERM (faultline/uvicorn_worker.py).

    serving -SIGTERM-> draining -drain_delay-> stopping -in-flight done-> closing -pools closed-> stopped

- draining: readiness answers 503 from the first instant, but the node keeps serving for
  FAULTLINE_DRAIN_DELAY so a load balancer (kube-proxy, ingress-nginx, our nginx) stops sending it
  traffic before its listener closes.
- stopping: listener closed, clients told to reconnect elsewhere, in-flight requests finish.
- closing: buffers flushed, Redis and DB pools closed (the lifespan shutdown, Runtime.close()).
Every phase is logged with its duration (Runtime.phase); the whole sequence must fit in
FAULTLINE_SHUTDOWN_TIMEOUT, and `budget()` says how much of it is left for the in-flight wait.
"""

from __future__ import annotations

import asyncio
import logging
import time

from core.runtime import Runtime

log = logging.getLogger("faultline.drain")

SERVING, DRAINING, STOPPING, CLOSING, STOPPED = "serving", "draining", "stopping", "closing", "stopped"
# SIGINT / a failed start go straight to stopping: no load balancer to wait for.
TRANSITIONS = {SERVING: {DRAINING, STOPPING}, DRAINING: {STOPPING}, STOPPING: {CLOSING}, CLOSING: {STOPPED}}
# Kept back from the in-flight wait for flush + closing pools (measured: ~0.05 s; 3 s leaves room for a
# DB pool whose server is slow to answer the close).
CLOSE_RESERVE = 3.0


class IllegalTransition(RuntimeError):
    pass


class Drain:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.settings = runtime.settings

    @property
    def state(self) -> str:
        return self.rt.drain_state

    def move(self, new: str) -> None:
        if new not in TRANSITIONS.get(self.state, set()):
            raise IllegalTransition(f"{self.state} -> {new}")
        log.info("drain: %s -> %s", self.state, new)
        self.rt.drain_state = new

    def begin(self) -> bool:
        """SIGTERM: readiness turns 503 now. Safe inside a signal handler (no I/O, no awaits).
        Returns False when a drain is already under way (a second SIGTERM changes nothing)."""
        if self.state != SERVING:
            return False
        self.rt.draining = True
        self.rt.drain_started = time.monotonic()
        self.move(DRAINING)
        return True

    async def hold(self) -> None:
        """Keep serving for drain_delay while the load balancers notice the 503s."""
        with self.rt.phase("drain delay"):
            await asyncio.sleep(self.settings.drain_delay)

    def stop_accepting(self) -> None:
        if self.state == SERVING:  # not via SIGTERM: still mark not-ready for any late probe
            self.rt.draining = True
            self.rt.drain_started = time.monotonic()
        self.move(STOPPING)

    def budget(self) -> float:
        """Seconds left for in-flight requests so the whole sequence ends inside shutdown_timeout."""
        elapsed = time.monotonic() - (self.rt.drain_started or time.monotonic())
        return max(1.0, self.settings.shutdown_timeout - elapsed - CLOSE_RESERVE)

    def finish(self) -> float:
        """Called after the pools closed: logs the total and whether it fit the timeout."""
        total = time.monotonic() - (self.rt.drain_started or time.monotonic())
        self.move(STOPPED)
        fits = total <= self.settings.shutdown_timeout
        (log.info if fits else log.error)("drain: stopped %.3fs after SIGTERM (limit %.1fs)%s", total,
                                          self.settings.shutdown_timeout, "" if fits else " - OVER LIMIT")
        return total
