"""The VP8 payload descriptor (RFC 7741 section 4.2): where a packet's picture id and TL0PICIDX are,
and which temporal layer its frame belongs to.

A VP8 encoder with temporal layers (Chromium's simulcast layers are L1T3: TL0 at a quarter of the
frame rate, TL1 adding a quarter, TL2 the other half) marks each frame with its TID and a layer-sync
bit (Y: the frame refers to TL0 only). An SFU can then drop the upper temporal layers of one player
without a keyframe: the finest step of adaptation, and the quickest.
"""

from __future__ import annotations

from typing import TypeAlias

Packet: TypeAlias = bytes | bytearray | memoryview


class Vp8Descriptor:
    """The fields of one packet's descriptor an SFU reads or rewrites (offsets from the payload's
    start, so they hold for a copy whose header was rewritten)."""

    __slots__ = ("frame_start", "layer_sync", "picture_at", "picture_id", "temporal_id", "tl0_at", "wide")

    def __init__(self) -> None:
        self.frame_start = False  # S=1 and PID=0: the first packet of a frame
        self.picture_at = -1  # where the picture id is (-1: none)
        self.wide = False  # a 15-bit picture id (else 7 bits)
        self.picture_id = -1
        self.tl0_at = -1  # where TL0PICIDX is (-1: none)
        self.temporal_id = -1  # TID (-1: the packet says none: no temporal layering)
        self.layer_sync = False  # Y


def parse_descriptor(packet: Packet, start: int) -> Vp8Descriptor | None:
    """The descriptor of the RTP payload that starts at `start` in `packet`; None if it is cut short."""
    end = len(packet)
    if start >= end:
        return None
    first = packet[start]
    descriptor = Vp8Descriptor()
    descriptor.frame_start = bool(first & 0x10) and not first & 0x07
    if not first & 0x80:  # X: no extension byte, so no picture id, TL0PICIDX or TID
        return descriptor
    position = start + 2
    if position > end:
        return None
    extension = packet[start + 1]
    if extension & 0x80:  # I
        if position >= end:
            return None
        high = packet[position]
        if high & 0x80:
            if position + 2 > end:
                return None
            descriptor.wide = True
            descriptor.picture_id = ((high & 0x7F) << 8) | packet[position + 1]
        else:
            descriptor.picture_id = high
        descriptor.picture_at = position - start
        position += 2 if descriptor.wide else 1
    if extension & 0x40:  # L
        if position >= end:
            return None
        descriptor.tl0_at = position - start
        position += 1
    if extension & 0x20:  # T (K alone carries a KEYIDX, no TID)
        if position >= end:
            return None
        descriptor.temporal_id = packet[position] >> 6
        descriptor.layer_sync = bool(packet[position] & 0x20)
    return descriptor
