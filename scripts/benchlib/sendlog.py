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

KINDS = {"audio": 0, "video": 1}  # with simulcast, video layers below the top one are kinds 2, 3, ...
SLOTS = 1 << 16  # one per 16-bit sequence number, per kind
PREFIX = 64  # payload bytes fingerprinted
SIMULCAST_DESCRIPTOR = 6  # the bench's VP8 descriptor with temporal layers (X, I+L+T, picture id x2,
# TL0PICIDX, TID): what a simulcast video fingerprint leaves out


class SendLog:
    def __init__(self, times: Any, fingerprints: Any, simulcast: bool = False) -> None:
        self.times_raw, self.fingerprints_raw = times, fingerprints
        self.times = memoryview(times).cast("B").cast("d")
        self.fingerprints = memoryview(fingerprints).cast("B").cast("I")
        self.kinds = len(self.times) // SLOTS
        self.simulcast = simulcast

    @classmethod
    def create(cls, layers: int = 1) -> SendLog:
        """A log for audio and `layers` video streams (more than one: simulcast)."""
        context = multiprocessing.get_context("spawn")
        kinds = 1 + layers
        return cls(context.RawArray("d", kinds * SLOTS), context.RawArray("I", kinds * SLOTS), layers > 1)

    def __reduce__(self) -> tuple[Any, ...]:  # pass the shared arrays, not views, to child processes
        return (SendLog, (self.times_raw, self.fingerprints_raw, self.simulcast))

    def fingerprint(self, kind: int, payload: bytes) -> int:
        if self.simulcast and kind:
            end = SIMULCAST_DESCRIPTOR + PREFIX
            return zlib.crc32(payload[SIMULCAST_DESCRIPTOR:end], len(payload))
        return zlib.crc32(payload[:PREFIX])

    def record(self, kind: int, sequence: int, payload: bytes, sent_at: float) -> None:
        slot = kind * SLOTS + sequence
        self.fingerprints[slot] = self.fingerprint(kind, payload)
        self.times[slot] = sent_at

    def find(self, kind: int, payload: bytes) -> int:
        """The publisher's sequence number of the latest packet of `kind` with this payload, or -1."""
        return self._find(kind, self.fingerprint(kind, payload))[0]

    def locate(self, kind: int, payload: bytes) -> tuple[int, int]:
        """(kind, sequence number) of the latest packet with this payload, looked for in the log of
        `kind`, or for video in every video layer's; the sequence number is -1 if none has it."""
        if not kind or self.kinds <= 2:
            return kind, self.find(kind, payload)
        wanted = self.fingerprint(kind, payload)
        best, best_kind, best_time = -1, kind, -1.0
        for layer in range(1, self.kinds):
            index, at = self._find(layer, wanted)
            if index >= 0 and at > best_time:
                best, best_kind, best_time = index, layer, at
        return best_kind, best

    def _find(self, kind: int, wanted: int) -> tuple[int, float]:
        base = kind * SLOTS
        values = self.fingerprints[base : base + SLOTS].tolist()
        best, best_time, start = -1, -1.0, 0
        while True:
            try:
                index = values.index(wanted, start)
            except ValueError:
                return best, best_time
            if self.times[base + index] > best_time:
                best, best_time = index, self.times[base + index]
            start = index + 1


def payload_offset(packet: bytes) -> int:
    first = packet[0]
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10 and offset + 4 <= len(packet):
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    return offset
