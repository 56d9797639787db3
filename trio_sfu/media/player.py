"""The player's side of the media plane: its consumers, and the RTCP it sends and receives.

Keyframe requests from a player go to the producer's throttle, NACKs are answered from the producer's
cache (the publisher is asked only for what the cache lacks), and sender reports carry each consumer's
NTP/RTP mapping so the player can keep audio and video in sync. The player's receiver reports echo
those sender reports (LSR/DLSR), which gives its round-trip time: a packet is resent at most once per
round trip.

A player of a simulcast track is moved between layers: every LAYER_INTERVAL the best active layer
within its estimate (the REMB its browser sends, lowered on heavy loss) is chosen. Down at once, up
only after the better layer has fitted for UP_AFTER: an estimate that flaps must not make the player
ask for a keyframe every quarter second.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from trio_sfu.media.consumer import Consumer, RoundTrip
from trio_sfu.media.leg import REPORT_INTERVAL, MediaHandler
from trio_sfu.media.simulcast import active_layers, choose_layer
from trio_sfu.wire.rtcp import (
    MAX_REPORT_BLOCKS,
    SDES_CNAME,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
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
LAYER_INTERVAL = 0.25  # seconds between layer choices for simulcast players
UP_AFTER = 2.0  # seconds a higher layer must keep fitting before the player moves up to it
ESTIMATE_TTL = 5.0  # an estimate older than this is no estimate (the player stopped sending REMB)
HEAVY_LOSS = 0.1  # fraction lost in a receiver report above which the estimate is cut


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
        self._simulcast = [c for c in consumers if len(c.producer.layers) > 1]
        self.estimate_bps: float | None = None  # the player's own estimate of what reaches it
        self._estimate_at = -1e9
        self._up_since: dict[Consumer, float] = {}  # when a higher layer first fitted, per consumer
        self._next_layer_check = 0.0
        self._next_report = 0.0
        self.max_rank: int | None = None  # the player's cap on its layers (0: lowest), if it set one
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
            elif isinstance(item, Remb):
                self.estimate_bps, self._estimate_at = float(item.bitrate), now

    def _on_report_blocks(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        """RFC 3550 6.4.1: RTT = arrival - LSR - DLSR, with LSR replaced by when we sent that SR."""
        for block in blocks:
            if (
                block.fraction_lost > HEAVY_LOSS * 256
                and block.ssrc in self._by_ssrc
                and self.estimate_bps is not None
                and self._by_ssrc[block.ssrc] in self._simulcast
            ):
                # Loss says more than a delay-based estimate that has not caught up: take 15 % off.
                self.estimate_bps *= 0.85
            sent_at = self._sr_sent.get(block.last_sr) if block.last_sr else None
            if sent_at is None or block.ssrc not in self._by_ssrc:
                continue
            self.round_trip.seconds = max(0.0, now - sent_at - block.delay_since_last_sr / 65536)

    def on_connected(self, now: float) -> None:
        # A new player needs a keyframe to show anything: the producer's cached one at once, else ask
        # now rather than wait for the next one.
        for consumer in self.consumers:
            if not consumer.start_from_cache(now):
                consumer.producer.request_keyframe(now)

    def tick(self, now: float, wall: float) -> float:
        if self._simulcast and now >= self._next_layer_check:
            self._next_layer_check = now + LAYER_INTERVAL
            self._choose_layers(now)
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL
            self._send_reports(now, wall)
        if self._simulcast:
            return min(self._next_report, self._next_layer_check)
        return self._next_report

    def _choose_layers(self, now: float) -> None:
        fresh = self.estimate_bps is not None and now - self._estimate_at < ESTIMATE_TTL
        budget = self.estimate_bps if fresh else None
        for consumer in self._simulcast:
            layers = consumer.producer.layers
            choice = choose_layer(layers, now, budget_bps=budget, max_rank=self.max_rank)
            if choice is None:
                continue  # nothing sends: stay, the current layer may come back
            ranked = active_layers(layers, now)
            playing = consumer.target or consumer.producer
            higher = playing in ranked and ranked.index(choice) > ranked.index(playing)
            if higher:
                since = self._up_since.setdefault(consumer, now)
                if now - since < UP_AFTER:
                    continue
            self._up_since.pop(consumer, None)
            consumer.select_layer(choice, now)

    def _send_reports(self, now: float, wall: float) -> None:
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
