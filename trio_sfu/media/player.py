"""The player's side of the media plane: its consumers, and the RTCP it sends and receives.

Keyframe requests from a player go to the producer's throttle, NACKs are answered from the producer's
cache (the publisher is asked only for what the cache lacks), and sender reports carry each consumer's
NTP/RTP mapping so the player can keep audio and video in sync. The player's receiver reports echo
those sender reports (LSR/DLSR), which gives its round-trip time: a packet is resent at most once per
round trip.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from trio_sfu.media.consumer import Consumer, RoundTrip
from trio_sfu.media.leg import REPORT_INTERVAL, MediaHandler
from trio_sfu.wire.rtcp import (
    MAX_REPORT_BLOCKS,
    SDES_CNAME,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    ReportBlock,
    RtcpError,
    Sdes,
    SenderReport,
    parse_compound,
    serialize_compound,
)

# Sender reports remembered for the receiver reports that echo them: a report block refers to the last
# SR its sender received, a second or two back at most; a few more cover lost and reordered reports.
SR_HISTORY = 16


class PlayerMedia(MediaHandler):
    def __init__(
        self, consumers: list[Consumer], *, cname: str, send_rtcp: Callable[[bytes], object]
    ) -> None:
        self.consumers = consumers
        self._by_ssrc = {c.ssrc: c for c in consumers}
        self.cname = cname.encode()
        self._send_rtcp = send_rtcp
        self.counters: collections.Counter[str] = collections.Counter()
        self.round_trip = RoundTrip()  # one transport, one round trip: every track reads this one
        for consumer in consumers:
            consumer.round_trip = self.round_trip
        # Middle 32 bits of each recent SR's NTP timestamp -> when it was sent (our clock). The NTP
        # values follow the publisher's clock, not ours, so an echoed LSR is looked up, not subtracted.
        self._sr_sent: dict[int, float] = {}

    def on_rtp(self, packet: bytes, now: float) -> None:
        self.counters["unexpected_rtp"] += 1  # a player only receives

    def on_rtcp(self, packet: bytes, now: float) -> None:
        try:
            packets = parse_compound(packet)
        except RtcpError:
            self.counters["malformed_rtcp"] += 1
            return
        for item in packets:
            if isinstance(item, Pli):
                consumer = self._by_ssrc.get(item.media_ssrc)
                if consumer is not None:
                    consumer.producer.request_keyframe(now)
            elif isinstance(item, Fir):
                for ssrc, _ in item.entries:
                    consumer = self._by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.producer.request_keyframe(now)
            elif isinstance(item, Nack):
                consumer = self._by_ssrc.get(item.media_ssrc)
                if consumer is not None:
                    missing = consumer.retransmit(item.lost, now)
                    if missing:
                        consumer.producer.publisher.send_nack(consumer.producer, missing)
            elif isinstance(item, ReceiverReport | SenderReport):
                self._on_report_blocks(item.reports, now)

    def _on_report_blocks(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        """RFC 3550 6.4.1: RTT = arrival - LSR - DLSR, with LSR replaced by when we sent that SR."""
        for block in blocks:
            sent_at = self._sr_sent.get(block.last_sr) if block.last_sr else None
            if sent_at is None or block.ssrc not in self._by_ssrc:
                continue
            self.round_trip.seconds = max(0.0, now - sent_at - block.delay_since_last_sr / 65536)

    def on_connected(self, now: float) -> None:
        # A new player needs a keyframe to show anything: ask now rather than wait for the next one.
        for consumer in self.consumers:
            consumer.producer.request_keyframe(now)

    def tick(self, now: float, wall: float) -> float:
        reports = [r for c in self.consumers if (r := c.sender_report(now, wall)) is not None]
        sent = self._sr_sent
        for report in reports:
            sent[(report.ntp_timestamp >> 16) & 0xFFFFFFFF] = now
        while len(sent) > SR_HISTORY:
            del sent[next(iter(sent))]  # the oldest (dicts keep insertion order)
        # At most 31 reports or chunks per RTCP packet: many tracks make several compounds.
        for i in range(0, len(reports), MAX_REPORT_BLOCKS):
            batch = reports[i : i + MAX_REPORT_BLOCKS]
            chunks = tuple((r.ssrc, ((SDES_CNAME, self.cname),)) for r in batch)
            self._send_rtcp(serialize_compound([*batch, Sdes(chunks=chunks)]))
        return now + REPORT_INTERVAL
