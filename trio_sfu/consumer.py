"""A consumer: one player's view of one producer — the per-player half of the packet path.

`forward` runs on the receive path itself (no task switch when the socket takes the packet at once):
rewrite the header for this player, protect, send. Only when the kernel buffer is full does a packet
go to the consumer's bounded backlog channel, which the player's forwarding task drains when the
socket is writable again; when that backlog is full, packets are dropped and counted.
"""

from __future__ import annotations

import array
import collections
import struct
from typing import Protocol

import trio

from .keyframe import detector
from .negotiation import EXT_MID, NegotiatedTrack
from .producer import Producer
from .rtcp import SenderReport, ntp_timestamp
from .rtp import Rewriter, RtpHeader, parse_rtp

NTP_UNITS = 1 << 32
SEQUENCE_MAP = 1024  # output sequence -> input sequence, for NACKs


class PacketSink(Protocol):
    """What a consumer needs of the player's transport."""

    stats: collections.Counter[str]

    def send_rtp(self, packet: bytes) -> bool | None:
        """True: sent; False: the socket would block; None: not connected yet (dropped)."""
        ...

    def send_rtp_as(self, packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bool | None:
        """`send_rtp` of `packet` with these header fields written over its own."""
        ...


class Consumer:
    # Slots: see Transport.
    __slots__ = (
        "_backlog",
        "_rtx_sequence",
        "_sent_input",
        "_sent_output",
        "_starts_keyframe",
        "_timestamp_offset",
        "awaiting_keyframe",
        "backlogged",
        "clock_rate",
        "counters",
        "kind",
        "muted_by_player",
        "owner",
        "played",
        "producer",
        "rewriter",
        "rtx_payload_type",
        "rtx_ssrc",
        "sink",
        "ssrc",
        "stats",
    )

    def __init__(
        self,
        owner: object,
        producer: Producer,
        played: NegotiatedTrack,
        sink: PacketSink,
        backlog: trio.MemorySendChannel[bytes],
    ) -> None:
        self.owner = owner  # the player's session
        self.producer = producer
        self.played = played
        self.kind = played.kind
        self.sink = sink
        self._backlog = backlog
        self.backlogged = 0
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
        )
        self.rtx_payload_type = played.rtx_payload_type
        self.rtx_ssrc = played.rtx_ssrc
        self._rtx_sequence = 0
        # Output sequence -> input sequence of recently sent packets, for NACKs that reach back
        # across a splice (unmute); newer ones are mapped through the rewriter's offset.
        # Typed arrays: four bytes a number, and no int object kept alive per entry.
        self._sent_output = array.array("i", [-1]) * SEQUENCE_MAP
        self._sent_input = array.array("i", [-1]) * SEQUENCE_MAP
        self._timestamp_offset = 0
        self.muted_by_player = False
        # Video is forwarded from a keyframe on: at the start and after every unmute.
        starts_keyframe = detector(played.codec.name) if self.kind == "video" else None
        self._starts_keyframe = starts_keyframe or (lambda payload: True)
        self.awaiting_keyframe = starts_keyframe is not None
        self.counters: collections.Counter[str] = collections.Counter()
        self.stats = sink.stats

    # ---- the packet path ----

    def forward(self, packet: bytes, header: RtpHeader, now: float) -> None:
        if self.awaiting_keyframe:
            if not self._starts_keyframe(memoryview(packet)[header.header_length :]):
                self.counters["waiting_for_keyframe"] += 1
                self.producer.request_keyframe(now)  # throttled by the producer
                return
            self.awaiting_keyframe = False
        rewriter = self.rewriter
        numbered = rewriter.number(header, now)
        if numbered is None:
            return
        sequence, timestamp = numbered
        slot = sequence % SEQUENCE_MAP
        self._sent_output[slot] = sequence
        self._sent_input[slot] = header.sequence
        # Output minus input timestamp of the same packet: what sender reports add to the publisher's
        # clock mapping (a reordered packet has the same offset, so it cannot skew it).
        self._timestamp_offset = (timestamp - header.timestamp) & 0xFFFFFFFF
        mapped = rewriter.header_map.apply(packet, header)  # once for all players sharing the map
        if not self.backlogged:
            sent = self.sink.send_rtp_as(mapped, sequence, timestamp, self.ssrc)
            if sent is None:
                self.counters["not_connected"] += 1
            if sent is not False:
                return
        self._queue(rewriter.patch(mapped, sequence, timestamp))

    def _send(self, packet: bytes) -> None:
        if self.backlogged:
            self._queue(packet)
            return
        sent = self.sink.send_rtp(packet)
        if sent is False:
            self._queue(packet)
        elif sent is None:
            self.counters["not_connected"] += 1

    def _queue(self, packet: bytes) -> None:
        try:
            self._backlog.send_nowait(packet)
            self.backlogged += 1
        except trio.WouldBlock:
            self.counters["backlog_full"] += 1
            self.stats["drop_fanout_queue_full"] += 1
        except trio.ClosedResourceError:
            pass

    def close(self) -> None:
        """The producer is gone: ending the backlog channel ends the forwarding task."""
        self._backlog.close()

    # ---- mute (PROTOCOL.md decision 4) ----

    def update_mute(self, publisher_muted: bool, now: float) -> None:
        muted = publisher_muted or self.muted_by_player
        if muted and not self.rewriter.muted:
            self.rewriter.mute(now)
        elif not muted and self.rewriter.muted:
            self.rewriter.unmute(now)
            self.awaiting_keyframe = self.kind == "video"
            self.producer.request_keyframe(now)

    # ---- RTCP from the player ----

    def retransmit(self, lost: tuple[int, ...], now: float) -> list[int]:
        """Answer a NACK from the cache; returns the input sequence numbers the cache lacks (lost
        before they reached the server: only the publisher can resend those)."""
        missing = []
        for sequence in lost:
            source = self._source_of(sequence)
            if source is None:
                self.counters["nack_unknown"] += 1
                continue
            packet = self.producer.cached(source)
            if packet is None:
                missing.append(source)
                self.counters["nack_missed"] += 1
                continue
            header = parse_rtp(packet)
            out = self.rewriter.rewrite_retransmission(packet, header) if header is not None else None
            if out is None or ((out[2] << 8) | out[3]) != sequence:
                self.counters["nack_unknown"] += 1
                continue
            self.counters["nack_answered"] += 1
            self._send(self._as_rtx(out) if self.rtx_ssrc is not None else out)
        return missing

    def _source_of(self, sequence: int) -> int | None:
        slot = sequence % SEQUENCE_MAP
        if self._sent_output[slot] == sequence:
            return self._sent_input[slot]
        return self.rewriter.source_sequence(sequence)

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
