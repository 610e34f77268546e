"""The X-Sentry-Rate-Limits header for a 429 on a Sentry route, for whichever middleware answers it.

Format `<seconds>:<categories>:<scope>[:<reason>]`; empty categories = all. Seconds must be a whole number:
the Python SDK drops the whole header if it sees `60.5`. api/ratelimit.py can call this for every 429
(it returns None off the Sentry routes, so /errors/log answers are unchanged).
"""

from __future__ import annotations

import math
import re

_SENTRY_PATH = re.compile(r"^/api/\d+/(envelope|store)/?$")


def is_sentry_path(path: str) -> bool:
    return _SENTRY_PATH.match(path) is not None


def rate_limits_header(path: str, retry_after_s: float, categories: str = "", scope: str = "key",
                       reason: str = "") -> str | None:
    if not is_sentry_path(path):
        return None
    value = f"{max(1, math.ceil(retry_after_s))}:{categories}:{scope}"
    return f"{value}:{reason}" if reason else value
