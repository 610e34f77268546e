"""gunicorn worker class for API nodes, running the SIGTERM drain (core/drain.py) around uvicorn's shutdown.

uvicorn on SIGTERM closes its listeners at once, which would refuse requests a load balancer still sends
during the seconds it needs to notice the node is going. So the server here intercepts the first SIGTERM:
readiness turns 503 immediately, the node keeps serving for FAULTLINE_DRAIN_DELAY, and only then lets
uvicorn's own shutdown run (connections finished, then the lifespan shutdown: flush, pools closed) — with
the listener closed and clients told to reconnect elsewhere just before, and the in-flight wait bounded by
what is left of FAULTLINE_SHUTDOWN_TIMEOUT (gunicorn_conf keeps graceful_timeout 3 s above it, so gunicorn's
SIGKILL never lands before the lifespan shutdown ran).

Only public uvicorn API is used on the Server (handle_exit, should_exit, servers, config, shutdown). The
gunicorn worker class offers no public way to choose the Server class, so `_serve` is overridden: the
private names touched are listed in UVICORN_WORKER_PRIVATE, the versions are pinned in pyproject.toml, and
tests/unit/test_uvicorn_private_api.py fails if a new version drops them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from core.drain import Drain

log = logging.getLogger("faultline.drain")
# uvicorn_worker.UvicornWorker's private methods this module overrides or calls.
UVICORN_WORKER_PRIVATE = ("_serve", "_install_sigquit_handler")


class DrainingServer(Server):
    def __init__(self, config: Config, drain: Drain | None) -> None:
        super().__init__(config=config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = self.drain
        if sig != signal.SIGTERM or drain is None or not self.started or self.should_exit:
            super().handle_exit(sig, frame)  # SIGINT/SIGQUIT, or not up yet: uvicorn's immediate shutdown
            return
        # Not passed on to uvicorn: it would re-raise SIGTERM at exit, and the exit code would not be 0.
        if not drain.begin():
            return  # already draining: a repeated SIGTERM changes nothing
        log.info("SIGTERM: draining for %.1fs while still serving", drain.settings.drain_delay)
        # A signal handler runs between two bytecodes of the loop: hand the async part to the loop safely.
        asyncio.get_running_loop().call_soon_threadsafe(self._start_hold, drain)

    def _start_hold(self, drain: Drain) -> None:
        asyncio.ensure_future(self._hold_then_exit(drain))

    async def _hold_then_exit(self, drain: Drain) -> None:
        await drain.hold()
        self.should_exit = True  # main_loop notices within 0.1 s and calls shutdown()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the listener and tell clients to reconnect elsewhere while their connections are still
        open, then uvicorn's own shutdown with the in-flight wait bounded by the drain's budget."""
        drain = self.drain
        if drain is None:
            await super().shutdown(sockets)
            return
        with drain.phase("stop accepting"):
            drain.stop_accepting()
            for server in self.servers:
                server.close()  # uvicorn closes them again: a no-op
            for sock in sockets or []:
                sock.close()
        await drain.reconnect_clients()
        self.config.timeout_graceful_shutdown = drain.budget()  # type: ignore[assignment]  # float is fine
        await super().shutdown([])  # ... -> lifespan shutdown -> Drain.close: flush, pools closed
        drain.finish()


class Worker(UvicornWorker):
    # timeout_keep_alive comes from gunicorn's `keepalive` (gunicorn_conf: FAULTLINE_KEEPALIVE_TIMEOUT).
    # proxy_headers off: the app reads X-Forwarded-For itself, from FAULTLINE_TRUSTED_PROXIES only
    # (api/clientip.py), and must see its real socket peer. uvicorn's own rewrite (on by default, for
    # peers at 127.0.0.1) replaced the peer with the forwarded client whenever nginx ran on the same host,
    # so a node no longer recognised nginx's X-Edge-Request-ID and a POST nginx replayed after an upstream
    # timeout counted twice for any client not on 127.0.0.1 (tests/e2e/test_edge.py); it also cost a
    # middleware frame per request.
    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on",
                                     "access_log": False, "proxy_headers": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logging.basicConfig(level=os.environ.get("FAULTLINE_LOG_LEVEL", "INFO").upper(), stream=sys.stdout,
                            format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        graceful = float(self.cfg.graceful_timeout)
        # uvicorn's own bound, used only on the non-drain path (SIGINT/SIGQUIT)
        self.config.timeout_graceful_shutdown = max(1, int(graceful) - 2)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        state = getattr(self.wsgi, "state", None)  # the FastAPI app of faultline/asgi.py carries its Drain
        server = DrainingServer(self.config, getattr(state, "drain", None))
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
