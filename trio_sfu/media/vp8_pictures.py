"""VP8 picture ids and TL0PICIDX kept continuous for one player across simulcast layer switches and
the temporal layers it does not get.

Each simulcast layer numbers its pictures on its own (RFC 7741 payload descriptor). A player moved
from one layer to another would see both numbers jump at the switch, and a player whose upper temporal
layers are dropped would see a gap at every dropped picture; libwebrtc's frame reference finder takes
a gap it cannot explain as lost frames and waits for them. So, as mediasoup and LiveKit do, a player
of a simulcast VP8 track gets the numbers rewritten: at a switch the new layer's first picture
continues from the last one sent, and each dropped picture moves the later ones down by one.
(TL0PICIDX counts base-layer pictures, which are never dropped: only switches move it.)
"""

from __future__ import annotations

from trio_sfu.media.fanout import PictureState
from trio_sfu.wire.vp8 import Vp8Descriptor

PICTURE_ID_MASK = 0x7FFF
NARROW_MASK = 0x7F
DROPS_KEPT = 64  # dropped pictures remembered, so a late packet of an older picture keeps its number


class PictureIdWidener:
    """One VP8 stream's 7-bit picture ids carried into the 15-bit space, so Vp8Pictures' arithmetic
    (offsets, drops, "newer than") holds across their wrap every 128 pictures.

    The widened id keeps the low 7 bits it came with, so writing it back into a 7-bit field is exact.
    The RTP sequence number says which way to go: a packet newer than any before carries the same or
    a later picture (up to 127 on, e.g. after a pause), an older one (late, or a retransmission) the
    same or an earlier one. 15-bit ids pass unchanged."""

    __slots__ = ("_newest", "_newest_sequence")

    def __init__(self) -> None:
        self._newest: int | None = None  # the widened id of the newest packet
        self._newest_sequence = 0

    def widen(self, descriptor: Vp8Descriptor, sequence: int) -> None:
        if descriptor.picture_at < 0 or descriptor.wide:
            return
        newest, picture = self._newest, descriptor.picture_id
        if newest is None:
            self._newest, self._newest_sequence = picture, sequence
        elif 0 < (sequence - self._newest_sequence) & 0xFFFF < 0x8000:
            widened = (newest + ((picture - newest) & NARROW_MASK)) & PICTURE_ID_MASK
            self._newest, self._newest_sequence = widened, sequence
            descriptor.picture_id = widened
        else:
            descriptor.picture_id = (newest - ((newest - picture) & NARROW_MASK)) & PICTURE_ID_MASK


class Vp8Pictures(PictureState):
    """One player's picture id and TL0PICIDX offsets for one simulcast VP8 track (the fields are
    PictureState's: the compiled fan-out renumbers a steady player's pictures itself)."""

    __slots__ = ()

    def __init__(self) -> None:
        self._picture_offset = 0
        self._tl0_offset = 0
        self._last_picture: int | None = None  # the last picture id sent (15-bit space)
        self._last_tl0: int | None = None
        self._drops: list[int] = []  # input picture ids dropped since the last switch, oldest first
        self.needs_sync = False  # set at a layer switch: the next picture continues the numbering

    def drop(self, picture_id: int) -> None:
        """The picture with this (input) id is not sent to this player: later ones close the gap."""
        if picture_id < 0 or (self._drops and self._drops[-1] == picture_id):
            return
        if self._drops and not 0 < (picture_id - self._drops[-1]) & PICTURE_ID_MASK < 0x4000:
            return  # older than the last dropped one: its gap was closed when newer pictures came
        self._drops.append(picture_id)
        del self._drops[:-DROPS_KEPT]
        self._picture_offset = (self._picture_offset - 1) & PICTURE_ID_MASK

    def rewrite(self, packet: bytes, descriptor: Vp8Descriptor, payload_start: int) -> bytes:
        """`packet` (its payload at `payload_start`, its descriptor `descriptor`) with its picture id
        and TL0PICIDX renumbered; `packet` itself when the numbers stay as they are (a player that
        never switched nor dropped a picture: no copy on the packet path)."""
        picture_at = payload_start + descriptor.picture_at
        tl0_at = payload_start + descriptor.tl0_at
        picture = written = descriptor.picture_id
        if descriptor.picture_at >= 0:
            if self.needs_sync:
                self._drops.clear()
                if self._last_picture is not None:
                    self._picture_offset = (self._last_picture + 1 - picture) & PICTURE_ID_MASK
            written = (picture + self._picture_offset + self._drops_after(picture)) & PICTURE_ID_MASK
            last = self._last_picture
            if last is None or 0 < (written - last) & PICTURE_ID_MASK < 0x4000:
                self._last_picture = written  # the newest only: a late packet must not move it back
        tl0 = written_tl0 = packet[tl0_at] if descriptor.tl0_at >= 0 else 0
        if descriptor.tl0_at >= 0:
            if self.needs_sync and self._last_tl0 is not None:
                self._tl0_offset = (self._last_tl0 + 1 - tl0) & 0xFF
            written_tl0 = (tl0 + self._tl0_offset) & 0xFF
            if self._last_tl0 is None or 0 < (written_tl0 - self._last_tl0) & 0xFF < 0x80:
                self._last_tl0 = written_tl0
        self.needs_sync = False
        if written == picture and written_tl0 == tl0:
            return packet
        out = bytearray(packet)
        if descriptor.picture_at >= 0:
            if descriptor.wide:
                out[picture_at] = 0x80 | (written >> 8)
                out[picture_at + 1] = written & 0xFF
            else:
                out[picture_at] = written & 0x7F
        if descriptor.tl0_at >= 0:
            out[tl0_at] = written_tl0
        return bytes(out)

    def _drops_after(self, picture: int) -> int:
        """Dropped pictures newer than `picture` (a late packet's number predates their shifts)."""
        drops = self._drops
        if not drops or 0 < (picture - drops[-1]) & PICTURE_ID_MASK < 0x4000:
            return 0
        return sum(1 for dropped in drops if 0 < (dropped - picture) & PICTURE_ID_MASK < 0x4000)
