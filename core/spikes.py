"""Spike detection for the live feed (core/feed.py emits `error:spike`): two EWMAs per group, updated only
for groups that moved in a tick."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# groups watched at once; past it the table restarts (each group's rates warm up again): bounds memory
# when fingerprints churn
MAX_WATCHED = 100_000


@dataclass
class _Rate:
    fast: float = 0.0  # events/s, time constant 2 s: "now"
    slow: float = 0.0  # events/s, time constant 60 s: "recent average"
    since: float = 0.0  # when the coalescer started watching this group
    updated: float = 0.0
    last_spike: float = -math.inf


@dataclass
class SpikeDetector:
    """A group spikes when its 2-s rate is >= `factor` x its 60-s average and >= `min_rate` events/s.

    Continuous-time EWMAs updated lazily (only for groups that moved): O(changed groups) per tick, not
    O(all groups). A group must be watched for `warmup` s first (a brand-new group is `error:new`, not a
    spike), and reports again only after `cooldown` s.
    """

    factor: float = 5.0
    min_rate: float = 20.0
    warmup: float = 10.0
    cooldown: float = 30.0
    rates: dict[str, _Rate] = field(default_factory=dict)

    def observe(self, fp: str, delta: int, now: float) -> dict[str, float] | None:
        r = self.rates.get(fp)
        if r is None:
            r = self.rates[fp] = _Rate(since=now, updated=now)
            if len(self.rates) > MAX_WATCHED:
                self.rates.clear()
            return None
        dt = max(now - r.updated, 0.05)
        rate = delta / dt
        baseline = r.slow
        for attr, tau in (("fast", 2.0), ("slow", 60.0)):
            keep = math.exp(-dt / tau)
            setattr(r, attr, getattr(r, attr) * keep + (1 - keep) * rate)
        r.updated = now
        if (now - r.since >= self.warmup and now - r.last_spike >= self.cooldown
                and r.fast >= self.min_rate and r.fast >= self.factor * max(baseline, 0.1)):
            r.last_spike = now
            return {"rate": round(r.fast, 1), "baseline": round(baseline, 2)}
        return None
