"""Transport-wide congestion control feedback from the receiving side (sans-IO).

The server receives a publisher's packets carrying the transport-wide sequence number extension and
reports, every 50-100 ms, which arrived and when: the publisher's bandwidth estimator (Chromium's
goog-cc) steers its encoder by it. Late arrivals move the next report's start back so they are reported
too, as Chromium's own receiver does; sequence numbers skipped over are reported as lost.
"""

from __future__ import annotations

from collections import deque

from trio_sfu.wire.rtcp import TWCC_DELTA_US, TransportCc

TICKS_PER_SECOND = 1_000_000 // TWCC_DELTA_US  # receive deltas are in 250 µs ticks
TICKS_PER_REFERENCE = 256  # the reference time is in 64 ms units
HISTORY = 1000  # sequence numbers of arrival history kept for late packets
MAX_RECEIVED_PER_PACKET = 120  # keeps one feedback packet well under 1200 bytes
MAX_SPAN = 0x4000  # at most this many sequence numbers per feedback() call


class TwccRecorder:
    """Records arrival times of transport-wide sequence numbers and builds feedback packets.

    Call `feedback` every ~50-100 ms; goog-cc wants a steady stream of reports, not one per packet.
    """

    def __init__(self, sender_ssrc: int, media_ssrc: int) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self._arrivals: dict[int, float] = {}  # unwrapped sequence -> arrival time
        self._order: deque[int] = deque()  # unwrapped sequences in arrival order, for pruning
        self._max: int | None = None
        self._start = 0  # first unwrapped sequence of the next feedback
        self._new = False
        self._feedback_count = 0

    def record(self, sequence: int, arrival: float) -> None:
        """Note that transport-wide `sequence` (16 bits, wrapping) arrived at `arrival` seconds."""
        newest = self._max
        if newest is None:
            unwrapped = sequence & 0xFFFF
            self._start = unwrapped
            self._max = unwrapped
        else:
            unwrapped = newest + (((sequence - newest + 0x8000) & 0xFFFF) - 0x8000)
            if unwrapped <= newest - HISTORY or unwrapped in self._arrivals:
                return  # too old to report consistently, or a duplicate
            if unwrapped > newest:
                self._max = unwrapped
            if unwrapped < self._start:
                self._start = unwrapped  # a late arrival: report again from here
        self._arrivals[unwrapped] = arrival
        self._order.append(unwrapped)
        self._new = True

    def feedback(self, now: float) -> list[TransportCc]:
        """Feedback packets covering everything recorded since the last call; [] if nothing new."""
        newest = self._max
        if not self._new or newest is None:
            return []
        start = max(self._start, newest - MAX_SPAN + 1)
        arrivals = self._arrivals
        packets: list[TransportCc] = []
        current: list[tuple[int, int | None]] = []
        base = start
        reference = 0
        previous = 0
        received = 0
        for unwrapped in range(start, newest + 1):
            arrival = arrivals.get(unwrapped)
            if arrival is None:
                current.append((unwrapped & 0xFFFF, None))
                continue
            ticks = round(arrival * TICKS_PER_SECOND)
            if received:
                delta = ticks - previous
                if not -0x8000 <= delta <= 0x7FFF or received >= MAX_RECEIVED_PER_PACKET:
                    packets.append(self._packet(base, reference, current))
                    current = []
                    base = unwrapped
                    received = 0
            if not received:
                reference = ticks // TICKS_PER_REFERENCE
                delta = ticks - reference * TICKS_PER_REFERENCE
            current.append((unwrapped & 0xFFFF, delta * TWCC_DELTA_US))
            previous = ticks
            received += 1
        packets.append(self._packet(base, reference, current))
        self._start = newest + 1
        self._new = False
        floor = newest - HISTORY
        order = self._order
        while order and order[0] <= floor:
            arrivals.pop(order.popleft(), None)
        return packets

    def _packet(self, base: int, reference: int, current: list[tuple[int, int | None]]) -> TransportCc:
        count = self._feedback_count
        self._feedback_count = (count + 1) & 0xFF
        return TransportCc(
            sender_ssrc=self.sender_ssrc,
            media_ssrc=self.media_ssrc,
            base_sequence=base & 0xFFFF,
            reference_time=reference & 0xFFFFFF,
            feedback_count=count,
            packets=tuple(current),
        )
