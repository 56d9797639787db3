"""The cluster's directory on Redis: nodes and the streams they hold, each with a lifetime.

Keys (docs/cluster.md):
- `trio_sfu:node:{name}` = the node's cluster URL, expiring NODE_TTL after its last heartbeat;
- `trio_sfu:stream:{app}:{stream}` = the URL of the worker or node publishing it, set with NX (so a
  second publish anywhere gets 409) and expiring CLAIM_TTL after its owner's last refresh: a node
  that dies frees its streams within CLAIM_TTL even if nobody tells Redis.

Every operation is bounded by REDIS_TIMEOUT; a Redis that does not answer makes new cross-node
publishes and plays fail with 503 (DirectoryUnavailable) while running sessions go on untouched. The
heartbeat keeps trying; when Redis is back it registers the node again and restores its claims (a
Redis that restarted empty has lost them). coredis is the client: maintained, and on anyio, so it runs
on Trio.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import coredis
import coredis.exceptions
import trio

from trio_sfu.cluster.directory import DirectoryUnavailable, StreamKey

log = logging.getLogger(__name__)

PREFIX = "trio_sfu"
CLAIM_TTL = 10.0  # seconds a claim outlives its owner's last refresh
NODE_TTL = 10.0
HEARTBEAT = 3.0  # seconds between refreshes (a third of the lifetimes: two may fail in a row)
REDIS_TIMEOUT = 1.0  # seconds any Redis operation may take before the caller gets 503

# Refresh (or restore) a claim only if nobody else holds the key: after a Redis restart it is gone
# and comes back; if another node claimed it meanwhile, it stays theirs.
RESTORE = """
local held = redis.call('get', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Delete a claim only if it is still ours.
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

_FAILURES = (coredis.exceptions.RedisError, OSError, trio.TooSlowError)


def stream_key(key: StreamKey) -> str:
    return f"{PREFIX}:stream:{key[0]}:{key[1]}"


def node_key(name: str) -> str:
    return f"{PREFIX}:node:{name}"


class RedisDirectory:
    def __init__(self, url: str, node: str) -> None:
        self.url = url
        self.node = node
        self.origin: str | None = None  # this worker's cluster URL (set by the worker at start)
        self.client: Any = coredis.Redis.from_url(
            url, decode_responses=True, connect_timeout=REDIS_TIMEOUT, stream_timeout=REDIS_TIMEOUT
        )
        self._restore = self.client.register_script(RESTORE)
        self._release = self.client.register_script(RELEASE)
        self.claims: dict[StreamKey, str] = {}  # the streams this worker holds -> its origin URL
        self.available = True
        self.counters: dict[str, int] = {"failures": 0, "lost_claims": 0}

    async def _call(self, what: str, operation: Any) -> Any:
        try:
            with trio.fail_after(REDIS_TIMEOUT):
                result = await operation
        except _FAILURES as exc:
            self.counters["failures"] += 1
            if self.available:
                log.warning("event=redis_unavailable url=%s during=%s error=%r action=refuse_cross_node "
                            "(running sessions go on; retrying every %.0f s)", self.url, what, exc, HEARTBEAT)
            self.available = False
            raise DirectoryUnavailable(f"Redis at {self.url} did not answer ({type(exc).__name__})") from None
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat until cancelled: the node's key and every claim refreshed, restored after an outage."""
        async with self.client:
            task_status.started()
            while True:
                await self.heartbeat()
                await trio.sleep(HEARTBEAT)

    async def heartbeat(self) -> None:
        was_available = self.available
        try:
            if self.origin is not None:
                await self._call("heartbeat", self.client.set(
                    node_key(self.node), self.origin, px=int(NODE_TTL * 1000)
                ))
            for key, origin in list(self.claims.items()):
                kept = await self._call("refresh", self._restore(
                    keys=[stream_key(key)], args=[origin, int(CLAIM_TTL * 1000)]
                ))
                if not kept and self.claims.get(key) == origin:
                    self.counters["lost_claims"] += 1
                    log.warning("event=claim_lost app=%s stream=%s reason=held_by_another_node", *key)
        except DirectoryUnavailable:
            return
        self.available = True
        if not was_available:
            log.warning("event=redis_available url=%s claims_restored=%d", self.url, len(self.claims))

    async def claim(self, key: StreamKey, origin: str) -> str | None:
        held = await self._call("claim", self.client.set(
            stream_key(key), origin, condition=coredis.PureToken.NX, px=int(CLAIM_TTL * 1000)
        ))
        if not held:
            holder = await self._call("claim", self.client.get(stream_key(key)))
            if holder is not None and holder != origin:
                return str(holder)
        self.claims[key] = origin
        return None

    async def release(self, key: StreamKey) -> None:
        origin = self.claims.pop(key, None)
        if origin is not None:
            await self._call("release", self._release(keys=[stream_key(key)], args=[origin]))

    async def release_all(self) -> None:
        """A node that shuts down frees its streams at once (not CLAIM_TTL later)."""
        for key in list(self.claims):
            try:
                await self.release(key)
            except DirectoryUnavailable:
                return
        if self.origin is not None:
            with contextlib.suppress(DirectoryUnavailable):
                await self._call("leave", self.client.delete([node_key(self.node)]))

    async def locate(self, key: StreamKey) -> str | None:
        origin = await self._call("locate", self.client.get(stream_key(key)))
        return str(origin) if origin is not None else None

    async def nodes(self) -> dict[str, str]:
        """Every live node and its cluster URL (for operators; docs/cluster.md)."""
        names = [name async for name in self.client.scan_iter(match=node_key("*"))]
        values = await self._call("nodes", self.client.mget(names)) if names else []
        return {name.split(":", 2)[2]: value for name, value in zip(names, values, strict=True) if value}

