"""The commands that run one role of the system: api, worker, scheduler, and migrate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from core.settings import get_settings


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("FAULTLINE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # taskiq logs every task at INFO: thousands of lines a second under load.
    logging.getLogger("taskiq").setLevel(logging.WARNING)


def cmd_api(args: argparse.Namespace) -> int:
    # Settings refuse development secrets on a listener other machines can reach (core/settings.py)
    os.environ["FAULTLINE_BIND_HOST"] = args.host
    get_settings()  # refuse bad settings before forking workers
    argv = [sys.executable, "-m", "gunicorn", "faultline.asgi:create()", "-c", "python:faultline.gunicorn_conf",
            "-b", f"{args.host}:{args.port}", "-w", str(args.workers)]
    os.execv(sys.executable, argv)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.main import run_worker

    _logging()
    settings = get_settings()
    asyncio.run(run_worker(settings, args.name or settings.node_name))
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from workers.scheduler import run_scheduler

    _logging()
    settings = get_settings()
    asyncio.run(run_scheduler(settings, args.name or settings.node_name))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from core.db.migrate import migrate

    _logging()
    if args.check:
        return _check_schema(args.wait)
    asyncio.run(migrate(get_settings()))
    print("schema is up to date")
    return 0


def _check_schema(wait: float) -> int:
    """`migrate --check`: exit 0 when the database is at this release's revision (or newer), else 1 with the
    reason; with --wait, poll until it is (the initContainer of a pod waiting for the migration Job)."""
    import time

    from core.db.engine import make_engine
    from core.db.migrate import schema_state

    async def once() -> tuple[bool, str]:
        engine = make_engine(get_settings())
        try:
            state = await schema_state(engine)
        except Exception as exc:
            return False, f"database unreachable: {type(exc).__name__}: {exc}"
        finally:
            await engine.dispose()
        return not state.behind, state.describe()

    deadline = time.monotonic() + wait
    ok, why = asyncio.run(once())
    while not ok and time.monotonic() < deadline:
        print(f"waiting: {why}", file=sys.stderr, flush=True)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        ok, why = asyncio.run(once())
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
