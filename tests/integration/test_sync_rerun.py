"""A count sync whose call ran on Redis but whose reply was lost, then re-sent by redis-py: nothing lost.

How issue 12's CLUSTER FAILOVER test lost counts (5 of 50 events in 2 groups, once 56): the scheduler's
client (3 retries, workers/lifecycle.py) re-sent flush_start after the failover closed its connection
under the call; the first run had renamed the pending hash aside as batch B, ingest counted into a fresh
pending hash meanwhile, and the re-sent run (same batch id B) RENAMEd that over B: the first run's deltas
were gone. Any client re-send does it (Sentinel's demotion kills the old primary's clients, a reply past
the socket timeout), so this is shown on one real server through a proxy that loses one reply."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select

from core.db.engine import make_engine
from core.db.migrate import migrate
from core.db.models import ErrorGroup
from core.keys import Keys
from core.redis import make_redis, script_source
from faultline.services import RedisServer
from tests.integration.reply_cutter import ReplyCutter
from workers.sync import sync_counts


async def test_flush_start_sent_twice_loses_no_batch(make_settings: Any, redis_server: RedisServer) -> None:
    direct_settings = make_settings()
    direct = make_redis(direct_settings, timeout=5)
    keys = Keys.from_settings(direct_settings)
    shard = keys.for_fingerprint("fp-a")

    async def ingest_meanwhile() -> None:  # counted after the lost run, before redis-py sends it again
        await direct.hincrby(shard.pending_counts, "fp-a", 2)  # type: ignore[misc]

    sha = hashlib.sha1(script_source("flush_start").encode()).hexdigest().encode()
    await direct.script_load(script_source("flush_start"))  # else the lost reply is a NOSCRIPT (ran nothing)
    cutter = await ReplyCutter(redis_server.port, sha, after_cut=ingest_meanwhile).start()
    settings = make_settings(redis_url=f"redis://127.0.0.1:{cutter.port}/0")
    await migrate(settings)
    # the scheduler's client: the re-send on a connection error is redis-py's, as in the scheduler
    redis = make_redis(settings, timeout=5, retries=3)
    engine = make_engine(settings)
    try:
        await direct.hincrby(shard.pending_counts, "fp-a", 5)  # type: ignore[misc]
        await sync_counts(redis, engine, keys, settings)
        assert cutter.cut == 1 and cutter.calls >= 2, "the reply was not lost, or the call not sent again"
        await sync_counts(redis, engine, keys, settings)  # whatever the first sync left pending
        async with engine.connect() as conn:
            count = (await conn.execute(select(ErrorGroup.count).where(ErrorGroup.fingerprint == "fp-a"))).scalar()
        assert count == 7, f"{count} of 7 events counted"
        assert not await direct.exists(shard.pending_counts, shard.flushing_batches)
    finally:
        await redis.aclose()
        await direct.aclose()
        await engine.dispose()
        await cutter.stop()
