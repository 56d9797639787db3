"""The player's side of the media plane: its consumers, and the RTCP it sends and receives.

Keyframe requests from a player go to the producer's throttle, NACKs are answered from the producer's
cache (the publisher is asked only for what the cache lacks), and sender reports carry each consumer's
NTP/RTP mapping so the player can keep audio and video in sync. The player's receiver reports echo
those sender reports (LSR/DLSR), which gives its round-trip time: a packet is resent at most once per
round trip.

A player of a simulcast track is moved between layers by its `LayerControl` (media/simulcast.py),
every LAYER_INTERVAL, from the REMB its browser sends and the loss its receiver reports show; while
it is below the top layer and the link allows, the server probes with padding every PROBE_INTERVAL
so that the estimate can grow.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from trio_sfu.media.consumer import Consumer, RoundTrip
from trio_sfu.media.leg import REPORT_INTERVAL, MediaHandler
from trio_sfu.media.simulcast import LayerControl
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
PROBE_INTERVAL = 0.05  # seconds between bursts of probe padding (a few packets each)


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
        self.layers = LayerControl()
        self._next_layer_check = 0.0
        self._next_probe = 0.0
        self._probed_at = 0.0
        self._next_report = 0.0
        # Middle 32 bits of each recent SR's NTP timestamp -> when it was sent (our clock). The NTP
        # values follow the publisher's clock, not ours, so an echoed LSR is looked up, not subtracted.
        self._sr_sent: dict[int, float] = {}
        # Per track, what the player's latest receiver report said: the share lost since its previous
        # report (0-1) and the packets lost in all (what the operator API shows).
        self.reported_loss: dict[int, tuple[float, int]] = {}
        # Per simulcast track, the highest sequence number its player's last report covered: where the
        # next report's loss count begins.
        self._reported_up_to: dict[int, int] = {}

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
                self.layers.on_estimate(float(item.bitrate), now)

    def _on_report_blocks(self, blocks: tuple[ReportBlock, ...], now: float) -> None:
        """RFC 3550 6.4.1: RTT = arrival - LSR - DLSR, with LSR replaced by when we sent that SR."""
        for block in blocks:
            consumer = self._by_ssrc.get(block.ssrc)
            if consumer is not None:
                self.reported_loss[block.ssrc] = (block.fraction_lost / 256, block.packets_lost)
            if consumer is not None and consumer in self._simulcast:
                if self._loss_is_current(consumer, block.highest_sequence & 0xFFFF):
                    self.layers.on_loss(block.fraction_lost / 256, now)
                else:
                    self.counters["stale_loss_reports"] += 1
            sent_at = self._sr_sent.get(block.last_sr) if block.last_sr else None
            if sent_at is None or block.ssrc not in self._by_ssrc:
                continue
            self.round_trip.seconds = max(0.0, now - sent_at - block.delay_since_last_sr / 65536)

    def _loss_is_current(self, consumer: Consumer, highest: int) -> bool:
        """Whether a report's loss (counted since the previous report) is all of what the player gets
        now. Loss that began under the previous option (a higher layer, the link's queue still
        draining) must not move the player down again: it once took a player from h to q's base
        layer, far below its link, from which its estimate (Chromium grows it 8 % a second at most)
        took over 30 s to climb back to the top."""
        self.layers.option_changed(consumer.option_since_at)
        previous = self._reported_up_to.get(consumer.ssrc)
        self._reported_up_to[consumer.ssrc] = highest
        if consumer.target is not None:  # a switch is pending: this loss is what made it
            return False
        since = consumer.option_since
        if since is None:
            return True
        return previous is not None and (previous + 1 - since) & 0xFFFF < 0x8000

    def on_connected(self, now: float) -> None:
        # A new player needs a keyframe to show anything: the producer's cached one at once, else ask
        # now rather than wait for the next one.
        for consumer in self.consumers:
            if not consumer.start_from_cache(now):
                consumer.producer.request_keyframe(now)

    def tick(self, now: float, wall: float) -> float:
        if self._simulcast and now >= self._next_layer_check:
            self._next_layer_check = now + LAYER_INTERVAL
            for consumer in self._simulcast:
                playing = (consumer.target or consumer.producer, consumer.temporal_choice)
                choice = self.layers.choose(playing, consumer.producer.layers, now)
                if choice is not None:
                    consumer.select_layer(choice[0], now, choice[1])
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL
            self._send_reports(now, wall)
        if not self._simulcast:
            return self._next_report
        wake = min(self._next_report, self._next_layer_check)
        if self.layers.probe_bps > 0:
            if now >= self._next_probe:
                self._probe(now)
            wake = min(wake, self._next_probe)
        return wake

    def _probe(self, now: float) -> None:
        """Padding at `probe_bps` since the last burst, on the first simulcast track that can send it."""
        elapsed = min(now - self._probed_at, 4 * PROBE_INTERVAL) if self._probed_at else PROBE_INTERVAL
        self._probed_at, self._next_probe = now, now + PROBE_INTERVAL
        budget = int(self.layers.probe_bps / 8 * elapsed)
        for consumer in self._simulcast:
            if consumer.send_probe(budget, now):
                return

    @property
    def estimate_bps(self) -> float | None:
        return self.layers.estimate_bps

    @property
    def max_rank(self) -> int | None:
        """The player's cap on its layers (0: the lowest), if it set one."""
        return self.layers.max_rank

    @max_rank.setter
    def max_rank(self, value: int | None) -> None:
        self.layers.max_rank = value

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
