"""FAULTLINE_REDIS_URL: its parts, and the blocking client of the CLI and the tools.

Schemes (core/redis.py `make_redis` picks the asyncio client from the same parts):
- `redis://`, `rediss://`, `unix://`: one server, left to redis-py;
- `redis+sentinel://[:password@]h1:p1,h2:p2/service[/db]`: the primary the Sentinels name;
- `redis+cluster://[:password@]h1:p1,h2:p2`: Redis Cluster, from its seed nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

from redis.client import Redis as SyncRedis
from redis.cluster import ClusterNode as SyncNode
from redis.cluster import RedisCluster as SyncCluster
from redis.sentinel import Sentinel as SyncSentinel


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # "single", "sentinel" or "cluster"
    hosts: list[tuple[str, int]]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_url(url: str) -> RedisTarget:
    """The parts of a FAULTLINE_REDIS_URL; a single-server URL is left to redis-py (kind "single")."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+sentinel", "redis+cluster"):
        return RedisTarget("single", [])
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{parts.scheme} URL: bad host:port {item!r}")
        hosts.append((host.strip("[]"), int(port)))
    secret = unquote(password) or None
    if parts.scheme == "redis+cluster":
        return RedisTarget("cluster", hosts, username=unquote(user) or None, password=secret)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs the service name: redis+sentinel://h1:p1,h2:p2/service")
    db = int(path[1]) if len(path) > 1 else 0
    # one password for the data nodes and the Sentinels (`faultline up --redis sentinel` sets both alike)
    return RedisTarget("sentinel", hosts, path[0], db, unquote(user) or None, secret, secret)



def make_sync_redis(url: str, timeout: float = 5.0) -> SyncRedis:
    """A blocking client for the CLI's and the tools' few calls, from the same URL kinds."""
    target = parse_url(url)
    if target.kind == "cluster":
        return cast(SyncRedis, SyncCluster(startup_nodes=[SyncNode(h, p) for h, p in target.hosts],
                                            password=target.password, username=target.username,
                                            socket_timeout=timeout, socket_connect_timeout=timeout))
    if target.kind == "sentinel":
        sentinel = SyncSentinel(target.hosts, sentinel_kwargs={"password": target.sentinel_password,
                                                               "socket_timeout": timeout},
                                password=target.password, username=target.username, socket_timeout=timeout)
        return sentinel.master_for(target.service, db=target.db)
    return SyncRedis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

