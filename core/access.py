"""Who may read what: the admin token sees everything, the dashboard token is read-only and may be
limited to some projects (FAULTLINE_DASHBOARD_PROJECTS). Shared by the REST read API and the live feed.
Also how ingest keys are hashed: the DB and Redis hold only hashes, never a key."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from redis.asyncio import Redis

from core.redis import replace_hash
from core.settings import Settings


@dataclass(frozen=True)
class Principal:
    role: Literal["admin", "dashboard"]
    projects: frozenset[int] | None  # None = every project

    def may_see(self, project_id: int) -> bool:
        return self.projects is None or project_id in self.projects


def _same(a: str, b: str | None) -> bool:
    # constant time: the comparison must not tell an attacker how many leading characters were right
    return bool(b) and hmac.compare_digest(a.encode(), (b or "").encode())


def dashboard_scope(settings: Settings) -> frozenset[int] | None:
    ids = [part.strip() for part in settings.dashboard_projects.split(",") if part.strip()]
    return frozenset(int(i) for i in ids) if ids else None


def authenticate(settings: Settings, token: str | None) -> Principal | None:
    if not token:
        return None
    if _same(token, settings.admin_token):
        return Principal("admin", None)
    if _same(token, settings.dashboard_token):
        return Principal("dashboard", dashboard_scope(settings))
    return None


def bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# --- ingest keys: stored and looked up by hash only ---------------------------------------------------
# A key is a random token (>= 128 bits), so a plain SHA-256 is enough: no salt or slow hash is needed
# against guessing, and a fast hash keeps the lookup on the ingest path cheap (~1 µs).
def new_ingest_key() -> str:
    """128 random bits as 32 hex digits: the Sentry SDKs' DSN parsers refuse some URL-safe characters ('-'
    fails @sentry/node's pattern), and a key is the user part of a DSN."""
    return secrets.token_hex(16)


@lru_cache(maxsize=1024)
def key_hash(key: str) -> str:
    # cached: every ingest request hashes its key (twice with the rate limiter on), and a node sees few keys;
    # bounded, so a client inventing keys only churns it
    return hashlib.sha256(key.encode()).hexdigest()


def key_hint(key: str) -> str:
    """The first 4 characters, shown by `faultline project list` to tell keys apart (not enough to guess)."""
    return key[:4]


async def publish_keys(redis: Redis, projects_hash: str, by_hash: dict[str, int]) -> None:
    """Make the Redis copy (key hash -> project id) exactly the DB's, atomically: revoked keys leave it."""
    await replace_hash(redis, projects_hash, {h: str(pid) for h, pid in by_hash.items()})
