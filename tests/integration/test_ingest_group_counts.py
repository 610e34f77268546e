"""ingest.lua adds a call's counts once per group (not once per event): every event still gets the answer
single increments would have given it (first sighting or not), and the counts, hour buckets, dirty set
and new-group notes are those of one increment per event."""

from __future__ import annotations

from typing import Any

from core.counts import split_deltas
from core.events import LogErrorIn
from core.keys import Keys
from tests.integration.conftest import api_client, prepare


async def test_events_of_one_call_are_counted_per_group(make_settings: Any) -> None:
    settings = make_settings(redis_shards=1)
    pid = await prepare(settings)
    keys = Keys.from_settings(settings)
    async with api_client(settings) as c:
        ingestor = c._transport.app.state.ingestor  # type: ignore[attr-defined]
        redis = ingestor.runtime.redis
        await ingestor.ingest(pid, [LogErrorIn(message="seen before", fingerprint="c")])
        names = ["a", "b", "a", "a", "c", "b"]
        out = await ingestor.ingest(pid, [LogErrorIn(message=f"m{i}", fingerprint=f) for i, f in enumerate(names)])
        later = await ingestor.ingest(pid, [LogErrorIn(message="again", fingerprint="a")])
        live = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.live_counts)).items()}
        groups, hours = split_deltas(await redis.hgetall(keys.pending_counts))
        new = {m.decode() for m in await redis.smembers(keys.live_new)}
        dirty = {m.decode() for m in await redis.smembers(keys.feed_dirty)}
        summaries = await redis.hgetall(keys.feed_groups)
    fp = {n: a.fingerprint for n, a in zip(names, out, strict=True)}
    assert [a.first_seen for a in out] == [True, True, False, False, False, False]
    assert not later[0].first_seen and not any(a.duplicate for a in [*out, *later])
    assert live == {fp["a"]: 4, fp["b"]: 2, fp["c"]: 2} and groups == live
    assert sorted(hours.values()) == [2, 2, 4] and {f for _, f, _ in hours} == set(live)
    assert new == dirty == set(live)
    assert b'"message":"m0"' in summaries[fp["a"].encode()]  # the group's first event is its summary
