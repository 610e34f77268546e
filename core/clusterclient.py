"""The Redis Cluster client of every process (core/redis.py `make_redis` makes it): redis-py's, with a slot-map
reload that no caller's cancellation can abort.

redis-py 8.1's async cluster client reloads its slot map (CLUSTER SLOTS, then COMMAND) inside the call that
finds it stale (after a connection error, CLUSTERDOWN, a dead node's slots), under a lock the other calls
wait on. If that call is cancelled half-way, `RedisCluster.initialize` closes every connection of every node
(those in use by other calls too) and leaves the map stale, so the next call starts the reload again from
nothing. The API cancels its ingest calls at their deadline (api/ingestrun.py, ~0.3 s a run): once a reload
took longer than that (a busy 2-core machine), every reload was cancelled, each closed the connections of
the calls in flight, and no call was served although the cluster was whole again. That was the "503 for
44 s after a primary was SIGKILLed" of issue 12 (docs/scaling.md, "Failover"); it ended when a call with no
deadline (the project refresh, every 10 s) happened to hold the lock. tests/integration/test_cluster_reload.py
shows it.

Here the reload runs in a task of its own, shared by every call that needs it (one reload at a time); a caller
that is cancelled stops waiting for it, the reload goes on and serves the calls after it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import RedisCluster


class ClusterClient(RedisCluster):
    __slots__ = ("_reload",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reload: asyncio.Future[Any] | None = None

    async def initialize(self, additional_startup_nodes_info: Any = None,
                         last_failed_node_name: Any = None) -> ClusterClient:
        if not self._initialize:  # the map is current: nothing to wait for (the hot path)
            return self
        reload = self._reload
        if reload is None or reload.done():
            reload = self._reload = asyncio.ensure_future(super().initialize(
                additional_startup_nodes_info=additional_startup_nodes_info,
                last_failed_node_name=last_failed_node_name))
            reload.add_done_callback(_seen)
        await asyncio.shield(reload)  # a cancelled caller leaves; the reload finishes for the next ones
        return self


def _seen(reload: asyncio.Future[Any]) -> None:
    """Its error reaches the callers waiting then; with none left, it is not an unretrieved task exception."""
    if not reload.cancelled():
        reload.exception()
