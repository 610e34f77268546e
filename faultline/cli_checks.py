"""`faultline worker-check`: the probes of workers and schedulers (Redis heartbeat, or the pod's own file)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from core.settings import get_settings


def cmd_worker_check(args: argparse.Namespace) -> int:
    """Exec probe: fails when the heartbeat is missing (process or loop dead, Redis unreachable) or when a
    worker has fetched nothing and finished nothing for FAULTLINE_WORKER_STALL_AFTER s while the queue
    holds messages (alive but not consuming). An empty queue is never a stall."""
    from core import heartbeat
    from core.keys import Keys
    from core.queue import queue_depth
    from core.redis import make_redis
    from faultline.stackfile import cli_settings, stack_members

    if args.local:  # inside the pod: its own environment, no stack to look up
        return _check_liveness_file(args, get_settings())
    settings = cli_settings()
    keys = Keys.from_settings(settings)
    # No --name: the workers of the stack running here (their names change with rollouts), else this
    # host's name (the Kubernetes exec probe runs inside the pod).
    names = [args.name] if args.name else stack_members(args.role) or [settings.node_name]

    async def one(redis: Any, name: str) -> tuple[bool, str]:
        beat = await heartbeat.read(redis, keys, args.role, name)
        if beat is None:
            return False, "no heartbeat"
        if args.role != "worker":
            return True, "alive"
        queued = await queue_depth(redis, keys)
        idle = heartbeat.stalled(beat, queued, settings.worker_stall_after)
        if idle is not None:
            return False, f"stalled: nothing fetched for {idle:.0f}s while {queued} messages wait"
        return True, f"alive: fetched {int(beat.get('fetched', 0))}, written {int(beat.get('written', 0))}"

    async def check() -> tuple[bool, str]:
        redis = make_redis(settings, timeout=2)
        try:
            results = [(name, *await one(redis, name)) for name in names]
        except Exception as exc:
            return False, f"cannot check: {type(exc).__name__}: {exc}"
        finally:
            await redis.aclose()
        return all(ok for _, ok, _ in results), "\n".join(f"{n}: {why}" for n, _, why in results)

    ok, why = asyncio.run(check())
    print(why)
    return 0 if ok else 1


def _check_liveness_file(args: argparse.Namespace, settings: Any) -> int:
    """The kubelet's probe: this process's own liveness file, no Redis (core/liveness.py)."""
    from core import liveness

    if settings.liveness_dir is None:
        print("FAULTLINE_LIVENESS_DIR is not set: no liveness file to check", file=sys.stderr)
        return 1
    name = args.name or settings.node_name
    ok, why = liveness.verdict(liveness.read(settings.liveness_dir, args.role, name), args.role,
                               settings.worker_stall_after)
    print(f"{name}: {why}")
    return 0 if ok else 1
