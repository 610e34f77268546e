"""`faultline` command: up, rollout, api, worker, scheduler, migrate, project, worker-check, dlq, alert."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core import access
from core.settings import get_settings


def _logging() -> None:
    logging.basicConfig(level=os.environ.get("FAULTLINE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # taskiq logs every task at INFO: thousands of lines a second under load.
    logging.getLogger("taskiq").setLevel(logging.WARNING)


def _adapt(handler: Callable[[], None]) -> Callable[[int, object], None]:
    def on_signal(_signum: int, _frame: object) -> None:
        handler()
    return on_signal


class Signals:
    """Signal -> handler table for `faultline up`: handlers only set events; the main loop acts on them."""

    def __init__(self, on_stop: Callable[[], None]) -> None:
        self.stop = threading.Event()
        self.rollout = threading.Event()
        self._on_stop = on_stop
        self.table: dict[int, Callable[[], None]] = {
            signal.SIGINT: self.request_stop,
            signal.SIGTERM: self.request_stop,
            signal.SIGHUP: self.rollout.set,  # sent by `faultline rollout`
        }

    def request_stop(self) -> None:
        self.stop.set()
        self._on_stop()  # long steps (start-up waits, a rollout) give up at once

    def install(self) -> None:
        for signum, handler in self.table.items():
            signal.signal(signum, _adapt(handler))


def cmd_up(args: argparse.Namespace) -> int:
    from faultline import rollout, stackfile
    from faultline.bootstrap import StartRefused
    from faultline.stack import Cancelled, Stack, StackConfig

    data = stackfile.data_dir()
    if stackfile.read(data) is not None:
        raise SystemExit(f"a `faultline up` is already running in {data.resolve()} (see `faultline status`)")
    creds = load_credentials(data / "credentials.env")
    admin = os.environ.get("FAULTLINE_ADMIN_TOKEN") or creds.get("FAULTLINE_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    key = os.environ.get("FAULTLINE_INGEST_KEY") or creds.get("FAULTLINE_INGEST_KEY") or access.new_ingest_key()
    # Store passwords: kept across runs (the MariaDB user is re-keyed at each start if they change).
    redis_pw = creds.get("FAULTLINE_REDIS_PASSWORD") or secrets.token_urlsafe(24)
    db_pw = creds.get("FAULTLINE_DB_PASSWORD") or secrets.token_urlsafe(24)
    stack = Stack(StackConfig(base_dir=data.resolve(), nodes=args.nodes, port=args.port, workers=args.workers,
                              db=args.db, admin_token=admin, ingest_key=key, redis_password=redis_pw,
                              db_password=db_pw, redis=args.redis,
                              env={"FAULTLINE_RATE_LIMIT_ENABLED": "false"} if args.no_rate_limit else {}))
    signals = Signals(stack.cancel.set)
    signals.install()
    try:
        stack.start()
    except (Cancelled, InterruptedError):
        stack.stop()
        return 0
    except StartRefused as refused:
        stack.stop()
        print(f"faultline up: {refused}", file=sys.stderr)
        return 2
    except BaseException:
        stack.stop()
        raise
    write_credentials(data / "credentials.env", {
        "FAULTLINE_ADMIN_TOKEN": stack.admin_token, "FAULTLINE_INGEST_KEY": stack.ingest_key,
        "FAULTLINE_URL": stack.url, "FAULTLINE_REDIS_PASSWORD": redis_pw, "FAULTLINE_DB_PASSWORD": db_pw})
    stackfile.write(data, stack)
    print(f"\nFaultline is up on {stack.url}  ({args.nodes} API nodes, {args.workers} workers, db={args.db})")
    limits = stack.settings()
    shown = "off"
    if limits.rate_limit_enabled:
        routes = len([r for r in limits.rate_limit_routes.split(";") if r.strip()])
        shown = (f"{limits.rate_limits} per client on {routes} routes (FAULTLINE_RATE_LIMIT_ROUTES); project "
                 f"quota {limits.project_quota_per_second}/s, {limits.project_quota_per_minute}/min")
    print(f"  rate limits : {shown}   (`faultline up --no-rate-limit` turns them off)")
    print(f"  ingest key  : {stack.ingest_key}   (header X-Faultline-Key; checked through nginx)")
    print(f"  admin token : {stack.admin_token}   (Authorization: Bearer ...)")
    print(f"  saved to {data / 'credentials.env'} (mode 0600). Ctrl-C stops everything.\n", flush=True)
    rollout.write_pid(data)
    try:
        while not signals.stop.wait(0.5):
            if stack.supervise_once():
                stackfile.write(data, stack)
            if signals.rollout.is_set():
                signals.rollout.clear()
                rollout.run_requested(stack, data, on_done=lambda: stackfile.write(data, stack))
    finally:
        print("stopping...", flush=True)
        rollout.remove_pid(data)
        stackfile.remove(data)
        stack.stop()
    print("stopped", flush=True)
    return 0


def load_credentials(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip().removeprefix("export "): v.strip() for k, v in pairs}


def write_credentials(path: Path, values: dict[str, str]) -> None:
    from faultline.stackfile import write_private

    # `export` lines: `source .faultline/credentials.env` works as written in a shell.
    write_private(path, "".join(f"export {k}={v}\n" for k, v in values.items()))


def cmd_rollout(args: argparse.Namespace) -> int:
    import json

    from faultline.rollout import request_rollout
    from faultline.stackfile import data_dir

    outcome = request_rollout(data_dir(), args.timeout, progress=lambda line: print(line, flush=True))
    print(json.dumps(outcome, indent=2))
    return 0 if outcome.get("ok") else 1


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


def cmd_dlq(args: argparse.Namespace) -> int:
    from faultline.projects import run_dlq

    return run_dlq(args)


def cmd_status(args: argparse.Namespace) -> int:
    from faultline.projects import run_status

    return run_status(args)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """Also used by tests that check the Dockerfile and the k8s manifests only run commands that exist."""
    parser = argparse.ArgumentParser(prog="faultline", description=__doc__)
    # every option's help ends with its default (%(default)s), in every subcommand
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    up = sub.add_parser("up", help="run the whole local stack in the foreground")
    up.add_argument("--nodes", type=int, default=3, help="API nodes behind nginx (each gunicorn + uvicorn)")
    up.add_argument("--port", type=int, default=8080, help="the port nginx listens on (127.0.0.1)")
    up.add_argument("--workers", type=int, default=2, help="worker processes consuming the task stream")
    up.add_argument("--db", default="mariadb", help="sqlite | mariadb (a private server) | galera (a private 3-node "
                    "Galera cluster) | a SQLAlchemy URL (mysql+asyncmy://u:p@h1:3306,h2:3306/db fails over)")
    up.add_argument("--redis", default="single", choices=["single", "sentinel", "cluster"],
                    help="one redis-server; 1 primary + 2 replicas + 3 Sentinels; or a 6-node Redis Cluster")
    # On by default, as in production (the seed's tiers, per ingest key); off for load tests of the rest.
    up.add_argument("--no-rate-limit", action="store_true",
                    help="turn off abuse tiers, project quotas and the group cap (FAULTLINE_RATE_LIMIT_ENABLED=false)")
    up.set_defaults(func=cmd_up)
    roll = sub.add_parser("rollout", help="rolling restart of the running `faultline up` (maxSurge 1, "
                                          "maxUnavailable 0)")
    roll.add_argument("--timeout", type=float, default=600.0, help="give up waiting after this many seconds")
    roll.set_defaults(func=cmd_rollout)
    api = sub.add_parser("api", help="run one API node (gunicorn + uvicorn workers)")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback: no dev secrets)")
    api.add_argument("--port", type=int, default=8000, help="port to listen on")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(func=cmd_api)
    for name, func in (("worker", cmd_worker), ("scheduler", cmd_scheduler)):
        p = sub.add_parser(name, help=f"run one {name} process")
        p.add_argument("--name", default=None, help="its name in heartbeats and logs (default: "
                       "FAULTLINE_NODE_NAME, else the host name)")
        p.set_defaults(func=func)
    mig = sub.add_parser("migrate", help="create or upgrade the schema")
    mig.add_argument("--check", action="store_true", help="change nothing: exit 1 unless the database is at "
                     "this release's schema revision (or newer)")
    mig.add_argument("--wait", type=float, default=0.0, help="with --check: keep checking for up to this many "
                     "seconds (a pod's initContainer waiting for the migration Job)")
    mig.set_defaults(func=cmd_migrate)
    project = sub.add_parser("project", help="manage projects and their ingest keys (of the running stack)")
    psub = project.add_subparsers(dest="action", required=True, parser_class=_Parser)
    create = psub.add_parser("create", help="create a project and print its ingest key (shown once)")
    create.add_argument("name", help="project name (unique)")
    create.add_argument("--key", default=None, help="use this key (at least 16 characters) instead of a random one")
    create.set_defaults(func=cmd_project)
    psub.add_parser("list", help="projects, their ids and key hints").set_defaults(func=cmd_project)
    rotate = psub.add_parser("rotate-key", help="add a new key to a project and print it (the old ones keep "
                                                "working unless --revoke-old)")
    rotate.add_argument("name", help="project name")
    rotate.add_argument("--revoke-old", action="store_true", help="revoke every other key of the project")
    rotate.set_defaults(func=cmd_project)
    delete = psub.add_parser("delete", help="delete a project and revoke its keys (its groups stay)")
    delete.add_argument("name", help="project name")
    delete.set_defaults(func=cmd_project)
    quota = psub.add_parser("quota", help="show or set a project's event quota and new-group cap "
                                          "(0 = no limit, 'default' = the FAULTLINE_PROJECT_* setting)")
    quota.add_argument("name", help="project name")
    quota.add_argument("--per-second", dest="per_second", type=_limit, default=None,
                       help="events per second: N, 0 (no limit) or 'default' (unchanged if not given)")
    quota.add_argument("--per-minute", dest="per_minute", type=_limit, default=None,
                       help="events per minute: N, 0 or 'default' (unchanged if not given)")
    quota.add_argument("--new-groups-per-hour", dest="new_groups_per_hour", type=_limit, default=None,
                       help="new groups per rolling hour, then the overflow group: N, 0 or 'default'")
    quota.add_argument("--reset", action="store_true", help="back to the defaults, then apply the options given")
    quota.set_defaults(func=cmd_project_quota)
    check = sub.add_parser("worker-check", help="exit 0 if the worker's heartbeat is fresh (exec probe)")
    check.add_argument("--role", choices=["worker", "scheduler"], default="worker", help="which kind of process")
    check.add_argument("--name", default=None, help="one process by name (the exec probe); default: every "
                       "process of that role in the running stack")
    check.add_argument("--local", action="store_true", help="check this process's liveness file "
                       "(FAULTLINE_LIVENESS_DIR) instead of Redis: the Kubernetes probe, which a Redis outage "
                       "must not fail")
    check.set_defaults(func=cmd_worker_check)
    dlq = sub.add_parser("dlq", help="dead letters: tasks that failed for good (of the running stack)")
    dsub = dlq.add_subparsers(dest="action", required=True, parser_class=_Parser)
    dlist = dsub.add_parser("list", help="newest first")
    dlist.add_argument("--limit", type=int, default=50, help="how many to show")
    dlist.set_defaults(func=cmd_dlq)
    show = dsub.add_parser("show", help="one dead letter in full")
    show.add_argument("id", help="its task id (from `dlq list`)")
    show.set_defaults(func=cmd_dlq)
    replay = dsub.add_parser("replay", help="put tasks back on the queue (idempotent: nothing counted twice)")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the task id to replay")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(func=cmd_dlq)
    dsub.add_parser("purge", help="delete every dead letter").set_defaults(func=cmd_dlq)
    from faultline import alerts

    alerts.add_parser(sub, _Parser)
    status = sub.add_parser("status", help="processes, ports, queue depth, dead letters, heartbeats")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
