"""gunicorn worker class for API nodes.

uvicorn_worker.UvicornWorker does not pass gunicorn's graceful_timeout to uvicorn, so gunicorn's SIGKILL
could land before the lifespan shutdown ran; here uvicorn's own graceful timeout is set just below it.
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on",
                                     "access_log": False, "timeout_keep_alive": 5}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        graceful = float(self.cfg.graceful_timeout)
        self.config.timeout_graceful_shutdown = max(1, int(graceful) - 2)
