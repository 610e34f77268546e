"""The operator's commands on a running system: projects and their quotas, dead letters, status."""

from __future__ import annotations

import argparse
import asyncio
import sys


def cmd_project(args: argparse.Namespace) -> int:
    from faultline.projects import run

    return run(args)


def cmd_project_quota(args: argparse.Namespace) -> int:
    """`faultline project quota NAME [--per-minute N] ...`: change only the limits given, print the result."""
    import json
    from dataclasses import replace

    from sqlalchemy import select

    from core.db.engine import make_engine
    from core.db.migrate import migrate
    from core.db.models import Project
    from core.keys import Keys
    from core.ratelimit import quota as q
    from core.redis import make_redis
    from faultline.stackfile import cli_settings

    async def run() -> int:
        settings = cli_settings()  # the stack running here, or explicit URLs
        await migrate(settings)
        engine = make_engine(settings)
        try:
            async with engine.begin() as conn:
                pid = (await conn.execute(select(Project.id).where(Project.name == args.name))).scalar()
                if pid is None:
                    print(f"no project named {args.name!r}", file=sys.stderr)
                    return 1
                current = q.Quota() if args.reset else (await q.load_quotas(conn)).get(pid, q.Quota())
                changes = {f: getattr(args, f) for f in q.FIELDS if getattr(args, f) is not None}
                quota = replace(current, **{f: None if v == "default" else v for f, v in changes.items()})
                await q.save_quota(conn, pid, quota)
        finally:
            await engine.dispose()
        redis = make_redis(settings, timeout=5)
        try:
            await q.mirror_one(redis, Keys.from_settings(settings), pid, quota)
        except Exception as exc:
            print(f"warning: Redis not reachable ({exc}); API nodes copy quotas within a minute", file=sys.stderr)
        finally:
            await redis.aclose()
        print(json.dumps({"project": args.name, "id": pid, **quota.effective(settings),
                          "overrides": {f: getattr(quota, f) for f in q.FIELDS}}))
        return 0

    return asyncio.run(run())


def _limit(value: str) -> int | str:
    if value == "default":
        return value
    if not value.isdigit() or int(value) > 1_000_000_000:
        raise argparse.ArgumentTypeError("an integer from 0 (no limit) to 1000000000, or 'default'")
    return int(value)


def cmd_dlq(args: argparse.Namespace) -> int:
    from faultline.projects import run_dlq

    return run_dlq(args)


def cmd_status(args: argparse.Namespace) -> int:
    from faultline.projects import run_status

    return run_status(args)
