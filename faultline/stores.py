"""The stack's stores: Redis (one server, a Sentinel set or a cluster) and the database (SQLite, one MariaDB
or a 3-node Galera), started first and stopped last. faultline/stack.py adds the Python processes and nginx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from core.settings import sqlite_url
from faultline.galera import GaleraCluster
from faultline.mariadb import MariaDBServer
from faultline.redis_sentinel import LocalRedisSentinel
from faultline.redis_topology import LocalRedisCluster
from faultline.services import RedisServer, Supervised


class StoreConfig(Protocol):
    redis: str  # single | sentinel | cluster
    redis_password: str
    db: str  # sqlite | mariadb | galera | a SQLAlchemy URL
    db_password: str


class Stores:
    def __init__(self, config: StoreConfig, base: Path) -> None:
        self.store_cfg = config
        self.store_base = base
        self.redis: RedisServer | None = None  # the one server of `--redis single`
        self.redis_set: LocalRedisCluster | LocalRedisSentinel | None = None  # or a sentinel/cluster set
        self.mariadb: MariaDBServer | None = None
        self.galera: GaleraCluster | None = None
        self.database_url = ""

    def start_stores(self) -> None:
        cfg, base = self.store_cfg, self.store_base
        password = cfg.redis_password or None
        if cfg.redis == "cluster":
            self.redis_set = LocalRedisCluster(base / "redis-cluster", password).start()
        elif cfg.redis == "sentinel":
            self.redis_set = LocalRedisSentinel(base / "redis-sentinel", password).start()
        else:
            self.redis = RedisServer(base / "redis", password=password).start()
        self.database_url = self._database()

    def _database(self) -> str:
        cfg, base = self.store_cfg, self.store_base
        if cfg.db == "sqlite":
            return sqlite_url(base)
        if cfg.db == "mariadb":
            self.mariadb = MariaDBServer(base / "mariadb").start()
            return self.mariadb.create_database("faultline", password=cfg.db_password or None)
        if cfg.db == "galera":
            self.galera = GaleraCluster(base / "galera", keep_data=True).start()
            return self.galera.create_database("faultline", password=cfg.db_password or None)
        return cfg.db

    @property
    def has_redis(self) -> bool:
        return self.redis is not None or self.redis_set is not None

    @property
    def redis_url(self) -> str:
        if self.redis_set is not None:
            return self.redis_set.url
        assert self.redis is not None
        return self.redis.url

    def redis_members(self) -> list[tuple[Supervised, str]]:
        """The Redis processes the supervisor watches, with their log names."""
        if self.redis_set is not None:
            return self.redis_set.members()
        return [(self.redis, "redis")] if self.redis is not None else []

    def servers(self) -> list[tuple[str, Supervised]]:
        """The stores the supervisor restarts on their own port and data (nginx apart: it is re-rendered)."""
        found: list[tuple[str, Supervised | None]] = [(name, server) for server, name in self.redis_members()]
        found.append(("mariadb", self.mariadb))
        found += [(f"galera-{node.name}", node) for node in (self.galera.nodes if self.galera else [])]
        return [(name, server) for name, server in found if server is not None]

    def stop_stores(self) -> None:
        for store in (self.redis, self.redis_set, self.mariadb, self.galera):
            if store is not None:
                store.stop()
