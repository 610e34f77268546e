"""gunicorn worker class for API nodes, with the SIGTERM drain sequence (health/drain.py).

uvicorn on SIGTERM closes its listeners at once, which would refuse requests a load balancer still sends
during the seconds it needs to notice the node is going. So the server here intercepts the first SIGTERM:
readiness turns 503 immediately, the node keeps serving for FAULTLINE_DRAIN_DELAY, and only then runs
uvicorn's shutdown (listeners closed, clients told to reconnect elsewhere, in-flight requests finished),
then the lifespan shutdown (flush, pools closed). Each phase is logged with its duration.

uvicorn_worker.UvicornWorker does not pass gunicorn's graceful_timeout to uvicorn, so gunicorn's SIGKILL
could land before the lifespan shutdown ran; here the in-flight wait is bounded by what is left of
FAULTLINE_SHUTDOWN_TIMEOUT, which gunicorn_conf keeps 3 s below graceful_timeout.
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

from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from core import runtime
from health.drain import CLOSING, Drain

log = logging.getLogger("faultline.drain")


class DrainingServer(Server):
    drain: Drain | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        rt = runtime.current()
        if sig != signal.SIGTERM or rt is None or not self.started or self.should_exit:
            super().handle_exit(sig, frame)  # SIGINT/SIGQUIT, or not up yet: uvicorn's immediate shutdown
            return
        if self.drain is not None:
            return  # already draining: a repeated SIGTERM changes nothing
        self.drain = Drain(rt)
        self.drain.begin()  # readiness is 503 from here, before the loop even wakes up
        log.info("SIGTERM: draining for %.1fs while still serving", rt.settings.drain_delay)
        # A signal handler runs between two bytecodes of the loop: hand the async part to the loop safely.
        asyncio.get_running_loop().call_soon_threadsafe(self._start_hold)

    def _start_hold(self) -> None:
        asyncio.ensure_future(self._hold_then_exit())

    async def _hold_then_exit(self) -> None:
        assert self.drain is not None
        await self.drain.hold()
        self.should_exit = True  # main_loop notices within 0.1 s and calls shutdown()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's Server.shutdown, split into logged phases, with the reconnect hook before the
        connections are closed (a websocket that is still open then can be told where to go)."""
        rt = runtime.current()
        drain = self.drain = self.drain or (Drain(rt) if rt else None)
        if drain is None or rt is None:
            await super().shutdown(sockets)
            return
        with rt.phase("stop accepting"):
            drain.stop_accepting()
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()
        await rt.reconnect_clients()
        with rt.phase("finish in-flight"):
            for connection in list(self.server_state.connections):
                connection.shutdown()
            await asyncio.sleep(0.1)
            budget = drain.budget()
            try:
                await asyncio.wait_for(self._wait_tasks_to_complete(), timeout=budget)
            except TimeoutError:
                log.error("in-flight requests still running after %.1fs: cancelling %d", budget,
                          len(self.server_state.tasks))
                for task in self.server_state.tasks:
                    task.cancel(msg="drain budget exceeded")
        drain.move(CLOSING)
        if not self.force_exit:
            await self.lifespan.shutdown()  # api lifespan -> Runtime.close(): flush, close pools
        drain.finish()
        self._captured_signals.clear()  # handled: do not re-raise SIGTERM at exit (exit code 0)


class Worker(UvicornWorker):
    # timeout_keep_alive comes from gunicorn's `keepalive` (gunicorn_conf: FAULTLINE_KEEPALIVE_TIMEOUT)
    CONFIG_KWARGS: dict[str, Any] = {"loop": "uvloop", "http": "httptools", "lifespan": "on",
                                     "access_log": False}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        logging.basicConfig(level=os.environ.get("FAULTLINE_LOG_LEVEL", "INFO").upper(), stream=sys.stdout,
                            format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
        graceful = float(self.cfg.graceful_timeout)
        # uvicorn's own bound, used only on the non-drain path (SIGINT/SIGQUIT)
        self.config.timeout_graceful_shutdown = max(1, int(graceful) - 2)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = DrainingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            from gunicorn.arbiter import Arbiter

            sys.exit(Arbiter.WORKER_BOOT_ERROR)
