"""Does a 503 from ingest still mean "not counted" when the machine is overloaded? Side by side, code trees.

For each tree (`--tree DIR`, e.g. a checkout of main and this branch), in alternating rounds: one API process
(`python -m faultline api`: gunicorn + uvicorn with uvloop, as deployed) of that tree on a private
redis-server, CPU burners beside it (`--hogs`, the API and the burners all at nice 10: they share what the
machine has left and leave other users' work alone), and `--clients` keep-alive clients posting single
events with unique ids for `--seconds`. Then, per answer, is the event remembered by Redis (core/dedup.py
JobStates)? A 503 whose event is remembered is a lie (counted); a 202 whose event is not, too.

    .venv/bin/python -m loadtest.overload_503 --tree /tmp/main --tree . --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from subprocess import Popen

import httpx

from core.db import repo
from core.db.engine import make_engine
from core.db.migrate import migrate
from core.dedup import JobStates
from core.keys import Keys
from core.redis import make_redis
from core.settings import Settings
from faultline.services import RedisServer, free_port

KEY = "overload-ingest-key-0123456789"


async def post_for(url: str, seconds: float, clients: int) -> list[tuple[int, str]]:
    answers: list[tuple[int, str]] = []
    end = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, headers={"X-Faultline-Key": KEY}, timeout=10) as c:

        async def client(i: int) -> None:
            while time.monotonic() < end:
                eid = uuid.uuid4().hex
                try:
                    r = await c.post("/errors/log", json={"message": f"KeyError: k{i % 7}", "event_id": eid})
                    answers.append((r.status_code, eid))
                except httpx.HTTPError as exc:
                    answers.append((0, eid))
                    if len(answers) < 3:
                        print("transport error:", repr(exc), file=sys.stderr)

        await asyncio.gather(*(client(i) for i in range(clients)))
    return answers


def start(tree: Path, settings: Settings, port: int, tmp: Path, hogs: int) -> tuple[Popen, list[Popen]]:
    """The API of `tree`, once it answers, then the burners (an API starting at nice 10 beside them took
    longer than a round)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE_")},
           **settings.to_env_map(skip=("node_name",)), "PYTHONPATH": str(tree)}
    nice = ["nice", "-n", "10"]
    with open(tmp / "api.log", "ab") as log:
        api = Popen([*nice, sys.executable, "-m", "faultline", "api", "--port", str(port)], cwd=tree, env=env,
                    stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(150):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).raise_for_status()
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    return api, [Popen([*nice, sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]


def stop(api: Popen, hogs: list[Popen]) -> None:
    for p in hogs:
        p.kill()
    api.terminate()
    api.wait(timeout=30)


async def one_round(tree: Path, args: argparse.Namespace, tmp: Path) -> Counter[str]:
    redis = RedisServer(tmp / f"redis-{uuid.uuid4().hex[:6]}", appendonly=False).start()
    port = free_port()
    settings = Settings(redis_url=redis.url, database_url=f"sqlite+aiosqlite:///{tmp}/{uuid.uuid4().hex[:6]}.db",
                        rate_limit_enabled=False, admin_token="overload-admin-token")
    await migrate(settings)
    engine = make_engine(settings)
    async with engine.begin() as conn:
        pid, _ = await repo.ensure_project(conn, "load", KEY)
    await engine.dispose()
    api, hogs = await asyncio.to_thread(start, tree, settings, port, tmp, args.hogs)
    try:
        answers = await post_for(f"http://127.0.0.1:{port}", args.seconds, args.clients)
        await asyncio.sleep(2)  # whatever is on its way reaches Redis
        async with httpx.AsyncClient(timeout=30) as c:  # the API's own outcome counts (events)
            text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        await asyncio.to_thread(stop, api, hogs)
    states = JobStates(make_redis(settings, timeout=5), Keys.from_settings(settings), settings)
    tally: Counter[str] = Counter()
    for i in range(0, len(answers), 500):
        part = answers[i:i + 500]
        for (status, _), state in zip(part, await states.get([(pid, e) for _, e in part]), strict=True):
            tally[f"{status}"] += 1
            if status == 503 and state is not None:
                tally["503 counted"] += 1
            if status == 202 and state is None:
                tally["202 not counted"] += 1
    redis.stop()
    for line in text.splitlines():
        if line.startswith("faultline_events_total{") and 'outcome="accepted"' not in line:
            tally[line.split('"')[1]] = int(float(line.split()[-1]))
    return tally


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", type=Path, required=True, help="code tree to run the API from")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--hogs", type=int, default=10, help="CPU burners beside the API (load ~ hogs + 2)")
    ap.add_argument("--clients", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for tree in args.tree:
                tally = await one_round(tree.resolve(), args, Path(tmp))
                load = os.getloadavg()[0]
                print(f"round {r} {tree}: load {load:.1f} {dict(sorted(tally.items()))}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
