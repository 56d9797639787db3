"""WHIP and WHEP status codes (RFC 9725 and the WHEP draft), sans browser: the server's HTTP handler
over in-memory streams, offers captured from real peers.

Each refusal has its documented status and a body that says what to change, and none of them
disturbs a session that is running.
"""

from __future__ import annotations

import re
import time

import h11
import pytest
import trio

from trio_sfu.config import Config
from trio_sfu.server.server import Server
from trio_sfu.signaling.auth import mint_token

from ..conftest import fixture_sdp, running_server
from .test_http import Reply, http_stream, read_response

SECRET = "a-secret-for-the-whip-conformance-tests-0123456789"
SDP = "application/sdp"


async def send(
    server: Server, method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None
) -> Reply:
    async with http_stream(server) as stream:
        client = h11.Connection(h11.CLIENT)
        fields = [("host", "sfu.test"), ("content-length", str(len(body))), *(headers or [])]
        data = client.send(h11.Request(method=method, target=path, headers=fields))
        if body:
            data += client.send(h11.Data(data=body))
        await stream.send_all(data + client.send(h11.EndOfMessage()))
        return await read_response(client, stream)


def token(**grants: bool) -> str:
    return mint_token(SECRET, "live", now=time.time(), **grants)  # type: ignore[arg-type]


def bearer(value: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {value}")


def two_video_tracks(offer: str) -> str:
    """Chromium's publish offer with its video section twice (a second camera)."""
    video = offer[offer.index("m=video"):]
    second = video.replace("a=mid:1", "a=mid:2")
    second = re.sub(r"a=ssrc:(\d+)", lambda m: f"a=ssrc:{int(m[1]) + 7}", second)
    group = r"a=ssrc-group:FID (\d+) (\d+)"
    second = re.sub(group, lambda m: f"a=ssrc-group:FID {int(m[1]) + 7} {int(m[2]) + 7}", second)
    return offer.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + second


async def test_whip_and_whep_answer_every_case_with_its_status() -> None:
    publish_offer = fixture_sdp("chromium_offer_publish").encode()
    play_offer = fixture_sdp("chromium_offer_play").encode()
    async with running_server(Config(token_secret=SECRET)) as sfu:
        server = sfu.server
        publisher = [bearer(token(publish=True)), ("content-type", SDP)]

        # Preflight: CORS and what POST takes.
        reply = await send(server, "OPTIONS", "/whip/live/cam")
        assert reply.status == 204
        assert reply.headers["accept-post"] == SDP and reply.headers["access-control-allow-origin"] == "*"
        assert "POST" in reply.headers["access-control-allow-methods"]
        assert "Authorization" in reply.headers["access-control-allow-headers"]
        # Wrong method, wrong type, bad SDP, two tracks of a kind, no token, no grant.
        assert (await send(server, "GET", "/whip/live/cam")).status == 405
        wrong_type = await send(server, "POST", "/whip/live/cam", publish_offer,
                                [bearer(token(publish=True)), ("content-type", "application/json")])
        assert wrong_type.status == 415 and wrong_type.headers["accept-post"] == SDP
        assert (await send(server, "POST", "/whip/live/cam", b"v=0\r\nnot sdp", publisher)).status == 400
        assert (await send(server, "POST", "/whip/live/cam", b"\xff\xfe", publisher)).status == 400
        two = two_video_tracks(publish_offer.decode()).encode()
        refused = await send(server, "POST", "/whip/live/cam", two, publisher)
        assert refused.status == 422 and b"one video track" in refused.body
        anonymous = await send(server, "POST", "/whip/live/cam", publish_offer, [("content-type", SDP)])
        assert anonymous.status == 401
        forged = mint_token("another-secret-entirely-0123456789abcdef", "live", publish=True, now=time.time())
        assert (await send(server, "POST", "/whip/live/cam", publish_offer,
                           [bearer(forged), ("content-type", SDP)])).status == 401
        no_grant = [bearer(token(play=True)), ("content-type", SDP)]
        assert (await send(server, "POST", "/whip/live/cam", publish_offer, no_grant)).status == 403
        assert (await send(server, "POST", "/whip/live", publish_offer, publisher)).status == 404

        # WHEP of a stream nobody publishes: 404.
        player = [bearer(token(play=True)), ("content-type", SDP)]
        assert (await send(server, "POST", "/whep/live/cam", play_offer, player)).status == 404

        # Publish: 201 with the answer, its Location and ETag; a second publish of the stream is 409.
        created = await send(server, "POST", "/whip/live/cam", publish_offer, publisher)
        assert created.status == 201, created.body
        assert created.headers["content-type"] == SDP and created.body.startswith(b"v=0")
        location, etag = created.headers["location"], created.headers["etag"]
        assert location.startswith("/session/") and etag.startswith('"')
        assert "Location" in created.headers["access-control-expose-headers"]
        assert server.router.lookup(("live", "cam")) is not None
        assert (await send(server, "POST", "/whip/live/cam", publish_offer, publisher)).status == 409

        # WHEP of it: 201 too.
        watched = await send(server, "POST", "/whep/live/cam", play_offer, player)
        assert watched.status == 201 and b"a=sendonly" in watched.body

        # PATCH: trickle is fine (204), an ICE restart is not (422), a stale ETag is 412, a wrong type 415.
        candidate = b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n"
        trickle = b"a=ice-ufrag:" + _ufrag(publish_offer) + b"\r\n" + candidate
        frag = [("content-type", "application/trickle-ice-sdpfrag")]
        assert (await send(server, "PATCH", location, trickle, [*frag, ("if-match", etag)])).status == 204
        stale = await send(server, "PATCH", location, trickle, [*frag, ("if-match", '"stale"')])
        assert stale.status == 412
        restart = b"a=ice-ufrag:newufrag\r\na=ice-pwd:newpasswordnewpassword12\r\n"
        assert (await send(server, "PATCH", location, restart, frag)).status == 422
        assert (await send(server, "PATCH", location, trickle, [("content-type", SDP)])).status == 415
        assert (await send(server, "OPTIONS", location)).headers["accept-patch"] == (
            "application/trickle-ice-sdpfrag")
        assert (await send(server, "GET", location)).status == 405

        # An offer bigger than the signaling message limit: 413, and the session above is untouched.
        huge = publish_offer + b"a=x-padding:" + b"x" * (server.config.max_message_size + 1) + b"\r\n"
        assert (await send(server, "POST", "/whip/live/other", huge, publisher)).status == 413
        assert server.router.lookup(("live", "cam")) is not None

        # DELETE: 200, the stream is gone; again: 404.
        assert (await send(server, "DELETE", location)).status == 200
        with trio.fail_after(5):
            while server.router.lookup(("live", "cam")) is not None:
                await trio.sleep(0.01)
        assert (await send(server, "DELETE", location)).status == 404
        assert (await send(server, "DELETE", "/session/never-was")).status == 404


def _ufrag(offer: bytes) -> bytes:
    found = re.search(rb"a=ice-ufrag:(\S+)", offer)
    assert found is not None
    return found[1]


@pytest.mark.parametrize("path", ["/whip/live/cam", "/whep/live/cam"])
async def test_open_mode_takes_no_token(path: str) -> None:
    """With no key configured (development), WHIP and WHEP need no Authorization, as the WebSocket."""
    async with running_server() as sfu:
        offer = fixture_sdp("chromium_offer_publish").encode()
        created = await send(sfu.server, "POST", "/whip/live/cam", offer, [("content-type", SDP)])
        assert created.status == 201
        if path.startswith("/whep"):
            play = fixture_sdp("chromium_offer_play").encode()
            assert (await send(sfu.server, "POST", path, play, [("content-type", SDP)])).status == 201
