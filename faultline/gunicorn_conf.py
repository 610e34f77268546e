"""gunicorn settings for an API node (`faultline api`)."""

from __future__ import annotations

import os
from typing import Any

worker_class = "faultline.uvicorn_worker.Worker"
# Above FAULTLINE_SHUTDOWN_TIMEOUT so the app's own drain sequence always finishes first.
graceful_timeout = int(float(os.environ.get("FAULTLINE_SHUTDOWN_TIMEOUT", "25"))) + 3
keepalive = 5
accesslog = None
errorlog = "-"
control_socket_disable = True
loglevel = os.environ.get("FAULTLINE_LOG_LEVEL", "info")


def on_starting(server: Any) -> None:
    """Empty the multiprocess metrics dir: in Kubernetes it is an emptyDir that survives a container
    restart, and files of dead processes would be summed into /metrics for ever."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.path.isdir(path):
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
