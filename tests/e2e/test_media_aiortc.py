"""End to end with aiortc: a real publisher, real players, media decoded and checked."""

from __future__ import annotations

import socket
import time

import pytest
import trio

from trio_sfu.config import Config
from trio_sfu.server.metrics import make_registry, render
from trio_sfu.server.udp import TRUESIZE_FACTOR

from ..conftest import running_server
from ..peers.aiortc_peers import TONE_HZ, AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, session, valid_counters, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def dtls_passive(sdp: str) -> str:
    """The offer as FFmpeg's WHIP client words it: the offerer wants to be the DTLS server."""
    assert "a=setup:actpass" in sdp
    return sdp.replace("a=setup:actpass", "a=setup:passive")


async def test_server_as_dtls_client_for_publisher_and_player(aio: AsyncioThread) -> None:
    """a=setup:passive offers: the server answers active and runs the DTLS client side (RFC 5763), with
    aiortc as the DTLS server on both legs; the media must still decode."""
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub", munge=dtls_passive),
        session(sfu, aio, player, "p1", munge=dtls_passive),
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 20, 20, "20 decoded frames")
        await wait_for(lambda: player.audio_frames > 50, 10, "audio")
        assert_video_matches(player, publisher)
        for peer in (publisher, player):
            assert peer.pc is not None
            assert peer.pc.getTransceivers()[0].sender.transport._role == "server"
        assert sfu.server.totals.dtls_handshakes == 2


async def test_publisher_socket_holds_at_most_max_input_delay(aio: AsyncioThread) -> None:
    """The publisher's own socket is sized from max_input_delay (1 s of 2 Mbit/s here), not 4 MB: an
    overloaded server drops its input, counted in /metrics, instead of serving seconds-old media."""
    publisher = Publisher(audio=False)
    config = Config(max_input_delay=1.0, max_publisher_bitrate=2_000_000)
    async with running_server(config, udp=True) as sfu, session(sfu, aio, publisher, "pub"):
        (session_,) = [s for c in sfu.server.connections for s in c.sessions.values()]
        await wait_for(lambda: session_.transport._connected is not None, 10, "the peer's own socket")
        connected = session_.transport._connected
        assert connected is not None
        size = connected._socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert size == 250_000 * TRUESIZE_FACTOR, size  # room for 250 KB of media in ~2.3 KB datagram buffers
        metrics = render(make_registry(sfu.server)).decode()
        assert 'trio_sfu_dropped_packets_total{reason="input_overflow"} 0.0' in metrics


async def test_one_publisher_two_players_mute_unmute_close(aio: AsyncioThread) -> None:
    publisher, first, second = Publisher(), Player(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub") as pub,
        session(sfu, aio, first, "p1") as c1,
        session(sfu, aio, second, "p2") as c2,
    ):
        await wait_for(
            lambda: len(valid_counters(first)) >= 30 and len(valid_counters(second)) >= 30,
            20,
            "30 decoded frames at both players",
        )
        first_frame = first.frames[0][0] - first.offered_at
        await wait_for(lambda: first.audio_frames > 100 and second.audio_frames > 100, 10, "audio")
        for player in (first, second):
            assert_video_matches(player, publisher)
            assert abs(player.dominant_frequency() - TONE_HZ) < 15
            assert player.codecs == {"video": "video/VP8", "audio": "audio/opus"}
        print(f"first decoded frame {first_frame * 1000:.0f} ms after the player's offer")

        # The first player mutes video: its frames stop, its audio goes on; the second is untouched.
        reply = await c1.request("stream.mute", "cam", {"video": True})
        assert reply["data"] == {"video": True, "audio": False}
        await trio.sleep(0.5)
        frozen, audio_before, other_before = len(first.frames), first.audio_frames, len(second.frames)
        await trio.sleep(1.5)
        assert len(first.frames) == frozen
        assert first.audio_frames > audio_before + 40
        assert len(second.frames) > other_before + 15

        # Unmute: video resumes within a second or so (keyframe requested), decodes cleanly.
        unmuted = time.monotonic()
        assert (await c1.request("stream.mute", "cam", {"video": False}))["err"] == 0
        resume = await wait_for(lambda: len(valid_counters(first, unmuted)) >= 10, 10, "video after unmute")
        assert_video_matches(first, publisher, unmuted)
        print(f"video back {resume * 1000:.0f} ms after unmute")

        # The publisher mutes audio: both players are told, and their audio stops; video goes on.
        reply = await pub.request("stream.mute", "cam", {"audio": True})
        assert reply["data"] == {"video": False, "audio": True}
        for client in (c1, c2):
            with trio.fail_after(5):
                notice = await client.next_server_request()
            assert (notice["method"], notice["data"]) == ("stream.mute", {"video": False, "audio": True})
        await trio.sleep(0.5)
        audio_before, video_before = second.audio_frames, len(second.frames)
        await trio.sleep(1.5)
        assert second.audio_frames == audio_before
        assert len(second.frames) > video_before + 15
        audio_unmuted = time.monotonic()
        assert (await pub.request("stream.mute", "cam", {"audio": False}))["err"] == 0
        await wait_for(lambda: second.audio_frames > audio_before + 50, 5, "audio after unmute")
        assert abs(second.dominant_frequency() - TONE_HZ) < 15
        print(f"audio back {(time.monotonic() - audio_unmuted) * 1000:.0f} ms after unmute (50 frames)")
        for client in (c1, c2):
            await client.next_server_request()  # the unmute notice

        # The publisher closes: both players are told.
        assert (await pub.request("stream.close", "cam"))["err"] == 0
        for client in (c1, c2):
            with trio.fail_after(5):
                notice = await client.next_server_request()
            assert notice["method"] == "stream.close"
            assert notice["data"] == {"reason": "publisher_closed"}


async def test_a_publisher_closing_its_peer_connection_is_a_deliberate_close(aio: AsyncioThread) -> None:
    """The publisher's media stack ends DTLS with close_notify (aiortc's close(), FFmpeg before its WHIP
    DELETE) without a stream.close: its players hear publisher_closed, not publisher_gone, and the
    publisher's own signaling is told its session ended."""
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub") as pub,
        session(sfu, aio, player, "p1") as p1,
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 10, 20, "10 decoded frames")
        await aio.call(publisher.close)
        with trio.fail_after(5):
            notice = await p1.next_server_request()
        assert (notice["method"], notice["data"]) == ("stream.close", {"reason": "publisher_closed"})
        with trio.fail_after(5):
            own = await pub.next_server_request()
        assert (own["method"], own["data"]) == ("stream.close", {"reason": "transport_failed"})


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_each_video_codec_end_to_end(aio: AsyncioThread, codec: str) -> None:
    publisher, player = Publisher(video_codec=codec), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        session(sfu, aio, player, "p1"),
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 20, 20, f"20 {codec} frames")
        assert_video_matches(player, publisher)
        assert player.codecs["video"] == codec


async def test_audio_only_opus(aio: AsyncioThread) -> None:
    publisher, player = Publisher(video=False), Player(video=False)
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        session(sfu, aio, player, "p1"),
    ):
        await wait_for(lambda: player.audio_frames > 150, 15, "3 s of audio")
        assert abs(player.dominant_frequency() - TONE_HZ) < 15
        assert player.codecs == {"audio": "audio/opus"}
