"""RTCP feedback end to end with aiortc: REMB to the publisher, keyframes for late players, sender
reports to players, and a player that cannot decode what is published."""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

import pytest
import trio

from trio_sfu.config import Config

from ..conftest import running_server
from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, player_session, session, valid_counters, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

AIORTC_VP8_DEFAULT = 500_000  # aiortc.codecs.vpx DEFAULT_BITRATE
AIORTC_VP8_MAX = 1_500_000  # aiortc.codecs.vpx MAX_BITRATE: the encoder clamps REMB to it


def video_encoder_bitrate(publisher: Publisher) -> int | None:
    """The target bitrate of the publisher's VP8 encoder, None before the first frame is encoded.

    aiortc keeps the encoder private: RTCRtpSender.__encoder (name-mangled below) is set when the first
    frame is encoded, and `_handle_rtcp_packet` sets its `target_bitrate` from a REMB naming the
    sender's SSRC. Read from the trio thread: a single attribute read, harmless to race.
    """
    assert publisher.pc is not None
    for sender in publisher.pc.getSenders():
        if sender.kind == "video":
            encoder = getattr(sender, "_RTCRtpSender__encoder", None)
            return None if encoder is None else int(encoder.target_bitrate)
    return None


@pytest.mark.parametrize(
    ("max_bitrate", "expected"),
    [(None, AIORTC_VP8_MAX), (800_000, 800_000)],
    ids=["default-clamped", "800k"],
)
async def test_remb_raises_the_publisher_encoder_bitrate(
    aio: AsyncioThread, max_bitrate: int | None, expected: int
) -> None:
    config = Config() if max_bitrate is None else Config(max_publisher_bitrate=max_bitrate)
    assert config.max_publisher_bitrate >= expected  # default 2.5 Mbit/s: aiortc clamps to 1.5
    publisher = Publisher()
    async with running_server(config, udp=True) as sfu, session(sfu, aio, publisher, "pub"):
        await wait_for(lambda: video_encoder_bitrate(publisher) is not None, 10, "the encoder")
        first = video_encoder_bitrate(publisher)
        took = await wait_for(lambda: video_encoder_bitrate(publisher) == expected, 5, f"{expected} bit/s")
        print(
            f"encoder target bitrate: first seen {first} bit/s, {expected} bit/s "
            f"{took * 1000:.0f} ms later (server REMB {config.max_publisher_bitrate} bit/s)"
        )
        assert first in (AIORTC_VP8_DEFAULT, expected)
        assert sfu.server.totals.rtcp_packets_out > 0
        await trio.sleep(1.5)  # later REMBs keep it there
        assert video_encoder_bitrate(publisher) == expected


def silence_keyframe_requests(player: Player) -> None:
    """Stop the aiortc player from sending PLIs of its own (it sends one when its decoder fails on a
    delta frame), so only the server can ask the publisher for the keyframe. Private aiortc API:
    RTCRtpReceiver._send_rtcp_pli(media_ssrc) is the only place its receiver sends a PLI."""

    async def no_pli(media_ssrc: int) -> None:
        return None

    assert player.pc is not None
    for receiver in player.pc.getReceivers():
        receiver._send_rtcp_pli = no_pli  # type: ignore[method-assign]


async def test_late_player_gets_a_keyframe_at_once(aio: AsyncioThread) -> None:
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        sfu.client(uid="late") as client,
    ):
        await trio.sleep(4)  # past aiortc's first keyframes: its next one is 3000 frames away
        assert len(publisher.video.sent) > 60
        requests_before = sfu.server.totals.keyframe_requests
        assert (await client.connect())["err"] == 0
        player.offered_at = time.monotonic()
        offer = await aio.call(player.offer)
        silence_keyframe_requests(player)
        reply = await client.offer("cam", offer, False)
        assert reply["err"] == 0, reply
        await aio.call(player.answer, reply["data"]["sdp"])
        try:
            await wait_for(lambda: len(player.frames) > 0, 5, "the late player's first frame")
            first_frame = player.frames[0][0] - player.offered_at
            print(f"late player: first decoded frame {first_frame * 1000:.0f} ms after its offer")
            assert first_frame < 1.5
            await wait_for(lambda: len(valid_counters(player)) >= 15, 5, "15 frames at the late player")
            assert_video_matches(player, publisher)
            # The keyframe cache started it: the publisher was not asked (the cache holds aiortc's
            # last keyframe and everything since: a few hundred packets here).
            (video,) = [c for c, _ in player_session(sfu, "late").consumers if c.kind == "video"]
            assert video.counters["keyframe_cache_starts"] == 1
            assert sfu.server.totals.keyframe_requests == requests_before
        finally:
            await aio.call(player.close)


async def test_player_without_the_published_codec_gets_415(aio: AsyncioThread) -> None:
    publisher, player = Publisher(video_codec="video/VP8"), Player(video_codec="video/H264")
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        sfu.client(uid="h264-only") as client,
    ):
        assert (await client.connect())["err"] == 0
        offer = await aio.call(player.offer)
        video = offer[offer.index("m=video") :]
        assert "H264/90000" in video and "VP8" not in video
        try:
            reply = await client.offer("cam", offer, False)
        finally:
            await aio.call(player.close)
        assert reply["err"] == 415, reply
        message = reply["err_msg"]
        print(f"415: {message}")
        assert "VP8/90000" in message and "video" in message
        assert sfu.server.router.lookup(("live", "cam")) is not None  # the publication is untouched
        # The same connection can still play with a player that has VP8.
        other = Player()
        reply = await client.offer("cam", await aio.call(other.offer), False)
        try:
            assert reply["err"] == 0, reply
            await aio.call(other.answer, reply["data"]["sdp"])
            await wait_for(lambda: len(valid_counters(other)) >= 5, 10, "frames at a VP8 player")
        finally:
            await aio.call(other.close)


async def remote_outbound_stats(player: Player) -> list[dict[str, Any]]:
    """The last sender report each of the player's receivers got (aiortc's remote-outbound-rtp)."""
    assert player.pc is not None
    found = []
    for receiver in player.pc.getReceivers():
        report = await receiver.getStats()
        for stats in report.values():
            if stats.type == "remote-outbound-rtp":
                found.append(
                    {
                        "kind": receiver.track.kind,
                        "ssrc": stats.ssrc,
                        "ntp": stats.remoteTimestamp,
                        "packets": stats.packetsSent,
                        "octets": stats.bytesSent,
                    }
                )
    return found


async def test_players_receive_sender_reports(aio: AsyncioThread) -> None:
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        sfu.client(uid="p1") as client,
    ):
        assert (await client.connect())["err"] == 0
        reply = await client.offer("cam", await aio.call(player.offer), False)
        assert reply["err"] == 0, reply
        answer = reply["data"]["sdp"]
        await aio.call(player.answer, answer)
        try:
            # The media SSRCs the answer announces, by kind (the first of each FID group).
            announced: dict[str, int] = {}
            for section in answer.split("m=")[1:]:
                kind = section.split(" ", 1)[0]
                ssrcs = re.findall(r"a=ssrc:(\d+) ", section)
                if ssrcs:
                    announced[kind] = int(ssrcs[0])
            assert set(announced) == {"audio", "video"}
            await wait_for(
                lambda: len(valid_counters(player)) >= 20 and player.audio_frames > 100, 10, "media"
            )
            await trio.sleep(2.5)  # sender reports go out once a second
            stats = await aio.call(remote_outbound_stats, player)
            now = datetime.datetime.now(datetime.UTC)
            by_kind = {s["kind"]: s for s in stats}
            assert set(by_kind) == {"audio", "video"}, stats
            for kind, entry in by_kind.items():
                assert entry["ssrc"] == announced[kind]
                skew = (entry["ntp"] - now).total_seconds()
                print(
                    f"{kind}: SR ssrc {entry['ssrc']} NTP {skew:+.3f} s from now, {entry['packets']} packets"
                )
                assert abs(skew) < 3, (kind, entry["ntp"], now)
                assert entry["packets"] > 50 and entry["octets"] > 1000
        finally:
            await aio.call(player.close)
