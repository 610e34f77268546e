"""The Socket.IO server of an API node: auth on connect, room subscriptions, drain.

Every node runs one, wrapped around FastAPI by socketio.ASGIApp. Nodes share rooms through
AsyncRedisManager (Redis pub/sub): the coalescer (core/feed.py) publishes once, every node delivers to its
own clients. Websocket only: nginx's least_conn has no sticky sessions, and long-polling needs them.

Client protocol:
  connect with auth {"token": ...} (or an `Authorization: Bearer` header): the admin or the dashboard token.
  emit "subscribe" {"rooms": ["project:*" | "project:<id>" | "service:<id>:<svc>", ...]} with an ack:
     {"ok": true, "rooms": [...], "projects": [...], "node": ..., "snapshot": [...]} or {"ok": false, ...}
  emit "unsubscribe" {"rooms": [...]}.
  Limits per client IP (realtime/limits.py): connection attempts and bad-token connects are refused at the
  door (before any handshake), events over their window get {"ok": false, "error": "rate_limited", ...}.
  receive "error:new", "error:count", "error:spike" (core/feed.py), and "feed:reconnect" before a drain:
     the node then closes the socket gracefully, which python-socketio clients treat as final (only a
     dropped transport is retried), so a client told to go reconnects by itself, through the load balancer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import socketio
from redis.asyncio import Redis

from core import access
from core.drain import Drain
from core.feed import FeedCoalescer
from core.keys import Keys
from core.pubsub import ResilientRedisManager, make_manager
from core.runtime import Runtime
from core.settings import Settings
from core.taskstop import cancel_and_wait
from realtime import rooms
from realtime.limits import ResolveIp, SocketLimits

log = logging.getLogger("faultline.realtime")


def _token(auth: Any, environ: dict[str, Any]) -> str | None:
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return auth["token"] or None
    # No token in the query string: it would end up in nginx's access log.
    return access.bearer(environ.get("HTTP_AUTHORIZATION"))


class RealtimeServer:
    def __init__(self, settings: Settings, redis: Redis | None = None, resolve_ip: ResolveIp | None = None) -> None:
        """resolve_ip: who the client is behind trusted proxies (api's ClientIp, injected by faultline/);
        without it, the socket peer."""
        self.settings = settings
        self.limits = SocketLimits(settings, resolve_ip)
        self.keys = Keys.from_settings(settings)
        self.redis: Redis = redis  # type: ignore[assignment]  # set by attach() when the process starts
        self.coalescer: FeedCoalescer | None = None
        self._stop_feed = asyncio.Event()
        self._feed_task: asyncio.Task[None] | None = None
        # Resilient: after a Redis restart the listener is back within loop_backoff_max (core/pubsub.py).
        manager = make_manager(settings, self.keys.socketio_channel)
        # cors "*": auth is a token the page sends explicitly, never a cookie, so another origin cannot
        # ride on a user's session; and nginx forwards Host without the port, which breaks the same-origin
        # check for any non-80 port. 64 KB messages: clients only send small subscription requests.
        self.sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, transports=["websocket"],
                                        cors_allowed_origins="*", max_http_buffer_size=65_536,
                                        ping_interval=25, ping_timeout=20, logger=False,
                                        engineio_logger=False)
        self.sio.on("connect", self.on_connect)
        self.sio.on("subscribe", self.on_subscribe)
        self.sio.on("unsubscribe", self.on_unsubscribe)
        self.sio.on("*", self.on_other)

    def attach(self, rt: Runtime, drain: Drain) -> None:
        """Start with the API process (lifespan): share its Redis pool, listen to the feed channel, run
        this process's candidate coalescer, and join its drain (core/drain.py)."""
        self.redis = rt.redis
        # Subscribe now rather than at the first client's connect (the library's default), so the first
        # client of a node misses nothing published while the listener was starting.
        if not self.sio.manager_initialized:
            self.sio.manager_initialized = True
            self.sio.manager.initialize()
        name = f"{self.settings.node_name}:{os.getpid()}"
        self.keys = rt.keys
        self.coalescer = FeedCoalescer(self.settings, rt.redis, name, keys=rt.keys)
        self._feed_task = asyncio.create_task(self.coalescer.run(self._stop_feed), name="feed-coalescer")
        rt.spawn(self._build_index(), "feed-index")
        drain.on_reconnect(self.drain)
        drain.on_flush(self.stop_feed)
        drain.on_flush(self.stop_listener)

    async def stop_listener(self) -> None:
        """Stop the pub/sub listener task (it retries forever by design) and close its connection."""
        task = getattr(self.sio.manager, "thread", None)
        if isinstance(task, asyncio.Task):
            await cancel_and_wait([task])
        if isinstance(self.sio.manager, ResilientRedisManager):
            await self.sio.manager._close()

    async def _build_index(self) -> None:
        try:
            added = await rooms.build_index(self.redis, self.keys)
            if added:
                log.info("feed index: %d groups indexed by project", added)
        except Exception as exc:  # the next start tries again; subscribe only misses pre-upgrade groups
            log.warning("feed index: %s", exc)

    async def stop_feed(self) -> None:
        """Stop the coalescer and free its lease, so a node that stays up takes over within one tick."""
        self._stop_feed.set()
        if self._feed_task is not None:
            await asyncio.gather(self._feed_task, return_exceptions=True)

    async def drain(self) -> None:
        await self.stop_feed()
        await disconnect_all(self.sio)

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        # engine.io's environ has REMOTE_ADDR 127.0.0.1 whoever connects: read the ASGI scope instead
        peer = self.limits.client_of(environ.get("asgi.scope") or {})
        principal = access.authenticate(self.settings, _token(auth, environ))
        if principal is None:
            reason = "missing_token" if not _token(auth, environ) else "invalid_token"
            await self.limits.bad_token(peer, reason)  # counts towards refusing this IP at the door; logged in sum
            raise socketio.exceptions.ConnectionRefusedError(
                f"{reason}: connect with auth {{token: <admin or dashboard token>}}", {"error": reason})
        await self.sio.save_session(sid, {"principal": principal, "peer": peer})
        log.info("socket %s connected from %s as %s", sid, peer, principal.role)

    async def _limited(self, session: dict[str, Any]) -> dict[str, Any] | None:
        wait = await self.limits.admit_event(session["peer"])
        if not wait:
            return None
        return {"ok": False, "error": "rate_limited", "message": f"too many events; retry in {wait} s",
                "retry_after": wait}

    async def on_subscribe(self, sid: str, *args: Any) -> dict[str, Any]:
        # *args: a client sending extra or no arguments gets an error answer, not a TypeError in the handler
        session = await self.sio.get_session(sid)
        if (refused := await self._limited(session)) is not None:
            return refused
        try:
            wanted = rooms.requested_rooms(args[0] if len(args) == 1 else None)
            projects = await rooms.known_projects(self.redis, self.keys)
            granted = rooms.allowed_rooms(session["principal"], wanted, projects)
        except rooms.RoomError as err:
            self.limits.refusals.note(f"subscribe {err.code}", session["peer"])
            return err.answer()
        for room in granted:
            await self.sio.enter_room(sid, room)
        snap = await rooms.snapshot(self.redis, self.keys, granted)
        visible = sorted(p for p in projects if session["principal"].may_see(p))
        return {"ok": True, "rooms": granted, "projects": visible, "node": self.settings.node_name,
                "interval": self.settings.feed_interval, "snapshot": snap}

    async def on_unsubscribe(self, sid: str, *args: Any) -> dict[str, Any]:
        if (refused := await self._limited(await self.sio.get_session(sid))) is not None:
            return refused
        try:
            wanted = rooms.requested_rooms(args[0] if len(args) == 1 else None)
        except rooms.RoomError as err:
            return err.answer()
        for room in wanted:
            await self.sio.leave_room(sid, room)
        return {"ok": True, "rooms": wanted}

    async def on_other(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        if (refused := await self._limited(await self.sio.get_session(sid))) is not None:
            return refused
        log.debug("socket %s: ignored unknown event %r", sid, event[:64] if isinstance(event, str) else event)
        return {"ok": False, "error": "unknown_event", "message": "events: subscribe, unsubscribe"}


async def disconnect_all(sio: socketio.AsyncServer, grace: float = 0.2) -> None:
    """Drain: tell this node's clients to reconnect elsewhere, then close their sockets.

    `feed:reconnect` goes to local clients only (ignore_queue: not through Redis, or every node's clients
    would leave). The JS and Python clients reconnect by themselves when the transport closes; nginx sends
    them to a node that still accepts. `sio.shutdown()` would not disconnect anyone; `eio.disconnect()` does.
    """
    if not sio.eio.sockets:  # nobody here (eio.disconnect() fails on an empty set)
        return
    await sio.emit("feed:reconnect", {"reason": "draining"}, ignore_queue=True)
    await asyncio.sleep(grace)  # let the frames go out before the close
    await sio.eio.disconnect()
