"""The publisher's send log in shared memory: when each packet left, and a fingerprint of its payload.

It gives an end-to-end latency that does not depend on what the server does with abs-send-time (Janus
overwrites it with its own send time, video only). A subscriber decrypts one packet per stream,
finds its payload's fingerprint in the log (the most recent match: the Opus loop repeats every few
seconds), and so learns the constant offset between its sequence numbers and the publisher's; from
then on every packet maps to its send time with one subtraction and one read.
"""

from __future__ import annotations

import multiprocessing
import zlib
from typing import Any

KINDS = {"audio": 0, "video": 1}
SLOTS = 1 << 16  # one per 16-bit sequence number, per kind
PREFIX = 64  # payload bytes fingerprinted


class SendLog:
    def __init__(self, times: Any, fingerprints: Any) -> None:
        self.times_raw, self.fingerprints_raw = times, fingerprints
        self.times = memoryview(times).cast("B").cast("d")
        self.fingerprints = memoryview(fingerprints).cast("B").cast("I")

    @classmethod
    def create(cls) -> SendLog:
        context = multiprocessing.get_context("spawn")
        return cls(context.RawArray("d", 2 * SLOTS), context.RawArray("I", 2 * SLOTS))

    def __reduce__(self) -> tuple[Any, ...]:  # pass the shared arrays, not views, to child processes
        return (SendLog, (self.times_raw, self.fingerprints_raw))

    def record(self, kind: int, sequence: int, payload: bytes, sent_at: float) -> None:
        slot = kind * SLOTS + sequence
        self.fingerprints[slot] = zlib.crc32(payload[:PREFIX])
        self.times[slot] = sent_at

    def find(self, kind: int, payload: bytes) -> int:
        """The publisher's sequence number of the latest packet with this payload, or -1."""
        wanted = zlib.crc32(payload[:PREFIX])
        base = kind * SLOTS
        values = self.fingerprints[base : base + SLOTS].tolist()
        best, best_time, start = -1, -1.0, 0
        while True:
            try:
                index = values.index(wanted, start)
            except ValueError:
                return best
            if self.times[base + index] > best_time:
                best, best_time = index, self.times[base + index]
            start = index + 1


def payload_offset(packet: bytes) -> int:
    first = packet[0]
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10 and offset + 4 <= len(packet):
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    return offset
