"""core/backoff.py: delays, classification, once-per-outage logging, giving up (fake clock, no sleeping)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from redis import exceptions as rx
from sqlalchemy.exc import DataError, OperationalError

from core.backoff import Backoff, GaveUp, delay_for, retryable
from core.heartbeat import stalled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_is_capped_and_within_equal_jitter() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        attempt, base, cap = rng.randint(1, 200), rng.uniform(0.001, 5), rng.uniform(0.01, 120)
        ceiling = min(cap, base * 2 ** min(attempt - 1, 32))
        d = delay_for(attempt, base, cap, rng)
        assert ceiling / 2 <= d <= ceiling <= cap


def test_delays_grow_until_the_cap() -> None:
    rng = random.Random(1)
    b = Backoff("x", logging.getLogger("t"), base=0.1, cap=2.0, rng=rng, clock=Clock())
    delays = [b.next_delay(rx.ConnectionError("down")) for _ in range(12)]
    # each delay's floor is the previous ceiling's half: grows until the cap, then stays in [cap/2, cap]
    assert all(0.05 <= d <= 0.1 for d in delays[:1])
    assert delays[5] >= 1.0 and all(1.0 <= d <= 2.0 for d in delays[5:])
    b.ok()
    assert b.next_delay(rx.ConnectionError("down")) <= 0.1  # a new outage starts small again


@pytest.mark.parametrize("exc", [
    rx.ConnectionError("Error 111 connecting"), rx.TimeoutError("Timeout reading"), rx.BusyLoadingError("LOADING"),
    rx.ResponseError("UNBLOCKED force unblock from blocking operation"), rx.ReadOnlyError("READONLY replica"),
    rx.ResponseError("MOVED 3999 127.0.0.1:6381"), rx.ResponseError("NOGROUP No such key 'x' or consumer group"),
    rx.NoScriptError("NOSCRIPT No matching script"), ConnectionRefusedError(), TimeoutError(),
    OperationalError("x", {}, Exception(2003, "Can't connect to MySQL server")),
    rx.ResponseError("NOREPLICAS Not enough good replicas to write."),
    # redis-py's wrapping of a pipeline command's error reply
    rx.ResponseError("Command # 1 (HSET k:new:ef a 1) of pipeline caused error: NOREPLICAS Not enough good replicas"),
    rx.ResponseError("Command # 1 (HSET k a 1) of pipeline caused error: ('NOREPLICAS Not enough good replicas',)"),
    rx.SlotNotCoveredError('Slot "3238" is not covered by the cluster.'),  # a dead primary, before failover
    rx.ClusterDownError("The cluster is down"),  # redis-py's wording of CLUSTERDOWN: it ended a worker
])
def test_dependency_errors_are_retried(exc: BaseException) -> None:
    assert retryable(exc)


@pytest.mark.parametrize("exc", [
    ValueError("bug"), KeyError("k"), rx.AuthenticationError("WRONGPASS"), rx.ResponseError("WRONGTYPE Operation"),
    rx.ResponseError("ERR unknown command"), DataError("x", {}, Exception(1406, "Data too long")),
    rx.ResponseError("Command # 2 (HSET k a) of pipeline caused error: WRONGTYPE Operation"),
    AttributeError("'NoneType' object has no attribute 'x'"),  # raised in our code, not redis-py's transport
])
def test_bugs_and_refusals_are_not(exc: BaseException) -> None:
    assert not retryable(exc)
    b = Backoff("x", logging.getLogger("t"))
    with pytest.raises(type(exc)):
        b.next_delay(exc)


def test_logs_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    b = Backoff("stream listener", logging.getLogger("t.backoff"), clock=clock)
    caplog.set_level(logging.DEBUG, "t.backoff")
    for _ in range(3):  # three outages of 40 failures each
        for _ in range(40):
            b.next_delay(rx.ConnectionError("Connection refused"))
            clock.now += 0.5
        b.ok()
        for _ in range(5):
            b.ok()  # successes outside an outage log nothing
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 3 and len(infos) == 3
    assert all("Connection refused" in r.getMessage() for r in warnings)
    assert all("recovered after 20.0s" in r.getMessage() for r in infos)
    assert b.outages == 3 and not b.failing


def test_gives_up_after_a_long_outage() -> None:
    clock = Clock()
    b = Backoff("x", logging.getLogger("t"), give_up_after=30, clock=clock)
    for _ in range(10):
        b.next_delay(rx.ConnectionError("down"))
        clock.now += 2.9
    clock.now += 5
    with pytest.raises(GaveUp):
        b.next_delay(rx.ConnectionError("down"))
    never = Backoff("y", logging.getLogger("t"), give_up_after=0, clock=clock)
    never.next_delay(rx.ConnectionError("down"))
    clock.now += 10**6
    never.next_delay(rx.ConnectionError("down"))  # 0 = retry forever


def test_stall_needs_both_idleness_and_a_queue() -> None:
    beat = {"started": 100.0, "last_fetch": 150.0, "last_done": 140.0}
    assert stalled(beat, queued=10, stall_after=30, now=170) is None  # fetched 20 s ago
    assert stalled(beat, queued=10, stall_after=30, now=190) == pytest.approx(40)
    assert stalled(beat, queued=0, stall_after=30, now=10_000) is None  # nothing to fetch: not stalled
    busy = {**beat, "last_done": 185.0}  # slow tasks finishing: busy, not stalled
    assert stalled(busy, queued=10, stall_after=30, now=190) is None


def test_redis_py_writing_to_a_closed_transport_is_a_dependency_error() -> None:
    """redis-py 8.1 raises AttributeError from its own connection code when a failover closed the transport
    under it (seen: "'NoneType' object has no attribute 'writelines'")."""
    from redis.asyncio.connection import Connection

    class Closed:
        _writer = None

    try:
        asyncio.run(Connection._send_packed_command(Closed(), [b"PING"]))  # type: ignore[arg-type]
    except AttributeError as exc:
        caught: BaseException = exc
    else:  # the library changed: this test's premise no longer holds
        pytest.fail("redis-py no longer raises AttributeError on a closed transport")
    assert retryable(caught)
