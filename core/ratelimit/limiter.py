"""The limiter interface, its decision, and the in-process sliding-window-log limiter.

Every backend answers the same question for all tiers of one request at once: is there room in every
window? If yes the request is logged in every window; if not, nothing is logged (a client that keeps
retrying while refused is admitted again as soon as its oldest request leaves the window).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from core.ratelimit.tiers import Tier

# Sweep idle clients every 4,096 calls: O(clients) work amortised to well under 1 µs per request.
SWEEP_EVERY = 4096


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    tier: Tier  # refused: the tier that blocks longest; allowed: the tier with the fewest requests left
    remaining: int
    # refused: µs until the client may really retry (exact); allowed: µs until `remaining` next goes up
    wait_us: int
    now_us: int  # the limiter's clock (Redis TIME for the Redis backend)

    @property
    def reset_epoch_s(self) -> int:
        return -(-(self.now_us + self.wait_us) // 1_000_000)

    @property
    def retry_after_ms(self) -> int:
        return -(-self.wait_us // 1000)

    @property
    def retry_after_s(self) -> int:
        return -(-self.wait_us // 1_000_000)


class LimiterUnavailable(Exception):
    """The backend could not answer (Redis down or slow): the caller applies the fail-open setting."""


class Limiter(Protocol):
    async def hit(self, client: str, tiers: Sequence[Tier]) -> Decision: ...

    async def close(self) -> None: ...


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class MemoryLimiter:
    """One process's windows in memory: for a single node without Redis (each process counts alone).

    Windows run on the monotonic clock (a wall-clock step back would freeze them); only the Reset header
    is converted to wall time.
    """

    def __init__(self, clock: Callable[[], int] = monotonic_us, wall: Callable[[], int] = wall_clock_us) -> None:
        self.clock = clock
        self.wall = wall
        self.windows: dict[str, deque[int]] = {}
        self._horizon: dict[str, int] = {}  # key -> its window in µs, for the sweep
        self._calls = 0

    async def hit(self, client: str, tiers: Sequence[Tier]) -> Decision:
        now = self.clock()
        logs = []
        block: tuple[int, Tier, int] | None = None  # (free at, tier, remaining)
        for tier in tiers:
            key = f"{tier.key}:{client}"
            log = self.windows.get(key)
            if log is None:
                log = self.windows[key] = deque()
                self._horizon[key] = tier.window_ms * 1000
            edge = now - tier.window_ms * 1000
            while log and log[0] <= edge:
                log.popleft()
            logs.append(log)
            if len(log) >= tier.limit:
                free_at = log[len(log) - tier.limit] + tier.window_ms * 1000
                if block is None or free_at > block[0]:
                    block = (free_at, tier, 0)
        self._maybe_sweep(now)
        if block is not None:
            return Decision(False, block[1], 0, block[0] - now, self.wall())
        best = None
        for tier, log in zip(tiers, logs, strict=True):
            log.append(now)
            left = tier.limit - len(log)
            if best is None or left < best[1]:
                best = (tier, left, log[0] + tier.window_ms * 1000 - now)
        assert best is not None
        return Decision(True, best[0], best[1], best[2], self.wall())

    def wait_us(self, client: str, tier: Tier) -> int:
        """Without logging anything: 0 if the client's window of `tier` has room, else µs until it has."""
        log = self.windows.get(f"{tier.key}:{client}")
        if not log:
            return 0
        now = self.clock()
        edge = now - tier.window_ms * 1000
        while log and log[0] <= edge:
            log.popleft()
        if len(log) < tier.limit:
            return 0
        return log[len(log) - tier.limit] + tier.window_ms * 1000 - now

    def _maybe_sweep(self, now: int) -> None:
        self._calls += 1
        if self._calls % SWEEP_EVERY:
            return
        for key in [k for k, log in self.windows.items() if not log or log[-1] <= now - self._horizon[k]]:
            del self.windows[key]
            del self._horizon[key]

    async def close(self) -> None:
        self.windows.clear()
