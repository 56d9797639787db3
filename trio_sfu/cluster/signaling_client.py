"""A client of the signaling protocol over one WebSocket: a relay playing a stream from its origin,
tests and tools (the benchmark's legs).

`request` sends one request and waits for its ack (the server answers in order). What the server asks
on its own (`stream.mute`, `stream.close`) is queued on `server_requests`, or, with `auto_ack`, answered
at once and only shown to `on_server_request`: a long-running tool must not let them pile up.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection


class SignalingClient:
    def __init__(
        self,
        ws: WebSocketConnection,
        app: str = "live",
        uid: str = "alice",
        *,
        auto_ack: bool = False,
        queue: int = 100,
    ) -> None:
        self.ws = ws
        self.app = app
        self.uid = uid
        self.auto_ack = auto_ack
        self.on_server_request: Callable[[dict[str, Any]], None] | None = None
        self._replies_send, self._replies = trio.open_memory_channel[dict[str, Any]](queue)
        self._requests_send, self.server_requests = trio.open_memory_channel[dict[str, Any]](queue)

    async def pump(self) -> None:
        """Read frames until the socket closes, sorting acks from server-initiated requests."""
        try:
            while True:
                message = json.loads(await self.ws.get_message())
                if message.get("method") == "ack":
                    await self._replies_send.send(message)
                    continue
                if self.on_server_request is not None:
                    self.on_server_request(message)
                if self.auto_ack:
                    await self.ack(message)
                else:
                    await self._requests_send.send(message)
        except ConnectionClosed:
            pass
        finally:
            self._replies_send.close()
            self._requests_send.close()

    async def send_raw(self, frame: str | bytes) -> dict[str, Any]:
        """Send any frame (tests send broken ones) and wait for the reply; EndOfChannel if the socket
        closed first."""
        await self.ws.send_message(frame)
        return await self._replies.receive()

    async def request(
        self, method: str, stream: str = "cam", data: dict[str, Any] | None = None, **header: Any
    ) -> dict[str, Any]:
        message = {
            "version": "1.0",
            "method": method,
            "app": header.get("app", self.app),
            "uid": header.get("uid", self.uid),
            "stream": stream,
            "data": data if data is not None else {},
        }
        return await self.send_raw(json.dumps(message))

    async def connect(self, token: str = "") -> dict[str, Any]:
        return await self.request("stream.connect", data={"token": token})

    async def offer(self, stream: str, sdp: str, publish: bool) -> dict[str, Any]:
        return await self.request("stream.offer", stream, {"publish": publish, "sdp": sdp})

    async def next_server_request(self) -> dict[str, Any]:
        return await self.server_requests.receive()

    async def ack(self, request: dict[str, Any]) -> None:
        """Answer a server-initiated request (the protocol wants every request acked)."""
        reply = {
            "version": "1.0",
            "err": 0,
            "err_msg": "success",
            "method": "ack",
            "on_result": str(request.get("method", "")) + "d",
            "app": request.get("app", self.app),
            "uid": request.get("uid", self.uid),
            "stream": request.get("stream", ""),
            "data": {},
        }
        await self.ws.send_message(json.dumps(reply))
