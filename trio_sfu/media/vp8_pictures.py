"""VP8 picture ids and TL0PICIDX kept continuous for one player across simulcast layer switches.

Each simulcast layer numbers its pictures on its own (RFC 7741 payload descriptor). A player moved
from one layer to another would see both numbers jump at the switch; libwebrtc's frame reference
finder takes a jump it cannot explain as lost frames. So, as mediasoup and LiveKit do, a player of a
simulcast VP8 track gets the numbers rewritten: at a switch the new layer's first picture continues
from the last one sent, and the offset holds until the next switch.
"""

from __future__ import annotations

PICTURE_ID_MASK = 0x7FFF


def payload_offset(packet: bytes | bytearray) -> int | None:
    """Where an RTP packet's payload starts (after CSRCs and the header extension), or None."""
    if len(packet) < 12:
        return None
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < offset + 4:
            return None
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    return offset if offset <= len(packet) else None


class Vp8Pictures:
    """One player's picture id and TL0PICIDX offsets for one simulcast VP8 track."""

    __slots__ = ("_last_picture", "_last_tl0", "_picture_offset", "_tl0_offset", "needs_sync")

    def __init__(self) -> None:
        self._picture_offset = 0
        self._tl0_offset = 0
        self._last_picture: int | None = None  # the last picture id sent (15-bit space)
        self._last_tl0: int | None = None
        self.needs_sync = False  # set at a layer switch: the next picture continues the numbering

    def rewrite(self, packet: bytes) -> bytes:
        """`packet` with its descriptor's picture id and TL0PICIDX moved by this player's offsets."""
        start = payload_offset(packet)
        if start is None or len(packet) < start + 1 or not packet[start] & 0x80:
            return packet  # no extension byte: no picture id to keep continuous
        if len(packet) < start + 2:
            return packet
        extension = packet[start + 1]
        position = start + 2
        picture_at = tl0_at = None
        wide = False
        if extension & 0x80:  # I
            if len(packet) <= position:
                return packet
            picture_at, wide = position, bool(packet[position] & 0x80)
            position += 2 if wide else 1
        if extension & 0x40:  # L
            tl0_at = position
            position += 1
        if position > len(packet) or (picture_at is None and tl0_at is None):
            return packet
        out = bytearray(packet)
        if picture_at is not None:
            high = out[picture_at] & 0x7F
            picture = (high << 8) | out[picture_at + 1] if wide else high
            if self.needs_sync and self._last_picture is not None:
                self._picture_offset = (self._last_picture + 1 - picture) & PICTURE_ID_MASK
            written = (picture + self._picture_offset) & PICTURE_ID_MASK
            if wide:
                out[picture_at] = 0x80 | (written >> 8)
                out[picture_at + 1] = written & 0xFF
            else:
                written &= 0x7F
                out[picture_at] = written
            last = self._last_picture
            if last is None or 0 < (written - last) & PICTURE_ID_MASK < 0x4000:
                self._last_picture = written  # the newest only: a late packet must not move it back
        if tl0_at is not None and tl0_at < len(out):
            tl0 = out[tl0_at]
            if self.needs_sync and self._last_tl0 is not None:
                self._tl0_offset = (self._last_tl0 + 1 - tl0) & 0xFF
            written_tl0 = (tl0 + self._tl0_offset) & 0xFF
            out[tl0_at] = written_tl0
            if self._last_tl0 is None or 0 < (written_tl0 - self._last_tl0) & 0xFF < 0x80:
                self._last_tl0 = written_tl0
        self.needs_sync = False
        return bytes(out)
