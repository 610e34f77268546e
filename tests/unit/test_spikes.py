"""The spike detector's table stays bounded by recent activity and costs the cyclic collector nothing."""

from __future__ import annotations

import gc

from core.spikes import FORGET_EVERY, IDLE_FORGET, SpikeDetector


def test_a_churn_of_fingerprints_keeps_only_the_recently_active_ones() -> None:
    d = SpikeDetector()
    t = 0.0
    peak = 0
    for i in range(60_000):  # 30 new groups a second for 2,000 s, each seen twice, plus one hot group
        t = i / 30
        d.observe(f"tail-{i}", 1, t)
        d.observe(f"tail-{i}", 1, t + 0.25)
        d.observe("hot", 5, t)
        peak = max(peak, len(d.rates))
    # at most the groups active within IDLE_FORGET plus one sweep interval, never the whole history
    assert peak <= (IDLE_FORGET + FORGET_EVERY) * 30 + 2
    assert "hot" in d.rates and "tail-0" not in d.rates and f"tail-{59_999}" in d.rates


def test_the_table_is_not_walked_by_the_collector() -> None:
    d = SpikeDetector()
    for i in range(1_000):
        d.observe(f"g{i}", 1, 1.0)
        d.observe(f"g{i}", 3, 2.0)
    gc.collect()
    assert not any(gc.is_tracked(r) for r in d.rates.values())


def test_a_group_back_after_idling_warms_up_again_then_spikes() -> None:
    d = SpikeDetector(warmup=10.0)
    t = 0.0
    for _ in range(40):  # steady 8 events/s for 10 s
        t += 0.25
        d.observe("g", 2, t)
    t += IDLE_FORGET + FORGET_EVERY  # silence: forgotten at the next sweep
    assert d.observe("other", 1, t) is None and "g" not in d.rates
    found = []
    for _ in range(60):  # then 400 events/s for 15 s
        t += 0.25
        found.append(d.observe("g", 100, t))
    first = next(i for i, s in enumerate(found) if s)
    assert 38 <= first <= 44  # not before its warm-up (10 s = 40 ticks), and promptly after it
    assert sum(1 for s in found if s) == 1  # cooldown: one report per spike
