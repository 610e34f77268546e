"""The ASGI app of one API node: FastAPI routes + probes (+ the Socket.IO server around them)."""

from __future__ import annotations

from typing import Any

from api.app import create_app
from core.settings import Settings, get_settings
from health import probes


def create(settings: Settings | None = None) -> Any:
    settings = settings or get_settings()
    app = create_app(settings)
    app.include_router(probes.router)
    return app
