"""Webhooks: a receiver in the test sees every event once, signed; an unreachable receiver changes
nothing for the sessions (the events are retried, then counted as failed)."""

from __future__ import annotations

import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

import h11
import trio

from trio_sfu.config import Config
from trio_sfu.server.webhooks import WEBHOOK_ATTEMPTS, sign
from trio_sfu.testing.client_transport import open_client

from ..conftest import running_server
from .test_http import self_signed

SECRET = "a-webhook-secret"


class Receiver:
    """An HTTP endpoint on loopback that keeps every POST (body, signature) and answers 204; with
    `tls`, an HTTPS one."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.posts: list[tuple[dict[str, Any], str]] = []
        self.port = 0
        self.tls = tls

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners: list[Any] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        if self.tls is not None:
            listeners = [trio.SSLListener(listener, self.tls) for listener in listeners]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # a client that refused our certificate
            await self._exchange(stream)

    async def _exchange(self, stream: trio.abc.Stream) -> None:
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


async def test_https_receivers_are_verified(tmp_path: Path) -> None:
    """An https:// receiver gets the events when its certificate chains to webhook_ca_file; one the
    server cannot verify gets nothing (the events fail, counted), and the sessions do not notice."""
    cert_file, key_file = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_file, key_file)
    trusted, untrusted = Receiver(tls), Receiver(tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(trusted.serve)
        await nursery.start(untrusted.serve)
        for receiver, ca_file in ((trusted, cert_file), (untrusted, None)):
            config = Config(webhook_urls=(f"https://127.0.0.1:{receiver.port}/hooks",), webhook_secret=SECRET,
                            webhook_ca_file=ca_file)
            async with running_server(config) as sfu:
                network = sfu.network  # type: ignore[attr-defined]
                async with (
                    sfu.client(uid="pub") as pub_sig,
                    open_client(pub_sig, network.endpoint(), publish=True),
                ):
                    assert (await pub_sig.request("stream.close", "cam"))["err"] == 0
                    hooks = sfu.server.webhooks.counters
                    await until(lambda: hooks["delivered"] + hooks["failed"] >= 2, timeout=10)  # noqa: B023
        nursery.cancel_scope.cancel()
    events = [(post["event"], post["uid"]) for post, _ in trusted.posts]
    assert events == [("publish", "pub"), ("unpublish", "pub")]
    for post, signature in trusted.posts:
        assert signature == sign(SECRET, json.dumps(post).encode())
    assert untrusted.posts == []


def test_webhook_urls_must_be_http_or_https() -> None:
    import pytest

    from trio_sfu.config import ConfigError

    with pytest.raises(ConfigError, match="http"):
        Config(webhook_urls=("ftp://hooks.example/x",), webhook_secret=SECRET).check()
