"""The drain state machine (health/drain.py) and the Runtime's shutdown hooks, without servers: the order
of the phases, a repeated SIGTERM, a failing hook, and the in-flight budget inside the shutdown timeout.
The same sequence on real processes is tests/e2e/test_drain.py."""

from __future__ import annotations

import time

import pytest

from core.runtime import Runtime
from core.settings import Settings
from health.drain import CLOSE_RESERVE, CLOSING, STOPPED, Drain, IllegalTransition


def _runtime(**overrides: float) -> Runtime:
    return Runtime.open(Settings(admin_token="test-admin-token", drain_delay=0.01, **overrides))


async def test_phases_run_in_order_and_hooks_once() -> None:
    rt = _runtime()
    calls: list[str] = []

    async def drain_hook() -> None:
        calls.append("reconnect")

    async def flush_hook() -> None:
        calls.append("flush")

    rt.drain_hooks.append(drain_hook)
    rt.flush_hooks.append(flush_hook)
    drain = Drain(rt)
    assert drain.begin() and rt.draining and rt.drain_state == "draining"
    assert not drain.begin()  # a second SIGTERM changes nothing
    await drain.hold()
    drain.stop_accepting()
    await rt.reconnect_clients()
    drain.move(CLOSING)
    await rt.close()  # the lifespan shutdown: must not tell clients twice
    total = drain.finish()
    assert calls == ["reconnect", "flush"]
    assert [name for name, _ in rt.phases] == ["drain delay", "reconnect clients", "flush", "close pools"]
    assert rt.phases[0][1] >= 0.01 and rt.drain_state == STOPPED and 0 < total < 5


async def test_a_failing_hook_does_not_keep_the_pools_open() -> None:
    rt = _runtime()

    async def broken() -> None:
        raise RuntimeError("realtime is gone")

    flushed: list[bool] = []

    async def flush() -> None:
        flushed.append(True)

    rt.drain_hooks.append(broken)
    rt.flush_hooks.append(flush)
    await rt.close()
    assert flushed == [True] and rt.phases[-1][0] == "close pools"


def test_transitions_are_checked() -> None:
    drain = Drain(_runtime())
    with pytest.raises(IllegalTransition):
        drain.move(CLOSING)  # serving -> closing skips the drain
    drain.stop_accepting()  # SIGINT path: straight to stopping, still marked not ready
    assert drain.rt.draining and drain.state == "stopping"


def test_in_flight_budget_keeps_room_to_close_within_the_timeout() -> None:
    rt = _runtime(shutdown_timeout=10.0)
    rt.drain_started = time.monotonic() - 4.0
    assert Drain(rt).budget() == pytest.approx(10.0 - 4.0 - CLOSE_RESERVE, abs=0.1)
    rt.drain_started = time.monotonic() - 9.5
    assert Drain(rt).budget() == 1.0  # never less than a second for requests already running
