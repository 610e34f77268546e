"""The load shapes of `make loadtest SCENARIO=...`, as stages of (users, seconds, spawn rate).

ramp  10 -> 50 -> 100 -> 200 -> 500 users, each held for --stage-seconds: the seed's table rows
      (10/50/100/200/500 VUs), which include a 0 -> 50 -> 200 -> 500 ramp.
spike 10 users, then a sudden jump to 1,000 (all spawned within ~1 s), held twice as long, then back.
soak  --users (default 200) for --duration (default 30 min): memory growth and latency drift.
paced --users users for --duration, each posting once per second ON THE CLOCK (locust constant_throughput):
      --users req/s whatever the latency (while an answer takes < 1 s), the issue's "paced 500 req/s".
Otherwise each user posts one error then waits 1 s, like a k6 VU, so N users offer about N requests/s
(fewer when answers slow down: a closed model).
"""

from __future__ import annotations

from dataclasses import dataclass

RAMP_LEVELS = (10, 50, 100, 200, 500)


@dataclass(frozen=True)
class Stage:
    users: int
    seconds: float
    spawn_rate: float


def stages(scenario: str, stage_seconds: float = 30, duration: float = 1800, users: int = 200) -> list[Stage]:
    if scenario == "ramp":
        # 100 users/s: the step 200 -> 500 takes 3 s of a stage, the rest is steady state
        return [Stage(n, stage_seconds, 100) for n in RAMP_LEVELS]
    if scenario == "spike":
        sudden = 1000  # users/s: all 1,000 users within about a second
        return [Stage(10, stage_seconds, 10), Stage(1000, 2 * stage_seconds, sudden),
                Stage(10, stage_seconds, sudden)]
    if scenario in ("soak", "paced"):
        return [Stage(users, duration, 50)]
    raise ValueError(f"unknown scenario {scenario!r}: ramp, spike, soak or paced")


def stage_at(plan: list[Stage], elapsed: float) -> int | None:
    """Index of the stage running `elapsed` seconds after the start; None once the plan is over."""
    end = 0.0
    for i, stage in enumerate(plan):
        end += stage.seconds
        if elapsed < end:
            return i
    return None


def total_seconds(plan: list[Stage]) -> float:
    return sum(s.seconds for s in plan)
