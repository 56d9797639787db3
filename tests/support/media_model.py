"""The media model's test bench: the tracks negotiated from captured offers, fakes for the transport
and the publisher link, and RTP packets built by hand (shared by the sans-IO media tests)."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence

import attrs
import trio

from trio_sfu.media.consumer import Consumer
from trio_sfu.media.negotiation import (
    Negotiated,
    NegotiatedTrack,
    TransportParameters,
    answer_play,
    answer_publish,
)
from trio_sfu.media.producer import Producer
from trio_sfu.media.totals import Totals
from trio_sfu.server.session import ChannelBacklog
from trio_sfu.wire.rtcp import (
    RtcpPacket,
    parse_compound,
)
from trio_sfu.wire.rtp import SEQUENCE_TIMESTAMP_SSRC, RtpHeader, parse_rtp
from trio_sfu.wire.sdp import parse_offer

from ..conftest import fixture_sdp

LOCAL = TransportParameters(
    ice_ufrag="sfu1",
    ice_pwd="sfupasswordsfupassword",
    fingerprint_sha256=":".join(["AB"] * 32),
    candidates=(("127.0.0.1", 40000),),
)
SERVER_SSRC = 0x5EB5EB5E

# What the fixtures negotiate (asserted in test_fixture_negotiation_is_what_the_tests_assume).
CHROMIUM_AUDIO_SSRC = 3699866258
CHROMIUM_VIDEO_SSRC = 37704122
CHROMIUM_VIDEO_RTX_SSRC = 1317872438
CHROMIUM_OPUS, CHROMIUM_VP8, CHROMIUM_RTX = 111, 96, 97
# Chromium's extension ids: audio-level 1 (audio), abs-send-time 2, transport-cc 3, mid 4.
C_LEVEL, C_ABS, C_TCC, C_MID = 1, 2, 3, 4
AIORTC_VIDEO_SSRC = 4136699825
AIORTC_AUDIO_SSRC = 2694364936
# The aiortc player: opus/96, VP8/97 + rtx/98; mid 1, audio-level 2, abs-send-time 3.
PLAYER_OPUS, PLAYER_VP8, PLAYER_RTX = 96, 97, 98
P_MID, P_LEVEL, P_ABS = 1, 2, 3

WALL = 1_767_225_600.0  # the wall clock the legs are given (sender reports' NTP time)


# --------------------------------------------------------------------------- helpers and fakes


def publish(name: str = "chromium_offer_publish", text: str | None = None) -> Negotiated:
    return answer_publish(parse_offer(text if text is not None else fixture_sdp(name)), LOCAL)


def play(published: Sequence[NegotiatedTrack], name: str = "aiortc_offer_play") -> Negotiated:
    ssrcs = itertools.count(0x50000001)
    return answer_play(parse_offer(fixture_sdp(name)), LOCAL, published, lambda: next(ssrcs))


class FakeLink:
    """The publisher as a producer sees it: records keyframe requests and NACKs."""

    def __init__(self) -> None:
        self.keyframes: list[Producer] = []
        self.nacks: list[tuple[Producer, list[int]]] = []

    def send_keyframe_request(self, producer: Producer) -> None:
        self.keyframes.append(producer)

    def send_nack(self, producer: Producer, sequences: list[int]) -> None:
        self.nacks.append((producer, list(sequences)))


class FakeTransport:
    """The transport sink: takes every RTP and RTCP packet at once and keeps it."""

    def __init__(self) -> None:
        self.totals = Totals()
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        self.rtp.append(packet)
        return True

    def send_rtp_as(self, packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bool:
        patched = bytearray(packet)
        SEQUENCE_TIMESTAMP_SSRC.pack_into(patched, 2, sequence, timestamp, ssrc)
        return self.send_rtp(bytes(patched))

    def send_rtcp(self, packet: bytes) -> bool:
        self.rtcp.append(packet)
        return True

    def rtcp_packets(self) -> list[RtcpPacket]:
        return [item for datagram in self.rtcp for item in parse_compound(datagram)]


def rtp_packet(
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload_type: int,
    payload: bytes = b"payload",
    *,
    marker: bool = False,
    extensions: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """An RTP packet with a one-byte-form (RFC 8285) extension block when `extensions` is not empty."""
    first = 0x80
    block = b""
    elements = b"".join(bytes([(ident << 4) | (len(value) - 1)]) + value for ident, value in extensions)
    if elements:
        first |= 0x10
        elements += bytes(-len(elements) % 4)
        block = struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements
    second = (0x80 if marker else 0) | payload_type
    fixed = struct.pack("!BBHII", first, second, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc)
    return fixed + block + payload


def header(packet: bytes) -> RtpHeader:
    parsed = parse_rtp(packet)
    assert parsed is not None
    return parsed


# RFC 7741 payload descriptor S=1, PID=0, then the VP8 frame header's first byte (P bit 0 / 1).
VP8_KEYFRAME = b"\x10\x50keyframe"
VP8_DELTA = b"\x10\x51delta"


def payload_of(packet: bytes) -> bytes:
    return packet[header(packet).header_length :]


def extension_elements(packet: bytes) -> list[tuple[int, bytes]]:
    """Every (id, value) of a one-byte-form extension block, in order; [] without a block."""
    parsed = header(packet)
    if parsed.extension_offset < 0:
        return []
    profile, words = struct.unpack_from("!HH", packet, parsed.extension_offset)
    assert profile == 0xBEDE
    pos, end = parsed.extension_offset + 4, parsed.extension_offset + 4 + 4 * words
    elements = []
    while pos < end:
        if packet[pos] == 0:
            pos += 1
            continue
        ident, length = packet[pos] >> 4, (packet[pos] & 0x0F) + 1
        elements.append((ident, packet[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return elements


class Setup:
    """Producers for a publish fixture, and one aiortc player consuming all of them."""

    def __init__(
        self,
        publish_fixture: str = "chromium_offer_publish",
        *,
        rtx: bool = True,
    ) -> None:
        self.published = publish(publish_fixture)
        self.link = FakeLink()
        self.producers = {t.kind: Producer(t, self.link) for t in self.published.tracks}
        self.played = play(self.published.tracks)
        self.sink = FakeTransport()
        self.consumers: dict[str, Consumer] = {}
        self.backlogs: list[trio.MemoryReceiveChannel[bytes]] = []
        for track in self.played.tracks:
            if not rtx:
                track = attrs.evolve(track, rtx_payload_type=None, rtx_ssrc=None)
            producer = self.producers[track.kind]
            send, receive = trio.open_memory_channel[bytes](16)
            self.backlogs.append(receive)
            consumer = Consumer(None, producer, track, self.sink, ChannelBacklog(send))
            consumer.awaiting_keyframe = False  # these tests send synthetic payloads; gating is tested apart
            producer.add_player(consumer)
            self.consumers[track.kind] = consumer

    def video(
        self,
        sequence: int,
        timestamp: int,
        now: float,
        payload: bytes = b"vp8",
        *,
        marker: bool = False,
        extensions: Iterable[tuple[int, bytes]] = (),
    ) -> bytes:
        """A Chromium video packet, received by the video producer (cached and forwarded)."""
        packet = rtp_packet(
            sequence,
            timestamp,
            CHROMIUM_VIDEO_SSRC,
            CHROMIUM_VP8,
            payload,
            marker=marker,
            extensions=extensions,
        )
        self.producers["video"].receive(packet, header(packet), now)
        return packet
