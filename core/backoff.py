"""Capped exponential backoff with jitter, and outage logging, for every long-running loop.

One `Backoff` per loop. The loop calls `await b.failed(exc)` after an error (it sleeps the next delay) and
`b.ok()` after a success. Logging is per OUTAGE, not per attempt: one warning when the first error of a run
arrives, one info "recovered after N s" when the next success ends it; a Redis restart that makes a loop
fail 40 times writes two lines, not 40.

What is retried: dependency errors (Redis, the DB, the network; see `retryable`). Anything else is a bug in
our code or a refused credential, which no amount of waiting fixes: `failed()` re-raises it, the loop's task
ends, and the process supervisor in workers/ exits non-zero so Kubernetes (or `faultline up`) restarts it.
An outage longer than `give_up_after` also raises `GaveUp`: after that long a fresh process (new pools, new
DNS lookup) is a better bet than the same one retrying, and the supervisor's restart backoff paces it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from redis import exceptions as redis_errors

from core.db.repo import is_transient
from core.redis import transport_glitch
from core.settings import Settings


class GaveUp(RuntimeError):
    """A loop's dependency stayed unavailable for longer than its `give_up_after`."""


# Replies a Redis server gives while it is restarting, loading, failing over or out of memory: all pass.
# NOREPLICAS: a Sentinel primary (min-replicas-to-write) left without replicas by a failover.
_TRANSIENT_REPLIES = ("LOADING", "READONLY", "UNBLOCKED", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN",
                      "MASTERDOWN", "NOGROUP", "NOSCRIPT", "OOM", "BUSY", "NOREPLICAS")


def retryable(exc: BaseException) -> bool:
    """True for errors of a dependency that may come back (wait and retry), False for our own bugs."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return False
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | redis_errors.BusyLoadingError):
        return True
    if isinstance(exc, redis_errors.ClusterError):  # "The cluster is down" (CLUSTERDOWN, as redis-py words it)
        return True
    if isinstance(exc, redis_errors.ResponseError):
        reply = str(exc)
        if reply.startswith("Command # "):  # redis-py's pipeline wrapping: "... of pipeline caused error: <reply>"
            reply = reply.rpartition("caused error: ")[2].lstrip("('\"")  # the reply, or the repr of its args
        return reply.split(" ", 1)[0].upper() in _TRANSIENT_REPLIES
    if isinstance(exc, redis_errors.RedisError):  # ClusterError, ChildDeadlockedError...: transport trouble
        return True
    if transport_glitch(exc):  # redis-py writing to a connection a failover closed
        return True
    return isinstance(exc, OSError | TimeoutError | ConnectionError) or is_transient(exc)


def delay_for(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry `attempt` (1-based): "equal jitter", half of min(cap, base*2^(n-1)) fixed and
    half random, so a herd of processes spreads out yet each delay really grows."""
    ceiling = min(cap, base * (2 ** min(attempt - 1, 32)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Backoff:
    def __init__(self, what: str, log: logging.Logger, *, base: float = 0.1, cap: float = 2.0,
                 give_up_after: float | None = None, is_retryable: Callable[[BaseException], bool] = retryable,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.what = what
        self.log = log
        self.base = base
        self.cap = cap
        self.give_up_after = give_up_after or None  # 0 = never give up
        self.is_retryable = is_retryable
        self.clock = clock
        self.rng = rng
        self.attempts = 0  # consecutive failures of the current outage
        self.outage_started: float | None = None
        self.outages = 0  # outages seen since start (for tests and metrics)
        self.last_error = ""

    @classmethod
    def for_loop(cls, what: str, log: logging.Logger, settings: Settings) -> Backoff:
        return cls(what, log, base=settings.loop_backoff_base, cap=settings.loop_backoff_max,
                   give_up_after=settings.loop_give_up_after)

    @property
    def failing(self) -> bool:
        return self.outage_started is not None

    def next_delay(self, exc: BaseException) -> float:
        """Record a failure and return how long to wait; re-raise what waiting cannot fix."""
        if not self.is_retryable(exc):
            self.log.error("%s: %s: %s (not a dependency error: giving up)", self.what, type(exc).__name__, exc)
            raise exc
        now = self.clock()
        first_line = (str(exc).splitlines() or [""])[0]  # SQLAlchemy appends the whole statement: keep line 1
        self.last_error = f"{type(exc).__name__}: {first_line[:300]}"
        if self.outage_started is None:
            self.outage_started = now
            self.outages += 1
            self.log.warning("%s failing: %s; retrying with backoff up to %.1fs", self.what, self.last_error,
                             self.cap)
        elif self.give_up_after is not None and now - self.outage_started > self.give_up_after:
            self.log.error("%s: still failing after %.0fs (%s): giving up", self.what,
                           now - self.outage_started, self.last_error)
            raise GaveUp(f"{self.what}: failing for {now - self.outage_started:.0f}s: {self.last_error}") from exc
        self.attempts += 1
        return delay_for(self.attempts, self.base, self.cap, self.rng)

    async def failed(self, exc: BaseException) -> None:
        await asyncio.sleep(self.next_delay(exc))

    def ok(self) -> None:
        """Record a success: ends the current outage (one info line) and resets the delay."""
        if self.outage_started is not None:
            self.log.info("%s recovered after %.1fs (%d failed attempts)", self.what,
                          self.clock() - self.outage_started, self.attempts)
            self.outage_started = None
        self.attempts = 0
