"""A TCP proxy in front of a real redis-server that loses the reply of one chosen call: the call reaches
Redis and runs, its reply never reaches the client, the connection is closed. What a client sees when a
failover closes its connection at the wrong moment (a demoted primary's clients killed by Sentinel, a
cluster client disconnecting every node on a topology refresh) or when a reply outlives the socket timeout;
redis-py then sends the call again on a new connection (its `retry` policy).

`after_cut` runs between the lost reply and the closing of the connection: what other clients wrote in the
meantime (an ingest call counting into the pending hash, say)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from faultline.services import free_port


@dataclass
class ReplyCutter:
    upstream_port: int
    marker: bytes  # a call whose bytes contain this (a script's SHA, say) loses its reply, `cuts` times
    cuts: int = 1
    after_cut: Callable[[], Awaitable[None]] | None = None
    port: int = field(default_factory=free_port)
    cut: int = 0  # replies lost so far
    calls: int = 0  # calls seen carrying the marker

    async def start(self) -> ReplyCutter:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        cut_next = asyncio.Event()

        async def to_redis() -> None:
            while data := await client_r.read(65536):
                if self.marker in data:
                    self.calls += 1
                    if self.cut < self.cuts:
                        self.cut += 1
                        cut_next.set()
                up_w.write(data)
                await up_w.drain()

        async def to_client() -> None:
            while data := await up_r.read(65536):
                if cut_next.is_set():  # the marked call ran on Redis: its reply is dropped here
                    if self.after_cut is not None:
                        await self.after_cut()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(to_redis()), asyncio.create_task(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (client_w, up_w):
                w.close()
