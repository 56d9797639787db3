"""Webhooks: a receiver in the test sees every event once, signed; an unreachable receiver changes
nothing for the sessions (the events are retried, then counted as failed)."""

from __future__ import annotations

import json
from typing import Any

import h11
import trio

from trio_sfu.config import Config
from trio_sfu.server.webhooks import WEBHOOK_ATTEMPTS, sign
from trio_sfu.testing.client_transport import open_client

from ..conftest import running_server

SECRET = "a-webhook-secret"


class Receiver:
    """An HTTP endpoint on loopback that keeps every POST (body, signature) and answers 204."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, Any], str]] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER)
        body, signature = b"", ""
        async with stream:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    signature = dict(event.headers).get(b"x-trio-sfu-signature", b"").decode()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self.posts.append((json.loads(body), signature))
                    response = h11.Response(status_code=204, headers=[("connection", "close")])
                    await stream.send_all(connection.send(response) + connection.send(h11.EndOfMessage()))
                    return


async def until(condition: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def test_every_event_reaches_the_receiver_once_and_signed() -> None:
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        config = Config(webhook_urls=(f"http://127.0.0.1:{receiver.port}/hooks",), webhook_secret=SECRET)
        async with running_server(config) as sfu:
            network = sfu.network  # type: ignore[attr-defined]
            async with sfu.client(uid="pub") as pub_sig, sfu.client(uid="viewer") as play_sig:
                async with open_client(pub_sig, network.endpoint(), publish=True):
                    async with open_client(play_sig, network.endpoint(), publish=False):
                        await until(lambda: len(receiver.posts) >= 2)
                        assert (await play_sig.request("stream.close", "cam"))["err"] == 0
                    assert (await pub_sig.request("stream.close", "cam"))["err"] == 0
                await until(lambda: len(receiver.posts) >= 4)
                await trio.sleep(0.2)  # nothing more comes
        nursery.cancel_scope.cancel()
    events = [(post["event"], post["uid"]) for post, _ in receiver.posts]
    assert sorted(events) == sorted([("publish", "pub"), ("play", "viewer"), ("stop", "viewer"),
                                     ("unpublish", "pub")])
    for post, signature in receiver.posts:
        body = json.dumps(post).encode()
        assert signature == sign(SECRET, body), post
        assert post["app"] == "live" and post["stream"] == "cam" and post["session"]
    reasons = {post["event"]: post.get("reason") for post, _ in receiver.posts}
    assert reasons == {"publish": None, "play": None, "stop": "client_closed", "unpublish": "client_closed"}


async def test_an_unreachable_receiver_changes_nothing_for_media(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Config(webhook_urls=(f"http://127.0.0.1:{port}/hooks",), webhook_secret=SECRET)
    async with running_server(config) as sfu:
        network = sfu.network  # type: ignore[attr-defined]
        async with (
            sfu.client(uid="pub") as pub_sig,
            sfu.client(uid="viewer") as play_sig,
            open_client(pub_sig, network.endpoint(), publish=True),
            open_client(play_sig, network.endpoint(), publish=False),
        ):
            assert len(sfu.server.router.lookup(("live", "cam")).players) == 1  # type: ignore[union-attr]
            await trio.sleep(10)
        hooks = sfu.server.webhooks.counters
        assert hooks["failed"] >= 2 and hooks["delivered"] == 0, hooks
        assert WEBHOOK_ATTEMPTS == 3
