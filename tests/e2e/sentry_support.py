"""What the Sentry e2e tests share: the project id of a stack's key, extra projects, reading groups, node RSS."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
from collections import Counter
from typing import Any

import psutil
import redis

from core.access import key_hash
from core.db import repo
from core.db.engine import make_engine
from core.keys import Keys
from core.sentry.auth import dsn_for
from faultline.stack import Stack


def project_of(stack: Stack, key: str) -> int:
    settings = stack.settings()
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return int(client.hget(Keys.from_settings(settings).projects, key_hash(key)))  # type: ignore[arg-type]
    finally:
        client.close()


def add_project(stack: Stack, name: str) -> tuple[int, str]:
    """Another project (id, key), created the way `faultline project create` does: DB row + Redis copy."""
    key = secrets.token_hex(16)  # DSN-safe: the JS SDK refuses keys with - or _ (its DSN regex is \w+)
    settings = stack.settings()

    async def create() -> int:
        engine = make_engine(settings)
        try:
            async with engine.begin() as conn:
                pid, _ = await repo.ensure_project(conn, name, key)
        finally:
            await engine.dispose()
        return pid

    pid = asyncio.run(create())
    client = redis.Redis.from_url(settings.redis_url)
    client.hset(Keys.from_settings(settings).projects, key_hash(key), str(pid))  # hashes only
    client.close()
    return pid, key


def dsn(stack: Stack, key: str | None = None) -> str:
    key = key or stack.ingest_key
    return dsn_for(stack.url, key, project_of(stack, key))


def get_json(stack: Stack, path: str) -> Any:
    req = urllib.request.Request(f"{stack.url}{path}", headers={"Authorization": f"Bearer {stack.admin_token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def groups(stack: Stack, service: str, project: int) -> list[dict[str, Any]]:
    return get_json(stack, f"/errors?service={service}&project_id={project}&limit=500")["items"]  # type: ignore[no-any-return]


def group_counts(stack: Stack, service: str, project: int) -> Counter[str]:
    """error message prefix (the exception type, or the message) -> count, over the service's groups."""
    return Counter({g["message"].split(":")[0] + "|" + g["fingerprint"]: g["count"]
                    for g in groups(stack, service, project)})


def nodes_rss(stack: Stack) -> int:
    """Resident memory of every API node process (and its children), in bytes."""
    total = 0
    for node in stack.nodes:
        if node.pid is None:
            continue
        proc = psutil.Process(node.pid)
        total += sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    return total
