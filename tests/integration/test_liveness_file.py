"""The local liveness of workers and schedulers (core/liveness.py; the Kubernetes probe `faultline
worker-check --local`): written by the process's own loop whatever Redis does, failed only by a stuck loop.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from core import heartbeat, liveness
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from faultline.cli import _check_liveness_file
from faultline.services import free_port
from tests.waiting import wait_for

STALL = 30.0


def test_verdicts() -> None:
    now = time.time()
    fresh = {"beat": now - 1, "started": now - 600}
    assert liveness.verdict(None, "worker", STALL)[0] is False
    assert liveness.verdict({**fresh, "last_fetch": now - 1}, "worker", STALL)[0]  # consuming, or nothing to
    assert liveness.verdict({**fresh, "last_done": now - 5}, "worker", STALL)[0]  # busy: finishing tasks
    # Redis down: every fetch fails, but the loop turns: alive (its backoff and give-up handle the outage)
    assert liveness.verdict({**fresh, "last_fetch": now - 300, "last_attempt": now - 1}, "worker", STALL)[0]
    ok, why = liveness.verdict({**fresh, "last_fetch": now - 60, "last_done": now - 45}, "worker", STALL)
    assert not ok and "stalled" in why
    ok, why = liveness.verdict({**fresh, "beat": now - 60, "last_fetch": now - 60}, "worker", STALL)
    assert not ok and "event loop stuck" in why
    assert liveness.verdict(fresh, "scheduler", STALL)[0]  # a scheduler fetches nothing: its beat is enough
    assert not liveness.verdict({**fresh, "beat": now - 60}, "scheduler", STALL)[0]


async def test_the_file_is_written_while_redis_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", liveness_dir=tmp_path / "live",
                        loop_backoff_max=0.2, heartbeat_interval=0.1)
    redis = make_redis(settings, timeout=0.2)
    progress = heartbeat.Progress()
    beat = asyncio.create_task(heartbeat.beat_forever(redis, Keys("lv"), "worker", "w-1", settings, progress))
    try:
        async def beats_twice() -> bool:
            first = liveness.read(tmp_path / "live", "worker", "w-1")
            return first is not None and first["errors"] >= 2  # written again after failed Redis beats
        await wait_for(beats_twice, 20, "the liveness file to be rewritten while Redis is down")
        progress.mark_attempt()  # the consumer loop's failed fetch, as core/broker.py records it
        await asyncio.sleep(0.3)
        args = argparse.Namespace(name="w-1", role="worker")
        assert _check_liveness_file(args, settings) == 0
        assert _check_liveness_file(argparse.Namespace(name="w-2", role="worker"), settings) == 1  # no file
        assert _check_liveness_file(args, Settings()) == 1  # no FAULTLINE_LIVENESS_DIR: nothing to check
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        await redis.aclose()
