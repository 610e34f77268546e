"""The live-group pruner's pace (workers/prune.py): enough passes to find idle groups soon after they turn
idle, not a full pass over every group at every sync."""

from __future__ import annotations

from core.settings import Settings
from workers.prune import MIN_STEP, PASSES_PER_IDLE, prune_step


def test_a_day_of_idleness_needs_only_a_slice_of_the_groups_per_run() -> None:
    s = Settings(sync_interval=30.0, live_group_idle=86_400.0)
    step = prune_step(20_000, s)
    assert step == 139  # ceil(20,000 x 30 x 20 / 86,400): 20 full passes a day
    runs_per_pass = 20_000 / step
    assert runs_per_pass * s.sync_interval * PASSES_PER_IDLE <= s.live_group_idle


def test_small_hashes_and_short_idle_times_are_bounded_both_ways() -> None:
    assert prune_step(10, Settings(sync_interval=30.0, live_group_idle=86_400.0)) == MIN_STEP
    quick = Settings(sync_interval=30.0, live_group_idle=1.0, live_prune_step=500)
    assert prune_step(1_000_000, quick) == 500  # never more than live_prune_step per run
