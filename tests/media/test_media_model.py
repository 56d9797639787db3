"""The media model, sans-IO: producers, consumers, and the RTCP each side of the server terminates.

Bytes in, bytes out, with fakes standing in for the transport and the publisher link. The tracks are
negotiated from the captured offers in tests/fixtures/sdp (a Chromium or aiortc publisher, an aiortc
player), so payload types, extension ids and SSRCs are the ones real peers use.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from typing import cast

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_sfu.media.consumer import NTP_UNITS, Consumer
from trio_sfu.media.negotiation import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_TRANSPORT_CC,
)
from trio_sfu.media.player import PlayerMedia
from trio_sfu.media.producer import CACHE_SIZE, KEYFRAME_INTERVAL, ClockMapping, Producer, ReceptionStats
from trio_sfu.media.publisher import PublisherMedia
from trio_sfu.media.rewriter import abs_send_time, stamp_abs_send_time
from trio_sfu.server.session import ChannelBacklog
from trio_sfu.server.transport_driver import TransportDriver
from trio_sfu.wire.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    Sdes,
    SenderReport,
    TransportCc,
    ntp_timestamp,
    parse_compound,
    serialize,
    serialize_compound,
)
from trio_sfu.wire.rtp import parse_rtp

from ..conftest import fixture_sdp
from ..support.media_model import (
    AIORTC_AUDIO_SSRC,
    AIORTC_VIDEO_SSRC,
    C_ABS,
    C_LEVEL,
    C_MID,
    C_TCC,
    CHROMIUM_AUDIO_SSRC,
    CHROMIUM_OPUS,
    CHROMIUM_RTX,
    CHROMIUM_VIDEO_RTX_SSRC,
    CHROMIUM_VIDEO_SSRC,
    CHROMIUM_VP8,
    P_ABS,
    P_LEVEL,
    P_MID,
    PLAYER_OPUS,
    PLAYER_RTX,
    PLAYER_VP8,
    SERVER_SSRC,
    VP8_DELTA,
    VP8_KEYFRAME,
    WALL,
    FakeLink,
    FakeTransport,
    Setup,
    extension_elements,
    header,
    payload_of,
    play,
    publish,
    rtp_packet,
)


def test_fixture_negotiation_is_what_the_tests_assume() -> None:
    published = {t.kind: t for t in publish().tracks}
    video, audio = published["video"], published["audio"]
    assert (video.ssrc, video.rtx_ssrc, video.codec.payload_type, video.rtx_payload_type) == (
        CHROMIUM_VIDEO_SSRC,
        CHROMIUM_VIDEO_RTX_SSRC,
        CHROMIUM_VP8,
        CHROMIUM_RTX,
    )
    assert (audio.ssrc, audio.codec.payload_type) == (CHROMIUM_AUDIO_SSRC, CHROMIUM_OPUS)
    ids = {e.uri: e.id for e in audio.header_extensions}
    assert ids == {
        EXT_AUDIO_LEVEL: C_LEVEL,
        EXT_ABS_SEND_TIME: C_ABS,
        EXT_TRANSPORT_CC: C_TCC,
        EXT_MID: C_MID,
    }
    assert "goog-remb" in video.feedback and "transport-cc" in video.feedback
    played = {t.kind: t for t in play(publish().tracks).tracks}
    assert (played["video"].codec.payload_type, played["video"].rtx_payload_type) == (PLAYER_VP8, PLAYER_RTX)
    assert played["audio"].codec.payload_type == PLAYER_OPUS
    assert {e.uri: e.id for e in played["video"].header_extensions} == {
        EXT_MID: P_MID,
        EXT_ABS_SEND_TIME: P_ABS,
    }
    assert {e.uri: e.id for e in played["audio"].header_extensions} == {
        EXT_MID: P_MID,
        EXT_AUDIO_LEVEL: P_LEVEL,
    }
    aiortc = {t.kind: t for t in publish("aiortc_offer_publish").tracks}
    assert (aiortc["video"].ssrc, aiortc["audio"].ssrc) == (AIORTC_VIDEO_SSRC, AIORTC_AUDIO_SSRC)
    assert "goog-remb" in aiortc["video"].feedback
    assert all(e.uri != EXT_TRANSPORT_CC for e in aiortc["video"].header_extensions)


# --------------------------------------------------------------------------- Producer


def producer_pair() -> tuple[Producer, Producer, FakeLink]:
    tracks = {t.kind: t for t in publish().tracks}
    link = FakeLink()
    return Producer(tracks["video"], link), Producer(tracks["audio"], link), link


def test_keyframe_requests_are_throttled_with_one_pending() -> None:
    video, _, link = producer_pair()
    for i in range(10):  # ten players asking within 360 ms
        video.request_keyframe(100.0 + i * 0.04)
    assert link.keyframes == [video]
    assert video.keyframe_pending
    video.tick(100.0 + KEYFRAME_INTERVAL - 0.01)
    assert len(link.keyframes) == 1
    video.tick(100.0 + KEYFRAME_INTERVAL)
    assert len(link.keyframes) == 2 and not video.keyframe_pending
    video.tick(102.0)
    video.tick(103.0)
    assert len(link.keyframes) == 2  # nothing pending: nothing more
    video.request_keyframe(103.0)  # long after the last one: at once
    assert len(link.keyframes) == 3
    assert video.keyframe_requests == 3


def test_one_request_alone_sends_nothing_later() -> None:
    video, _, link = producer_pair()
    video.request_keyframe(5.0)
    for t in (5.2, 5.6, 6.0, 9.0):
        video.tick(t)
    assert len(link.keyframes) == 1


def test_no_keyframe_requests_for_audio() -> None:
    _, audio, link = producer_pair()
    for i in range(5):
        audio.request_keyframe(i * 1.0)
        audio.tick(i * 1.0 + 0.6)
    assert link.keyframes == [] and audio.keyframe_requests == 0


def test_cache_returns_packets_until_overwritten() -> None:
    video, _, _ = producer_pair()
    first = rtp_packet(5, 1000, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, b"first")
    video.receive(first, header(first), 1.0)
    assert video.cached(5) == first
    assert video.cached(77) is None  # never seen
    assert video.cached(5 + CACHE_SIZE) is None  # same slot, different packet
    for sequence in range(6, 5 + CACHE_SIZE):
        packet = rtp_packet(sequence, 1000, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8)
        video.receive(packet, header(packet), 1.0)
    assert video.cached(5) == first  # 1023 later: still there
    later = rtp_packet(5 + CACHE_SIZE, 2000, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, b"later")
    video.receive(later, header(later), 2.0)
    assert video.cached(5) is None
    assert video.cached(5 + CACHE_SIZE) == later


def test_cache_across_the_sequence_wrap() -> None:
    video, _, _ = producer_pair()
    for sequence in (65534, 65535, 0, 1):
        packet = rtp_packet(sequence, 0, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, bytes([sequence & 0xFF]))
        video.receive(packet, header(packet), 0.0)
    assert [payload_of(video.cached(s) or b"") for s in (65534, 65535, 0, 1)] == [
        b"\xfe",
        b"\xff",
        b"\x00",
        b"\x01",
    ]


def test_report_block_loss_fraction_and_cumulative_loss() -> None:
    stats = ReceptionStats(90000)
    for sequence in range(100, 110):
        if sequence not in (103, 104):
            stats.update(sequence, sequence * 3000, sequence / 30)
    block = stats.report_block(7, None, 10.0)
    assert block.ssrc == 7
    assert block.highest_sequence == 109
    assert block.packets_lost == 2
    assert block.fraction_lost == (2 << 8) // 10
    assert (block.last_sr, block.delay_since_last_sr) == (0, 0)
    for sequence in range(110, 120):  # the next interval loses nothing
        stats.update(sequence, sequence * 3000, sequence / 30)
    block = stats.report_block(7, None, 11.0)
    assert block.fraction_lost == 0
    assert block.packets_lost == 2  # cumulative
    assert block.highest_sequence == 119
    for sequence in range(120, 140, 2):  # then every other packet
        stats.update(sequence, sequence * 3000, sequence / 30)
    block = stats.report_block(7, None, 12.0)
    assert block.packets_lost == 2 + 9
    assert block.fraction_lost == (9 << 8) // 19


def test_report_block_counts_sequence_wrap_cycles() -> None:
    stats = ReceptionStats(48000)
    sequences = [*range(65530, 65536), *range(0, 6)]
    for i, sequence in enumerate(sequences):
        stats.update(sequence, i * 960, i * 0.02)
    block = stats.report_block(1, None, 1.0)
    assert block.highest_sequence == 0x10000 + 5
    assert block.packets_lost == 0 and block.fraction_lost == 0
    for i, sequence in enumerate([*range(6, 65536), *range(0, 3)]):  # a second wrap, 1 packet lost
        if sequence != 500:
            stats.update(sequence, (i + 12) * 960, (i + 12) * 0.02)
    block = stats.report_block(1, None, 2.0)
    assert block.highest_sequence == 0x20000 + 2
    assert block.packets_lost == 1


def test_jitter_zero_for_perfect_timing_and_positive_for_jittered_arrivals() -> None:
    perfect = ReceptionStats(90000)
    jittered = ReceptionStats(90000)
    rng = random.Random(3)
    for i in range(300):
        perfect.update(i, 1234 + i * 3000, 50.0 + i * 3000 / 90000)
        jittered.update(i, 1234 + i * 3000, 50.0 + i * 3000 / 90000 + rng.uniform(0, 0.02))
    assert perfect.report_block(1, None, 60.0).jitter == 0
    jitter = jittered.report_block(1, None, 60.0).jitter
    # Uniform 0-20 ms arrivals: mean |D| is 6.7 ms, 600 timestamp units at 90 kHz.
    assert 300 < jitter < 1000, jitter


def test_report_block_lsr_and_dlsr_from_a_sender_report() -> None:
    video, _, _ = producer_pair()
    packet = rtp_packet(1, 0, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8)
    video.receive(packet, header(packet), 20.0)
    report = SenderReport(CHROMIUM_VIDEO_SSRC, 0x0123456789ABCDEF, 5555, 10, 1000)
    video.on_sender_report(report, 20.25)
    assert video.clock == ClockMapping(0x0123456789ABCDEF, 5555, 20.25)
    block = video.stats.report_block(CHROMIUM_VIDEO_SSRC, video.clock, 21.0)
    assert block.last_sr == 0x456789AB
    assert block.delay_since_last_sr == int(0.75 * 65536)


# --------------------------------------------------------------------------- Consumer


def test_forward_rewrites_video_for_the_player() -> None:
    s = Setup()
    consumer, played = s.consumers["video"], s.consumers["video"].played
    extensions = [(C_MID, b"1"), (C_ABS, b"\x12\x34\x56"), (C_TCC, b"\x00\x2a")]
    s.video(1000, 90000, 1.0, b"frame-1", marker=True, extensions=extensions)
    s.video(1001, 93000, 1.033, b"frame-2", extensions=extensions)
    assert len(s.sink.rtp) == 2
    first, second = (header(p) for p in s.sink.rtp)
    assert first.ssrc == second.ssrc == played.ssrc == consumer.ssrc
    assert first.payload_type == second.payload_type == PLAYER_VP8
    assert first.marker and not second.marker
    assert second.sequence == (first.sequence + 1) & 0xFFFF
    assert second.timestamp == (first.timestamp + 3000) & 0xFFFFFFFF
    assert [payload_of(p) for p in s.sink.rtp] == [b"frame-1", b"frame-2"]
    # abs-send-time under the player's id, stamped with our send time (the player's estimate is of the
    # path from us); transport-cc (not offered to players) and mid removed.
    assert extension_elements(s.sink.rtp[0]) == [(P_ABS, abs_send_time(1.0))]
    assert extension_elements(s.sink.rtp[1]) == [(P_ABS, abs_send_time(1.033))]
    assert consumer.rewriter.packets == 2


def test_forward_rewrites_audio_extension_ids_and_drops_mid() -> None:
    s = Setup()
    extensions = [(C_LEVEL, b"\x9a"), (C_ABS, b"abc"), (C_TCC, b"\x00\x01"), (C_MID, b"0")]
    packet = rtp_packet(7, 960, CHROMIUM_AUDIO_SSRC, CHROMIUM_OPUS, b"opus", extensions=extensions)
    s.producers["audio"].receive(packet, header(packet), 3.0)
    (out,) = s.sink.rtp
    assert header(out).payload_type == PLAYER_OPUS
    assert header(out).ssrc == s.consumers["audio"].ssrc
    # The publisher's audio-level id (1) is the player's mid id: the value must not be read as mid.
    assert extension_elements(out) == [(P_LEVEL, b"\x9a")]
    assert payload_of(out) == b"opus"


def test_mid_alone_leaves_no_extension_block() -> None:
    s = Setup()
    s.video(1, 0, 0.0, b"x", extensions=[(C_MID, b"1")])
    (out,) = s.sink.rtp
    assert header(out).extension_offset == -1
    assert payload_of(out) == b"x"


def forward_ten(s: Setup, start: int = 1000, skip: Iterable[int] = ()) -> list[bytes]:
    skipped = set(skip)
    for i in range(10):
        if start + i not in skipped:
            payload = bytes([i]) * 40
            s.video(
                start + i, 180000 + 3000 * i, 10.0 + i / 30, payload, extensions=[(C_ABS, b"\x01\x02\x03")]
            )
    out = list(s.sink.rtp)
    s.sink.rtp.clear()
    return out


def test_retransmit_as_rtx() -> None:
    s = Setup()
    consumer, played = s.consumers["video"], s.consumers["video"].played
    assert played.rtx_payload_type == PLAYER_RTX and played.rtx_ssrc is not None
    sent = forward_ten(s)
    originals = [header(p) for p in sent]
    lost = (originals[2].sequence, originals[5].sequence)
    assert consumer.retransmit(lost, 11.0) == []
    assert len(s.sink.rtp) == 2
    rtx_sequences = []
    for rtx, index in zip(s.sink.rtp, (2, 5), strict=True):
        rtx_header, original = header(rtx), originals[index]
        assert rtx_header.payload_type == PLAYER_RTX
        assert rtx_header.ssrc == played.rtx_ssrc
        assert rtx_header.timestamp == original.timestamp
        assert rtx_header.marker == original.marker
        body = payload_of(rtx)
        assert int.from_bytes(body[:2], "big") == original.sequence  # RFC 4588 OSN: the player's number
        assert body[2:] == payload_of(sent[index])
        assert extension_elements(rtx) == [(P_ABS, abs_send_time(11.0))]  # sent again now
        rtx_sequences.append(rtx_header.sequence)
    # Its own sequence space: consecutive, not the media sequence numbers.
    assert rtx_sequences[1] == (rtx_sequences[0] + 1) & 0xFFFF
    assert consumer.counters["nack_answered"] == 2
    s.sink.rtp.clear()
    consumer.retransmit((originals[9].sequence,), 11.1)
    assert header(s.sink.rtp[0]).sequence == (rtx_sequences[1] + 1) & 0xFFFF


def test_retransmit_without_rtx_resends_the_same_packet() -> None:
    s = Setup(rtx=False)
    consumer = s.consumers["video"]
    sent = forward_ten(s)
    originals = [header(p) for p in sent]
    assert consumer.retransmit((originals[3].sequence, originals[4].sequence), 11.0) == []
    # Byte for byte (same SSRC, PT, sequence, timestamp) but for abs-send-time: sent again now.
    restamped = [bytearray(p) for p in sent[3:5]]
    for packet in restamped:
        assert stamp_abs_send_time(packet, P_ABS, 11.0)
    assert s.sink.rtp == [bytes(p) for p in restamped]


def test_retransmit_returns_what_the_cache_lacks() -> None:
    s = Setup()
    consumer = s.consumers["video"]
    sent = forward_ten(s)
    # A packet the consumer forwarded but the producer's cache does not hold (as if evicted).
    uncached = rtp_packet(1010, 210000, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, b"gone")
    consumer.forward(uncached, header(uncached), 10.4)
    out = header(s.sink.rtp.pop())
    assert out.sequence == (header(sent[-1]).sequence + 1) & 0xFFFF
    assert consumer.retransmit((out.sequence, header(sent[0]).sequence), 11.0) == [1010]
    assert consumer.counters["nack_missed"] == 1 and consumer.counters["nack_answered"] == 1
    assert len(s.sink.rtp) == 1


def test_retransmit_reports_packets_lost_upstream() -> None:
    s = Setup()
    consumer = s.consumers["video"]
    sent = forward_ten(s, skip={1005})  # 1005 was lost between the publisher and the server
    first = header(sent[0]).sequence
    assert [header(p).sequence for p in sent] == [(first + i) & 0xFFFF for i in range(10) if i != 5]
    # The player sees the hole at first + 5 and NACKs it: only the publisher can repair it.
    assert consumer.retransmit(((first + 5) & 0xFFFF,), 11.0) == [1005]


def test_sender_report_follows_the_publisher_clock() -> None:
    s = Setup()
    consumer, producer = s.consumers["video"], s.producers["video"]
    assert consumer.sender_report(50.0, 1e9) is None  # nothing sent yet
    ntp0, rtp0 = 0xE000_0000_8000_0000, 0xFFFF_0000  # the RTP clock wraps during the test
    producer.on_sender_report(SenderReport(CHROMIUM_VIDEO_SSRC, ntp0, rtp0, 0, 0), 50.0)
    # Captured 0.25 s after the publisher's SR instant, arriving then.
    s.video(7, rtp0 + 22500, 50.25, b"12345")
    out = header(s.sink.rtp[0])
    first = consumer.sender_report(50.25, 1e9)
    assert first is not None
    assert first.ssrc == consumer.ssrc
    assert first.ntp_timestamp == ntp0 + int(0.25 * NTP_UNITS)
    assert first.rtp_timestamp == out.timestamp  # the output packet sits exactly on the mapping
    assert (first.packet_count, first.octet_count) == (1, 5)
    second = consumer.sender_report(51.75, 1e9)
    assert second is not None
    assert second.ntp_timestamp - first.ntp_timestamp == int(1.5 * NTP_UNITS)
    assert (second.rtp_timestamp - first.rtp_timestamp) & 0xFFFFFFFF == 135000
    # Audio from the same publisher maps through its own SR: both share the NTP timeline.
    audio = s.producers["audio"]
    audio.on_sender_report(SenderReport(CHROMIUM_AUDIO_SSRC, ntp0, 1000, 0, 0), 50.0)
    packet = rtp_packet(1, 1000 + 12000, CHROMIUM_AUDIO_SSRC, CHROMIUM_OPUS)
    audio.receive(packet, header(packet), 50.25)
    audio_out = header(s.sink.rtp[-1])
    audio_report = s.consumers["audio"].sender_report(50.25, 1e9)
    assert audio_report is not None
    assert audio_report.ntp_timestamp == first.ntp_timestamp
    assert audio_report.rtp_timestamp == audio_out.timestamp


def test_sender_report_without_publisher_clock_uses_wall_time() -> None:
    s = Setup()
    consumer = s.consumers["video"]
    s.video(7, 123456, 10.0)
    out = header(s.sink.rtp[0])
    report = consumer.sender_report(10.5, 1_700_000_000.25)
    assert report is not None
    assert report.ntp_timestamp == ntp_timestamp(1_700_000_000.25)
    assert report.rtp_timestamp == (out.timestamp + 45000) & 0xFFFFFFFF


def test_sender_report_unaffected_by_a_reordered_packet() -> None:
    s = Setup()
    consumer, producer = s.consumers["video"], s.producers["video"]
    producer.on_sender_report(SenderReport(CHROMIUM_VIDEO_SSRC, 1 << 60, 0, 0, 0), 0.0)
    s.video(1, 3000, 0.1)
    s.video(3, 9000, 0.2)
    before = consumer.sender_report(0.25, 1e9)
    s.video(2, 6000, 0.21)  # late, one frame behind
    after = consumer.sender_report(0.25, 1e9)
    assert before is not None and after is not None
    assert after.rtp_timestamp == before.rtp_timestamp


def test_mute_and_unmute_keep_sequence_contiguous_and_timestamps_on_wall_clock() -> None:
    s = Setup()
    consumer = s.consumers["video"]
    for i in range(3):
        s.video(500 + i, 3000 * i, i / 30)
    last = header(s.sink.rtp[-1])
    consumer.update_mute(True, 0.1)
    assert consumer.rewriter.muted
    for i in range(3, 33):
        s.video(500 + i, 3000 * i, i / 30)
    assert len(s.sink.rtp) == 3
    requests = len(s.link.keyframes)
    consumer.update_mute(False, 1.2)
    assert len(s.link.keyframes) == requests + 1  # the player needs a keyframe to show anything
    consumer.update_mute(False, 1.25)
    assert len(s.link.keyframes) == requests + 1  # no change, no request
    s.video(533, 3000 * 33, 1.3, VP8_KEYFRAME)  # the keyframe the server asked for
    s.video(534, 3000 * 34, 1.3 + 1 / 30)
    resumed, following = header(s.sink.rtp[3]), header(s.sink.rtp[4])
    assert resumed.sequence == (last.sequence + 1) & 0xFFFF
    assert following.sequence == (last.sequence + 2) & 0xFFFF
    gap = round((1.3 - 2 / 30) * 90000)  # wall-clock time since the last packet sent
    assert resumed.timestamp == (last.timestamp + gap) & 0xFFFFFFFF
    assert following.timestamp == (resumed.timestamp + 3000) & 0xFFFFFFFF


def test_nack_between_unmute_and_the_next_packet_keeps_sequence_contiguous() -> None:
    s = Setup()
    consumer = s.consumers["video"]
    for i in range(3):
        s.video(500 + i, 3000 * i, i / 30)
    sent = [header(p) for p in s.sink.rtp]
    consumer.update_mute(True, 0.1)
    for i in range(3, 33):
        s.video(500 + i, 3000 * i, i / 30)
    consumer.update_mute(False, 1.2)
    # A player re-sends its NACK for a pre-mute packet (Chromium repeats NACKs until they time out).
    consumer.retransmit((sent[1].sequence,), 1.21)
    assert len(s.sink.rtp) == 3  # not answered: fine
    s.video(533, 3000 * 33, 1.3, VP8_KEYFRAME)
    assert header(s.sink.rtp[-1]).sequence == (sent[-1].sequence + 1) & 0xFFFF


def test_video_waits_for_a_keyframe_at_start_and_after_unmute() -> None:
    s = Setup()
    consumer = s.consumers["video"]
    consumer.awaiting_keyframe = True  # as a new consumer starts
    s.video(100, 0, 0.0, VP8_DELTA)
    s.video(101, 3000, KEYFRAME_INTERVAL + 0.1, VP8_DELTA)
    assert s.sink.rtp == []
    assert len(s.link.keyframes) == 2  # asked again (throttled to one per KEYFRAME_INTERVAL) while waiting
    s.video(102, 6000, KEYFRAME_INTERVAL + 0.2, VP8_KEYFRAME)
    s.video(103, 9000, KEYFRAME_INTERVAL + 0.3, VP8_DELTA)
    assert [payload_of(p) for p in s.sink.rtp] == [VP8_KEYFRAME, VP8_DELTA]
    assert header(s.sink.rtp[1]).sequence == (header(s.sink.rtp[0]).sequence + 1) & 0xFFFF
    consumer.update_mute(True, 1.0)
    s.video(104, 12000, 1.5, VP8_DELTA)  # not forwarded while muted
    assert len(s.sink.rtp) == 2
    requests = len(s.link.keyframes)
    consumer.update_mute(False, 2.0)
    # Unmuted: the cached keyframe and every packet since at once (tests/media/test_keyframe_cache.py),
    # without asking the publisher; then live.
    assert [payload_of(p) for p in s.sink.rtp[2:]] == [VP8_KEYFRAME, VP8_DELTA, VP8_DELTA]
    assert len(s.link.keyframes) == requests
    s.video(105, 15000, 2.1, VP8_DELTA)
    sequences = [header(p).sequence for p in s.sink.rtp]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(6)]


def test_mute_by_player_and_publisher_combine() -> None:
    s = Setup()
    consumer = s.consumers["audio"]
    consumer.muted_by_player = True
    consumer.update_mute(False, 0.0)
    assert consumer.rewriter.muted
    consumer.muted_by_player = False
    consumer.update_mute(True, 1.0)
    assert consumer.rewriter.muted
    consumer.update_mute(False, 2.0)
    assert not consumer.rewriter.muted
    assert s.link.keyframes == []  # audio: no keyframe


# --------------------------------------------------------------------------- PublisherMedia


def publisher_media(
    fixture: str = "chromium_offer_publish", *, text: str | None = None, max_bitrate: int = 1_500_000
) -> tuple[PublisherMedia, FakeTransport]:
    transport = FakeTransport()
    media = PublisherMedia(
        cast(TransportDriver, transport), publish(fixture, text), ssrc=SERVER_SSRC, max_bitrate=max_bitrate
    )
    return media, transport


def by_kind(media: PublisherMedia) -> dict[str, Producer]:
    return {p.kind: p for p in media.producers}


def attach_player(producers: dict[str, Producer]) -> tuple[dict[str, Consumer], FakeTransport]:
    sink = FakeTransport()
    consumers = {}
    for track in play([p.negotiated for p in producers.values()]).tracks:
        producer = producers[track.kind]
        send, _ = trio.open_memory_channel[bytes](16)
        consumer = Consumer(None, producer, track, sink, ChannelBacklog(send))
        consumer.awaiting_keyframe = False  # these tests send synthetic payloads; gating is tested apart
        producer.add_player(consumer)
        consumers[track.kind] = consumer
    return consumers, sink


def test_on_rtp_routes_by_ssrc() -> None:
    media, _ = publisher_media()
    producers = by_kind(media)
    media.on_rtp(rtp_packet(1, 0, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8), 1.0)
    media.on_rtp(rtp_packet(2, 0, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8), 1.0)
    media.on_rtp(rtp_packet(9, 0, CHROMIUM_AUDIO_SSRC, CHROMIUM_OPUS), 1.0)
    assert (producers["video"].packets, producers["audio"].packets) == (2, 1)
    assert producers["video"].cached(2) is not None and producers["audio"].cached(9) is not None
    media.on_rtp(rtp_packet(3, 0, 0xDEAD, CHROMIUM_VP8), 1.0)  # no such SSRC, no mid
    media.on_rtp(b"\x80\x60\x00", 1.0)
    assert media.counters["unknown_ssrc"] == 1
    assert media.counters["malformed_rtp"] == 1
    assert (producers["video"].packets, producers["audio"].packets) == (2, 1)


def without_ssrcs(sdp: str) -> str:
    """The offer as Chromium writes it with simulcast: no a=ssrc lines, SSRCs learned from packets."""
    return "".join(line for line in sdp.splitlines(keepends=True) if not line.startswith("a=ssrc"))


def test_unknown_ssrc_learned_by_mid() -> None:
    media, _ = publisher_media(text=without_ssrcs(fixture_sdp("chromium_offer_publish")))
    producers = by_kind(media)
    assert [p.ssrc for p in media.producers] == [None, None]
    consumers, sink = attach_player(producers)
    media.on_rtp(rtp_packet(10, 0, 0x1111, CHROMIUM_VP8, b"v", extensions=[(C_MID, b"1")]), 1.0)
    media.on_rtp(rtp_packet(20, 0, 0x2222, CHROMIUM_OPUS, b"a", extensions=[(C_MID, b"0")]), 1.0)
    assert (producers["video"].ssrc, producers["audio"].ssrc) == (0x1111, 0x2222)
    media.on_rtp(rtp_packet(11, 3000, 0x1111, CHROMIUM_VP8, b"v2"), 1.03)  # no mid needed any more
    assert (producers["video"].packets, producers["audio"].packets) == (2, 1)
    assert len(sink.rtp) == 3
    # An RTX SSRC is learned the same way, and its packets repair the media stream.
    rtx = rtp_packet(1, 6000, 0x3333, CHROMIUM_RTX, b"\x00\x0cv3", extensions=[(C_MID, b"1")])
    media.on_rtp(rtx, 1.1)
    media.on_rtp(rtp_packet(2, 9000, 0x3333, CHROMIUM_RTX, b"\x00\x0dv4"), 1.1)
    assert producers["video"].ssrc == 0x1111
    assert producers["video"].packets == 4
    # Chromium's bandwidth probes: copies of packets already delivered, and padding only.
    media.on_rtp(rtp_packet(3, 0, 0x3333, CHROMIUM_RTX, b"\x00\x0av"), 1.15)
    media.on_rtp(rtp_packet(4, 0, 0x3333, CHROMIUM_RTX, b"\x00\x0e"), 1.15)
    assert producers["video"].packets == 4
    assert (media.counters["rtx_duplicate"], media.counters["rtx_padding"]) == (1, 1)
    media.on_rtp(rtp_packet(5, 0, 0x4444, CHROMIUM_VP8, extensions=[(C_MID, b"9")]), 1.2)  # no such mid
    assert media.counters["unknown_ssrc"] == 1
    assert consumers["video"].rewriter.packets == 4


def test_unknown_ssrc_learned_by_a_payload_type_one_section_uses() -> None:
    """GStreamer's offer made from codec preferences: no a=ssrc for video and no header extensions at
    all, so neither SSRC nor mid names the stream; its payload type does (RFC 8843 section 9.2)."""
    media, _ = publisher_media("gstreamer_offer_publish_h264_max_bundle")
    producers = by_kind(media)
    assert producers["video"].ssrc is None and producers["audio"].ssrc == 1418909080
    media.on_rtp(rtp_packet(7, 0, 0x5555, 102, b"v"), 1.0)
    media.on_rtp(rtp_packet(8, 3000, 0x5555, 102, b"v"), 1.03)
    assert producers["video"].ssrc == 0x5555 and producers["video"].packets == 2
    media.on_rtp(rtp_packet(1, 0, 0x6666, 96, b"?"), 1.1)  # a payload type nobody offered
    assert media.counters["unknown_ssrc"] == 1


def test_rtx_from_the_publisher_is_unwrapped_and_forwarded() -> None:
    media, _ = publisher_media()
    producers = by_kind(media)
    consumers, sink = attach_player(producers)
    for sequence in (500, 501, 503):
        media.on_rtp(rtp_packet(sequence, 3000 * sequence, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, b"p"), 2.0)
    outputs = [header(p) for p in sink.rtp]
    # 502 comes back as RTX: own SSRC, PT and sequence; the original sequence number first.
    rtx = rtp_packet(
        77, 3000 * 502, CHROMIUM_VIDEO_RTX_SSRC, CHROMIUM_RTX, b"\x01\xf6" + b"repaired", marker=True
    )
    media.on_rtp(rtx, 2.1)
    original = rtp_packet(502, 3000 * 502, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, b"repaired", marker=True)
    assert producers["video"].cached(502) == original
    assert producers["video"].packets == 4
    out = header(sink.rtp[-1])
    assert out.ssrc == consumers["video"].ssrc and out.payload_type == PLAYER_VP8
    assert out.sequence == (outputs[0].sequence + 2) & 0xFFFF  # the hole the player saw, filled
    assert out.timestamp == (outputs[0].timestamp + 6000) & 0xFFFFFFFF
    assert payload_of(sink.rtp[-1]) == b"repaired"
    # An RTX packet too short to carry the original sequence number is dropped, not raised on.
    media.on_rtp(rtp_packet(78, 0, CHROMIUM_VIDEO_RTX_SSRC, CHROMIUM_RTX, b"\x01"), 2.2)
    assert producers["video"].packets == 4
    # Chromium's bandwidth probes: RTX packets of nothing but padding (P bit, no original sequence).
    probe = bytearray(rtp_packet(79, 3000 * 503, CHROMIUM_VIDEO_RTX_SSRC, CHROMIUM_RTX, bytes(223) + b"\xe0"))
    probe[0] |= 0x20
    forwarded = len(sink.rtp)
    media.on_rtp(bytes(probe), 2.3)
    assert producers["video"].packets == 4 and producers["video"].cached(0) is None
    assert len(sink.rtp) == forwarded


def test_unexpected_payload_type_is_counted() -> None:
    media, _ = publisher_media()
    media.on_rtp(rtp_packet(1, 0, CHROMIUM_VIDEO_SSRC, 102), 1.0)  # H264, not negotiated
    media.on_rtp(rtp_packet(1, 0, CHROMIUM_AUDIO_SSRC, CHROMIUM_VP8), 1.0)
    assert media.counters["unexpected_payload_type"] == 2
    assert all(p.packets == 0 for p in media.producers)


def test_sender_report_from_the_publisher_sets_the_clock() -> None:
    media, _ = publisher_media()
    producers = by_kind(media)
    report = SenderReport(CHROMIUM_VIDEO_SSRC, 0xE1234567_89ABCDEF, 424242, 10, 1000)
    sdes = Sdes(((CHROMIUM_VIDEO_SSRC, ((1, b"cname"),)),))
    media.on_rtcp(serialize_compound([report, sdes]), 7.5)
    assert producers["video"].clock == ClockMapping(0xE1234567_89ABCDEF, 424242, 7.5)
    assert producers["audio"].clock is None
    media.on_rtcp(serialize(SenderReport(0xBAD, 1, 2, 3, 4)), 8.0)  # unknown SSRC: ignored
    assert producers["audio"].clock is None
    assert media.counters["malformed_rtcp"] == 0


def test_malformed_rtcp_from_the_publisher_is_counted() -> None:
    media, _ = publisher_media()
    for junk in (b"", b"\x80", b"\x00\xc8\x00\x00", b"\x81\xc8\x00\x10" + bytes(8), bytes(range(40))):
        media.on_rtcp(junk, 1.0)
    assert media.counters["malformed_rtcp"] == 5


def test_tick_sends_receiver_reports_and_remb() -> None:
    media, transport = publisher_media("aiortc_offer_publish", max_bitrate=1_500_000)
    assert media.twcc is None and media.remb
    media.on_connected(100.0)
    for sequence in range(10):
        if sequence != 3:
            media.on_rtp(
                rtp_packet(sequence, 3000 * sequence, AIORTC_VIDEO_SSRC, 97, extensions=[(3, b"abc")]), 100.0
            )
    for sequence in range(5):
        media.on_rtp(rtp_packet(sequence, 960 * sequence, AIORTC_AUDIO_SSRC, 96), 100.0)
    assert media.tick(100.0, WALL) == 100.25
    rr, remb = transport.rtcp_packets()
    assert isinstance(rr, ReceiverReport) and isinstance(remb, Remb)
    assert rr.ssrc == SERVER_SSRC
    blocks = {b.ssrc: b for b in rr.reports}
    assert set(blocks) == {AIORTC_VIDEO_SSRC, AIORTC_AUDIO_SSRC}
    assert (blocks[AIORTC_VIDEO_SSRC].packets_lost, blocks[AIORTC_VIDEO_SSRC].highest_sequence) == (1, 9)
    assert blocks[AIORTC_VIDEO_SSRC].fraction_lost == 25
    assert blocks[AIORTC_AUDIO_SSRC].packets_lost == 0
    assert remb == Remb(SERVER_SSRC, 1_500_000, (AIORTC_VIDEO_SSRC,))
    media.tick(100.5, WALL)
    assert len(transport.rtcp) == 1  # one report a second
    media.tick(101.0, WALL)
    assert len(transport.rtcp) == 2
    assert not any(isinstance(p, TransportCc) for p in transport.rtcp_packets())


def test_remb_carries_the_configured_bitrate() -> None:
    for bitrate in (800_000, 2_500_000, 30_000_000):
        media, transport = publisher_media("aiortc_offer_publish", max_bitrate=bitrate)
        media.tick(0.0, WALL)
        (remb,) = [p for p in transport.rtcp_packets() if isinstance(p, Remb)]
        assert bitrate * 0.9999 <= remb.bitrate <= bitrate  # 18 significant bits, rounded down


def test_tick_sends_transport_cc_feedback_for_chromium() -> None:
    media, transport = publisher_media()
    assert media.twcc is not None and media.remb
    media.on_connected(10.0)
    for i in range(20):
        if i == 7:
            continue
        extensions = [(C_TCC, struct.pack("!H", (65530 + i) & 0xFFFF)), (C_MID, b"1")]
        media.on_rtp(
            rtp_packet(i, 3000 * i, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, extensions=extensions),
            10.0 + i * 0.005,
        )
    assert media.tick(10.1, WALL) == pytest.approx(10.2)
    packets = transport.rtcp_packets()
    feedback = [p for p in packets if isinstance(p, TransportCc)]
    assert feedback, packets
    reported = [entry for fb in feedback for entry in fb.packets]
    assert [sequence for sequence, _ in reported] == [(65530 + i) & 0xFFFF for i in range(20)]
    assert [delta is None for _, delta in reported] == [i == 7 for i in range(20)]
    assert all(fb.sender_ssrc == SERVER_SSRC for fb in feedback)
    assert any(isinstance(p, ReceiverReport) for p in packets)
    assert any(isinstance(p, Remb) for p in packets)
    transport.rtcp.clear()
    media.tick(10.2, WALL)  # nothing new arrived: no feedback
    assert not any(isinstance(p, TransportCc) for p in transport.rtcp_packets())


def test_no_transport_cc_feedback_when_packets_lack_the_extension() -> None:
    media, transport = publisher_media()
    for i in range(5):
        media.on_rtp(rtp_packet(i, 0, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8), 1.0)
    media.tick(1.0, WALL)
    assert not any(isinstance(p, TransportCc) for p in transport.rtcp_packets())


def test_keyframe_requests_and_nacks_reach_the_publisher_as_rtcp() -> None:
    media, transport = publisher_media()
    video = by_kind(media)["video"]
    video.request_keyframe(1.0)
    video.request_keyframe(1.1)
    assert transport.rtcp_packets() == [Pli(SERVER_SSRC, CHROMIUM_VIDEO_SSRC)]
    media.tick(1.0 + KEYFRAME_INTERVAL + 0.1, WALL)  # the pending request goes out on the publisher's tick
    assert transport.rtcp_packets().count(Pli(SERVER_SSRC, CHROMIUM_VIDEO_SSRC)) == 2
    transport.rtcp.clear()
    media.send_nack(video, [12, 10, 12, 11])
    assert transport.rtcp_packets() == [Nack(SERVER_SSRC, CHROMIUM_VIDEO_SSRC, (10, 11, 12))]
    assert transport.totals.keyframe_requests == 2 and transport.totals.nacks_to_publisher == 1


def many_audio_sections(count: int) -> str:
    """aiortc's publish offer with its audio section repeated `count` times (SSRC 1000 + i, mid i)."""
    text = fixture_sdp("aiortc_offer_publish").replace("\r\n", "\n")
    head, sections = text.split("m=video", 1)
    audio = "m=audio" + sections.split("m=audio", 1)[1]
    head = head.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE " + " ".join(map(str, range(count))))
    body = "".join(
        audio.replace("a=mid:1", f"a=mid:{i}").replace(str(AIORTC_AUDIO_SSRC), str(1000 + i))
        for i in range(count)
    )
    return (head + body).replace("\n", "\r\n")


def test_receiver_reports_for_32_published_tracks() -> None:
    media, transport = publisher_media(text=many_audio_sections(32))
    assert len(media.producers) == 32
    for i in range(32):
        media.on_rtp(rtp_packet(1, 0, 1000 + i, 96), 1.0)
    media.tick(1.0, WALL)
    blocks = [b for p in transport.rtcp_packets() if isinstance(p, ReceiverReport) for b in p.reports]
    assert len(blocks) == 32


def test_sender_reports_for_32_played_tracks() -> None:
    link = FakeLink()
    published = publish(text=many_audio_sections(32))
    sink = FakeTransport()
    consumers = []
    for i, track in enumerate(published.tracks):
        producer = Producer(track, link)
        played = attrs.evolve(track, ssrc=5000 + i, rtx_ssrc=None, rtx_payload_type=None)
        backlog = ChannelBacklog(trio.open_memory_channel[bytes](4)[0])
        consumer = Consumer(None, producer, played, sink, backlog)
        consumer.awaiting_keyframe = False  # these tests send synthetic payloads; gating is tested apart
        producer.add_player(consumer)
        consumers.append(consumer)
        packet = rtp_packet(1, 0, track.ssrc or 0, 96)
        producer.receive(packet, header(packet), 1.0)
    sent: list[bytes] = []
    PlayerMedia(consumers, cname="c", send_rtcp=sent.append).tick(2.0, WALL)
    reports = [p for datagram in sent for p in parse_compound(datagram) if isinstance(p, SenderReport)]
    assert len(reports) == 32


# --------------------------------------------------------------------------- PlayerMedia


def player_media() -> tuple[PlayerMedia, Setup, list[bytes]]:
    s = Setup()
    sent: list[bytes] = []
    media = PlayerMedia(list(s.consumers.values()), cname="player-cname", send_rtcp=sent.append)
    return media, s, sent


def test_pli_and_fir_reach_the_keyframe_throttle() -> None:
    media, s, _ = player_media()
    video = s.consumers["video"]
    media.on_rtcp(serialize(Pli(0x1234, video.ssrc)), 1.0)
    assert s.link.keyframes == [s.producers["video"]]
    media.on_rtcp(serialize(Pli(0x1234, video.ssrc)), 1.1)  # throttled: pending
    assert len(s.link.keyframes) == 1 and s.producers["video"].keyframe_pending
    media.on_rtcp(serialize(Fir(0x1234, ((0x999, 1), (video.ssrc, 1)))), 2.0)
    assert len(s.link.keyframes) == 2
    media.on_rtcp(serialize(Pli(0x1234, s.consumers["audio"].ssrc)), 5.0)  # audio: no keyframes
    assert len(s.link.keyframes) == 2


def test_rtcp_for_unknown_ssrcs_is_ignored() -> None:
    media, s, _ = player_media()
    media.on_rtcp(serialize_compound([Pli(1, 0xBAD), Fir(1, ((0xBAD, 3),)), Nack(1, 0xBAD, (1, 2, 3))]), 1.0)
    assert s.link.keyframes == [] and s.link.nacks == [] and s.sink.rtp == []
    assert media.counters["malformed_rtcp"] == 0


def test_nack_answered_from_cache_and_misses_go_to_the_publisher() -> None:
    media, s, _ = player_media()
    video = s.consumers["video"]
    sent = forward_ten(s)
    uncached = rtp_packet(1010, 210000, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, b"gone")
    video.forward(uncached, header(uncached), 10.4)
    missing_out = header(s.sink.rtp.pop()).sequence
    lost = (header(sent[1]).sequence, header(sent[2]).sequence, missing_out)
    media.on_rtcp(serialize(Nack(0x1234, video.ssrc, lost)), 11.0)
    assert [header(p).ssrc for p in s.sink.rtp] == [video.rtx_ssrc, video.rtx_ssrc]
    assert [int.from_bytes(payload_of(p)[:2], "big") for p in s.sink.rtp] == list(lost[:2])
    assert s.link.nacks == [(s.producers["video"], [1010])]


def test_tick_sends_sender_reports_and_cname_for_consumers_that_sent() -> None:
    media, s, sent = player_media()
    assert media.tick(5.0, WALL) == 6.0
    assert sent == []  # nothing forwarded yet: nothing to report
    s.video(1, 3000, 5.0, b"abcd")
    media.tick(6.0, WALL)
    (datagram,) = sent
    report, sdes = parse_compound(datagram)
    assert isinstance(report, SenderReport) and isinstance(sdes, Sdes)
    video = s.consumers["video"]
    assert (report.ssrc, report.packet_count, report.octet_count) == (video.ssrc, 1, 4)
    assert sdes.chunks == ((video.ssrc, ((1, b"player-cname"),)),)
    packet = rtp_packet(1, 960, CHROMIUM_AUDIO_SSRC, CHROMIUM_OPUS)
    s.producers["audio"].receive(packet, header(packet), 6.5)
    media.tick(7.0, WALL)
    reports = [p for p in parse_compound(sent[1]) if isinstance(p, SenderReport)]
    assert {r.ssrc for r in reports} == {video.ssrc, s.consumers["audio"].ssrc}


def test_garbage_rtcp_from_a_player_is_counted() -> None:
    media, _, _ = player_media()
    for junk in (b"", b"\x80\xcd", b"\x81\xcd\x00\x01" + bytes(4), b"\xff" * 12, bytes(range(64))):
        media.on_rtcp(junk, 1.0)
    assert media.counters["malformed_rtcp"] == 5
    media.on_rtp(b"\x80\x60" + bytes(10), 1.0)
    assert media.counters["unexpected_rtp"] == 1


def test_on_connected_asks_for_a_keyframe() -> None:
    media, s, _ = player_media()
    media.on_connected(3.0)
    assert s.link.keyframes == [s.producers["video"]]


# --------------------------------------------------------------------------- never raises


PUB_MEDIA, _PUB_TRANSPORT = publisher_media()
PUB_CONSUMERS, PUB_SINK = attach_player(by_kind(PUB_MEDIA))
PLAYER_MEDIA, PLAYER_SETUP, PLAYER_SENT = player_media()
SSRCS = [
    CHROMIUM_VIDEO_SSRC,
    CHROMIUM_AUDIO_SSRC,
    CHROMIUM_VIDEO_RTX_SSRC,
    *(c.ssrc for c in PLAYER_SETUP.consumers.values()),
    0,
]
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def rtp_bytes(draw: st.DrawFn) -> bytes:
    """Mostly well-formed RTP with hostile details: extension blocks, padding, lengths that lie."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    first = 0x80 | draw(st.integers(0, 15)) if draw(st.booleans()) else 0x80
    pt = draw(st.sampled_from([CHROMIUM_VP8, CHROMIUM_RTX, CHROMIUM_OPUS, 102, 0, 72])) | (
        0x80 if draw(st.booleans()) else 0
    )
    packet = bytearray(
        struct.pack("!BBHII", first & 0xCF, pt, draw(U16), draw(U32), draw(st.sampled_from(SSRCS) | U32))
    )
    packet += bytes(4 * (first & 0x0F))  # CSRCs
    if draw(st.booleans()):
        packet[0] |= 0x10
        elements = draw(
            st.lists(st.tuples(st.integers(0, 15), st.binary(min_size=1, max_size=16)), max_size=5).map(
                lambda es: b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in es)
            )
            | st.binary(max_size=20)
        )
        elements += bytes(-len(elements) % 4)
        words = len(elements) // 4 + draw(st.sampled_from([0, 0, 0, 1, -1]))
        profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x1003, 0x0001]))
        packet += struct.pack("!HH", profile, max(words, 0)) + elements
    packet += draw(st.binary(max_size=40))
    if draw(st.booleans()):
        packet[0] |= 0x20
        packet += bytes([draw(st.integers(0, 255))])
    return bytes(packet)


def _frame(packet_type: int, fmt: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("!BBH", 0x80 | fmt, packet_type, len(body) // 4) + body


_SSRC = st.sampled_from(SSRCS) | U32
_VALID_RTCP = st.one_of(
    st.builds(Pli, U32, _SSRC),
    st.builds(Fir, U32, st.lists(st.tuples(_SSRC, st.integers(0, 255)), max_size=3).map(tuple)),
    st.builds(Nack, U32, _SSRC, st.lists(U16, min_size=1, max_size=20).map(tuple)),
    st.builds(SenderReport, _SSRC, st.integers(0, 2**64 - 1), U32, U32, U32),
    st.builds(Remb, U32, st.integers(0, 10**9), st.lists(_SSRC, max_size=3).map(tuple)),
).map(serialize)
_FRAMED_RTCP = st.builds(
    _frame,
    st.integers(192, 210),
    st.integers(0, 31),
    st.builds(lambda s, rest: struct.pack("!II", 1, s) + rest, _SSRC, st.binary(max_size=40))
    | st.binary(max_size=40),
)
_RTCP_PART = _VALID_RTCP | _FRAMED_RTCP | st.binary(max_size=16)


@st.composite
def rtcp_bytes(draw: st.DrawFn) -> bytes:
    """Compound RTCP: valid packets about known SSRCs, plausible frames with random bodies, junk."""
    data = bytearray(b"".join(draw(st.lists(_RTCP_PART, min_size=1, max_size=4))))
    if data and draw(st.booleans()):
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(rtp_bytes(), st.floats(0, 1e6)), max_size=8))
def test_publisher_on_rtp_never_raises(packets: list[tuple[bytes, float]]) -> None:
    for packet, now in packets:
        PUB_MEDIA.on_rtp(packet, now)
    PUB_MEDIA.tick(max((now for _, now in packets), default=0.0), WALL)
    PUB_SINK.rtp.clear()
    _PUB_TRANSPORT.rtcp.clear()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(rtcp_bytes(), st.floats(0, 1e6)), max_size=6))
def test_publisher_on_rtcp_never_raises(packets: list[tuple[bytes, float]]) -> None:
    for packet, now in packets:
        PUB_MEDIA.on_rtcp(packet, now)
    for consumer in PUB_CONSUMERS.values():
        consumer.sender_report(1e6, 1.7e9)


@settings(max_examples=400, deadline=None)
@given(st.lists(rtp_bytes(), max_size=4), st.lists(st.tuples(rtcp_bytes(), st.floats(0, 1e6)), max_size=6))
def test_player_on_rtcp_never_raises(media: list[bytes], packets: list[tuple[bytes, float]]) -> None:
    for packet in media:  # something in the caches for NACKs to find
        parsed = parse_rtp(packet)
        if parsed is not None and parsed.ssrc == CHROMIUM_VIDEO_SSRC and parsed.payload_type == CHROMIUM_VP8:
            PLAYER_SETUP.producers["video"].receive(packet, parsed, 0.0)
    for packet, now in packets:
        PLAYER_MEDIA.on_rtcp(packet, now)
    PLAYER_MEDIA.tick(1e6, WALL)
    PLAYER_SETUP.sink.rtp.clear()
    PLAYER_SENT.clear()
