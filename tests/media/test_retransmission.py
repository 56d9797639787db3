"""Retransmission limits, sans-IO: a packet resent at most once per round trip, within a budget tied
to the track's own rate, and never once it is too old to be played. The consumer and the player's RTCP
are driven by hand on a clock the test moves; tests/e2e/test_retransmission.py puts real players
behind narrow and lossy links.
"""

from __future__ import annotations

import random

import pytest

from trio_sfu.media.consumer import (
    DEFAULT_RTT,
    MAX_RETRANSMIT_AGE,
    MIN_RESEND_INTERVAL,
    RTX_BUDGET_SHARE,
    RTX_BURST_SECONDS,
)
from trio_sfu.media.player import PlayerMedia
from trio_sfu.media.producer import CACHE_SIZE
from trio_sfu.wire.rtcp import Nack, ReceiverReport, ReportBlock, SenderReport, parse_compound, serialize

from ..support.media_model import CHROMIUM_VIDEO_SSRC, Setup, header, payload_of

WALL = 1_767_225_600.0  # the wall clock the legs are given (sender reports' NTP time)
PACKET = 1000  # payload bytes of the synthetic video packets
PACKET_RATE = 100  # packets per second: 800 kbit/s of payload
EPSILON = 1e-6  # past a boundary, whatever the float rounding of the times


class Stream:
    """A Chromium publisher's video track at a steady rate into one consumer, on a clock the test moves.

    Timestamps follow the clock (90 kHz) as a live encoder's do; the producer ticks as the publisher's
    transport would make it."""

    def __init__(self) -> None:
        self.s = Setup()
        self.consumer = self.s.consumers["video"]
        self.producer = self.s.producers["video"]
        self.now = 100.0
        self.input = 5000
        self.sent: dict[int, int] = {}  # output sequence -> input sequence, of what was forwarded
        self.producer.tick(self.now)

    def run(self, seconds: float, lose: float = 0.0, rng: random.Random | None = None) -> list[int]:
        """Forward `seconds` of packets; returns the output sequence numbers of those `lose` dropped
        on the way to the player (they were sent: the player NACKs them)."""
        lost = []
        for _ in range(round(seconds * PACKET_RATE)):
            self.now += 1 / PACKET_RATE
            self.s.video(self.input, round(self.now * 90000), self.now, bytes(PACKET))
            out = header(self.s.sink.rtp[-1]).sequence
            self.sent[out] = self.input
            self.input += 1
            if rng is not None and rng.random() < lose:
                lost.append(out)
            self.producer.tick(self.now)
        return lost

    def nack(self, sequences: list[int], at: float | None = None) -> list[bytes]:
        """The RTX packets the consumer sends for one NACK."""
        before = len(self.s.sink.rtp)
        self.consumer.retransmit(tuple(sequences), self.now if at is None else at)
        return self.s.sink.rtp[before:]

    def newest(self, count: int) -> list[int]:
        return list(self.sent)[-count:]


def original_sequence(rtx: bytes) -> int:
    return int.from_bytes(payload_of(rtx)[:2], "big")


def test_a_packet_nacked_twice_within_a_round_trip_is_resent_once() -> None:
    stream = Stream()
    stream.run(0.5)
    (lost,) = stream.newest(1)
    t = stream.now
    assert [original_sequence(p) for p in stream.nack([lost], t)] == [lost]
    # Chromium repeats a NACK until the packet arrives: before a round trip has passed, the first
    # resend cannot have arrived yet, so the repeat is the same request.
    assert stream.nack([lost], t + DEFAULT_RTT / 2) == []
    assert stream.consumer.counters["nack_too_soon"] == 1
    # A round trip later, the resend was lost too: send it again.
    assert [original_sequence(p) for p in stream.nack([lost], t + DEFAULT_RTT + EPSILON)] == [lost]
    assert stream.consumer.counters["nack_answered"] == 2
    # Other packets in the same NACK are not held back by it.
    other = stream.newest(2)[0]
    assert [original_sequence(p) for p in stream.nack([other, lost], t + DEFAULT_RTT * 1.5)] == [other]


def test_the_interval_follows_the_rtt_with_a_floor() -> None:
    stream = Stream()
    stream.run(0.5)
    first, second = stream.newest(2)
    t = stream.now
    stream.consumer.round_trip.seconds = 0.3
    stream.nack([first], t)
    assert stream.nack([first], t + 0.29) == []
    assert len(stream.nack([first], t + 0.3 + EPSILON)) == 1
    stream.consumer.round_trip.seconds = 0.001  # loopback: the floor, not one resend per NACK
    stream.nack([second], t)
    assert stream.nack([second], t + MIN_RESEND_INTERVAL / 2) == []
    assert len(stream.nack([second], t + MIN_RESEND_INTERVAL + EPSILON)) == 1


def test_rtt_is_learned_from_receiver_reports() -> None:
    s = Setup()
    sent: list[bytes] = []
    media = PlayerMedia(list(s.consumers.values()), cname="c", send_rtcp=sent.append)
    video, audio = s.consumers["video"], s.consumers["audio"]
    # The sender reports carry the publisher's NTP clock, not the server's.
    publisher_sr = SenderReport(CHROMIUM_VIDEO_SSRC, 0xE000_1234_0000_0000, 0, 0, 0)
    s.producers["video"].on_sender_report(publisher_sr, 19.0)
    s.video(1, 90000, 19.5)
    media.tick(20.0, WALL)
    (report,) = [p for p in parse_compound(sent[-1]) if isinstance(p, SenderReport)]
    lsr = (report.ntp_timestamp >> 16) & 0xFFFFFFFF

    def receiver_report(last_sr: int, delay: float) -> bytes:
        block = ReportBlock(video.ssrc, 0, 0, 1, 0, last_sr, round(delay * 65536))
        return serialize(ReceiverReport(0x1234, (block,)))

    media.on_rtcp(receiver_report(0, 0.0), 20.5)  # no SR received yet: LSR 0
    media.on_rtcp(receiver_report(lsr ^ 0xFFFF, 0.1), 20.5)  # an SR this player never got from us
    assert media.round_trip.seconds is None and video.round_trip.seconds is None
    # Sent at 20.0, held 0.25 s by the player, back at 20.33: 80 ms on the wire both ways.
    media.on_rtcp(receiver_report(lsr, 0.25), 20.33)
    assert media.round_trip.seconds == pytest.approx(0.08, abs=1e-4)
    assert video.round_trip is audio.round_trip is media.round_trip  # one transport, one round trip
    # The SR the player last got can be an older one (the newest was lost): still found.
    media.tick(21.0, WALL)
    media.on_rtcp(receiver_report(lsr, 1.2), 21.4)
    assert media.round_trip.seconds == pytest.approx(0.2, abs=1e-4)


def test_the_budget_caps_retransmitted_bytes() -> None:
    stream = Stream()
    stream.run(2.0)  # the producer measures the track's rate
    rate = stream.producer.byte_rate
    assert rate == pytest.approx(PACKET_RATE * (PACKET + 12), rel=0.05)
    # A player NACKs the last second's packets all at once: only a burst's worth is answered.
    answered = stream.nack(stream.newest(PACKET_RATE))
    burst = rate * RTX_BUDGET_SHARE * RTX_BURST_SECONDS
    assert burst - PACKET < sum(map(len, answered)) <= burst
    exceeded = stream.consumer.counters["nack_budget_exceeded"]
    assert exceeded == PACKET_RATE - len(answered)
    assert stream.s.sink.totals.drop_nack_budget_exceeded == exceeded  # the server-wide counter
    # Then it NACKs everything of the last second every 20 ms, for 3 s: the retransmitted bytes
    # follow the budget, not the NACKs.
    retransmitted = 0
    for _ in range(150):
        stream.run(0.02)
        retransmitted += sum(map(len, stream.nack(stream.newest(PACKET_RATE))))
    budget = 3.0 * rate * RTX_BUDGET_SHARE
    assert 0.9 * budget <= retransmitted <= budget + PACKET


def test_packets_too_old_to_play_are_not_resent_nor_asked_of_the_publisher() -> None:
    stream = Stream()
    stream.run(0.2)
    old = stream.newest(1)[0]
    stream.run(MAX_RETRANSMIT_AGE - 0.2)
    assert len(stream.nack([old])) == 1  # just under a second: still worth it
    stream.run(0.25)
    assert stream.nack([old]) == []
    assert stream.consumer.counters["nack_too_old"] == 1
    # Beyond the cache (a player NACKing from long ago): not in the cache, and not asked upstream.
    stream.run(CACHE_SIZE / PACKET_RATE)
    assert stream.consumer.retransmit((old,), stream.now) == []
    assert stream.consumer.counters["nack_too_old"] == 2
    assert stream.s.link.nacks == []


def test_ordinary_loss_is_fully_answered() -> None:
    """5 % random loss, each packet NACKed once a round trip later (through the player's RTCP):
    every one is resent, nothing held back."""
    stream = Stream()
    media = PlayerMedia(list(stream.s.consumers.values()), cname="c", send_rtcp=lambda _: None)
    video = stream.consumer
    rng = random.Random(5)
    stream.run(1.0)
    pending: list[tuple[float, list[int]]] = []
    expected: list[int] = []
    for _ in range(500):  # 10 s
        lost = stream.run(0.02, lose=0.05, rng=rng)
        if lost:
            pending.append((stream.now + 0.05, lost))
        while pending and pending[0][0] <= stream.now:
            _, due = pending.pop(0)
            expected += due
            media.on_rtcp(serialize(Nack(0x1234, video.ssrc, tuple(due))), stream.now)
    rtx = [p for p in stream.s.sink.rtp if header(p).ssrc == video.rtx_ssrc]
    assert len(expected) > 30  # about 50 of 1000
    assert sorted(original_sequence(p) for p in rtx) == sorted(expected)
    assert video.counters["nack_answered"] == len(expected)
    assert video.counters["nack_budget_exceeded"] == video.counters["nack_too_soon"] == 0


# ------------------------------------------------------------------------------------- end to end
