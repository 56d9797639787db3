"""Where each published stream is: its origin, the URL a relay plays it from.

A stream is claimed before its publisher is answered, so a second publish of the same (app, stream)
on another worker gets 409 as it would on one process. Workers on one host share the supervisor's
table, reached over a Unix socket (`SupervisorDirectory`); a worker's claims go with its connection,
so a worker that dies (even `kill -9`) frees its streams at once.

The wire format is one JSON object a line: requests `{"id", "op": claim|release|locate, "app",
"stream", "origin"}`, replies `{"id", "ok", "origin"}`. The same connection carries each worker's
/metrics (`{"id", "op": "report_metrics", "text"}`, every few seconds) and asks for their sum
(`{"id", "op": "host_metrics"}` -> `{"id", "ok", "text"}`): a host's scrape reaches one worker,
chosen by the kernel, and should see them all.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import attrs
import trio

from trio_sfu.cluster.host_metrics import sum_expositions

log = logging.getLogger(__name__)

StreamKey = tuple[str, str]
REQUEST_TIMEOUT = 2.0  # seconds a worker waits for the directory before it answers 503
MAX_LINE = 256 * 1024  # a directory line longer than this is garbage (a /metrics text is ~10 KiB)


class DirectoryUnavailable(Exception):
    """The directory did not answer: cross-worker publishing and playing are refused (503)."""


class Directory(Protocol):
    origin: str | None  # this worker's cluster URL, set by the worker once its listener is bound

    async def claim(self, key: StreamKey, origin: str) -> str | None:
        """Claim `key` for this worker (its relays play from `origin`); None: claimed, else the origin
        that already holds it. Raises DirectoryUnavailable."""
        ...

    async def release(self, key: StreamKey) -> None: ...

    async def locate(self, key: StreamKey) -> str | None:
        """The origin of `key`, or None if nobody publishes it. Raises DirectoryUnavailable."""
        ...

    async def release_all(self) -> None:
        """Shutting down: free every stream this worker holds at once."""
        ...


# --------------------------------------------------------------------------- the supervisor's side


@attrs.define
class DirectoryTable:
    """The claims of every worker, sans-IO: one request in, one reply out. Owners are the workers'
    connections; `forget` drops everything one held."""

    claims: dict[StreamKey, tuple[object, str]] = attrs.field(factory=dict)
    metrics: dict[object, str] = attrs.field(factory=dict)  # each worker's latest /metrics text
    malformed: int = 0

    def handle(self, owner: object, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            op, ident = request["op"], request.get("id")
            if op == "report_metrics":
                text = request["text"]
                if not isinstance(text, str):
                    raise TypeError("text")
                self.metrics[owner] = text
                return {"id": ident, "ok": True}
            if op == "host_metrics":
                return {"id": ident, "ok": True, "text": sum_expositions(list(self.metrics.values()))}
            key = (str(request["app"]), str(request["stream"]))
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return {"id": None, "ok": False, "error": "malformed directory request"}
        if op == "claim":
            origin = request.get("origin")
            if not isinstance(origin, str):
                self.malformed += 1
                return {"id": ident, "ok": False, "error": "claim needs an origin"}
            holder = self.claim(owner, key, origin)
            return {"id": ident, "ok": holder is None, **({"origin": holder} if holder else {})}
        if op == "release":
            self.release(owner, key)
            return {"id": ident, "ok": True}
        if op == "locate":
            return {"id": ident, "ok": True, "origin": self.locate(key)}
        self.malformed += 1
        return {"id": ident, "ok": False, "error": f"unknown op {op!r}"}

    def claim(self, owner: object, key: StreamKey, origin: str) -> str | None:
        held = self.claims.get(key)
        if held is not None and held[0] is not owner:
            return held[1]
        self.claims[key] = (owner, origin)
        return None

    def release(self, owner: object, key: StreamKey) -> None:
        held = self.claims.get(key)
        if held is not None and held[0] is owner:
            del self.claims[key]

    def locate(self, key: StreamKey) -> str | None:
        held = self.claims.get(key)
        return held[1] if held else None

    def forget(self, owner: object) -> list[StreamKey]:
        self.metrics.pop(owner, None)
        gone = [key for key, (held_by, _) in self.claims.items() if held_by is owner]
        for key in gone:
            del self.claims[key]
        return gone


async def serve_directory(table: DirectoryTable, listener: trio.SocketListener) -> None:
    """Serve the table to every worker that connects, until cancelled."""

    async def handle(stream: trio.SocketStream) -> None:
        owner = object()
        buffer = b""
        try:
            async with stream:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        reply = table.handle(owner, line)
                        await stream.send_all(json.dumps(reply).encode() + b"\n")
                    if len(buffer) > MAX_LINE:
                        log.warning("event=directory_garbage bytes=%d action=closed", len(buffer))
                        return
        except trio.BrokenResourceError:
            pass
        finally:
            gone = table.forget(owner)
            if gone:
                log.info("event=directory_worker_gone streams_released=%d", len(gone))

    await trio.serve_listeners(handle, [listener])


# --------------------------------------------------------------------------- a worker's side


class SupervisorDirectory:
    """A worker's view of the supervisor's table, over one Unix socket kept open for its life."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.origin: str | None = None
        self.claims: set[StreamKey] = set()
        self._stream: trio.SocketStream | None = None
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._next_id = 0
        self._send_lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then read replies until cancelled (the supervisor's end: the worker must go)."""
        self._stream = await trio.open_unix_socket(self.path)
        task_status.started()
        buffer = b""
        async with self._stream:
            while True:
                data = await self._stream.receive_some(65536)
                if not data:
                    raise DirectoryUnavailable("the supervisor closed the directory connection")
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._dispatch(line)
                if len(buffer) > MAX_LINE:
                    raise DirectoryUnavailable("the supervisor sent garbage on the directory connection")

    def _dispatch(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
            waiter = self._waiting.pop(reply["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("event=directory_bad_reply line=%r", line[:200])
            return
        waiter.send_nowait(reply)

    async def report_metrics(self, text: str) -> None:
        await self._request("report_metrics", None, text=text)

    async def host_metrics(self) -> str:
        """Every worker's latest /metrics, summed (see trio_sfu.cluster.host_metrics)."""
        text = (await self._request("host_metrics", None)).get("text")
        if not isinstance(text, str):
            raise DirectoryUnavailable("the supervisor did not sum the workers' metrics")
        return text

    async def _request(self, op: str, key: StreamKey | None, **fields: Any) -> dict[str, Any]:
        stream = self._stream
        if stream is None:
            raise DirectoryUnavailable("not connected to the supervisor")
        self._next_id += 1
        ident = self._next_id
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[ident] = send
        message = {"id": ident, "op": op, **fields}
        if key is not None:
            message.update(app=key[0], stream=key[1])
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                async with self._send_lock:
                    await stream.send_all(json.dumps(message).encode() + b"\n")
                return await receive.receive()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise DirectoryUnavailable(f"the supervisor's directory did not answer ({exc!r})") from None
        finally:
            self._waiting.pop(ident, None)

    async def claim(self, key: StreamKey, origin: str) -> str | None:
        reply = await self._request("claim", key, origin=origin)
        if reply.get("ok"):
            self.claims.add(key)
            return None
        holder = reply.get("origin")
        if not isinstance(holder, str):
            raise DirectoryUnavailable(f"the directory refused the claim: {reply.get('error')}")
        return holder

    async def release(self, key: StreamKey) -> None:
        self.claims.discard(key)
        await self._request("release", key)

    async def release_all(self) -> None:
        for key in list(self.claims):
            await self.release(key)

    async def locate(self, key: StreamKey) -> str | None:
        origin = (await self._request("locate", key)).get("origin")
        return origin if isinstance(origin, str) else None


class TableDirectory:
    """One worker's view of a table in the same process (tests, and workers run as tasks)."""

    def __init__(self, table: DirectoryTable) -> None:
        self.table = table
        self.origin: str | None = None

    async def claim(self, key: StreamKey, origin: str) -> str | None:
        return self.table.claim(self, key, origin)

    async def release(self, key: StreamKey) -> None:
        self.table.release(self, key)

    async def locate(self, key: StreamKey) -> str | None:
        return self.table.locate(key)

    async def release_all(self) -> None:
        self.table.forget(self)
