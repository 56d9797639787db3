"""The publisher's side of the media plane: incoming RTP to producers, and the RTCP a sender needs.

The server terminates RTCP on this leg: it sends the publisher receiver reports, keyframe requests and
NACKs for packets players lost, and congestion feedback (transport-cc when negotiated, REMB otherwise)
so the publisher's encoder ramps up instead of staying at its start bitrate.
"""

from __future__ import annotations

import collections
import logging
import struct

from trio_sfu.media.leg import REPORT_INTERVAL, MediaHandler, RtcpSender
from trio_sfu.media.negotiation import EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TRANSPORT_CC, Negotiated
from trio_sfu.media.producer import Producer
from trio_sfu.media.twcc import TwccRecorder
from trio_sfu.wire.rtcp import (
    MAX_REPORT_BLOCKS,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    RtcpError,
    RtcpPacket,
    SenderReport,
    parse_compound,
    serialize_compound,
)
from trio_sfu.wire.rtp import RtpHeader, parse_rtp, read_extension

log = logging.getLogger(__name__)

TWCC_INTERVAL = 0.1
SIMULCAST_MIN_BITRATE = 4_000_000  # the REMB cap for a simulcast publisher, whatever max_bitrate says


def _extension_id(negotiated: Negotiated, uri: str) -> int | None:
    for track in negotiated.tracks:
        for extension in track.header_extensions:
            if extension.uri == uri:
                return extension.id
    return None


class PublisherMedia(MediaHandler):
    def __init__(
        self,
        transport: RtcpSender,
        negotiated: Negotiated,
        *,
        ssrc: int,
        max_bitrate: int,
        layer_rid: str | None = None,
    ) -> None:
        """`layer_rid`: the video is one layer of a simulcast track whose layers come apart (a relay
        plays each on a leg of its own), by this rid."""
        self.transport = transport
        self.ssrc = ssrc  # the server's own SSRC on this leg, for its RTCP
        self.max_bitrate = max_bitrate
        self.producers: list[Producer] = []  # every layer of every track
        self._by_rid: dict[tuple[str, str], Producer] = {}  # (mid, rid) of a simulcast layer
        for track in negotiated.tracks:
            if not track.rids:
                rid = layer_rid if track.kind == "video" else None
                self.producers.append(Producer(track, self, rid=rid))
                continue
            layers = [Producer(track, self, rid=rid) for rid in track.rids]
            for layer in layers:
                layer.layers = layers
                self._by_rid[(track.mid, layer.rid or "")] = layer
            self.producers += layers
        self._by_ssrc: dict[int, Producer] = {}
        self._rtx_by_ssrc: dict[int, Producer] = {}
        for producer in self.producers:
            track = producer.negotiated
            if track.ssrc is not None:
                self._by_ssrc[track.ssrc] = producer
            if track.rtx_ssrc is not None:
                self._rtx_by_ssrc[track.rtx_ssrc] = producer
        self._by_mid = {p.negotiated.mid: p for p in self.producers if not p.negotiated.rids}
        # RFC 8843 section 9.2: without mid, a payload type used by one section only names it.
        owners: dict[int, list[Producer]] = {}
        for producer in self.producers:
            track = producer.negotiated
            for pt in (track.codec.payload_type, track.rtx_payload_type):
                if pt is not None:
                    owners.setdefault(pt, []).append(producer)
        self._by_payload_type = {pt: found[0] for pt, found in owners.items() if len(found) == 1}
        self._mid_id = _extension_id(negotiated, EXT_MID)
        self._rid_id = _extension_id(negotiated, EXT_RID)
        self._repaired_rid_id = _extension_id(negotiated, EXT_REPAIRED_RID)
        self._twcc_id = _extension_id(negotiated, EXT_TRANSPORT_CC)
        media_ssrc = next((p.ssrc for p in self.producers if p.ssrc is not None), 0)
        self.twcc = TwccRecorder(ssrc, media_ssrc) if self._twcc_id is not None else None
        self.remb = any("goog-remb" in p.negotiated.feedback for p in self.producers)
        if self._by_rid:
            # The cap must leave room for every layer at once (Chromium's three: 0.15 + 0.5 + 1.5).
            self.max_bitrate = max(max_bitrate, SIMULCAST_MIN_BITRATE)
        self._next_report = 0.0
        self.counters: collections.Counter[str] = collections.Counter()

    # ---- incoming ----

    def on_rtp(self, packet: bytes, now: float) -> None:
        header = parse_rtp(packet)
        if header is None:
            self.counters["malformed_rtp"] += 1
            return
        if self.twcc is not None and header.extension_offset >= 0:
            value = read_extension(packet, header, self._twcc_id)  # type: ignore[arg-type]
            if value is not None and len(value) >= 2:
                self.twcc.record(int.from_bytes(value[:2], "big"), now)
        producer = self._by_ssrc.get(header.ssrc)
        if producer is None:
            producer = self._rtx_by_ssrc.get(header.ssrc)
            if producer is None:
                producer = self._learn(packet, header)
                if producer is None:
                    self.counters["unknown_ssrc"] += 1
                    return
        track = producer.negotiated
        if header.payload_type == track.codec.payload_type and header.ssrc == producer.ssrc:
            producer.receive(packet, header, now)
        elif header.payload_type == track.rtx_payload_type:
            # Browsers also send RTX nobody asked for: bandwidth probes, as padding or as copies of
            # packets already delivered. Only a packet the server lacks is forwarded (once).
            original = self._unwrap_rtx(packet, header, producer)
            parsed = parse_rtp(original) if original is not None else None
            if (
                original is None
                or parsed is None
                or len(original) - parsed.header_length - parsed.padding <= 0
            ):
                self.counters["rtx_padding"] += 1
            elif producer.cached(parsed.sequence) is not None:
                self.counters["rtx_duplicate"] += 1
            else:
                producer.receive(original, parsed, now)
        else:
            self.counters["unexpected_payload_type"] += 1

    def _learn(self, packet: bytes, header: RtpHeader) -> Producer | None:
        """An SSRC the SDP did not name: a simulcast layer names itself with the rid extension (its
        retransmissions with repaired-rid); otherwise (GStreamer offers made before media flows have no
        a=ssrc) match it by its mid extension, else by a payload type only one section uses."""
        producer = None
        if self._by_rid and header.extension_offset >= 0:
            layer = self._learn_layer(packet, header)
            if layer is not None:
                return layer
        if self._mid_id is not None and header.extension_offset >= 0:
            mid = read_extension(packet, header, self._mid_id)
            producer = self._by_mid.get(mid.decode("ascii", "replace")) if mid else None
        elif self._mid_id is None:
            producer = self._by_payload_type.get(header.payload_type)
        if producer is None:
            return None
        if header.payload_type == producer.negotiated.rtx_payload_type:
            self._rtx_by_ssrc[header.ssrc] = producer
        elif header.payload_type == producer.negotiated.codec.payload_type and producer.ssrc is None:
            producer.ssrc = header.ssrc
            self._by_ssrc[header.ssrc] = producer
        return producer

    def _learn_layer(self, packet: bytes, header: RtpHeader) -> Producer | None:
        """Latch SSRC -> layer from the rid (or repaired-rid) extension: Chromium stops sending it once
        a receiver report acknowledges the SSRC, so the first packets must be enough."""
        if self._mid_id is None:
            return None
        mid = read_extension(packet, header, self._mid_id)
        mids = {m for m, _ in self._by_rid}
        if mid is None and len(mids) != 1:
            return None
        mid_text = mid.decode("ascii", "replace") if mid is not None else next(iter(mids))
        for ext_id, rtx in ((self._rid_id, False), (self._repaired_rid_id, True)):
            rid = read_extension(packet, header, ext_id) if ext_id is not None else None
            layer = self._by_rid.get((mid_text, rid.decode("ascii", "replace"))) if rid else None
            if layer is None:
                continue
            if rtx or header.payload_type == layer.negotiated.rtx_payload_type:
                self._rtx_by_ssrc[header.ssrc] = layer
            elif layer.ssrc is None:
                layer.ssrc = header.ssrc
                self._by_ssrc[header.ssrc] = layer
                log.info("event=simulcast_layer mid=%s rid=%s ssrc=%d", mid_text, layer.rid, header.ssrc)
            return layer
        return None

    def _unwrap_rtx(self, packet: bytes, header: RtpHeader, producer: Producer) -> bytes | None:
        """RFC 4588: restore the original packet from a retransmission the publisher sent us."""
        start = header.header_length
        if producer.ssrc is None or len(packet) < start + 2:
            return None
        original = bytearray(packet[:start])
        original[1] = (original[1] & 0x80) | producer.negotiated.codec.payload_type
        original[2:4] = packet[start : start + 2]
        struct.pack_into("!I", original, 8, producer.ssrc)
        original += packet[start + 2 :]
        return bytes(original)

    def on_rtcp(self, packet: bytes, now: float) -> None:
        try:
            packets = parse_compound(packet)
        except RtcpError:
            self.counters["malformed_rtcp"] += 1
            return
        for item in packets:
            if isinstance(item, SenderReport):
                producer = self._by_ssrc.get(item.ssrc)
                if producer is not None:
                    producer.on_sender_report(item, now)

    # ---- outgoing RTCP ----

    def send_keyframe_request(self, producer: Producer) -> None:
        self.transport.totals.keyframe_requests += 1
        if producer.ssrc is not None:
            self.transport.send_rtcp(
                serialize_compound([Pli(sender_ssrc=self.ssrc, media_ssrc=producer.ssrc)])
            )

    def send_nack(self, producer: Producer, sequences: list[int]) -> None:
        self.transport.totals.nacks_to_publisher += 1
        if producer.ssrc is not None and sequences:
            nack = Nack(sender_ssrc=self.ssrc, media_ssrc=producer.ssrc, lost=tuple(sorted(set(sequences))))
            self.transport.send_rtcp(serialize_compound([nack]))

    def on_connected(self, now: float) -> None:
        self._next_report = now

    def tick(self, now: float, wall: float) -> float:
        if self.twcc is not None:
            feedback = self.twcc.feedback(now)
            if feedback:
                self.transport.send_rtcp(serialize_compound(feedback))
        for producer in self.producers:
            producer.tick(now)
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL
            self._send_reports(now)
        return now + (TWCC_INTERVAL if self.twcc is not None else min(REPORT_INTERVAL, 0.25))

    def _send_reports(self, now: float) -> None:
        blocks = [
            p.stats.report_block(p.ssrc, p.clock, now)
            for p in self.producers
            if p.ssrc is not None and p.stats.started
        ]
        # An RTCP report holds at most 31 blocks: a publisher of many tracks gets several.
        packets: list[RtcpPacket] = [
            ReceiverReport(ssrc=self.ssrc, reports=tuple(blocks[i : i + MAX_REPORT_BLOCKS]))
            for i in range(0, max(len(blocks), 1), MAX_REPORT_BLOCKS)
        ]
        if self.remb:
            ssrcs = tuple(p.ssrc for p in self.producers if p.ssrc is not None and p.kind == "video")
            packets.append(Remb(sender_ssrc=self.ssrc, bitrate=self.max_bitrate, ssrcs=ssrcs[:255]))
        self.transport.send_rtcp(serialize_compound(packets))
