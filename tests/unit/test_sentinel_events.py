"""The Sentinel fence (core/sentinel.py) reads failover events as Redis 7.0's Sentinel publishes them.

The texts below were captured from the local set (`faultline.redis_sentinel.LocalRedisSentinel`, redis-sentinel
7.0) during a SENTINEL FAILOVER, with the leader's times: +try-failover 0.105 s, +selected-slave 0.510 s,
+failover-state-send-slaveof-noone 0.611 s, the replica reporting itself primary 1.115 s, GET-MASTER-ADDR-BY-NAME
naming it 1.155 s. An event on the primary names it first, with no '@' part: the fence used to look for
'@ <service>' only, so it never saw +try-failover nor any -failover-abort-* (a fence lifted only by
FENCE_MAX, 15 s), and fenced at +selected-slave, ~0.1 s before the promotion.
"""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import Sentinel

from core.sentinel import FencedSentinelPool, about

OLD = ("127.0.0.1", 50307)
TRY = "master faultline 127.0.0.1 50307"
SELECTED = "slave 127.0.0.1:33295 127.0.0.1 33295 @ faultline 127.0.0.1 50307"
ABORT = "master faultline 127.0.0.1 50307"


def test_events_on_the_primary_and_on_a_replica_are_both_about_the_service() -> None:
    assert about("faultline", TRY)
    assert about("faultline", SELECTED)
    assert not about("faultline-2", TRY) and not about("faultline-2", SELECTED)
    assert not about("faultline", "master other 127.0.0.1 6379")
    assert not about("faultline", "slave 127.0.0.1:6380 127.0.0.1 6380 @ other 127.0.0.1 6379")


def _pool() -> FencedSentinelPool:
    pool = FencedSentinelPool("faultline", Sentinel([("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)]))
    pool.master_address = OLD
    return pool


@pytest.mark.asyncio
async def test_the_first_event_of_a_failover_fences() -> None:
    pool = _pool()
    pool.on_event(0, "+try-failover", TRY)
    assert pool.fenced_from == OLD


@pytest.mark.asyncio
async def test_an_abort_lifts_the_fence_only_when_every_sentinel_that_fenced_aborted() -> None:
    pool = _pool()
    pool.on_event(1, "+try-failover", TRY)  # after a SIGKILL two Sentinels try; one will lose the vote
    pool.on_event(2, "+try-failover", TRY)
    pool.on_event(1, "-failover-abort-not-elected", ABORT)
    assert pool.fenced_from == OLD, "the leader's failover goes on"
    pool.on_event(0, "-failover-abort-not-elected", ABORT)  # a Sentinel that never fenced
    assert pool.fenced_from == OLD
    pool.on_event(2, "-failover-abort-slave-timeout", ABORT)
    assert pool.fenced_from is None


@pytest.mark.asyncio
async def test_events_of_another_service_change_nothing() -> None:
    pool = _pool()
    pool.on_event(0, "+try-failover", "master other 127.0.0.1 6379")
    assert pool.fenced_from is None
