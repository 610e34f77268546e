"""CLI bodies of `faultline project|dlq|status`, acting on the stack running here (faultline/stackfile.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from core import access, dlq, heartbeat
from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.keys import Keys
from core.queue import queue_figures
from core.redis import as_str, make_redis
from core.sentry.auth import dsn_for
from core.settings import Settings, check_project_key
from faultline.bootstrap import publish
from faultline.stackfile import cli_settings, data_dir, read

T = TypeVar("T")
MIN_KEY_LENGTH = 16  # a key is a bearer secret: 16+ characters of a random token, like the settings demand


async def _in_db(settings: Settings, body: Callable[[Any], Awaitable[T]]) -> T:
    await migrate(settings)
    engine = make_engine(settings)
    try:
        async with engine.begin() as conn:
            return await body(conn)
    finally:
        await engine.dispose()


async def _project(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        rows = await _in_db(settings, repo.list_projects)
        print(f"{'id':>4}  {'name':<24} {'created':<20} keys")
        for pid, name, created, hints in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(created))
            print(f"{pid:>4}  {name:<24} {when:<20} {', '.join(h + '…' for h in hints) or '(none)'}")
        return 0

    async def find(conn: Any) -> int:
        pid = await repo.project_id(conn, args.name)
        if pid is None:
            raise SystemExit(f"no project named {args.name!r} (see `faultline project list`)")
        return pid

    key = getattr(args, "key", None) or access.new_ingest_key()
    if len(key) < MIN_KEY_LENGTH:
        raise SystemExit(f"--key must be at least {MIN_KEY_LENGTH} characters")
    try:
        check_project_key(settings, key)  # production: no development keys
    except ValueError as exc:
        raise SystemExit(f"--key: {exc}") from None
    pid = 0
    if args.action == "create":
        async def create(conn: Any) -> None:
            if await repo.project_id(conn, args.name) is not None:
                raise SystemExit(f"project {args.name!r} exists; `faultline project rotate-key {args.name}` "
                                 "gives it a new key")
            try:
                nonlocal pid
                pid, _ = await repo.ensure_project(conn, args.name, key)
            except repo.KeyConflict as exc:
                raise SystemExit(f"--key: {exc}") from None
        await _in_db(settings, create)
    elif args.action == "rotate-key":
        async def rotate(conn: Any) -> int:
            nonlocal pid
            pid = await find(conn)
            await repo.add_key(conn, pid, key)
            return await repo.revoke_keys_except(conn, pid, key) if args.revoke_old else 0
        revoked = await _in_db(settings, rotate)
        if revoked:
            print(f"revoked {revoked} old key(s)", file=sys.stderr)
    elif args.action == "delete":
        async def remove(conn: Any) -> None:
            await repo.delete_project(conn, await find(conn))
        await _in_db(settings, remove)
    # The DB committed; now the copy the nodes read. Until this succeeds the new key is not usable:
    # fail loudly rather than print a key that answers 401.
    await publish(settings)
    if args.action == "delete":
        print(f"deleted project {args.name!r}; its keys no longer work")
    else:
        print(key)  # stdout: the key alone, for scripts; the DSN for Sentry SDKs on stderr
        info = read(data_dir()) or {}
        print(f"DSN for Sentry SDKs: {dsn_for(info.get('url') or 'http://127.0.0.1:8080', key, pid)}",
              file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_project(args, cli_settings()))


async def _with_redis(body: Callable[[Redis, Keys, Settings], Awaitable[int]]) -> int:
    settings = cli_settings()
    redis = make_redis(settings, timeout=5)
    try:
        return await body(redis, Keys.from_settings(settings), settings)
    finally:
        await redis.aclose()


def run_dlq(args: argparse.Namespace) -> int:
    async def body(redis: Redis, keys: Keys, settings: Settings) -> int:
        if args.action == "list":
            total = await dlq.count(redis, keys)
            print(f"{total} dead letter(s)")
            for rec in await dlq.page(redis, keys, 0, args.limit):
                s = dlq.summary(rec)
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["failed_at"] or 0))
                print(f"{s['task_id']}  {when}  attempts={s['attempts']}  events={s['events']}  {s['error']}")
            return 0
        if args.action == "show":
            one = await dlq.get(redis, keys, args.id)
            if one is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            print(orjson.dumps({**dlq.summary(one), "message": orjson.loads(one["message"])},
                               option=orjson.OPT_INDENT_2).decode())
            return 0
        if args.action == "replay":
            if args.all:
                print(f"replayed {await dlq.replay_all(redis, keys, settings)} task(s)")
                return 0
            if not await dlq.replay(redis, keys, settings, args.id):
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            print(f"replayed {args.id}")
            return 0
        print(f"purged {await dlq.purge(redis, keys)} dead letter(s)")
        return 0

    return asyncio.run(_with_redis(body))


def run_status(_: argparse.Namespace) -> int:
    info = read(data_dir())

    async def body(redis: Redis, keys: Keys, _: Settings) -> int:
        if info:
            print(f"stack   : {info['url']}  (faultline up pid {info['up_pid']})")
            print(f"{'process':<14}{'pid':>8}{'port':>8}{'restarts':>10}")
            for p in info["processes"]:
                print(f"{p['name']:<14}{p['pid'] or '-':>8}{p['port'] or '-':>8}{p['restarts']:>10}")
        q = await queue_figures(redis, keys)
        print(f"queue   : {q.waiting} in the stream ({keys.shards} shards), {q.retrying} waiting to retry, "
              f"{q.dead} dead letters")
        now = time.time()
        for role in ("worker", "scheduler"):
            async for raw in redis.scan_iter(match=keys.heartbeat_pattern(role), count=200):
                name = as_str(raw).rsplit(":", 1)[-1]
                beat = await heartbeat.read(redis, keys, role, name)
                if beat is None:
                    print(f"beat    : {role} {name}: expired")
                    continue
                if "started" not in beat:  # a beat without progress counters (the scheduler's): when it beat
                    print(f"beat    : {role} {name}: alive, last beat {now - beat['beat']:.1f}s ago")
                    continue
                last = max(beat.get("last_fetch", 0.0), beat.get("last_done", 0.0), beat["started"])
                progress = f", fetched {int(beat.get('fetched', 0))}, written {int(beat.get('written', 0))}"
                print(f"beat    : {role} {name}: last progress {now - last:.1f}s ago{progress}")
        return 0

    return asyncio.run(_with_redis(body))
