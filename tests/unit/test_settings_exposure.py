"""No secret has a default on a listener other machines can reach, in any mode."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import DEV_ADMIN_TOKEN, DEV_INGEST_KEY, Settings, check_project_key, is_local_address

STRONG = "s3cret-" + "x" * 24


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "api.example.internal"])
@pytest.mark.parametrize("env", ["development", "production"])
def test_reachable_listener_refuses_default_or_missing_admin_token(host: str, env: str) -> None:
    with pytest.raises(ValidationError, match="ADMIN_TOKEN"):
        Settings(env=env, bind_host=host)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="ADMIN_TOKEN"):
        Settings(env=env, bind_host=host, admin_token=DEV_ADMIN_TOKEN)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="INGEST_KEY"):
        Settings(env=env, bind_host=host, admin_token=STRONG, ingest_key=DEV_INGEST_KEY)  # type: ignore[arg-type]
    assert Settings(env=env, bind_host=host, admin_token=STRONG).admin_token == STRONG  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.9", "::1", "[::1]", "localhost", "unix:/run/fl.sock"])
def test_loopback_listener_keeps_the_development_default(host: str) -> None:
    assert is_local_address(host)
    assert Settings(env="development", bind_host=host).admin_token == DEV_ADMIN_TOKEN


def test_bind_host_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAULTLINE_BIND_HOST", "0.0.0.0")
    monkeypatch.delenv("FAULTLINE_ADMIN_TOKEN", raising=False)
    with pytest.raises(ValidationError, match=r"0\.0\.0\.0"):
        Settings()
    monkeypatch.setenv("FAULTLINE_ADMIN_TOKEN", STRONG)
    assert Settings().bind_host == "0.0.0.0"


@pytest.mark.parametrize("key", ["", "short", "a" * 15, DEV_INGEST_KEY, DEV_ADMIN_TOKEN])
def test_production_refuses_short_or_development_project_keys(key: str) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        check_project_key(Settings(env="production", admin_token=STRONG), key)
    check_project_key(Settings(env="development"), key)  # local development: any key


def test_production_accepts_a_long_project_key() -> None:
    check_project_key(Settings(env="production", admin_token=STRONG), "k" * 16)
