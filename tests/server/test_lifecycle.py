"""Session lifecycles under MockClock: each way a session ends cancels exactly its subtree."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from trio_sfu.config import Config
from trio_sfu.server.signaling_socket import SignalingSocket
from trio_sfu.signaling.messages import ServerRequest

from ..conftest import Client, fixture_sdp, running_server, settle, task_names

PUBLISH_SDP = fixture_sdp("chromium_offer_publish")
PLAY_SDP = fixture_sdp("aiortc_offer_play")


def session_tasks(stream: str = "cam") -> list[str]:
    return [name for name in task_names() if f"<Session live/{stream} " in name]


async def publish(client: Client, stream: str = "cam") -> None:
    assert (await client.connect())["err"] == 0
    reply = await client.offer(stream, PUBLISH_SDP, True)
    assert reply["err"] == 0, reply


async def play(client: Client, stream: str = "cam") -> None:
    assert (await client.connect())["err"] == 0
    reply = await client.offer(stream, PLAY_SDP, False)
    assert reply["err"] == 0, reply


async def test_session_tree_shape(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server() as sfu, sfu.client() as pub, sfu.client(uid="bob") as player:
        await publish(pub)
        await play(player)
        await settle()
        names = session_tasks()
        # publisher: session + transport; player: session + transport (a track's backlog task is
        # started only when its socket first refuses a packet: tests/server/test_transport_faults.py)
        assert names.count("<Session live/cam publish>") == 1
        assert names.count("<Session live/cam publish>.transport") == 1
        assert names.count("<Session live/cam play>") == 1
        assert names.count("<Session live/cam play>.transport") == 1
        assert names.count("<Session live/cam play>.forward") == 0
        assert sfu.server.mux.sessions_routed == 2


async def test_close_cancels_only_that_session(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server() as sfu, sfu.client() as pub:
        await publish(pub, "cam")
        assert (await pub.offer("other", PUBLISH_SDP, True))["err"] == 0
        await settle()
        assert (await pub.request("stream.close", "cam"))["err"] == 0
        await settle()
        assert session_tasks("cam") == []
        assert len(session_tasks("other")) == 2
        assert sfu.server.router.lookup(("live", "cam")) is None
        assert sfu.server.mux.sessions_routed == 1
        # The socket still serves the other session.
        assert (await pub.request("stream.mute", "other", {"video": True}))["err"] == 0


async def test_publisher_leaving_ends_players(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server() as sfu, sfu.client() as pub, \
            sfu.client(uid="p1") as p1, sfu.client(uid="p2") as p2:
        await publish(pub)
        await play(p1)
        await play(p2)
        assert (await pub.request("stream.close", "cam"))["err"] == 0
        for player in (p1, p2):
            with trio.fail_after(1):
                notice = await player.next_server_request()
            assert notice["method"] == "stream.close"
            assert notice["data"]["reason"] == "publisher_closed"
        await settle()
        assert session_tasks() == []
        assert all(not c.sessions for c in sfu.server.connections)


async def test_publisher_disconnect_tells_players_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server() as sfu, sfu.client(uid="p1") as player:
        async with sfu.client() as pub:
            await publish(pub)
            await play(player)
        # the publisher's socket is gone
        with trio.fail_after(5):
            notice = await player.next_server_request()
        assert notice["data"] == {"reason": "publisher_gone"}
        await settle()
        assert session_tasks() == []
        assert len(sfu.server.connections) == 1
        assert sfu.server.router.lookup(("live", "cam")) is None


async def test_player_disconnect_leaves_publisher(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server() as sfu, sfu.client() as pub:
        async with sfu.client(uid="p1") as player:
            await publish(pub)
            await play(player)
        await settle()
        names = session_tasks()
        assert "<Session live/cam play>" not in names
        assert names.count("<Session live/cam publish>") == 1
        publication = sfu.server.router.lookup(("live", "cam"))
        assert publication is not None and publication.players == set()
        assert (await pub.request("stream.mute", "cam", {"audio": True}))["err"] == 0


async def test_keepalive_drops_silent_socket(autojump_clock: trio.testing.MockClock) -> None:
    # Media liveness would end these (media-less) sessions first: push it out of the way.
    config = Config(liveness_timeout=1000, dtls_handshake_timeout=1000)
    async with running_server(config) as sfu, sfu.client() as healthy:
        await publish(healthy, "healthy")
        # A client whose reader stops: it never answers pings again.
        client_stream, server_stream = trio.testing.memory_stream_pair()
        sfu.nursery.start_soon(sfu.server.serve_stream, server_stream)
        from trio_websocket import wrap_client_stream

        async with trio.open_nursery() as silent_reader:
            ws = await wrap_client_stream(silent_reader, client_stream, "sfu.test", "/ws")
            silent = Client(ws)
            silent_reader.start_soon(silent.pump)
            await publish(silent, "cam")
            silent_reader.cancel_scope.cancel()
        start = trio.current_time()
        with trio.fail_after(200):
            while session_tasks("cam"):
                await trio.sleep(1)
        waited = trio.current_time() - start
        assert 60 <= waited <= 81, waited
        assert sfu.server.router.lookup(("live", "cam")) is None
        # The healthy client answered every ping and is still there, 80 s later.
        assert len(session_tasks("healthy")) == 2
        assert (await healthy.request("stream.mute", "healthy", {}))["err"] == 0


async def test_shutdown_notifies_everyone(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server() as sfu, sfu.client() as pub, sfu.client(uid="p1") as player:
        await publish(pub)
        await play(player)
        await sfu.server.shutdown()
        for client in (pub, player):
            with trio.fail_after(1):
                notice = await client.next_server_request()
            assert notice["method"] == "stream.close"
            assert notice["data"] == {"reason": "server_shutdown"}
            assert client.ws.closed is not None and client.ws.closed.code == 1001
        await settle()
        assert [n for n in task_names() if "Session" in n or "SignalingSocket" in n] == []


async def test_notifying_a_client_whose_socket_broke_disturbs_nobody(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client's socket breaks: its writer stops on the send error, which closes the outbox, while its
    sessions are still being torn down. Whatever the server then tells that client (a publisher
    muting or leaving, the shutdown) is dropped: raised, it went into the publisher's request or into
    the shutdown, which once exited 1 this way in the bench at 500 players."""
    async with running_server() as sfu, sfu.client() as pub:
        await publish(pub)
        ws: Any = None  # never used: this connection's tasks are not running
        connection = SignalingSocket(sfu.server, ws, "192.0.2.1:5000", "192.0.2.1")
        async with connection._outbox:
            pass  # what the writer's `async with` does when the socket breaks
        request = ServerRequest(method="stream.close", app="live", uid="p1", stream="cam", data={})
        connection.send(request)
        connection.shut_down()
        # The server and the healthy client are untouched.
        reply = await pub.request("stream.mute", data={"video": True})
        assert reply["err"] == 0, reply
