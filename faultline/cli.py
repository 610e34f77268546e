"""`faultline` command: up, rollout, api, worker, scheduler, migrate, project, worker-check, dlq."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from core.settings import DATA_DIR, get_settings


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("FAULTLINE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # taskiq logs every task at INFO: thousands of lines a second under load.
    logging.getLogger("taskiq").setLevel(logging.WARNING)


def cmd_up(args: argparse.Namespace) -> int:
    from faultline import rollout
    from faultline.stack import Stack, StackConfig

    creds = load_credentials(DATA_DIR / "credentials.env")
    admin = os.environ.get("FAULTLINE_ADMIN_TOKEN") or creds.get("FAULTLINE_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    key = os.environ.get("FAULTLINE_INGEST_KEY") or creds.get("FAULTLINE_INGEST_KEY") or secrets.token_urlsafe(24)
    stack = Stack(StackConfig(base_dir=DATA_DIR.resolve(), nodes=args.nodes, port=args.port, workers=args.workers,
                              db=args.db, admin_token=admin, ingest_key=key,
                              env={"FAULTLINE_RATE_LIMIT_ENABLED": "false"} if args.no_rate_limit else {}))
    stopping = rollout_wanted = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    def _rollout(signum: int, _frame: object) -> None:  # SIGHUP, sent by `faultline rollout`
        nonlocal rollout_wanted
        rollout_wanted = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _rollout)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    write_credentials(DATA_DIR / "credentials.env", {"FAULTLINE_ADMIN_TOKEN": stack.admin_token,
                                                     "FAULTLINE_INGEST_KEY": stack.ingest_key})
    print(f"\nFaultline is up on {stack.url}  ({args.nodes} API nodes, {args.workers} workers, db={args.db})")
    limits = stack.settings()
    shown = "off"
    if limits.rate_limit_enabled:
        shown = f"{limits.rate_limits} per client; {limits.rate_limit_routes}"
    print(f"  rate limits : {shown}   (`faultline up --no-rate-limit` turns them off)")
    print(f"  ingest key  : {stack.ingest_key}   (header X-Faultline-Key)")
    print(f"  admin token : {stack.admin_token}   (Authorization: Bearer ...)")
    print(f"  saved to {DATA_DIR / 'credentials.env'} (mode 0600). Ctrl-C stops everything.\n", flush=True)
    rollout.write_pid(DATA_DIR)
    while not stopping:
        stack.supervise_once()
        if rollout_wanted:
            rollout_wanted = False
            rollout.run_requested(stack, DATA_DIR)
        time.sleep(0.5)
    print("stopping...", flush=True)
    rollout.remove_pid(DATA_DIR)
    stack.stop()
    print("stopped", flush=True)
    return 0


def load_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def write_credentials(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in values.items())
    os.chmod(path, 0o600)


def cmd_rollout(args: argparse.Namespace) -> int:
    import json

    from faultline.rollout import request_rollout

    outcome = request_rollout(DATA_DIR, args.timeout)
    print(json.dumps(outcome, indent=2))
    return 0 if outcome.get("ok") else 1


def cmd_api(args: argparse.Namespace) -> int:
    get_settings()  # refuse bad settings before forking workers
    argv = [sys.executable, "-m", "gunicorn", "faultline.asgi:create()", "-c", "python:faultline.gunicorn_conf",
            "-b", f"{args.host}:{args.port}", "-w", str(args.workers)]
    os.execv(sys.executable, argv)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.heartbeat import default_name
    from workers.main import run_worker

    _logging()
    asyncio.run(run_worker(get_settings(), args.name or default_name()))
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from core.heartbeat import default_name
    from workers.scheduler import run_scheduler

    _logging()
    asyncio.run(run_scheduler(get_settings(), args.name or default_name()))
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from core.db.migrate import migrate

    _logging()
    asyncio.run(migrate(get_settings()))
    print("schema is up to date")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from core.db import repo
    from core.db.engine import make_engine
    from core.db.migrate import migrate
    from core.keys import Keys
    from core.redis import make_redis

    async def create() -> tuple[int, str]:
        settings = get_settings()
        await migrate(settings)
        engine = make_engine(settings)
        async with engine.begin() as conn:
            pid, key = await repo.ensure_project(conn, args.name, args.key or secrets.token_urlsafe(24))
        await engine.dispose()
        redis = make_redis(settings, timeout=5)
        try:
            await redis.hset(Keys(settings.key_prefix).projects, key, str(pid))
        except Exception as exc:
            print(f"warning: Redis not reachable ({exc}); nodes will load the key at start", file=sys.stderr)
        finally:
            await redis.aclose()
        return pid, key

    _, key = asyncio.run(create())
    print(key)
    return 0


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

    async def run() -> int:
        settings = get_settings()
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
            await q.mirror_one(redis, Keys(settings.key_prefix), pid, quota)
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


def cmd_worker_check(args: argparse.Namespace) -> int:
    """Exec probe: fails when the heartbeat is missing (process or loop dead, Redis unreachable) or when a
    worker has fetched nothing and finished nothing for FAULTLINE_WORKER_STALL_AFTER s while the queue
    holds messages (alive but not consuming). An empty queue is never a stall."""
    from core import heartbeat
    from core.keys import Keys
    from core.redis import make_redis

    async def check() -> tuple[bool, str]:
        settings = get_settings()
        keys = Keys(settings.key_prefix)
        redis = make_redis(settings, timeout=2)
        name = args.name or heartbeat.default_name()
        try:
            beat = await heartbeat.read(redis, keys, args.role, name)
            if beat is None:
                return False, "no heartbeat"
            if args.role != "worker":
                return True, "alive"
            queued = int(await redis.xlen(keys.stream))
            idle = heartbeat.stalled(beat, queued, settings.worker_stall_after)
            if idle is not None:
                return False, f"stalled: nothing fetched for {idle:.0f}s while {queued} messages wait"
            return True, f"alive: fetched {int(beat.get('fetched', 0))}, written {int(beat.get('written', 0))}"
        except Exception as exc:
            return False, f"cannot check: {type(exc).__name__}: {exc}"
        finally:
            await redis.aclose()

    ok, why = asyncio.run(check())
    print(why)
    return 0 if ok else 1


def cmd_dlq(args: argparse.Namespace) -> int:
    import orjson

    from core.keys import Keys
    from core.redis import make_redis

    async def run() -> int:
        settings = get_settings()
        keys = Keys(settings.key_prefix)
        redis = make_redis(settings, timeout=5)
        try:
            if args.action == "list":
                for raw in await redis.lrange(keys.dead_letters, 0, args.limit - 1):
                    rec = orjson.loads(raw)
                    print(f"{rec['task_id']}  attempts={rec['attempts']}  {rec['error']}")
                return 0
            moved = 0
            while (popped := await redis.rpop(keys.dead_letters)) is not None:
                rec = orjson.loads(popped)  # type: ignore[arg-type]
                msg = orjson.loads(rec["message"])
                msg["labels"] = {}
                await redis.xadd(keys.stream, {"data": orjson.dumps(msg)})
                moved += 1
            print(f"replayed {moved} tasks")
            return 0
        finally:
            await redis.aclose()

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    """Also used by tests that check the Dockerfile and the k8s manifests only run commands that exist."""
    parser = argparse.ArgumentParser(prog="faultline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole local stack in the foreground")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--db", default="mariadb", help="sqlite | mariadb | a SQLAlchemy URL")
    # On by default, as in production (the seed's tiers, per ingest key); off for load tests of the rest.
    up.add_argument("--no-rate-limit", action="store_true", help="FAULTLINE_RATE_LIMIT_ENABLED=false")
    up.set_defaults(func=cmd_up)
    roll = sub.add_parser("rollout", help="rolling restart of the running `faultline up` (maxSurge 1, "
                                          "maxUnavailable 0)")
    roll.add_argument("--timeout", type=float, default=600.0)
    roll.set_defaults(func=cmd_rollout)
    api = sub.add_parser("api", help="run one API node (gunicorn + uvicorn workers)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(func=cmd_api)
    for name, func in (("worker", cmd_worker), ("scheduler", cmd_scheduler)):
        p = sub.add_parser(name, help=f"run one {name} process")
        p.add_argument("--name", default=None)
        p.set_defaults(func=func)
    sub.add_parser("migrate", help="create or upgrade the schema").set_defaults(func=cmd_migrate)
    project = sub.add_parser("project", help="manage projects")
    psub = project.add_subparsers(dest="action", required=True)
    create = psub.add_parser("create", help="create a project and print its ingest key")
    create.add_argument("name")
    create.add_argument("--key", default=None)
    create.set_defaults(func=cmd_project)
    quota = psub.add_parser("quota", help="show or set a project's event quota and new-group cap "
                                          "(0 = no limit, 'default' = the FAULTLINE_PROJECT_* setting)")
    quota.add_argument("name")
    quota.add_argument("--per-second", dest="per_second", type=_limit, default=None)
    quota.add_argument("--per-minute", dest="per_minute", type=_limit, default=None)
    quota.add_argument("--new-groups-per-hour", dest="new_groups_per_hour", type=_limit, default=None)
    quota.add_argument("--reset", action="store_true", help="back to the defaults, then apply the options given")
    quota.set_defaults(func=cmd_project_quota)
    check = sub.add_parser("worker-check", help="exit 0 if the worker's heartbeat is fresh (exec probe)")
    check.add_argument("--role", choices=["worker", "scheduler"], default="worker")
    check.add_argument("--name", default=None)
    check.set_defaults(func=cmd_worker_check)
    dlq = sub.add_parser("dlq", help="dead-letter list")
    dlq.add_argument("action", choices=["list", "replay"])
    dlq.add_argument("--limit", type=int, default=50)
    dlq.set_defaults(func=cmd_dlq)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
