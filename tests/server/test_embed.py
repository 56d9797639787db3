"""The embedding API as docs/examples/embedded.py uses it: `open_server` with the application's
`authorize` and `on_event` hooks, real WebSockets and UDP, aiortc peers that decode what they get.

The example's hook replaces the JWT check with the application's own session keys: unknown keys get
its 401, a user who may not present gets 403 for a publish, a uid other than the key's is refused; the
presenter's frames reach a viewer; every publish, play, stop and unpublish reaches `on_event`; leaving
the block tells the clients `server_shutdown`. A hook that fails refuses (403) and harms nothing; an
`async def` hook works too.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from trio_sfu import AuthError, AuthRequest, Config, Grant, Server, open_server
from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.config import HostPort

from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, valid_counters, wait_for

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = HostPort("127.0.0.1", 0)


def load_example() -> Any:
    """docs/examples/embedded.py, imported as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("embedded_example", ROOT / "docs/examples/embedded.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def config() -> Config:
    return Config(signal=LOOPBACK, http=LOOPBACK, media=(LOOPBACK,))


@asynccontextmanager
async def client(server: Server, app: str, uid: str) -> AsyncIterator[SignalingClient]:
    host, port = server.signal_addresses[0]
    async with open_websocket_url(f"ws://{host}:{port}/ws") as ws, trio.open_nursery() as nursery:
        signaling = SignalingClient(ws, app, uid, auto_ack=True)
        nursery.start_soon(signaling.pump)
        try:
            yield signaling
        finally:
            nursery.cancel_scope.cancel()


async def hold_client(
    server: Server, app: str, uid: str, *, task_status: trio.TaskStatus[SignalingClient]
) -> None:
    """A client kept open (until cancelled) beyond the block that started it: it outlives the server."""
    async with client(server, app, uid) as signaling:
        task_status.started(signaling)
        await trio.sleep_forever()


async def test_the_example_application_authorizes_and_hears_events(aio: AsyncioThread) -> None:
    example = load_example()
    events: list[tuple[str, dict[str, Any]]] = []

    def on_event(name: str, fields: dict[str, Any]) -> None:
        example.on_event(name, fields)  # what the example does (prints), and recorded here
        events.append((name, fields))

    told: list[dict[str, Any]] = []
    publisher, player = Publisher(audio=False), Player(audio=False)
    async with trio.open_nursery() as outer:
        async with open_server(config(), authorize=example.authorize, on_event=on_event) as server:
            async with client(server, "rooms", "eve") as eve:
                reply = await eve.connect("not-a-session-key")
                assert reply["err"] == 401 and "log in to the application" in reply["err_msg"]
            async with client(server, "rooms", "alice") as spoof:
                reply = await spoof.connect("key-of-bob")  # bob's key, alice's uid
                assert reply["err"] == 403 and "uid" in reply["err_msg"]
            async with client(server, "other", "bob") as wrong_app:
                assert (await wrong_app.connect("key-of-bob"))["err"] == 403

            # alice stays connected past the server's end: she must hear it.
            alice = await outer.start(hold_client, server, "rooms", "alice")
            alice.on_server_request = told.append
            async with client(server, "rooms", "bob") as bob:
                assert (await alice.connect("key-of-alice"))["err"] == 0
                assert (await bob.connect("key-of-bob"))["err"] == 0
                refused = await bob.offer("lobby", await aio.call(Publisher(audio=False).offer), True)
                assert refused["err"] == 403 and "publishing" in refused["err_msg"]
                reply = await alice.offer("lobby", await aio.call(publisher.offer), True)
                assert reply["err"] == 0, reply
                await aio.call(publisher.answer, reply["data"]["sdp"])
                reply = await bob.offer("lobby", await aio.call(player.offer), False)
                assert reply["err"] == 0, reply
                await aio.call(player.answer, reply["data"]["sdp"])
                decoded = lambda: len(valid_counters(player)) >= 30  # noqa: E731
                took = await wait_for(decoded, 20, "30 frames decoded by bob")
                print(f"bob decoded 30 of alice's frames {took:.1f} s after answering")
                assert_video_matches(player, publisher)
                assert (await bob.request("stream.close", "lobby"))["err"] == 0
                await aio.call(player.close)
                await wait_for(lambda: [n for n, _ in events].count("stop") == 1, 5, "the stop event")
        # Leaving the block shut the server down, gracefully: alice, still publishing, was told.
        closes = [m["data"]["reason"] for m in told if m.get("method") == "stream.close"]
        assert closes == ["server_shutdown"], told
        outer.cancel_scope.cancel()
    await aio.call(publisher.close)
    names = [(name, fields["uid"], fields["stream"]) for name, fields in events]
    print(f"events: {names}")
    assert names[:3] == [("publish", "alice", "lobby"), ("play", "bob", "lobby"), ("stop", "bob", "lobby")]
    assert names[3] == ("unpublish", "alice", "lobby") and events[3][1]["reason"] == "server_shutdown"
    assert all(fields["app"] == "rooms" and fields["session"] for _, fields in events)


async def test_a_failing_hook_refuses_and_an_async_hook_works() -> None:
    calls: list[str] = []

    async def slow_but_fine(request: AuthRequest) -> Grant:
        await trio.sleep(0.01)  # e.g. a database lookup
        calls.append(request.via)
        if request.token == "explode":
            raise RuntimeError("the application's bug")
        if request.token == "not-a-grant":
            return "yes"  # type: ignore[return-value]
        if request.token == "extend":
            grant: Grant = request.jwt()  # the JWT check (open mode here), then the application's own
            if request.uid == "banned":
                raise AuthError(403, "you are banned from this server")
            return grant
        return Grant(app=request.app, uid=request.uid, publish=False, play=True, expires_at=None)

    async with open_server(config(), authorize=slow_but_fine) as server:
        for token in ("explode", "not-a-grant"):
            async with client(server, "live", "x") as broken:
                reply = await broken.connect(token)
                assert reply["err"] == 403 and "authorization failed" in reply["err_msg"], reply
        async with client(server, "live", "banned") as banned:
            reply = await banned.connect("extend")
            assert reply["err"] == 403 and "banned" in reply["err_msg"]
        async with client(server, "live", "viewer") as viewer:
            assert (await viewer.connect("anything"))["err"] == 0
            reply = await viewer.offer("cam", "v=0", True)
            assert reply["err"] == 403  # the hook's grant: play only
        assert calls == ["websocket"] * 4
