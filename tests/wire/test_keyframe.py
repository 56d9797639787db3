"""Keyframe detection per codec, on payloads as real encoders packetize them."""

from __future__ import annotations

import pytest

from trio_sfu.wire import keyframe


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x10\x50", True),  # S=1 PID=0, frame header P=0
        (b"\x10\x51", False),  # inter frame
        (b"\x00\x50", False),  # not the start of a partition
        (b"\x11\x50", False),  # PID 1
        (b"\x90\x80\x85\x17\x50", True),  # X, I with a 15-bit picture id
        (b"\x90\xe0\x05\x07\x20\x50", True),  # X, I (7-bit), L, T
        (b"\x90\xf0\x05\x07\x20\x51", False),  # X, I, L, T/K, inter
        (b"\x90\x80", False),  # truncated
        (b"", False),
    ],
)
def test_vp8(payload: bytes, expected: bool) -> None:
    assert keyframe.vp8(payload) is expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x65\x88", True),  # IDR slice
        (b"\x67\x42", True),  # SPS
        (b"\x41\x9a", False),  # non-IDR slice
        (b"\x78\x00\x02\x67\x42\x00\x02\x68\xce", True),  # STAP-A with SPS, PPS
        (b"\x78\x00\x02\x68\xce", False),  # STAP-A with PPS only
        (b"\x7c\x85\x88", True),  # FU-A start of an IDR
        (b"\x7c\x05\x88", False),  # FU-A continuation
        (b"\x7c\x81\x9a", False),  # FU-A start of a non-IDR
        (b"", False),
    ],
)
def test_h264(payload: bytes, expected: bool) -> None:
    assert keyframe.h264(payload) is expected


def test_vp9_and_av1() -> None:
    assert keyframe.vp9(b"\x08") and not keyframe.vp9(b"\x48") and not keyframe.vp9(b"\x00")
    assert keyframe.av1(b"\x18") and not keyframe.av1(b"\x10") and not keyframe.av1(b"")


def test_detector_by_codec_name() -> None:
    assert keyframe.detector("VP8") is keyframe.vp8
    assert keyframe.detector("h264") is keyframe.h264
    assert keyframe.detector("opus") is None


def test_vp8_keyframe_size_from_the_frame_header() -> None:
    # Descriptor (X, I with a 15-bit picture id, S), frame tag (P clear), start code, 1280 x 720.
    header = b"\x90\x80\x81\x23" + b"\x10\x02\x00" + b"\x9d\x01\x2a" + (1280).to_bytes(2, "little")
    with_scale_bits = header + (720 | 0x4000).to_bytes(2, "little")  # the top 2 bits are scaling
    assert keyframe.vp8_keyframe_size(with_scale_bits) == (1280, 720)
    assert keyframe.vp8_keyframe_size(b"\x10" + b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xb4\x00") == (320, 180)
    assert keyframe.vp8_keyframe_size(b"\x10" + b"\x11\x02\x00\x9d\x01\x2a\x40\x01\xb4\x00") is None  # delta
    assert keyframe.vp8_keyframe_size(b"\x00" + b"\x10\x02\x00\x9d\x01\x2a\x40\x01\xb4\x00") is None  # not S
    assert keyframe.vp8_keyframe_size(b"\x10" + b"\x10\x02\x00\x9d\x01\x2b\x40\x01\xb4\x00") is None  # code
    assert keyframe.vp8_keyframe_size(b"\x10\x10\x02\x00\x9d\x01\x2a\x40") is None  # cut short
