"""gunicorn settings for an API node (`faultline api`)."""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

from core import metrics
from core.settings import get_settings

_settings = get_settings()  # the same Settings the app builds: one place for every default
worker_class = "faultline.uvicorn_worker.Worker"
# Above FAULTLINE_SHUTDOWN_TIMEOUT so the app's own drain sequence always finishes first.
graceful_timeout = int(_settings.shutdown_timeout) + 3
# Longer than any proxy's idle upstream keep-alive (core/settings.py keepalive_timeout says why); the uvicorn
# worker takes it from here as its timeout_keep_alive.
keepalive = int(_settings.keepalive_timeout)
accesslog = None
errorlog = "-"
control_socket_disable = True
loglevel = _settings.log_level.lower()


class _AlreadyClosed(logging.Filter):
    """uvicorn closes the listening socket it was handed when it stops; gunicorn then closes its own handle
    of it and logs "Error while closing socket [Errno 9] Bad file descriptor" on every graceful stop. The
    socket is closed either way: the line is noise (other socket errors still get through)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith("Error while closing socket") and "Errno 9" in record.getMessage())


def post_worker_init(worker: Any) -> None:
    """Runs in each worker once its app is built (after the imports and create(), before serving).

    gc.freeze(): the ~180,000 objects of the imported framework and the app move to the permanent generation,
    so the cyclic collector stops re-walking them. Measured on the ingest app driven in-process (make-bench
    payloads, same run): -17 to -27 % CPU per single-event request, -25 % per 100-event batch; py-spy had
    put that collector time on whichever line allocated when a collection fell due. Only served processes
    freeze (not tests that build many apps in one process: what they free later would never be collected)."""
    logging.getLogger("gunicorn.error").addFilter(_AlreadyClosed())
    gc.freeze()


def on_starting(server: Any) -> None:
    """Empty the multiprocess metrics dir: in Kubernetes it is an emptyDir that survives a container
    restart, and files of dead processes would be summed into /metrics for ever."""
    logging.getLogger("gunicorn.error").addFilter(_AlreadyClosed())
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.path.isdir(path):
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))


def when_ready(server: Any) -> None:
    """With FAULTLINE_METRICS_PORT set, the master serves /metrics of all its workers on that side port (the
    app then leaves /metrics off its HTTP port, which an Ingress routes: metrics never go public)."""
    settings = get_settings()
    metrics.serve_metrics(settings.metrics_port, settings.metrics_host)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
