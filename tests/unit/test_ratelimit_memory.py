"""The in-process limiter's sliding-window log, driven by a fake clock (µs)."""

from __future__ import annotations

from core.ratelimit.limiter import MemoryLimiter
from core.ratelimit.tiers import Tier, parse_tiers


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += int(ms * 1000)


async def test_admits_exactly_the_limit_and_retry_is_exact() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock)
    tiers = parse_tiers("short:3/s,long:100/h")
    for i in range(3):
        d = await lim.hit("c", tiers)
        assert d.allowed and d.tier.name == "short" and d.remaining == 2 - i
        clock.advance_ms(100)
    refused = await lim.hit("c", tiers)
    # the first request was at t=0, now is t=300 ms: room again at t=1000 ms
    assert not refused.allowed and refused.tier.name == "short"
    assert refused.retry_after_ms == 700 and refused.retry_after_s == 1
    clock.advance_ms(699)
    assert not (await lim.hit("c", tiers)).allowed  # one ms too early: still refused
    clock.advance_ms(1)
    assert (await lim.hit("c", tiers)).allowed  # exactly when told, not later


async def test_refused_requests_do_not_extend_the_lockout() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock)
    tiers = (Tier("short", 2, 1000),)
    assert (await lim.hit("c", tiers)).allowed
    assert (await lim.hit("c", tiers)).allowed
    for _ in range(99):  # a client hammering every 10 ms while refused
        clock.advance_ms(10)
        assert not (await lim.hit("c", tiers)).allowed
    clock.advance_ms(10)  # t = 1000 ms: both entries left the window
    assert (await lim.hit("c", tiers)).allowed


async def test_blocking_tier_is_the_one_that_frees_last_and_clients_are_separate() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock)
    tiers = parse_tiers("short:2/s,medium:3/m")
    for _ in range(3):
        assert (await lim.hit("a", tiers)).allowed
        clock.advance_ms(1000)
    d = await lim.hit("a", tiers)
    assert not d.allowed and d.tier.name == "medium" and d.retry_after_ms == 57_000
    assert (await lim.hit("b", tiers)).allowed  # another client is untouched


async def test_idle_windows_are_swept() -> None:
    clock = FakeClock()
    lim = MemoryLimiter(clock)
    tiers = (Tier("short", 5, 1000),)
    for i in range(5000):
        await lim.hit(f"client-{i}", tiers)
    clock.advance_ms(2000)
    for _ in range(5000):
        await lim.hit("steady", tiers)
    assert set(lim.windows) == {"short:steady"}
