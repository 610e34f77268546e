"""The drain (core/drain.py) without servers: the order of the phases, a repeated SIGTERM, a failing hook,
and the in-flight budget inside the shutdown timeout. The same sequence on real processes is
tests/e2e/test_drain.py."""

from __future__ import annotations

import time

import pytest

from core.drain import CLOSE_RESERVE, STOPPED, Drain, IllegalTransition
from core.runtime import Runtime
from core.settings import Settings


def _drain(**overrides: float) -> Drain:
    return Drain(Settings(admin_token="test-admin-token", drain_delay=0.01, **overrides))


async def test_phases_run_in_order_and_hooks_once() -> None:
    drain = _drain()
    rt = Runtime.open(drain.settings)
    calls: list[str] = []

    async def drain_hook() -> None:
        calls.append("reconnect")

    async def flush_hook() -> None:
        calls.append("flush")

    drain.on_reconnect(drain_hook)
    drain.on_flush(flush_hook)
    assert drain.begin() and drain.draining and drain.state == "draining"
    assert not drain.begin()  # a second SIGTERM changes nothing
    await drain.hold()
    drain.stop_accepting()
    await drain.reconnect_clients()
    await drain.close(rt.close)  # the lifespan shutdown: must not tell clients twice
    total = drain.finish()
    assert calls == ["reconnect", "flush"]
    assert [name for name, _ in drain.phases] == ["drain delay", "reconnect clients", "finish in-flight", "flush",
                                                  "close pools"]
    assert drain.phases[0][1] >= 0.01 and drain.state == STOPPED and 0 < total < 5


async def test_a_failing_hook_does_not_keep_the_pools_open() -> None:
    drain = _drain()

    async def broken() -> None:
        raise RuntimeError("realtime is gone")

    done: list[str] = []

    async def flush() -> None:
        done.append("flush")

    async def close_pools() -> None:
        done.append("close")

    drain.on_reconnect(broken)
    drain.on_flush(flush)
    await drain.close(close_pools)
    assert done == ["flush", "close"] and drain.phases[-1][0] == "close pools"


def test_transitions_are_checked() -> None:
    drain = _drain()
    with pytest.raises(IllegalTransition):
        drain.move("closing")  # serving -> closing skips the drain
    drain.stop_accepting()  # SIGINT path: straight to stopping, still marked not ready
    assert drain.draining and drain.state == "stopping"


def test_in_flight_budget_keeps_room_to_close_within_the_timeout() -> None:
    drain = _drain(shutdown_timeout=10.0)
    drain.started = time.monotonic() - 4.0
    assert drain.budget() == pytest.approx(10.0 - 4.0 - CLOSE_RESERVE, abs=0.1)
    drain.started = time.monotonic() - 9.5
    assert drain.budget() == 1.0  # never less than a second for requests already running
