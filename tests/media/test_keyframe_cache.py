"""The keyframe cache, sans-IO: a new player starts from the latest keyframe at once, without asking a
publisher that may never answer (OBS and FFmpeg ignore PLI)."""

from __future__ import annotations

import trio

from trio_sfu.media.consumer import Consumer
from trio_sfu.media.player import PlayerMedia
from trio_sfu.media.producer import GOP_MAX_BYTES, GOP_MAX_PACKETS, Producer
from trio_sfu.server.session import ChannelBacklog

from ..support.media_model import (
    CHROMIUM_VIDEO_SSRC,
    CHROMIUM_VP8,
    VP8_DELTA,
    VP8_KEYFRAME,
    FakeLink,
    FakeTransport,
    header,
    payload_of,
    play,
    publish,
    rtp_packet,
)


class Stream:
    """A Chromium VP8 track: its producer, and players attached to it as the session attaches them."""

    def __init__(self, fixture: str = "chromium_offer_publish") -> None:
        self.published = publish(fixture)
        self.link = FakeLink()
        (track,) = [t for t in self.published.tracks if t.kind == "video"]
        self.producer = Producer(track, self.link)
        self.sequence = 100
        self.timestamp = 9000
        self.now = 1.0

    def frame(self, payload: bytes, packets: int = 1, size: int = 0) -> list[bytes]:
        out = []
        for index in range(packets):
            body = payload if index == 0 else b"\x00\x00more"  # a continuation packet: S clear
            packet = rtp_packet(
                self.sequence, self.timestamp, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, body + bytes(size)
            )
            self.sequence += 1
            self.producer.receive(packet, header(packet), self.now)
            out.append(packet)
        self.timestamp += 3000
        self.now += 1 / 30
        return out

    def player(self) -> tuple[Consumer, FakeTransport]:
        (track,) = [t for t in play(self.published.tracks).tracks if t.kind == "video"]
        sink = FakeTransport()
        send, _ = trio.open_memory_channel[bytes](64)
        consumer = Consumer(None, self.producer, track, sink, ChannelBacklog(send))
        self.producer.add_player(consumer)
        return consumer, sink


def test_the_cache_holds_the_latest_keyframe_and_everything_since() -> None:
    stream = Stream()
    stream.frame(VP8_DELTA)  # nothing to start from yet
    assert stream.producer.keyframe_cache == []
    first = stream.frame(VP8_KEYFRAME, packets=3)
    deltas = [p for _ in range(4) for p in stream.frame(VP8_DELTA, packets=2)]
    assert stream.producer.keyframe_cache == first + deltas
    second = stream.frame(VP8_KEYFRAME, packets=2)
    assert stream.producer.keyframe_cache == second
    assert stream.producer.keyframe_cache_bytes == sum(len(p) for p in second)


def test_another_packet_of_the_same_keyframe_does_not_restart_it() -> None:
    """H.264 keyframes start with SPS and PPS, then the IDR: several packets that each look like a
    keyframe start, one timestamp."""
    stream = Stream()
    packets = []
    for _ in range(3):
        packet = rtp_packet(
            stream.sequence, stream.timestamp, CHROMIUM_VIDEO_SSRC, CHROMIUM_VP8, VP8_KEYFRAME
        )
        stream.sequence += 1
        stream.producer.receive(packet, header(packet), stream.now)
        packets.append(packet)
    assert stream.producer.keyframe_cache == packets


def test_the_cache_is_bounded_and_waits_for_the_next_keyframe() -> None:
    stream = Stream()
    stream.frame(VP8_KEYFRAME)
    per_packet = 1000
    for _ in range(GOP_MAX_BYTES // per_packet + 1):
        stream.frame(VP8_DELTA, size=per_packet)
        if not stream.producer.keyframe_cache:
            break
    assert stream.producer.keyframe_cache == [] and stream.producer.gop_overflows == 1
    assert stream.producer.keyframe_cache_bytes == 0
    stream.frame(VP8_DELTA)
    assert stream.producer.keyframe_cache == []
    stream.frame(VP8_KEYFRAME)
    assert len(stream.producer.keyframe_cache) == 1
    assert GOP_MAX_PACKETS >= 1000  # ~8 s of 1.5 Mbit/s video fits


def test_a_new_player_starts_from_the_cache_at_once_and_goes_on_live() -> None:
    stream = Stream()
    stream.frame(VP8_KEYFRAME, packets=2)
    for _ in range(5):
        stream.frame(VP8_DELTA)
    consumer, sink = stream.player()
    assert consumer.awaiting_keyframe
    requests = stream.producer.keyframe_requests
    media = PlayerMedia([consumer], cname="c", send_rtcp=lambda packet: None)
    media.on_connected(stream.now)
    assert stream.producer.keyframe_requests == requests  # nobody asked the publisher
    assert not consumer.awaiting_keyframe and consumer.counters["keyframe_cache_starts"] == 1
    assert [payload_of(p)[:2] for p in sink.rtp[:1]] == [VP8_KEYFRAME[:2]]
    assert len(sink.rtp) == 7
    stream.frame(VP8_DELTA)  # live, right after the cached ones
    sequences = [header(p).sequence for p in sink.rtp]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(8)]
    timestamps = [header(p).timestamp for p in sink.rtp]
    assert timestamps == sorted(timestamps) and timestamps[-1] - timestamps[0] == 6 * 3000


def test_without_a_cached_keyframe_the_publisher_is_asked() -> None:
    stream = Stream()
    stream.frame(VP8_DELTA)
    consumer, sink = stream.player()
    PlayerMedia([consumer], cname="c", send_rtcp=lambda packet: None).on_connected(stream.now)
    assert stream.link.keyframes == [stream.producer] and sink.rtp == []
    assert consumer.awaiting_keyframe


def test_a_player_already_playing_is_not_replayed() -> None:
    stream = Stream()
    stream.frame(VP8_KEYFRAME)
    consumer, sink = stream.player()
    stream.frame(VP8_KEYFRAME)
    assert not consumer.awaiting_keyframe and len(sink.rtp) == 1
    assert consumer.start_from_cache(stream.now) is False and len(sink.rtp) == 1


def test_a_keyframe_lost_before_the_player_connected_is_waited_for_again() -> None:
    """Forwarded while the player's DTLS was still under way, the keyframe never reached it: the
    player waits for one again, and the cache starts it once connected, without asking the publisher."""
    stream = Stream()
    consumer, sink = stream.player()
    connected = False
    real_send = sink.send_rtp_as

    def send_rtp_as(packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bool | None:
        return real_send(packet, sequence, timestamp, ssrc) if connected else None

    sink.send_rtp_as = send_rtp_as  # type: ignore[method-assign,assignment]
    stream.frame(VP8_KEYFRAME)
    assert consumer.awaiting_keyframe and consumer.counters["not_connected"] == 1
    stream.frame(VP8_DELTA)
    assert stream.link.keyframes == []  # the cache holds one: nobody asks the publisher
    connected = True
    PlayerMedia([consumer], cname="c", send_rtcp=lambda packet: None).on_connected(stream.now)
    assert [payload_of(p)[:2] for p in sink.rtp] == [VP8_KEYFRAME[:2], VP8_DELTA[:2]]
    assert stream.link.keyframes == [] and not consumer.awaiting_keyframe


def test_an_unmuted_player_starts_from_the_cache_without_asking_the_publisher() -> None:
    """A player that muted its video (or whose publisher muted and unmuted) gets the latest keyframe
    and what followed it at once; the publisher is asked only when nothing is cached."""
    stream = Stream()
    stream.frame(VP8_KEYFRAME)
    consumer, sink = stream.player()
    consumer.muted_by_player = True
    consumer.update_mute(False, stream.now)
    assert consumer.rewriter.muted
    keyframe = stream.frame(VP8_KEYFRAME, packets=2)
    deltas = [p for _ in range(3) for p in stream.frame(VP8_DELTA)]
    sent = len(sink.rtp)
    requests = stream.producer.keyframe_requests
    consumer.muted_by_player = False
    consumer.update_mute(False, stream.now)
    replayed = sink.rtp[sent:]
    assert [payload_of(p) for p in replayed] == [payload_of(p) for p in keyframe + deltas]
    assert stream.producer.keyframe_requests == requests and consumer.counters["keyframe_cache_starts"] == 1
    stream.frame(VP8_DELTA)
    sequences = [header(p).sequence for p in sink.rtp]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(sequences))]


def test_an_unmute_never_replays_a_keyframe_from_before_the_mute() -> None:
    """The cached keyframe is older than the mute (the publisher sent no new one since): replaying it
    would show the player pictures from before the ones it saw last. The publisher is asked instead."""
    stream = Stream()
    stream.frame(VP8_KEYFRAME)
    consumer, sink = stream.player()
    for _ in range(3):
        stream.frame(VP8_DELTA)
    consumer.muted_by_player = True
    consumer.update_mute(False, stream.now)
    for _ in range(3):
        stream.frame(VP8_DELTA)  # no keyframe while muted
    sent, requests = len(sink.rtp), stream.producer.keyframe_requests
    consumer.muted_by_player = False
    consumer.update_mute(False, stream.now)
    assert len(sink.rtp) == sent and stream.producer.keyframe_requests == requests + 1
    assert consumer.awaiting_keyframe
