"""Fail a WebSocket properly when the peer breaks the protocol (RFC 6455 section 7.1.7).

When wsproto finds a protocol error in what the peer sent (a text frame that is not UTF-8 -> 1007, a
bad frame -> 1002), it reports a CloseConnection event with the code to send, while the connection is
still open. trio-websocket 0.12 treats every CloseConnection event as the peer's close: it answers only
one in the closing state, so it drops the TCP connection without the close frame, and the client sees
an abnormal closure (1006) instead of the code. `install` makes it send that close frame first. It wraps
one private method of trio-websocket (the dependency is pinned below 0.13); test_server_process checks
the close code on the wire, so a change there fails loudly.
"""

from __future__ import annotations

import contextlib

from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    original = WebSocketConnection._handle_close_connection_event

    async def handle_close(self: WebSocketConnection, event: CloseConnection) -> None:
        # A close the peer started arrives in REMOTE_CLOSING; still OPEN means wsproto failed the
        # connection on our side and the event carries the code the peer must be told.
        if self._wsproto.state is ConnectionState.OPEN:
            with contextlib.suppress(ConnectionClosed):  # the stream broke: nothing to tell
                await self._send(event)
        await original(self, event)

    WebSocketConnection._handle_close_connection_event = handle_close  # type: ignore[method-assign]
