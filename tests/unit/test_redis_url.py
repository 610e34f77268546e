"""FAULTLINE_REDIS_URL kinds: the factory's parse of Sentinel and Cluster URLs, and refusals."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.redisurl import parse_url
from core.settings import Settings


def test_cluster_url_lists_seed_nodes_and_password() -> None:
    t = parse_url("redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert (t.kind, t.hosts, t.password, t.username) == (
        "cluster", [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)], "s@cret", None)


def test_sentinel_url_names_the_service_and_db() -> None:
    t = parse_url("redis+sentinel://u:pw@h1:26379,h2:26380/mymaster/2")
    assert (t.kind, t.hosts, t.service, t.db, t.username, t.password, t.sentinel_password) == (
        "sentinel", [("h1", 26379), ("h2", 26380)], "mymaster", 2, "u", "pw", "pw")


def test_single_server_urls_are_left_to_redis_py() -> None:
    assert parse_url("redis://:pw@127.0.0.1:6379/0").kind == "single"
    assert parse_url("unix:///run/redis.sock").kind == "single"


@pytest.mark.parametrize("url", ["redis+sentinel://h1:26379", "redis+cluster://h1", "redis+cluster://h1:x"])
def test_incomplete_urls_are_refused_with_a_reason(url: str) -> None:
    with pytest.raises(ValueError, match="redis"):
        parse_url(url)


def test_settings_refuse_an_unknown_scheme() -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="memcached://127.0.0.1:11211")


def test_key_shards_default_by_kind() -> None:
    assert Settings(redis_url="redis://127.0.0.1:6379/0").key_shards == 1
    assert Settings(redis_url="redis+sentinel://h1:1/s").key_shards == 1
    assert Settings(redis_url="redis+cluster://h1:7000").key_shards == 16
    assert Settings(redis_url="redis+cluster://h1:7000", redis_shards=4).key_shards == 4


def test_replace_hash_writes_again_when_a_failover_lost_the_side_key() -> None:
    """The side key written to a primary that died before replicating it: RENAME answers "no such key" on
    the promoted replica. replace_hash writes it again there instead of failing its caller (a worker's
    heartbeat gave up on it as "not a dependency error")."""
    import asyncio

    from redis.exceptions import ResponseError

    from core.redis import replace_hash

    class Pipe:
        def __init__(self, store: dict[str, dict[str, str]]) -> None:
            self.store = store
            self.ops: list[tuple[str, dict[str, str]]] = []

        def hset(self, key: str, mapping: dict[str, str]) -> None:
            self.ops.append((key, mapping))

        def expire(self, key: str, ttl: int) -> None:
            pass

        async def execute(self) -> None:
            for key, mapping in self.ops:
                self.store[key] = dict(mapping)

    class FailoverRedis:
        def __init__(self) -> None:
            self.store: dict[str, dict[str, str]] = {}
            self.renames = 0

        def pipeline(self, transaction: bool = False) -> Pipe:
            return Pipe(self.store)

        async def rename(self, src: str, dst: str) -> None:
            self.renames += 1
            if self.renames == 1:  # the failover: the side key is gone
                self.store.pop(src)
                raise ResponseError("no such key")
            self.store[dst] = self.store.pop(src)

    redis = FailoverRedis()
    asyncio.run(replace_hash(redis, "beat", {"pid": "1"}, ttl=20))  # type: ignore[arg-type]
    assert redis.store == {"beat": {"pid": "1"}} and redis.renames == 2
