"""From one track's RTP packets to whole coded frames, for recording (no decoding, no transcoding).

Packets arrive out of order and some are lost. `FrameAssembler` holds them a moment in sequence order
(REORDER_WAIT), names the missing ones so the publisher can be asked again (NACK), and gives up on
one only when it is overdue; a frame with a hole is never written: video then waits for the next
keyframe (the frames after a hole refer to what was lost), so a recording has a clean gap, not
garbage. Payload formats: VP8 (RFC 7741), H264 (RFC 6184: single NAL units, STAP-A, FU-A, written
in Annex B form) and Opus (a packet is a frame).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from trio_sfu.wire.rtp import RtpHeader

REORDER_WAIT = 0.3  # seconds a missing packet is waited for (a NACK's round trip) before it is lost
MAX_HELD = 2000  # packets held while waiting; beyond, the oldest hole is given up at once
NACK_AGAIN = 0.1  # seconds before a missing packet is asked for again
NACK_TRIES = 3
START_CODE = b"\x00\x00\x00\x01"
RECORDABLE = ("vp8", "h264", "opus")


@attrs.frozen
class Frame:
    timestamp: int  # the RTP timestamp, unwrapped (it keeps counting past 2^32)
    data: bytes
    keyframe: bool


def vp8_payload_offset(payload: bytes | memoryview) -> int | None:
    """The length of a VP8 payload descriptor (RFC 7741 section 4.2); None if the packet is cut short."""
    if not payload:
        return None
    offset = 1
    if payload[0] & 0x80:  # X
        if len(payload) < 2:
            return None
        extension = payload[1]
        offset = 2
        if extension & 0x80:  # I: picture id, 7 or 15 bits
            if offset >= len(payload):
                return None
            offset += 2 if payload[offset] & 0x80 else 1
        if extension & 0x40:  # L
            offset += 1
        if extension & 0x30:  # T or K
            offset += 1
    return offset if offset <= len(payload) else None


class _Payloads:
    """One codec's payload format: what a packet adds to its frame, and whether a frame is a keyframe."""

    def __init__(self, codec: str) -> None:
        self.codec = codec
        pieces: dict[str, Callable[[memoryview], bytes | None]] = {
            "vp8": self._vp8,
            "h264": self._h264,
            "opus": bytes,
        }
        self.piece = pieces[codec]

    @staticmethod
    def _vp8(payload: memoryview) -> bytes | None:
        offset = vp8_payload_offset(payload)
        return None if offset is None else bytes(payload[offset:])

    @staticmethod
    def _h264(payload: memoryview) -> bytes | None:
        if not payload:
            return None
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:
            return START_CODE + bytes(payload)
        if nal_type == 24:  # STAP-A: [size][NAL unit]...
            out = bytearray()
            offset = 1
            while offset + 2 <= len(payload):
                size = payload[offset] << 8 | payload[offset + 1]
                offset += 2
                if size == 0 or offset + size > len(payload):
                    return None
                out += START_CODE + payload[offset : offset + size]
                offset += size
            return bytes(out)
        if nal_type == 28 and len(payload) > 2:  # FU-A: the NAL header is rebuilt at the start
            fu_header = payload[1]
            if fu_header & 0x80:
                return START_CODE + bytes([(payload[0] & 0xE0) | (fu_header & 0x1F)]) + bytes(payload[2:])
            return bytes(payload[2:])
        return None  # STAP-B, MTAP, FU-B: not sent by WebRTC peers

    def starts_frame(self, payload: memoryview) -> bool:
        """Whether a packet is a frame's first (else the frame's start was lost, or came before)."""
        if not payload:
            return False
        if self.codec == "vp8":
            return bool(payload[0] & 0x10) and not payload[0] & 0x07  # S=1, partition 0
        if self.codec == "h264" and payload[0] & 0x1F == 28:
            return len(payload) > 1 and bool(payload[1] & 0x80)  # a FU-A's first fragment
        return True

    def keyframe(self, data: bytes) -> bool:
        if self.codec == "opus":
            return True
        if self.codec == "vp8":
            return bool(data) and not data[0] & 0x01  # the frame tag's P bit
        offset = 0  # H264: an IDR slice in the access unit
        while (found := data.find(START_CODE, offset)) >= 0 and found + 4 < len(data):
            if data[found + 4] & 0x1F == 5:
                return True
            offset = found + 4
        return False


class FrameAssembler:
    """One track: packets in (any order), frames out (in order, whole, from a keyframe on)."""

    def __init__(self, codec: str) -> None:
        if codec.lower() not in RECORDABLE:
            raise ValueError(f"cannot record {codec}: recordable codecs are {', '.join(RECORDABLE)}")
        self._payloads = _Payloads(codec.lower())
        self.video = codec.lower() != "opus"
        self._held: dict[int, tuple[bytes, RtpHeader, float]] = {}  # extended sequence -> packet
        self._next: int | None = None  # the extended sequence number to release next
        self._released = False  # whether any packet was released (before, an older one may come)
        self._highest = -1
        self._asked: dict[int, tuple[float, int]] = {}  # missing -> (last asked, times)
        self._timestamp_base = 0  # unwraps RTP timestamps
        self._last_timestamp: int | None = None
        # The frame being assembled: its timestamp, pieces, and whether a packet of it was lost.
        self._frame_timestamp: int | None = None
        self._pieces: list[bytes] = []
        self._broken = False
        self._waiting_keyframe = self.video
        self.frames: list[Frame] = []  # complete frames, for the caller to take
        self.lost = 0  # packets given up on
        self.dropped_frames = 0  # frames not written: holes, or after one until a keyframe

    # ---- in ----

    def push(self, packet: bytes, header: RtpHeader, now: float) -> None:
        sequence = self._extend(header.sequence)
        if self._next is not None and sequence < self._next:
            if self._released:
                return  # too late, or a duplicate (a retransmission of one already released)
            self._next = sequence  # nothing released yet: an earlier packet that came later
        self._held.setdefault(sequence, (packet, header, now))
        self._asked.pop(sequence, None)
        self._highest = max(self._highest, sequence)
        if self._next is None:
            self._next = sequence

    def _extend(self, sequence: int) -> int:
        reference = self._highest if self._highest >= 0 else sequence
        candidate = (reference & ~0xFFFF) | sequence
        if candidate - reference > 0x8000:
            candidate -= 0x10000
        elif reference - candidate > 0x8000:
            candidate += 0x10000
        return candidate

    # ---- out ----

    def missing(self, now: float) -> list[int]:
        """Sequence numbers (16-bit) to ask the publisher for now: each missing one, a few times."""
        if self._next is None:
            return []
        asked = []
        for sequence in range(self._next, self._highest):
            if sequence in self._held:
                continue
            last, times = self._asked.get(sequence, (-1e9, 0))
            if times < NACK_TRIES and now - last >= NACK_AGAIN:
                self._asked[sequence] = (now, times + 1)
                asked.append(sequence & 0xFFFF)
        return asked

    def release(self, now: float, *, flush: bool = False) -> list[Frame]:
        """Frames complete by now, in order (packets overdue are given up; `flush`: all of them)."""
        held = self._held
        while self._next is not None and held:
            entry = held.pop(self._next, None)
            if entry is None:
                oldest = min(arrived for _, _, arrived in held.values())
                if not flush and now - oldest < REORDER_WAIT and len(held) < MAX_HELD:
                    break
                self._asked.pop(self._next, None)
                self.lost += 1
                self._broken = self.video  # the video frame in progress has a hole (audio: one packet)
            else:
                self._add(*entry)
            self._released = True
            self._next += 1
        if flush and self._frame_timestamp is not None:  # its last packet never came: cut short
            self._pieces, self._broken = [], True
            self._finish()
        frames, self.frames = self.frames, []
        return frames

    def _add(self, packet: bytes, header: RtpHeader, arrived: float) -> None:
        if header.payload_length == 0:
            return  # padding only
        timestamp = self._unwrap(header.timestamp)
        payload = memoryview(packet)[header.header_length : header.header_length + header.payload_length]
        if timestamp != self._frame_timestamp:
            self._finish()
            if self._broken:  # a hole between two frames: whole frames were lost
                self._broken = False
                self._waiting_keyframe = self.video
            self._frame_timestamp = timestamp
            if not self._payloads.starts_frame(payload):
                self._broken = True  # its first packets were lost (or came before the recording)
        piece = self._payloads.piece(payload)
        if piece is None:
            self._broken = True
        else:
            self._pieces.append(piece)
        if header.marker or not self.video:
            self._finish()

    def _finish(self) -> None:
        if self._frame_timestamp is None or (not self._pieces and not self._broken):
            return
        data = b"".join(self._pieces)
        broken = self._broken or not data
        timestamp = self._frame_timestamp
        self._pieces, self._broken, self._frame_timestamp = [], False, None
        keyframe = not broken and self._payloads.keyframe(data)
        if broken or (self._waiting_keyframe and not keyframe):
            self.dropped_frames += 1
            self._waiting_keyframe = self.video
            return
        self._waiting_keyframe = False
        self.frames.append(Frame(timestamp, data, keyframe))

    def _unwrap(self, timestamp: int) -> int:
        last = self._last_timestamp
        if last is not None:
            if timestamp < 0x40000000 and last > 0xC0000000:
                self._timestamp_base += 1 << 32
            elif timestamp > 0xC0000000 and last < 0x40000000 and self._timestamp_base:
                return self._timestamp_base - (1 << 32) + timestamp  # a straggler from before a wrap
        self._last_timestamp = timestamp
        return self._timestamp_base + timestamp
