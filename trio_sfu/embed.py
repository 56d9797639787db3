"""Running the server inside an application: `async with open_server(config) as server`.

The server runs in a nursery of its own for the block's duration, listening as `config` says (port 0
picks free ports: `server.signal_addresses`, `server.http_addresses`, `server.media_addresses` say
which). Leaving the block shuts it down as SIGTERM does: every client gets `stream.close`
`server_shutdown` (within `shutdown_grace`), then every task ends. The application's hooks:
`authorize` (who may publish and play: replaces or extends the JWT check) and `on_event` (publish,
unpublish, play, stop, recording_finished as they happen); see trio_sfu.server.hooks and
docs/embedding.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trio_sfu.config import Config
from trio_sfu.server.hooks import Authorize, AuthRequest, OnEvent
from trio_sfu.server.server import Server
from trio_sfu.signaling.auth import AuthError, Grant

__all__ = ["AuthError", "AuthRequest", "Config", "Grant", "Server", "open_server"]


@asynccontextmanager
async def open_server(
    config: Config | None = None,
    *,
    authorize: Authorize | None = None,
    on_event: OnEvent | None = None,
) -> AsyncIterator[Server]:
    """A running server for the block's duration (bound and listening when the block starts)."""
    server = Server(config or Config(), authorize=authorize, on_event=on_event)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.shutdown()
            nursery.cancel_scope.cancel()
