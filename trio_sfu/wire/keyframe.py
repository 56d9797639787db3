"""Does this RTP payload start a keyframe? One small parser per video codec the server forwards.

A player that joins mid-stream or unmutes video can only decode from a keyframe; forwarding the delta
frames before it only makes the decoder fail (or show stale pictures). Like mediasoup's consumers, the
server drops a player's video until a keyframe starts (and asks the publisher for one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

Payload: TypeAlias = bytes | memoryview


def vp8(payload: Payload) -> bool:
    """RFC 7741: start of partition 0 (S=1, PID=0), then the VP8 frame header's P bit clear."""
    offset = _vp8_frame_offset(payload)
    return offset is not None and not payload[offset] & 0x01


def vp8_keyframe_size(payload: Payload) -> tuple[int, int] | None:
    """Width and height from the first packet of a VP8 keyframe (RFC 6386 section 9.1: a 3-byte frame
    tag, the start code 9d 01 2a, then 14-bit width and height, little-endian), else None."""
    offset = _vp8_frame_offset(payload)
    if offset is None or payload[offset] & 0x01 or len(payload) < offset + 10:
        return None
    if bytes(payload[offset + 3 : offset + 6]) != b"\x9d\x01\x2a":
        return None
    width = (payload[offset + 6] | payload[offset + 7] << 8) & 0x3FFF
    height = (payload[offset + 8] | payload[offset + 9] << 8) & 0x3FFF
    return (width, height) if width and height else None


def _vp8_frame_offset(payload: Payload) -> int | None:
    """Where the VP8 frame header starts, in the first packet of a frame (S=1, PID=0); else None."""
    if len(payload) < 2:
        return None
    first = payload[0]
    if not first & 0x10 or first & 0x07:
        return None
    offset = 1
    if first & 0x80:  # X: extension byte follows
        extension = payload[1]
        offset = 2
        if extension & 0x80:  # I: picture id, 7 or 15 bits
            if offset >= len(payload):
                return None
            offset += 2 if payload[offset] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            offset += 1
        if extension & 0x30:  # T or K: TID/KEYIDX byte
            offset += 1
    return offset if offset < len(payload) else None


_H264_KEY_NALS = (5, 7)  # IDR slice, sequence parameter set


def h264(payload: Payload) -> bool:
    """RFC 6184: an IDR slice or SPS, alone, in a STAP-A, or at the start of a FU-A."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in _H264_KEY_NALS:
        return True
    if nal_type == 24:  # STAP-A
        offset = 1
        while offset + 2 < len(payload):
            size = (payload[offset] << 8) | payload[offset + 1]
            if payload[offset + 2] & 0x1F in _H264_KEY_NALS:
                return True
            offset += 2 + size
        return False
    if nal_type == 28 and len(payload) > 1:  # FU-A
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in _H264_KEY_NALS
    return False


def vp9(payload: Payload) -> bool:
    """draft-ietf-payload-vp9: beginning of a frame (B) that is not inter-predicted (P clear)."""
    return bool(payload) and payload[0] & 0x40 == 0 and payload[0] & 0x08 != 0


def av1(payload: Payload) -> bool:
    """AV1 RTP spec: the aggregation header's N bit marks the first packet of a new coded video
    sequence, which starts with a keyframe."""
    return bool(payload) and payload[0] & 0x08 != 0


DETECTORS: dict[str, Callable[[Payload], bool]] = {"vp8": vp8, "h264": h264, "vp9": vp9, "av1": av1}


def detector(codec_name: str) -> Callable[[Payload], bool] | None:
    return DETECTORS.get(codec_name.lower())
