"""The stores `faultline up` starts take passwords: Redis requirepass, MariaDB a `faultline` user with a
password and root through the unix socket only. Unauthenticated connections are refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from faultline.mariadb import MariaDBServer
from faultline.services import RedisServer


def test_redis_requires_the_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", password="redis-secret-0123456789").start()
    try:
        # refused at once: redis-py's default retry would re-ask 3 times with backoff (~4 s) before raising
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)).ping()
        assert redis.Redis.from_url(server.url, socket_timeout=5).ping()
        assert "redis-secret" not in " ".join(server.proc.command_parts)  # type: ignore[union-attr]  # not in `ps`
    finally:
        server.stop()


def _tcp(port: int, user: str, password: str | None) -> subprocess.CompletedProcess[str]:
    args = ["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", f"-u{user}", "-N", "-B", "-e", "SELECT 1"]
    if password is not None:
        args.insert(5, f"-p{password}")
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def test_mariadb_user_with_password_and_no_root_over_tcp(tmp_path: Path) -> None:
    server = MariaDBServer(tmp_path / "mariadb").start()
    try:
        url = server.create_database("faultline", password="db-secret-0123456789")
        assert "faultline:db-secret-0123456789@" in url
        assert _tcp(server.port, "faultline", "db-secret-0123456789").returncode == 0
        assert _tcp(server.port, "faultline", None).returncode != 0
        assert _tcp(server.port, "faultline", "wrong-password").returncode != 0
        if os.getuid() == 0:
            assert _tcp(server.port, "root", None).returncode != 0  # root: unix socket only
        # a second start (another `faultline up`) re-keys the user and still manages the server
        server.stop()
        server.start()
        server.create_database("faultline", password="db-secret-rotated-0123")
        assert _tcp(server.port, "faultline", "db-secret-rotated-0123").returncode == 0
        assert _tcp(server.port, "faultline", "db-secret-0123456789").returncode != 0
    finally:
        server.stop()
