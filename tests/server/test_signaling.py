"""Every message and every error path of PROTOCOL.md over a WebSocket, beside a healthy client."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import attrs
import jwt
import pytest
import trio
from trio_websocket import HandshakeError, open_websocket_url

from trio_sfu.config import Config, HostPort
from trio_sfu.server.server import Server
from trio_sfu.signaling.auth import mint_token
from trio_sfu.testing.network import MemoryNetwork

from ..conftest import Client, fixture_sdp, running_server

SECRET = "test-secret-0123456789abcdef0123456789"
NOW = time.time()

PUBLISH_SDP = fixture_sdp("chromium_offer_publish")
PLAY_SDP = fixture_sdp("chromium_offer_play")


def token(**claims: Any) -> str:
    return mint_token(SECRET, claims.pop("app", "live"), now=NOW, **claims)


def assert_reply(reply: dict[str, Any], on_result: str, err: int = 0, **echo: str) -> dict[str, Any]:
    """Check the exact shape of a reply (decision 1) and return its data."""
    assert set(reply) == {
        "version",
        "err",
        "err_msg",
        "method",
        "on_result",
        "app",
        "uid",
        "stream",
        "data",
    }, reply
    assert reply["version"] == "1.0"
    assert reply["method"] == "ack"
    assert reply["on_result"] == on_result, reply
    assert reply["err"] == err, reply
    assert isinstance(reply["err_msg"], str) and reply["err_msg"], reply
    for key, value in echo.items():
        assert reply[key] == value, (key, reply)
    if err:
        assert reply["data"] == {}
    return reply["data"]  # type: ignore[no-any-return]


async def healthy_round_trip(client: Client) -> None:
    """A second client still works: its session answers a mute."""
    data = assert_reply(await client.request("stream.mute", "healthy", {"audio": True}), "stream.muted")
    assert data == {"audio": True, "video": False}


@pytest.fixture
def secret_config() -> Config:
    return Config(token_secret=SECRET)


async def test_full_session_in_open_mode() -> None:
    async with running_server() as sfu, sfu.client() as pub, sfu.client(uid="bob") as player:
        assert_reply(await pub.connect(""), "stream.connected", app="live", uid="alice", stream="cam")
        data = assert_reply(await pub.offer("cam", PUBLISH_SDP, True), "stream.answer")
        assert data["publish"] is True
        assert "a=ice-lite" in data["sdp"] and "a=setup:passive" in data["sdp"]
        assert sfu.server.certificate.fingerprint() in data["sdp"]

        assert_reply(await player.connect("anything"), "stream.connected", uid="bob")
        data = assert_reply(await player.offer("cam", PLAY_SDP, False), "stream.answer")
        assert data["publish"] is False
        assert "a=sendonly" in data["sdp"] and "a=ssrc:" in data["sdp"]

        data = assert_reply(
            await player.request("stream.mute", "cam", {"video": True}), "stream.muted", stream="cam"
        )
        assert data == {"video": True, "audio": False}
        data = assert_reply(await pub.request("stream.mute", "cam", {"audio": True}), "stream.muted")
        assert data == {"video": False, "audio": True}
        notice = await player.next_server_request()
        assert notice == {
            "version": "1.0",
            "method": "stream.mute",
            "app": "live",
            "uid": "bob",
            "stream": "cam",
            "data": {"video": False, "audio": True},
        }
        await player.ack(notice)

        assert_reply(await pub.request("stream.close", "cam"), "stream.closed")
        notice = await player.next_server_request()
        assert notice["method"] == "stream.close"
        assert notice["data"] == {"reason": "publisher_closed"}
        assert notice["uid"] == "bob" and notice["stream"] == "cam"
        # The server already ended the player's session: closing it again is 404.
        await trio.testing.wait_all_tasks_blocked()
        assert_reply(await player.request("stream.close", "cam"), "stream.closed", 404)
        assert_reply(await pub.request("stream.close", "cam"), "stream.closed", 404)


BAD_FRAMES: list[tuple[str | bytes, int, str]] = [
    ("{", 400, ""),
    ("not json at all", 400, ""),
    ("[1, 2, 3]", 400, ""),
    ('"a string"', 400, ""),
    ("null", 400, ""),
    ("[" * 10000 + "]" * 10000, 400, ""),
    (b"\x00\x01binary", 400, ""),
    (json.dumps({"version": "1.0", "method": "stream.dance", "app": "live"}), 400, ""),
    (json.dumps({"version": "1.0", "method": 7}), 400, ""),
    (json.dumps({"version": "1.0", "app": "live"}), 400, ""),
    (json.dumps({"method": "stream.connect", "data": {"token": ""}}), 426, "stream.connected"),
    (json.dumps({"version": "2.0", "method": "stream.offer"}), 426, "stream.answer"),
    (json.dumps({"version": 1.0, "method": "stream.mute"}), 426, "stream.muted"),
    (
        json.dumps({"version": "1.0", "method": "stream.connect", "app": 5, "data": {"token": ""}}),
        400,
        "stream.connected",
    ),
    (
        json.dumps({"version": "1.0", "method": "stream.connect", "app": "live", "data": {"token": 12}}),
        400,
        "stream.connected",
    ),
    (
        json.dumps({"version": "1.0", "method": "stream.connect", "app": "live", "data": {}}),
        400,
        "stream.connected",
    ),
    (
        json.dumps({"version": "1.0", "method": "stream.connect", "app": "live", "data": "token"}),
        400,
        "stream.connected",
    ),
    (
        json.dumps({"version": "1.0", "method": "stream.connect", "data": {"token": ""}}),
        400,
        "stream.connected",
    ),
]


@pytest.mark.parametrize(("frame", "code", "on_result"), BAD_FRAMES)
async def test_malformed_frames(frame: str | bytes, code: int, on_result: str) -> None:
    async with running_server() as sfu, sfu.client() as bad, sfu.client() as good:
        assert_reply(await good.connect(), "stream.connected")
        assert_reply(await good.offer("healthy", PUBLISH_SDP, True), "stream.answer")
        reply = await bad.send_raw(frame)
        assert_reply(reply, on_result, code)
        # The socket stays open: the bad client can still talk.
        assert_reply(await bad.connect(), "stream.connected")
        await healthy_round_trip(good)


async def test_echo_of_readable_header_fields() -> None:
    async with running_server() as sfu, sfu.client() as client:
        frame = {
            "version": "1.0",
            "method": "stream.offer",
            "app": "a1",
            "uid": "u1",
            "stream": "s1",
            "data": {"publish": "yes", "sdp": 5},
        }
        reply = await client.send_raw(json.dumps(frame))
        assert_reply(reply, "stream.answer", 400, app="a1", uid="u1", stream="s1")
        assert "data.publish" in reply["err_msg"] and "data.sdp" in reply["err_msg"]


@pytest.mark.parametrize("method", ["stream.offer", "stream.mute", "stream.close"])
async def test_requests_before_connect_are_401(method: str) -> None:
    async with running_server() as sfu, sfu.client() as client:
        data = {"publish": True, "sdp": PUBLISH_SDP} if method == "stream.offer" else {}
        reply = await client.request(method, "cam", data)
        assert_reply(
            reply, method.replace("offer", "answer").replace("mute", "muted").replace("close", "closed"), 401
        )


async def test_replies_come_in_request_order() -> None:
    async with running_server() as sfu, sfu.client() as client:
        frames = [
            json.dumps(
                {
                    "version": "1.0",
                    "method": "stream.connect",
                    "app": "live",
                    "uid": "alice",
                    "stream": "",
                    "data": {"token": ""},
                }
            ),
            "garbage",
            json.dumps(
                {
                    "version": "1.0",
                    "method": "stream.mute",
                    "app": "live",
                    "uid": "alice",
                    "stream": "none",
                    "data": {},
                }
            ),
            json.dumps(
                {
                    "version": "1.0",
                    "method": "stream.offer",
                    "app": "live",
                    "uid": "alice",
                    "stream": "cam",
                    "data": {"publish": True, "sdp": PUBLISH_SDP},
                }
            ),
        ]
        for frame in frames:
            await client.ws.send_message(frame)
        results = [await client._replies.receive() for _ in frames]
        assert [(r["on_result"], r["err"]) for r in results] == [
            ("stream.connected", 0),
            ("", 400),
            ("stream.muted", 404),
            ("stream.answer", 0),
        ]


async def test_token_errors(secret_config: Config) -> None:
    async with running_server(secret_config) as sfu, sfu.client() as client, sfu.client() as good:
        assert_reply(await good.connect(token(publish=True)), "stream.connected")
        assert_reply(await good.offer("healthy", PUBLISH_SDP, True), "stream.answer")
        expired = mint_token(SECRET, "live", publish=True, ttl=10, now=NOW - 3600)
        not_yet = mint_token(SECRET, "live", publish=True, now=NOW + 3600)
        wrong_key = mint_token("another-secret-0123456789abcdef0123", "live", now=NOW)
        good_token = token(publish=True)
        head, payload, signature = good_token.split(".")
        tampered = f"{head}.{payload[:-2]}AA.{signature}"
        for bad, why in [
            ("", "empty"),
            ("x.y.z", "garbage"),
            (expired, "expired"),
            (not_yet, "not yet valid"),
            (wrong_key, "wrong key"),
            (tampered, "tampered"),
        ]:
            reply = await client.connect(bad)
            assert_reply(reply, "stream.connected", 401), why
        # Still unauthenticated after the failures.
        assert_reply(await client.offer("cam", PUBLISH_SDP, True), "stream.answer", 401)
        await healthy_round_trip(good)


async def test_token_scopes(secret_config: Config) -> None:
    async with running_server(secret_config) as sfu, sfu.client() as client:
        # A token for another app.
        assert_reply(await client.connect(token(app="other", publish=True)), "stream.connected", 403)
        # Right app, but only stream "a" may be published and nothing played.
        assert_reply(await client.connect(token(publish=frozenset({"a"}))), "stream.connected")
        assert_reply(await client.offer("b", PUBLISH_SDP, True), "stream.answer", 403)
        assert_reply(await client.offer("a", PLAY_SDP, False), "stream.answer", 403)
        assert_reply(await client.request("stream.mute", "a", {}, app="other"), "stream.muted", 403)
        assert_reply(await client.offer("a", PUBLISH_SDP, True), "stream.answer")
        # A token bound to a uid refuses requests naming another uid.
        assert_reply(await client.connect(token(uid="alice", play=True)), "stream.connected")
        assert_reply(await client.request("stream.mute", "a", {}, uid="mallory"), "stream.muted", 403)
        # Refreshing the token replaced the old one; the running session goes on.
        assert_reply(await client.request("stream.mute", "a", {"video": True}), "stream.muted")


async def test_expired_token_keeps_sessions_but_refuses_new_requests(
    secret_config: Config,
) -> None:
    clock = {"now": NOW}
    async with running_server(secret_config, wall_clock=lambda: clock["now"]) as sfu, sfu.client() as client:
        assert_reply(
            await client.connect(mint_token(SECRET, "live", publish=True, ttl=60, now=NOW)),
            "stream.connected",
        )
        assert_reply(await client.offer("cam", PUBLISH_SDP, True), "stream.answer")
        clock["now"] = NOW + 60 + 31
        assert_reply(await client.request("stream.mute", "cam", {}), "stream.muted", 401)
        assert sfu.server.router.lookup(("live", "cam")) is not None
        assert_reply(await client.connect(token(publish=True)), "stream.connected")
        assert_reply(await client.request("stream.mute", "cam", {}), "stream.muted")


async def test_conflicts_and_not_found() -> None:
    async with running_server() as sfu, sfu.client() as a, sfu.client() as b:
        for c in (a, b):
            assert_reply(await c.connect(), "stream.connected")
        assert_reply(await b.offer("cam", PLAY_SDP, False), "stream.answer", 404)
        assert_reply(await a.offer("cam", PUBLISH_SDP, True), "stream.answer")
        # Duplicate publish from another socket, and a second offer on the same socket.
        assert_reply(await b.offer("cam", PUBLISH_SDP, True), "stream.answer", 409)
        assert_reply(await a.offer("cam", PUBLISH_SDP, True), "stream.answer", 409)
        # Publish and play of the same stream on one socket.
        assert_reply(await a.offer("cam", PLAY_SDP, False), "stream.answer", 409)
        assert_reply(await b.request("stream.mute", "cam", {}), "stream.muted", 404)
        assert_reply(await b.request("stream.close", "cam"), "stream.closed", 404)
        # The same stream name in another app is another stream.
        assert_reply(await b.request("stream.connect", data={"token": ""}, app="other"), "stream.connected")
        assert_reply(
            await b.request("stream.offer", "cam", {"publish": True, "sdp": PUBLISH_SDP}, app="other"),
            "stream.answer",
        )


async def test_missing_stream_name_is_400() -> None:
    async with running_server() as sfu, sfu.client() as c:
        assert_reply(await c.connect(), "stream.connected")
        assert_reply(await c.offer("", PUBLISH_SDP, True), "stream.answer", 400)


@pytest.mark.parametrize(
    "sdp",
    [
        "",
        "v=0",
        "hello\r\nworld",
        PUBLISH_SDP.replace("a=ice-pwd", "a=x-pwd"),
        PUBLISH_SDP.replace("a=fingerprint", "a=x-fingerprint"),
        "v=0\r\n" + "a=x\r\n" * 5000,
        PUBLISH_SDP.replace("a=setup:actpass", "a=setup:holdconn"),
    ],
    ids=["empty", "bare", "junk", "no-pwd", "no-fingerprint", "many-lines", "holdconn"],
)
async def test_hostile_sdp_is_415(sdp: str) -> None:
    async with running_server() as sfu, sfu.client() as c:
        assert_reply(await c.connect(), "stream.connected")
        reply = await c.offer("cam", sdp, True)
        assert_reply(reply, "stream.answer", 415)
        assert reply["err_msg"].startswith("SDP unusable")
        assert sfu.server.router.lookup(("live", "cam")) is None
        assert not sfu.server.connections or all(not conn.sessions for conn in sfu.server.connections)


async def test_a_refused_request_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    """The operator sees why a client was refused (at info level; the default is warning)."""
    caplog.set_level(logging.INFO, logger="trio_sfu.server.signaling_socket")
    async with running_server() as sfu, sfu.client() as c:
        assert_reply(await c.connect(), "stream.connected")
        reply = await c.offer("cam", PUBLISH_SDP.replace("a=setup:actpass", "a=setup:holdconn"), True)
        assert_reply(reply, "stream.answer", 415)
    lines = [r.getMessage() for r in caplog.records if "event=request_refused" in r.getMessage()]
    assert len(lines) == 1 and "code=415" in lines[0] and "holdconn" in lines[0], lines


async def test_session_limits() -> None:
    config = Config(max_sessions_per_socket=2, max_sessions=3)
    async with running_server(config) as sfu, sfu.client() as a, sfu.client() as b:
        for c in (a, b):
            assert_reply(await c.connect(), "stream.connected")
        assert_reply(await a.offer("s1", PUBLISH_SDP, True), "stream.answer")
        assert_reply(await a.offer("s2", PUBLISH_SDP, True), "stream.answer")
        assert_reply(await a.offer("s3", PUBLISH_SDP, True), "stream.answer", 429)
        assert_reply(await b.offer("s4", PUBLISH_SDP, True), "stream.answer")
        assert_reply(await b.offer("s5", PUBLISH_SDP, True), "stream.answer", 503)
        # Closing one frees a place.
        assert_reply(await a.request("stream.close", "s1"), "stream.closed")
        assert_reply(await b.offer("s5", PUBLISH_SDP, True), "stream.answer")


async def test_ignores_acks_and_answers_nothing() -> None:
    async with running_server() as sfu, sfu.client() as c:
        await c.ws.send_message(
            json.dumps({"version": "1.0", "method": "ack", "err": 0, "on_result": "stream.closed"})
        )
        assert_reply(await c.connect(), "stream.connected")


async def test_request_rate_limit(autojump_clock: trio.testing.MockClock) -> None:
    config = Config(requests_per_second=5, request_burst=5)
    async with running_server(config) as sfu, sfu.client() as flood, sfu.client() as calm:
        codes = [(await flood.request("stream.mute", "x"))["err"] for _ in range(10)]
        assert codes == [401] * 5 + [429] * 5
        assert_reply(await calm.connect(), "stream.connected")  # the limit is per connection
        await trio.sleep(1)
        assert (await flood.connect())["err"] == 0  # the bucket refilled


async def test_players_per_stream_and_handshakes_in_progress() -> None:
    async with (
        running_server(Config(max_players_per_stream=1)) as sfu,
        sfu.client() as pub,
        sfu.client(uid="p1") as p1,
        sfu.client(uid="p2") as p2,
    ):
        for c in (pub, p1, p2):
            assert_reply(await c.connect(), "stream.connected")
        assert_reply(await pub.offer("cam", PUBLISH_SDP, True), "stream.answer")
        assert_reply(await p1.offer("cam", PLAY_SDP, False), "stream.answer")
        reply = await p2.offer("cam", PLAY_SDP, False)
        assert_reply(reply, "stream.answer", 503)
        assert "maximum of 1 players" in reply["err_msg"]
    # No peer ever completes DTLS here, so each session holds a handshake place.
    async with running_server(Config(max_handshakes=2)) as sfu, sfu.client() as c:
        assert_reply(await c.connect(), "stream.connected")
        assert_reply(await c.offer("a", PUBLISH_SDP, True), "stream.answer")
        assert_reply(await c.offer("b", PUBLISH_SDP, True), "stream.answer")
        assert_reply(await c.offer("c", PUBLISH_SDP, True), "stream.answer", 503)
        assert_reply(await c.request("stream.close", "a"), "stream.closed")
        assert_reply(await c.offer("c", PUBLISH_SDP, True), "stream.answer")


async def real_server(config: Config, nursery: trio.Nursery) -> tuple[Server, str]:
    server = Server(attrs.evolve(config, signal=HostPort("127.0.0.1", 0)))
    await nursery.start(
        lambda task_status: server.serve(
            media_endpoints=[MemoryNetwork().endpoint()], task_status=task_status
        )
    )
    host, port = server.signal_addresses[0]
    return server, f"ws://{host}:{port}/ws"


async def test_sessions_per_client_address() -> None:
    async with trio.open_nursery() as nursery:
        _, url = await real_server(Config(max_sessions_per_address=2), nursery)
        async with open_websocket_url(url) as a, open_websocket_url(url) as b:
            codes = []
            for ws, stream in [(a, "s1"), (b, "s2"), (b, "s3")]:
                await ws.send_message(
                    json.dumps(
                        {
                            "version": "1.0",
                            "method": "stream.connect",
                            "app": "live",
                            "uid": "u",
                            "stream": "",
                            "data": {"token": ""},
                        }
                    )
                )
                await ws.get_message()
                await ws.send_message(
                    json.dumps(
                        {
                            "version": "1.0",
                            "method": "stream.offer",
                            "app": "live",
                            "uid": "u",
                            "stream": stream,
                            "data": {"publish": True, "sdp": PUBLISH_SDP},
                        }
                    )
                )
                codes.append(json.loads(await ws.get_message())["err"])
            assert codes == [0, 0, 429]  # both sockets come from 127.0.0.1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("config", "origin", "allowed"),
    [
        (Config(token_secret=SECRET), None, True),  # not a browser
        (Config(token_secret=SECRET), "http://127.0.0.1:8081", True),  # same host as the page
        (Config(token_secret=SECRET), "http://evil.example", False),
        (Config(), "http://evil.example", True),  # open development mode: any origin
        (Config(allowed_origins=("https://app.example",)), "https://app.example", True),
        (Config(allowed_origins=("https://app.example",)), "http://127.0.0.1:8081", False),
    ],
)
async def test_origin_allow_list(config: Config, origin: str | None, allowed: bool) -> None:
    async with trio.open_nursery() as nursery:
        server, url = await real_server(config, nursery)
        headers = [("Origin", origin)] if origin else []
        try:
            async with open_websocket_url(url, extra_headers=headers) as ws:
                await ws.send_message(
                    json.dumps(
                        {"version": "1.0", "method": "stream.mute", "app": "live", "stream": "s", "data": {}}
                    )
                )
                assert json.loads(await ws.get_message())["err"] == 401
            accepted = True
        except HandshakeError:
            accepted = False
        assert accepted is allowed
        assert server.limits.refused["origin"] == (0 if allowed else 1)
        nursery.cancel_scope.cancel()


async def test_one_socket_cannot_touch_another_sockets_session() -> None:
    async with running_server() as sfu, sfu.client(uid="alice") as alice, sfu.client(uid="alice") as mallory:
        for c in (alice, mallory):
            assert_reply(await c.connect(), "stream.connected")
        assert_reply(await alice.offer("cam", PUBLISH_SDP, True), "stream.answer")
        # Same app, same uid, same stream name: still another socket's session.
        assert_reply(await mallory.request("stream.mute", "cam", {"video": True}), "stream.muted", 404)
        assert_reply(await mallory.request("stream.close", "cam"), "stream.closed", 404)
        assert sfu.server.router.lookup(("live", "cam")) is not None
        data = assert_reply(await alice.request("stream.mute", "cam", {}), "stream.muted")
        assert data == {"video": False, "audio": False}


async def test_unsigned_and_wrong_algorithm_tokens_are_401(secret_config: Config) -> None:
    import base64

    def b64(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"app": "live", "publish": True, "exp": NOW + 3600}
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    from cryptography.hazmat.primitives.asymmetric import ec

    es256 = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    hs512 = jwt.encode(claims, SECRET, algorithm="HS512")
    async with running_server(secret_config) as sfu, sfu.client() as client:
        for bad in (unsigned, es256, hs512):
            assert_reply(await client.connect(bad), "stream.connected", 401)
        assert_reply(await client.connect(token(publish=True)), "stream.connected")


async def test_a_player_may_cap_its_simulcast_layer() -> None:
    """The `max_layer` extension of stream.offer (docs/protocol.md): a cap on the player's layers."""
    simulcast = fixture_sdp("chromium_offer_publish_simulcast")
    async with running_server() as sfu, sfu.client() as pub, sfu.client(uid="bob") as player:
        await pub.connect("")
        data = assert_reply(await pub.offer("cam", simulcast, True), "stream.answer")
        assert "a=simulcast:recv q;h;f" in data["sdp"]
        await player.connect("")

        def play(max_layer: object) -> dict[str, Any]:
            return {"publish": False, "sdp": PLAY_SDP, "max_layer": max_layer}

        for bad, shown in ((8, "got 8"), (-1, "got -1")):
            reply = await player.request("stream.offer", "cam", play(bad))
            assert reply["err"] == 400 and "data.max_layer" in reply["err_msg"] and shown in reply["err_msg"]
        reply = await player.request("stream.offer", "cam", play("0"))
        assert reply["err"] == 400 and "max_layer" in reply["err_msg"], reply
        assert_reply(await player.request("stream.offer", "cam", play(0)), "stream.answer")
        (session,) = [s for c in sfu.server.connections for s in c.sessions.values() if not s.publish]
        assert session.transport.handler.max_rank == 0  # type: ignore[attr-defined]
