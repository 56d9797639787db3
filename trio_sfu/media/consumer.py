"""A consumer: one player's view of one producer — the per-player half of the packet path.

`forward` runs on the receive path itself (no task switch when the socket takes the packet at once):
rewrite the header for this player, protect, send. Only when the kernel buffer is full does a packet
go to the consumer's bounded backlog channel, which the player's forwarding task drains when the
socket is writable again; when that backlog is full, packets are dropped and counted.
"""

from __future__ import annotations

import array
import collections
import logging
import struct
from typing import Protocol

import attrs

from trio_sfu.media.fanout import SEQUENCE_MAP, Outlet, Wire
from trio_sfu.media.negotiation import EXT_ABS_SEND_TIME, EXT_MID, NegotiatedTrack
from trio_sfu.media.producer import CACHE_SIZE, TEMPORAL_LAYERS, Producer
from trio_sfu.media.rewriter import Rewriter
from trio_sfu.media.totals import Totals
from trio_sfu.media.vp8_pictures import Vp8Pictures
from trio_sfu.wire.keyframe import detector
from trio_sfu.wire.rtcp import SenderReport, ntp_timestamp
from trio_sfu.wire.rtp import RtpHeader, parse_rtp
from trio_sfu.wire.vp8 import Vp8Descriptor

NTP_UNITS = 1 << 32

# Retransmission limits (a player behind a link narrower than the stream NACKs nearly every packet, and
# again each round trip: answering all of it sent such a player dozens of times the stream's rate).
# A packet is resent at most once per round trip: a second NACK sooner was sent before the first resend
# could arrive. Until the player's receiver reports give its RTT, assume mediasoup's default.
DEFAULT_RTT = 0.1
# Below this, a repeat NACK is still the same request: Chromium's NACK module runs every 20 ms, and on
# loopback or a LAN the RTT alone would allow a resend per NACK.
MIN_RESEND_INTERVAL = 0.02
# A packet older than this (since it was first forwarded) would reach the player after its jitter buffer
# (a few hundred ms deep in live playback) has moved on; a player still NACKing it is asking for history.
# mediasoup stops at 1 s for audio and 2 s for video.
MAX_RETRANSMIT_AGE = 1.0
# Retransmitted bytes per second, as a share of the track's incoming byte rate. Half the rate repairs
# loss up to a third of the packets (each repair may be lost too: p / (1 - p) = 0.5 at p = 1/3); past
# that, resending cannot keep the stream playable and only deepens the congestion causing the loss.
# (libwebrtc caps retransmissions at the target rate, but its target itself shrinks under loss.)
RTX_BUDGET_SHARE = 0.5
# Until the track's rate is measured (its first second), and for very slow tracks, at least this much.
RTX_MIN_RATE = 2000.0  # bytes per second
# The budget may be spent in bursts of this many seconds of it (a lost burst of packets is NACKed at
# once), but never less than RTX_MIN_BURST bytes: a dozen full-size packets.
RTX_BURST_SECONDS = 0.5
RTX_MIN_BURST = 12 * 1200.0
PROBE_DEPTH = 32  # probes resend the latest packets, at most this many back
ALL_TEMPORAL = TEMPORAL_LAYERS - 1  # a temporal cap that drops nothing
log = logging.getLogger(__name__)

RTX_OVERHEAD = 2  # the original sequence number RFC 4588 puts before the payload


class Backlog(Protocol):
    """Where packets wait while the player's socket would block; the player's forwarding task (in the
    server layer) drains it once the socket is writable, and ends when it is closed."""

    def offer(self, packet: bytes) -> bool | None:
        """Queue without waiting. True: queued; False: full (the packet is dropped, counted); None:
        closed (the player is going away)."""
        ...

    def close(self) -> None: ...


@attrs.define
class RoundTrip:
    """A player's round-trip time, from its receiver reports: one per transport, shared by its tracks."""

    seconds: float | None = None


class PacketSink(Protocol):
    """What a consumer needs of the player's transport."""

    totals: Totals

    def send_rtp(self, packet: bytes) -> bool | None:
        """True: sent; False: the socket would block; None: not connected yet (dropped)."""
        ...

    def send_rtp_as(self, packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bool | None:
        """`send_rtp` of `packet` with these header fields written over its own."""
        ...


class Consumer(Outlet):
    """The player's side of one track; Outlet holds what the compiled fan-out reads and writes.

    `_ready` (Outlet's) says whether the compiled path may send this player's packets itself: kept
    current by the setters of `awaiting_keyframe`, `target` and `backlogged`, the consumer's own
    conditions (the rewriter's and the transport's are checked by the fan-out per packet)."""

    # Slots: see TransportDriver.
    __slots__ = (
        "_awaiting_keyframe",
        "_backlog",
        "_backlogged",
        "_congestion_wait",
        "_gated",
        "_muted_at",
        "_resent_at",
        "_resent_output",
        "_rtx_sequence",
        "_rtx_tokens",
        "_rtx_tokens_at",
        "_starts_keyframe",
        "_target",
        "clock_rate",
        "counters",
        "kind",
        "muted_by_player",
        "option_since",
        "option_since_at",
        "owner",
        "played",
        "producer",
        "round_trip",
        "rtx_payload_type",
        "rtx_ssrc",
        "sink",
        "switched_at",
    )

    def __init__(
        self,
        owner: object,
        producer: Producer,
        played: NegotiatedTrack,
        sink: PacketSink,
        backlog: Backlog,
    ) -> None:
        super().__init__()
        self._ready = False
        self._awaiting_keyframe = False
        self._target: Producer | None = None
        self._backlogged = 0
        self.owner = owner  # the player's session
        self.producer = producer
        self.played = played
        self.kind = played.kind
        self.sink = sink
        self._backlog = backlog
        assert played.ssrc is not None
        self.ssrc = played.ssrc
        self.clock_rate = played.codec.clock_rate
        source = producer.negotiated
        # The mid value names the publisher's section, not the player's: a player that demuxes by mid
        # would misroute it, so it is not forwarded (players demux by the SSRCs in the answer).
        ids = {ext.uri: ext.id for ext in played.header_extensions if ext.uri != EXT_MID}
        self.rewriter = Rewriter(
            ssrc=played.ssrc,
            clock_rate=self.clock_rate,
            payload_types={source.codec.payload_type: played.codec.payload_type},
            extension_ids={ext.id: ids[ext.uri] for ext in source.header_extensions if ext.uri in ids},
            header_maps=producer.header_maps,
            stamp_id=ids.get(EXT_ABS_SEND_TIME, 0),
        )
        self.rtx_payload_type = played.rtx_payload_type
        self.rtx_ssrc = played.rtx_ssrc
        self._rtx_sequence = 0
        # Outlet's sent map (record_sent, sent_source): output sequence -> input sequence of recent
        # packets, for NACKs that reach back across a splice (unmute); newer ones are mapped through
        # the rewriter's offset.
        self._timestamp_offset = 0
        wire = getattr(sink, "wire", None)
        self._wire = wire if isinstance(wire, Wire) else None
        # When each output sequence number was last resent (the slot is valid when _resent_output
        # holds that number): written on NACKs only, never on the packet path, and made on the first
        # resend (12 KB a track that a player on a clean network never needs).
        self._resent_output: array.array[int] | None = None
        self._resent_at: array.array[float] | None = None
        self.round_trip = RoundTrip()  # the player's; PlayerMedia shares one among its tracks
        # The retransmission budget: a token bucket in bytes, full at first.
        self._rtx_tokens = float("inf")
        self._rtx_tokens_at = 0.0
        self.muted_by_player = False
        self._muted_at = 0.0
        # Video is forwarded from a keyframe on: at the start and after every unmute.
        starts_keyframe = detector(played.codec.name) if self.kind == "video" else None
        self._starts_keyframe = starts_keyframe or (lambda payload: True)
        self._gated = starts_keyframe is not None  # video: forwarded from a keyframe on
        self._awaiting_keyframe = self._gated
        self._congestion_wait = False  # awaiting a keyframe because its stream transport was full
        self.counters: collections.Counter[str] = collections.Counter()
        self.totals = sink.totals
        # Simulcast: the layer this player moves to at that layer's next keyframe (`target`, None:
        # staying), and the first output sequence number of the current layer (older: another's).
        self.switched_at: int | None = None
        # The first output sequence number of what the player gets now (layer and temporal cap; None:
        # since its first packet): loss a receiver report counts from before it was the old option's.
        self.option_since: int | None = None
        self.option_since_at = 0.0
        simulcast_vp8 = len(producer.layers) > 1 and played.codec.name.lower() == "vp8"
        self.pictures = Vp8Pictures() if simulcast_vp8 else None
        # VP8 temporal layers (simulcast VP8 only): the highest TID forwarded now, the one wanted, and
        # the decision taken for the frame in progress (its other packets go the way its first went).
        self.temporal = self.temporal_target = ALL_TEMPORAL
        self._frame_timestamp = -1
        self._frame_forwarded = True
        self._gate()

    # ---- the compiled path's gate ----

    @property
    def awaiting_keyframe(self) -> bool:
        """Video waits for a keyframe: at the start, after unmute, after congestion."""
        return self._awaiting_keyframe

    @awaiting_keyframe.setter
    def awaiting_keyframe(self, value: bool) -> None:
        self._awaiting_keyframe = value
        self._gate()

    @property
    def target(self) -> Producer | None:
        return self._target

    @target.setter
    def target(self, value: Producer | None) -> None:
        self._target = value
        self._gate()

    @property
    def backlogged(self) -> int:
        """Packets in the backlog channel, not yet sent."""
        return self._backlogged

    @backlogged.setter
    def backlogged(self, value: int) -> None:
        self._backlogged = value
        self._gate()

    def _gate(self) -> None:
        self._ready = (
            not self._awaiting_keyframe
            and self._target is None
            and not self._backlogged
            and self._wire is not None
        )

    # ---- the packet path ----

    def forward(self, packet: bytes, header: RtpHeader, now: float) -> None:
        """One packet from the producer, on the Python path (the compiled fan-out, where built, sends
        the steady case itself and calls this for the rest)."""
        target = self._target
        if target is not None and header.ssrc == target.ssrc and header.ssrc != self.producer.ssrc:
            if not self._starts_keyframe(memoryview(packet)[header.header_length :]):
                target.request_keyframe(now)  # throttled by the producer
                return
            self._switch(target, now)
        elif self._awaiting_keyframe:
            if not self._starts_keyframe(memoryview(packet)[header.header_length :]):
                self.counters["waiting_for_keyframe"] += 1
                if self._congestion_wait:
                    self.totals.drop_stream_congestion += 1
                if not self.producer.keyframe_cache:  # else the cache will start the player
                    self.producer.request_keyframe(now)  # throttled by the producer
                return
            self.awaiting_keyframe = self._congestion_wait = False
        rewriter = self.rewriter
        pictures = self.pictures
        descriptor = None
        if pictures is not None:
            last = self.producer.last_descriptor
            if last is not None and last[0] is packet:
                descriptor = last[1]  # parsed once, by the producer, for all its players
            else:
                descriptor = self.producer.vp8_descriptor(packet, header)
            if (
                descriptor is not None
                and descriptor.temporal_id >= 0
                and not self._temporal_passes(packet, header, descriptor, now)
            ):
                rewriter.number(header, now, skip=True)  # the player never hears of it
                pictures.drop(descriptor.picture_id)
                self.counters["temporal_drops"] += 1
                return
        numbered = rewriter.number(header, now)
        if numbered is None:
            return
        sequence, timestamp = numbered
        self.record_sent(sequence, header.sequence)
        # Output minus input timestamp of the same packet: what sender reports add to the publisher's
        # clock mapping (a reordered packet has the same offset, so it cannot skew it).
        self._timestamp_offset = (timestamp - header.timestamp) & 0xFFFFFFFF
        mapped = rewriter.header_map.apply(packet, header, now)  # once for all players sharing the map
        if pictures is not None and descriptor is not None:
            # This player's own copy: its picture ids (the map may have resized the header).
            payload_start = len(mapped) - len(packet) + header.header_length
            mapped = pictures.rewrite(mapped, descriptor, payload_start)
        if not self._backlogged:
            sent = self.sink.send_rtp_as(mapped, sequence, timestamp, self.ssrc)
            if sent is None:
                self.counters["not_connected"] += 1
                # Lost before the player could decrypt it: start from a keyframe (the cache) once it can.
                self.awaiting_keyframe, self._congestion_wait = self._gated, False
            if sent is not False:
                return
            if getattr(self.sink, "whole_frames_only", False):
                self._congested(now)
                return
        self._queue(rewriter.patch(mapped, sequence, timestamp))

    def _would_block(self, mapped: bytes, sequence: int, timestamp: int) -> None:
        """The compiled path's send found the kernel buffer full: queue it, as `forward` does."""
        self._queue(self.rewriter.patch(mapped, sequence, timestamp))

    def _congested(self, now: float) -> None:
        """A stream transport (ICE-TCP) is full: its reader is slow. A queue would only make the
        media later; drop instead, whole frames: video waits for a keyframe (asked for, throttled by
        the producer), so the player never decodes a frame with holes in it."""
        self.counters["congestion_drops"] += 1
        self.totals.drop_stream_congestion += 1
        if self._gated and not self.awaiting_keyframe:
            self.awaiting_keyframe = self._congestion_wait = True
            self.counters["congestion_keyframe_waits"] += 1
            self.producer.request_keyframe(now)

    def _temporal_passes(
        self, packet: bytes, header: RtpHeader, descriptor: Vp8Descriptor, now: float
    ) -> bool:
        """Whether this packet's temporal layer goes to the player. Changes happen at a frame's first
        packet: down at once (frames of the dropped layers are referred to by none that stay), up at
        a frame the encoder marks as a switching point (Y: it refers to TL0 only) or a keyframe."""
        if header.timestamp == self._frame_timestamp:
            return self._frame_forwarded
        tid = descriptor.temporal_id
        temporal, target = self.temporal, self.temporal_target
        if target < temporal:
            temporal = target
        elif temporal < tid <= target and descriptor.layer_sync:
            temporal = tid
        elif (
            temporal < target
            and tid == 0
            and descriptor.frame_start
            and self._starts_keyframe(memoryview(packet)[header.header_length :])
        ):
            temporal = target
        if temporal != self.temporal:
            self.temporal = temporal
            self.option_since, self.option_since_at = self.rewriter.next_sequence, now
            self.counters["temporal_switches"] += 1
        forwarded = tid <= temporal
        self._frame_timestamp, self._frame_forwarded = header.timestamp, forwarded
        return forwarded

    def _renumber_pictures(self, packet: bytes) -> bytes:
        """A packet from the rewriter (a retransmission, a probe) with this player's picture ids."""
        if self.pictures is None:
            return packet
        header = parse_rtp(packet)
        if header is None:
            return packet
        descriptor = self.producer.vp8_descriptor(packet, header)
        if descriptor is None:
            return packet
        return self.pictures.rewrite(packet, descriptor, header.header_length)

    def start_from_cache(self, now: float) -> bool:
        """A player waiting for a keyframe gets the producer's latest one, and every packet since, at
        once: no wait for the publisher (which may ignore keyframe requests). False: nothing cached."""
        if not self.awaiting_keyframe:
            return False
        cached = list(self.producer.keyframe_cache)
        if not cached:
            return False
        for packet in cached:
            header = parse_rtp(packet)
            if header is not None:
                self.forward(packet, header, now)
        self.counters["keyframe_cache_starts"] += 1
        return not self.awaiting_keyframe

    # ---- simulcast ----

    def send_probe(self, budget: int, now: float) -> int:
        """Up to `budget` bytes of probe padding: retransmissions (on the RTX SSRC) of the latest packets,
        which the player drops as duplicates but counts toward its estimate. 0: nothing to send with
        (no RTX negotiated, or nothing forwarded yet)."""
        if self.rtx_ssrc is None or budget <= 0 or self.rewriter.packets == 0:
            return 0
        producer = self.producer
        newest = producer.stats.max_seq
        spent = 0
        for back in range(PROBE_DEPTH):
            sequence = (newest - back) & 0xFFFF
            packet = producer.cached(sequence)
            header = parse_rtp(packet) if packet is not None else None
            if packet is None or header is None:
                continue
            out = self.rewriter.rewrite_retransmission(packet, header, now)
            if out is None:
                continue
            rtx = self._as_rtx(self._renumber_pictures(out))
            self._send(rtx)
            spent += len(rtx)
            if spent >= budget:
                break
        self.counters["probe_bytes"] += spent
        return spent

    @property
    def temporal_choice(self) -> int | None:
        """The temporal cap chosen for this player (None: none)."""
        return None if self.temporal_target == ALL_TEMPORAL else self.temporal_target

    def select_layer(self, layer: Producer, now: float, temporal: int | None = None) -> None:
        """Play `layer` from its next keyframe on (asked for now); the current one until then. A new
        choice replaces a pending one, so a target changed again and again never strands the player.
        `temporal`: the highest VP8 temporal layer to forward (None: all), from the next frame on."""
        self.temporal_target = ALL_TEMPORAL if temporal is None else temporal
        if layer is self.producer:
            self._drop_target()
            return
        if layer is self.target:
            return
        self._drop_target()
        self.target = layer
        layer.add_player(self)
        self.counters["layer_targets"] += 1
        log.debug("event=layer_target ssrc=%d rid=%s", self.ssrc, layer.rid)
        layer.request_keyframe(now)

    def _drop_target(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            target.remove_player(self)

    def _switch(self, layer: Producer, now: float) -> None:
        """At a keyframe of `layer`: leave the current layer. The rewriter splices the new SSRC on
        (sequence numbers go on by one, timestamps by the time elapsed)."""
        self.producer.remove_player(self)
        self.producer = layer
        self.target = None
        self.rewriter.expect(layer.ssrc)  # back to a layer played before: its packets are no stragglers
        self.awaiting_keyframe = self._congestion_wait = False
        self.temporal = self.temporal_target  # the switch is at a keyframe: any layer may follow
        # Simulcast layers share capture timestamps: the decision taken for the old layer's frame at
        # this keyframe's timestamp (a dropped TL2 frame, say) must not be taken for the keyframe.
        self._frame_timestamp = -1
        self.switched_at = self.option_since = self.rewriter.next_sequence
        self.option_since_at = now
        if self.pictures is not None:
            self.pictures.needs_sync = True
        self.counters["layer_switches"] += 1
        log.debug(
            "event=layer_switch ssrc=%d rid=%s pixels=%d rate_bps=%.0f",
            self.ssrc,
            layer.rid,
            layer.pixels,
            layer.byte_rate * 8,
        )

    def _send(self, packet: bytes) -> None:
        if self.backlogged:
            self._queue(packet)
            return
        sent = self.sink.send_rtp(packet)
        if sent is False:
            if getattr(self.sink, "whole_frames_only", False):
                self.counters["congestion_drops"] += 1  # a retransmission or probe: it can go
                self.totals.drop_stream_congestion += 1
                return
            self._queue(packet)
        elif sent is None:
            self.counters["not_connected"] += 1

    def _queue(self, packet: bytes) -> None:
        queued = self._backlog.offer(packet)
        if queued:
            self.backlogged += 1
        elif queued is False:
            self.counters["backlog_full"] += 1
            self.totals.drop_fanout_queue_full += 1

    def close(self) -> None:
        """The producer is gone: ending the backlog channel ends the forwarding task."""
        self._backlog.close()

    # ---- mute (PROTOCOL.md decision 4) ----

    def update_mute(self, publisher_muted: bool, now: float) -> None:
        muted = publisher_muted or self.muted_by_player
        if muted and not self.rewriter.muted:
            self.rewriter.mute(now)
            self._muted_at = now
        elif not muted and self.rewriter.muted:
            self.rewriter.unmute(now)
            self.awaiting_keyframe, self._congestion_wait = self._gated, False
            # The latest keyframe and what followed it, at once, if that keyframe came after the
            # mute began (the publisher kept sending: Chromium sends black frames); an older one would
            # show the player pictures from before what it saw last. Else the publisher is asked.
            fresh = self.producer.keyframe_cached_at >= self._muted_at
            if self.awaiting_keyframe and not (fresh and self.start_from_cache(now)):
                self.producer.request_keyframe(now)

    # ---- RTCP from the player ----

    def retransmit(self, lost: tuple[int, ...], now: float) -> list[int]:
        """Answer a NACK from the cache; returns the input sequence numbers the cache lacks (lost
        before they reached the server: only the publisher can resend those).

        Each packet at most once per round trip, none too old to be played, and no more bytes than
        the budget allows: the rest is counted and dropped (the player asks again if it still can)."""
        missing = []
        counters = self.counters
        rtt = self.round_trip.seconds
        interval = max(DEFAULT_RTT if rtt is None else rtt, MIN_RESEND_INTERVAL)
        for sequence in lost:
            source = self._source_of(sequence)
            if source is None:
                counters["nack_unknown"] += 1
                continue
            slot = sequence % SEQUENCE_MAP
            resent_output, resent_at = self._resent_output, self._resent_at
            if (
                resent_output is not None
                and resent_at is not None
                and resent_output[slot] == sequence
                and now - resent_at[slot] < interval
            ):
                counters["nack_too_soon"] += 1
                continue
            switched_at = self.switched_at
            if switched_at is not None and 0 < (switched_at - sequence) & 0xFFFF < 0x8000:
                # Sent from the previous layer: the player decodes from the new layer's keyframe on
                # and needs none of it (and this layer's cache has other packets at those numbers).
                counters["nack_previous_layer"] += 1
                continue
            packet = self.producer.cached(source)
            if packet is None:
                if CACHE_SIZE <= (self.producer.stats.max_seq - source) & 0xFFFF < 0x8000:
                    counters["nack_too_old"] += 1  # long gone from the cache: the publisher's too
                else:
                    missing.append(source)
                    counters["nack_missed"] += 1
                continue
            header = parse_rtp(packet)
            if header is None:
                counters["nack_unknown"] += 1
                continue
            if self._age(header.timestamp, now) > MAX_RETRANSMIT_AGE:
                counters["nack_too_old"] += 1
                continue
            if not self._within_budget(len(packet) + RTX_OVERHEAD, now):
                counters["nack_budget_exceeded"] += 1
                self.totals.drop_nack_budget_exceeded += 1
                continue
            out = self.rewriter.rewrite_retransmission(packet, header, now)
            if out is not None:
                out = self._renumber_pictures(out)
            if out is None or ((out[2] << 8) | out[3]) != sequence:
                counters["nack_unknown"] += 1
                continue
            if resent_output is None or resent_at is None:
                resent_output = self._resent_output = array.array("i", [-1]) * SEQUENCE_MAP
                resent_at = self._resent_at = array.array("d", [0.0]) * SEQUENCE_MAP
            resent_output[slot] = sequence
            resent_at[slot] = now
            counters["nack_answered"] += 1
            self._send(self._as_rtx(out) if self.rtx_ssrc is not None else out)
        return missing

    def _age(self, timestamp: int, now: float) -> float:
        """Seconds since a packet with this input RTP timestamp was forwarded, reckoned from the newest
        packet forwarded (media timestamps follow the capture clock): free of any per-packet record."""
        behind = (self.rewriter.last_timestamp - timestamp - self._timestamp_offset) & 0xFFFFFFFF
        if behind >= 0x80000000:
            behind -= 0x100000000  # newer than the newest forwarded (a timestamp jump): not old
        return now - self.rewriter.last_sent_at + behind / self.clock_rate

    def _within_budget(self, size: int, now: float) -> bool:
        """Take `size` bytes from the retransmission budget, if it holds them (a token bucket filled
        at RTX_BUDGET_SHARE of the track's incoming rate)."""
        rate = max(self.producer.incoming_rate(now) * RTX_BUDGET_SHARE, RTX_MIN_RATE)
        burst = max(rate * RTX_BURST_SECONDS, RTX_MIN_BURST)
        tokens = min(burst, self._rtx_tokens + (now - self._rtx_tokens_at) * rate)
        self._rtx_tokens_at = now
        if tokens < size:
            self._rtx_tokens = tokens
            return False
        self._rtx_tokens = tokens - size
        return True

    def _source_of(self, sequence: int) -> int | None:
        source = self.sent_source(sequence)
        return source if source is not None else self.rewriter.source_sequence(sequence)

    def _as_rtx(self, packet: bytes) -> bytes:
        """RFC 4588: same timestamp, RTX SSRC/PT/sequence, original sequence first in the payload."""
        assert self.rtx_payload_type is not None and self.rtx_ssrc is not None
        header = parse_rtp(packet)
        assert header is not None
        rtx = bytearray(packet[: header.header_length])
        rtx[1] = (rtx[1] & 0x80) | self.rtx_payload_type
        struct.pack_into("!H", rtx, 2, self._rtx_sequence)
        struct.pack_into("!I", rtx, 8, self.rtx_ssrc)
        self._rtx_sequence = (self._rtx_sequence + 1) & 0xFFFF
        rtx += packet[2:4]
        rtx += packet[header.header_length :]
        return bytes(rtx)

    def sender_report(self, now: float, wall_time: float) -> SenderReport | None:
        """An SR whose NTP/RTP pair follows the publisher's clock mapping (lip sync across tracks)."""
        if self.rewriter.packets == 0:
            return None
        offset = self._timestamp_offset
        clock = self.producer.clock
        if clock is not None:
            elapsed = now - clock.received_at
            ntp = clock.ntp + int(elapsed * NTP_UNITS)
            rtp = clock.rtp + int(elapsed * self.clock_rate) + offset
        else:
            ntp = ntp_timestamp(wall_time)
            rtp = self.rewriter.last_timestamp + int((now - self.rewriter.last_sent_at) * self.clock_rate)
        return SenderReport(
            ssrc=self.ssrc,
            ntp_timestamp=ntp & 0xFFFFFFFFFFFFFFFF,
            rtp_timestamp=rtp & 0xFFFFFFFF,
            packet_count=self.rewriter.packets & 0xFFFFFFFF,
            octet_count=self.rewriter.octets & 0xFFFFFFFF,
            reports=(),
        )
