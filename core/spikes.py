"""Spike detection for the live feed (core/feed.py emits `error:spike`): two EWMAs per group, updated only
for groups that moved in a tick."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# groups watched at once; past it the table restarts (each group's rates warm up again): a hard bound on
# memory whatever the churn of fingerprints
MAX_WATCHED = 100_000
# A group without events for this long is forgotten: its 60-s EWMA has decayed to e^-10 of any rate it had
# (its 2-s one to nothing), so its entry says no more than a fresh one would. Without it the table held
# every group seen since the last restart: a 5-minute soak with a long tail of fingerprints grew it to
# 14,000 entries and the feed-leading API process's full collections from 13 to 49 ms of CPU (its requests
# waited through them). A group back after this long warms up again like a new one (it is announced as
# new too: the live counts forget idle groups as well).
IDLE_FORGET = 600.0
FORGET_EVERY = 60.0  # s between sweeps of the table: O(watched groups) once a minute, not per tick


# A group's entry: a plain tuple of floats, replaced on every update. The cyclic collector stops tracking an
# exact tuple that holds only floats after its first look at it (not a NamedTuple: subclasses stay tracked),
# so a full table costs the collector nothing per collection; dataclass instances were all walked by each.
#   (fast: events/s, time constant 2 s, "now"; slow: events/s, time constant 60 s, "recent average";
#    since: when the coalescer started watching the group; updated; last_spike)
_Rate = tuple[float, float, float, float, float]


@dataclass
class SpikeDetector:
    """A group spikes when its 2-s rate is >= `factor` x its 60-s average and >= `min_rate` events/s.

    Continuous-time EWMAs updated lazily (only for groups that moved): O(changed groups) per tick, plus one
    sweep of the table a minute for groups idle past IDLE_FORGET. A group must be watched for `warmup` s
    first (a brand-new group is `error:new`, not a spike), and reports again only after `cooldown` s.
    """

    factor: float = 5.0
    min_rate: float = 20.0
    warmup: float = 10.0
    cooldown: float = 30.0
    rates: dict[str, _Rate] = field(default_factory=dict)
    swept: float = -math.inf

    def observe(self, fp: str, delta: int, now: float) -> dict[str, float] | None:
        if now - self.swept >= FORGET_EVERY:
            self.forget_idle(now)
        r = self.rates.get(fp)
        if r is None:
            if len(self.rates) >= MAX_WATCHED:
                self.rates.clear()
            self.rates[fp] = (0.0, 0.0, now, now, -math.inf)
            return None
        fast, baseline, since, updated, last_spike = r
        dt = max(now - updated, 0.05)
        rate = delta / dt
        fast_keep, slow_keep = math.exp(-dt / 2.0), math.exp(-dt / 60.0)
        fast = fast * fast_keep + (1 - fast_keep) * rate
        slow = baseline * slow_keep + (1 - slow_keep) * rate
        spike = None
        if (now - since >= self.warmup and now - last_spike >= self.cooldown
                and fast >= self.min_rate and fast >= self.factor * max(baseline, 0.1)):
            last_spike = now
            spike = {"rate": round(fast, 1), "baseline": round(baseline, 2)}
        self.rates[fp] = (fast, slow, since, now, last_spike)
        return spike

    def forget_idle(self, now: float) -> int:
        """Drop groups without events for IDLE_FORGET s; returns how many."""
        self.swept = now
        cutoff = now - IDLE_FORGET
        idle = [fp for fp, r in self.rates.items() if r[3] < cutoff]
        for fp in idle:
            del self.rates[fp]
        return len(idle)
