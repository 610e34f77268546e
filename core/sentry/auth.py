"""Where a Sentry SDK puts its key, and the DSN that tells an SDK where we are.

An SDK authenticates with its DSN's public key, sent as `X-Sentry-Auth: Sentry sentry_key=K, ...`,
`Authorization: Sentry sentry_key=K, ...`, the `sentry_key` query parameter, or (browser tunnels, envelopes
posted without headers) the `dsn` in the envelope header. All that are present must name the same key.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit


class AuthError(Exception):
    """401/403 with a reason that never repeats the key (keys are secrets; error bodies end up in logs)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def key_from_auth_header(value: str | None) -> str | None:
    """`Sentry sentry_key=K, sentry_version=7, sentry_client=x/1` -> K (None when absent or not Sentry)."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "sentry":
        return None
    for part in rest.split(","):
        name, _, val = part.strip().partition("=")
        if name.strip().lower() == "sentry_key":
            return val.strip() or None
    return None


def parse_dsn(dsn: str) -> tuple[str | None, str | None]:
    """`https://KEY[:secret]@host[:port]/[path/]PROJECT_ID` -> (KEY, PROJECT_ID); (None, None) if malformed."""
    try:
        parts = urlsplit(dsn.strip())
    except ValueError:
        return None, None
    if parts.scheme not in ("http", "https") or not parts.username:
        return None, None
    project = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return parts.username, project or None


def dsn_for(base_url: str, key: str, project_id: int) -> str:
    """The DSN an SDK is configured with: `http://KEY@host:port/PROJECT_ID` (base_url = our public URL,
    e.g. http://127.0.0.1:8080; a path prefix is kept, as Sentry does for self-hosted installs)."""
    parts = urlsplit(base_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{quote(key, safe='')}@{host}{parts.path}/{project_id}"


def agreed_key(candidates: list[str | None]) -> str:
    """The one key every given place names; AuthError when none is given or two disagree."""
    given = {c for c in candidates if c}
    if not given:
        raise AuthError(401, "missing_key", "send the DSN's public key: X-Sentry-Auth: Sentry sentry_key=<key>, "
                        "the sentry_key query parameter, or the envelope header's dsn")
    if len(given) > 1:
        raise AuthError(401, "conflicting_keys", "the request names more than one Sentry key")
    return given.pop()
