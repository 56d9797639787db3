"""The player's side of the media plane: its consumers, and the RTCP it sends and receives.

Keyframe requests from a player go to the producer's throttle, NACKs are answered from the producer's
cache (the publisher is asked only for what the cache lacks), and sender reports carry each consumer's
NTP/RTP mapping so the player can keep audio and video in sync.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from .consumer import Consumer
from .rtcp import (
    MAX_REPORT_BLOCKS,
    SDES_CNAME,
    Fir,
    Nack,
    Pli,
    RtcpError,
    Sdes,
    parse_compound,
    serialize_compound,
)
from .transport import MediaHandler

REPORT_INTERVAL = 1.0


class PlayerMedia(MediaHandler):
    def __init__(
        self, consumers: list[Consumer], *, cname: str, send_rtcp: Callable[[bytes], object]
    ) -> None:
        self.consumers = consumers
        self._by_ssrc = {c.ssrc: c for c in consumers}
        self.cname = cname.encode()
        self._send_rtcp = send_rtcp
        self.counters: collections.Counter[str] = collections.Counter()

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

    def on_connected(self, now: float) -> None:
        # A new player needs a keyframe to show anything: ask now rather than wait for the next one.
        for consumer in self.consumers:
            consumer.producer.request_keyframe(now)

    def tick(self, now: float) -> float:
        wall = time.time()
        reports = [r for c in self.consumers if (r := c.sender_report(now, wall)) is not None]
        # At most 31 reports or chunks per RTCP packet: many tracks make several compounds.
        for i in range(0, len(reports), MAX_REPORT_BLOCKS):
            batch = reports[i : i + MAX_REPORT_BLOCKS]
            chunks = tuple((r.ssrc, ((SDES_CNAME, self.cname),)) for r in batch)
            self._send_rtcp(serialize_compound([*batch, Sdes(chunks=chunks)]))
        return now + REPORT_INTERVAL
