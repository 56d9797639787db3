"""trio_sfu inside an application: its own users and rooms decide who publishes and plays, and its
code hears every publish and play. Run: `python docs/examples/embedded.py` (Ctrl-C stops it).

The application's users log in elsewhere and get an opaque session key (here a dict); a client sends
that key as its `stream.connect` token. No JWT is involved: `authorize` replaces the JWT check.
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from trio_sfu import AuthError, AuthRequest, Config, Grant, open_server

# The application's own state: session keys of logged-in users, and which room each may present in.
SESSIONS = {"key-of-alice": "alice", "key-of-bob": "bob"}
PRESENTERS = {"alice": {"lobby"}}  # alice publishes stream "lobby"; everyone logged in may watch


def authorize(request: AuthRequest) -> Grant:
    """Who may do what in app "rooms", from the application's sessions (may be `async def`, too)."""
    user = SESSIONS.get(request.token)
    if user is None:
        raise AuthError(401, "log in to the application first, then connect with your session key")
    if request.app != "rooms":
        raise AuthError(403, f"app {request.app!r} does not exist here; use app 'rooms'")
    return Grant(
        app="rooms",
        uid=user,  # the client may not claim another uid
        publish=frozenset(PRESENTERS.get(user, ())),
        play=True,
        expires_at=None,
    )


def on_event(name: str, fields: dict[str, Any]) -> None:
    """Publish, unpublish, play, stop, recording_finished: here printed; keep it quick (it runs on the
    server's task): start a task or put the event on a channel for anything slow."""
    print(f"{name}: {fields.get('uid')} {fields.get('app')}/{fields.get('stream')}")


async def main() -> None:
    config = Config()  # 127.0.0.1: signaling 8080, HTTP 8081 (the demo page), media UDP 40000
    async with open_server(config, authorize=authorize, on_event=on_event) as server:
        print(f"signaling on {server.signal_addresses}, demo page on {server.http_addresses}")
        await trio.sleep_forever()  # the application's own work would go on here


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the server shuts down cleanly first
        trio.run(main)
