"""A producer: one published track as the server receives it, and the players it feeds.

It keeps what every player of the track shares: the last packets (to answer NACKs without asking the
publisher), the packets since the latest keyframe (so a new player starts at once, even when the
publisher ignores keyframe requests, as OBS and FFmpeg do), reception statistics (for the receiver
reports the publisher expects), the publisher's sender-report clock mapping (so each player's sender
reports keep audio and video in sync), and a throttle on keyframe requests (many players asking at
once must not flood the encoder).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol

import attrs

from trio_sfu.media.fanout import fan_out
from trio_sfu.media.negotiation import NegotiatedTrack
from trio_sfu.media.rewriter import HeaderMap
from trio_sfu.media.vp8_pictures import PictureIdWidener
from trio_sfu.wire.keyframe import detector, vp8_keyframe_size
from trio_sfu.wire.rtcp import ReportBlock, SenderReport
from trio_sfu.wire.rtp import RtpHeader, parse_rtp
from trio_sfu.wire.vp8 import Vp8Descriptor, parse_descriptor

if TYPE_CHECKING:
    from trio_sfu.media.consumer import Consumer

CACHE_SIZE = 1024  # packets; ~4 s of 1.5 Mbit/s video
KEYFRAME_INTERVAL = 1.0  # seconds between keyframe requests for one track (or simulcast layer)
# The incoming byte rate is measured over windows this long (as libwebrtc's RateStatistics): long enough
# to hold a keyframe and the frames around it, short enough to follow the encoder when it adapts.
RATE_WINDOW = 1.0
# The keyframe cache: the latest keyframe and everything after it, up to these bounds (about 8 s of a
# 1.5 Mbit/s stream); past them it is dropped until the next keyframe.
GOP_MAX_PACKETS = 1500
GOP_MAX_BYTES = 1_500_000
TEMPORAL_LAYERS = 4  # VP8's TID has two bits


@attrs.define
class ClockMapping:
    """The publisher's last sender report: its RTP clock against NTP (wall) time."""

    ntp: int
    rtp: int
    received_at: float


class ReceptionStats:
    """RFC 3550 appendix A.3 and A.8: loss and jitter for one incoming SSRC."""

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.started = False
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter = 0.0
        self._last_transit: float | None = None

    def update(self, sequence: int, timestamp: int, arrival: float) -> None:
        if not self.started:
            self.started = True
            self.base_seq = self.max_seq = sequence
        else:
            delta = (sequence - self.max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if sequence < self.max_seq:
                    self.cycles += 0x10000
                self.max_seq = sequence
        self.received += 1
        transit = arrival * self.clock_rate - timestamp
        if self._last_transit is not None:
            d = abs(transit - self._last_transit)
            if d < self.clock_rate * 10:  # ignore timestamp jumps (new source, long mute)
                self.jitter += (d - self.jitter) / 16
        self._last_transit = transit

    @property
    def lost(self) -> int:
        """Packets lost on the way in so far (expected minus received; duplicates can make it < 0)."""
        if not self.started:
            return 0
        return self.cycles + self.max_seq - self.base_seq + 1 - self.received

    def report_block(self, ssrc: int, sender_report: ClockMapping | None, now: float) -> ReportBlock:
        extended_max = self.cycles + self.max_seq
        expected = extended_max - self.base_seq + 1
        lost = max(-(1 << 23), min(expected - self.received, (1 << 23) - 1))
        expected_interval = expected - self.expected_prior
        received_interval = self.received - self.received_prior
        self.expected_prior, self.received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = (
            0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        )
        last_sr = delay = 0
        if sender_report is not None:
            last_sr = (sender_report.ntp >> 16) & 0xFFFFFFFF
            delay = int((now - sender_report.received_at) * 65536)
        return ReportBlock(
            ssrc=ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=lost,
            highest_sequence=extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter),
            last_sr=last_sr,
            delay_since_last_sr=delay,
        )


class PublisherLink(Protocol):
    """How a producer reaches its publisher (RTCP feedback the server cannot answer itself)."""

    def send_keyframe_request(self, producer: Producer) -> None: ...

    def send_nack(self, producer: Producer, sequences: list[int]) -> None: ...


class PacketTap(Protocol):
    """Something besides players that sees each packet (a recording): it must not block or raise."""

    def receive(self, packet: bytes, header: RtpHeader, now: float) -> None: ...

    def end(self) -> None: ...


class Producer:
    """One RTP stream from the publisher: a track, or one simulcast layer of a video track.

    The layers of a track share one `layers` list (in the publisher's rid order; a track without
    simulcast is its own only layer); a player is fed by one layer at a time.
    """

    def __init__(
        self, negotiated: NegotiatedTrack, publisher: PublisherLink, *, rid: str | None = None
    ) -> None:
        self.negotiated = negotiated
        self.publisher = publisher
        self.kind = negotiated.kind
        self.clock_rate = negotiated.codec.clock_rate
        self.ssrc = negotiated.ssrc
        self.rid = rid
        self.layers: list[Producer] = [self]
        # A layer's picture size, from its keyframes where the codec says it (VP8): what ranks layers
        # first (bitrates mislead: an encoder may spend more on a small layer than on a large one).
        self.pixels = 0
        vp8 = negotiated.codec.name.lower() == "vp8"
        self._keyframe_size = vp8_keyframe_size if rid is not None and vp8 else None
        self._starts_keyframe = detector(negotiated.codec.name) if self.kind == "video" else None
        self._gop: list[bytes] = []  # the latest keyframe's packets and all since, in arrival order
        self._gop_bytes = 0
        self._gop_timestamp = -1  # the keyframe's RTP timestamp: its other packets do not restart it
        self.keyframe_cached_at = -1e9  # when the cached keyframe arrived
        self.gop_overflows = 0
        self.last_received_at = -1e9  # when a packet last came: a layer the publisher stopped is idle
        self.consumers: list[Consumer] = []
        self.taps: list[PacketTap] = []
        # Shared by consumers that map alike; a map goes with its last consumer (players choose the
        # extension ids, so a stream of players each with its own would otherwise pile them up).
        self.header_maps: weakref.WeakValueDictionary[object, HeaderMap] = weakref.WeakValueDictionary()
        self.stats = ReceptionStats(self.clock_rate)
        self.clock: ClockMapping | None = None
        self._cache: list[bytes | None] = [None] * CACHE_SIZE
        self._last_keyframe_request = -1e9
        self.keyframe_pending = False
        self.packets = 0
        self.octets = 0  # bytes of RTP received (headers included): what the byte rate is measured from
        self.keyframe_requests = 0
        # Bytes per second over the last full RATE_WINDOW: what players' retransmission budgets follow.
        self.byte_rate = 0.0
        self._rate_at: float | None = None
        self._rate_octets = 0
        # A VP8 layer's temporal layers (TID in its payload descriptor), measured over the same window:
        # bytes and frames per TID since the window began, and per TID up to and including it, the
        # byte rate and frame rate of the last full window (empty: no temporal layers seen).
        self._temporal_octets = [0] * TEMPORAL_LAYERS if self._keyframe_size is not None else None
        self._temporal_frames = [0] * TEMPORAL_LAYERS
        self.temporal_rates: list[float] = []
        self.temporal_fps: list[float] = []
        # The packet being fanned out and its VP8 descriptor, parsed once here for all its players.
        self.last_descriptor: tuple[bytes, Vp8Descriptor | None] | None = None
        self._picture_ids = PictureIdWidener()

    def rename(self, rid: str) -> None:
        """This stream turns out to be simulcast layer `rid` (a relay's first leg): measured as one."""
        self.rid = rid
        if self.negotiated.codec.name.lower() == "vp8":
            self._keyframe_size = vp8_keyframe_size
            if self._temporal_octets is None:
                self._temporal_octets = [0] * TEMPORAL_LAYERS
            if self._gop:  # the keyframe that came before the name: its size ranks the layer now
                header = parse_rtp(self._gop[0])
                size = vp8_keyframe_size(memoryview(self._gop[0])[header.header_length :]) if header else None
                if size is not None:
                    self.pixels = size[0] * size[1]

    def receive(self, packet: bytes, header: RtpHeader, now: float) -> None:
        """A decrypted packet from the publisher: remember it, then hand it to every consumer."""
        self.packets += 1
        self.octets += len(packet)
        self.last_received_at = now
        if self._starts_keyframe is not None:
            self._remember(packet, header, now)
        temporal_octets = self._temporal_octets
        if temporal_octets is not None:
            descriptor = self.vp8_descriptor(packet, header)
            self.last_descriptor = (packet, descriptor)
            if descriptor is not None and descriptor.temporal_id >= 0:
                temporal_octets[descriptor.temporal_id] += len(packet)
                if descriptor.frame_start:
                    self._temporal_frames[descriptor.temporal_id] += 1
        self.stats.update(header.sequence, header.timestamp, now)
        self._cache[header.sequence % CACHE_SIZE] = packet
        fan_out(self.consumers, packet, header, now)
        for tap in self.taps:
            tap.receive(packet, header, now)

    def vp8_descriptor(self, packet: bytes, header: RtpHeader) -> Vp8Descriptor | None:
        """The VP8 descriptor of one of this stream's packets, a 7-bit picture id widened (see
        PictureIdWidener): what players' picture numbering reads."""
        descriptor = parse_descriptor(packet, header.header_length)
        if descriptor is not None:
            self._picture_ids.widen(descriptor, header.sequence)
        return descriptor

    def _remember(self, packet: bytes, header: RtpHeader, now: float) -> None:
        """Keep the packets from the latest keyframe on, for players that start now."""
        payload = memoryview(packet)[header.header_length :]
        assert self._starts_keyframe is not None
        if header.timestamp != self._gop_timestamp and self._starts_keyframe(payload):
            self._gop = [packet]
            self._gop_bytes = len(packet)
            self._gop_timestamp = header.timestamp
            self.keyframe_cached_at = now
            if self._keyframe_size is not None:
                size = self._keyframe_size(payload)
                if size is not None:
                    self.pixels = size[0] * size[1]
            return
        if not self._gop:
            return
        self._gop_bytes += len(packet)
        self._gop.append(packet)
        if len(self._gop) > GOP_MAX_PACKETS or self._gop_bytes > GOP_MAX_BYTES:
            self._gop, self._gop_bytes = [], 0  # too long ago to replay: wait for the next one
            self.gop_overflows += 1

    @property
    def keyframe_cache(self) -> list[bytes]:
        """The latest keyframe and every packet since (empty when there is none to start from)."""
        return self._gop

    @property
    def keyframe_cache_bytes(self) -> int:
        return self._gop_bytes

    def add_player(self, consumer: Consumer) -> None:
        """Start forwarding this track to `consumer` (its fan-out list has no other door)."""
        self.consumers.append(consumer)

    def remove_player(self, consumer: Consumer) -> None:
        """Stop forwarding to `consumer`; a player already gone (the producer ended) is no error."""
        if consumer in self.consumers:
            self.consumers.remove(consumer)

    def cached(self, sequence: int) -> bytes | None:
        packet = self._cache[sequence % CACHE_SIZE]
        if packet is None or int.from_bytes(packet[2:4], "big") != sequence:
            return None
        return packet

    def on_sender_report(self, report: SenderReport, now: float) -> None:
        self.clock = ClockMapping(report.ntp_timestamp, report.rtp_timestamp, now)

    def request_keyframe(self, now: float) -> None:
        """Ask the publisher for a keyframe, at most once per KEYFRAME_INTERVAL (later if sooner)."""
        if self.kind != "video":
            return
        if now - self._last_keyframe_request >= KEYFRAME_INTERVAL:
            self._last_keyframe_request = now
            self.keyframe_pending = False
            self.keyframe_requests += 1
            self.publisher.send_keyframe_request(self)
        else:
            self.keyframe_pending = True

    def incoming_rate(self, now: float) -> float:
        """Bytes per second received over the last full RATE_WINDOW (0.0 until one has passed)."""
        if self._rate_at is None or now - self._rate_at >= RATE_WINDOW:
            if self._rate_at is not None:
                self.byte_rate = (self.octets - self._rate_octets) / (now - self._rate_at)
                if self._temporal_octets is not None:
                    self._measure_temporal(now - self._rate_at)
            self._rate_at, self._rate_octets = now, self.octets
        return self.byte_rate

    def _measure_temporal(self, seconds: float) -> None:
        """Rates per temporal layer over the window just ended, cumulative (TID 1 includes TID 0's)."""
        assert self._temporal_octets is not None
        octets, frames = self._temporal_octets, self._temporal_frames
        layers = max((tid + 1 for tid in range(TEMPORAL_LAYERS) if frames[tid]), default=0)
        rates, fps = [], []
        total_octets = total_frames = 0
        for tid in range(layers if layers > 1 else 0):
            total_octets += octets[tid]
            total_frames += frames[tid]
            rates.append(total_octets / seconds)
            fps.append(total_frames / seconds)
        self.temporal_rates, self.temporal_fps = rates, fps
        self._temporal_octets = [0] * TEMPORAL_LAYERS
        self._temporal_frames = [0] * TEMPORAL_LAYERS

    def tick(self, now: float) -> None:
        if self.keyframe_pending:
            self.request_keyframe(now)
        self.incoming_rate(now)  # keeps the measurement current between players' NACKs

    @property
    def primary(self) -> bool:
        """The first layer stands for its track (answers, which producer plays which track)."""
        return self.layers[0] is self

    def end(self) -> None:
        for consumer in self.consumers:
            consumer.close()
        self.consumers.clear()
        for tap in list(self.taps):
            tap.end()
