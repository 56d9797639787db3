"""RTP header parsing: exact bytes in, exact fields out (RFC 3550, RFC 8285)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.wire.rtp import (
    RtpHeader,
    is_rtcp,
    parse_rtp,
    read_extension,
    seq_newer,
)

from ..support.rtp_packets import VP8, build_rtp

# ---------------------------------------------------------------------------------------------- parse


def test_parse_minimal_header() -> None:
    packet = build_rtp(sequence=0xABCD, timestamp=0xDEADBEEF, ssrc=0x01020304, marker=True)
    header = parse_rtp(packet)
    assert header == RtpHeader(
        marker=True,
        payload_type=VP8,
        sequence=0xABCD,
        timestamp=0xDEADBEEF,
        ssrc=0x01020304,
        header_length=12,
        extension_offset=-1,
        payload_length=len(packet) - 12,
        padding=0,
    )


def test_parse_csrcs_extension_and_padding() -> None:
    packet = build_rtp(csrcs=(1, 2), extensions=[(1, b"ab"), (2, b"xyz")], padding=3)
    header = parse_rtp(packet)
    assert header is not None
    assert header.extension_offset == 12 + 8
    # 1+2 + 1+3 = 7 bytes of elements, padded to 8: profile word + 8
    assert header.header_length == 12 + 8 + 4 + 8
    assert header.padding == 3
    assert packet[header.header_length : len(packet) - header.padding] == b"\x10\x02\x03\x04"


def test_parse_known_bytes() -> None:
    # A Chromium-style VP8 packet: one-byte extensions mid=4 "0", abs-send-time=2, transport-cc=3.
    packet = bytes.fromhex(
        "90e0 1234 0001e240 9abcdef0"  # V=2 X=1, M=1 PT=96, seq 0x1234, ts 123456, ssrc
        "bede 0003"  # one-byte profile, 3 words
        "22 0a0b0c"  # id 2 len 3 abs-send-time
        "31 0042"  # id 3 len 2 transport-cc seq 66
        "40 30"  # id 4 len 1 mid "0"
        "0000"  # padding
        "9010 0000"  # payload
    )
    header = parse_rtp(packet)
    assert header is not None
    assert (header.marker, header.payload_type, header.sequence, header.timestamp, header.ssrc) == (
        True,
        96,
        0x1234,
        123456,
        0x9ABCDEF0,
    )
    assert header.header_length == 28
    assert read_extension(packet, header, 2) == b"\x0a\x0b\x0c"
    assert read_extension(packet, header, 3) == b"\x00\x42"
    assert read_extension(packet, header, 4) == b"0"
    assert read_extension(packet, header, 5) is None


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80\x60\x00\x01" + b"\x00" * 7,  # 11 bytes
        b"\x40" + build_rtp()[1:],  # version 1
        b"\x00" + build_rtp()[1:],  # version 0
        b"\xc0" + build_rtp()[1:],  # version 3
        b"\x83" + build_rtp(payload=b"")[1:] + b"\x00" * 8,  # 3 CSRCs declared, 2 present
        b"\x90" + build_rtp(payload=b"")[1:] + b"\xbe\xde",  # X bit, no room for the profile word
        b"\x90" + build_rtp(payload=b"")[1:] + b"\xbe\xde\x00\x02" + b"\x00" * 7,  # extension too long
        b"\xa0" + build_rtp(payload=b"abc\x00")[1:],  # padding count 0
        b"\xa0" + build_rtp(payload=b"abc\x10")[1:],  # padding count beyond the payload
    ],
)
def test_parse_rejects_invalid(packet: bytes) -> None:
    assert parse_rtp(packet) is None


def test_parse_padding_may_fill_whole_payload() -> None:
    packet = build_rtp(payload=b"", padding=4)
    header = parse_rtp(packet)
    assert header is not None and header.padding == 4 and header.header_length == 12


@given(st.binary(max_size=200))
def test_parse_arbitrary_bytes_never_raises(data: bytes) -> None:
    header = parse_rtp(data)
    if header is not None:
        assert 12 <= header.header_length + header.padding <= len(data)
        assert data[0] >> 6 == 2
        # read_extension must not raise either, for any id
        for ident in (1, 2, 14, 15, 200):
            read_extension(data, header, ident)


@given(
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    pt=st.integers(0, 127),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    exts=st.lists(st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=5),
    padding=st.integers(0, 20),
    payload=st.binary(max_size=50),
)
def test_parse_built_packets(
    sequence: int,
    timestamp: int,
    ssrc: int,
    pt: int,
    marker: bool,
    csrcs: list[int],
    exts: list[tuple[int, bytes]],
    padding: int,
    payload: bytes,
) -> None:
    packet = build_rtp(
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload_type=pt,
        marker=marker,
        csrcs=csrcs,
        extensions=exts,
        padding=padding,
        payload=payload,
    )
    header = parse_rtp(packet)
    assert header is not None
    assert (header.sequence, header.timestamp, header.ssrc, header.payload_type, header.marker) == (
        sequence,
        timestamp,
        ssrc,
        pt,
        marker,
    )
    assert packet[header.header_length : len(packet) - header.padding] == payload
    first: dict[int, bytes] = {}
    for ident, value in exts:
        first.setdefault(ident, value)
    for ident, value in first.items():
        assert read_extension(packet, header, ident) == value


# ------------------------------------------------------------------------------------- small helpers


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (bytes((0x80, 200)) + bytes(6), True),  # SR
        (bytes((0x81, 201)) + bytes(6), True),  # RR
        (bytes((0x81, 205)) + bytes(10), True),  # RTPFB
        (bytes((0x81, 206)) + bytes(10), True),  # PSFB
        (bytes((0x80, 192)), True),
        (bytes((0x80, 223)), True),
        (bytes((0x80, 224)), False),  # marker + PT 96
        (build_rtp(payload_type=96, marker=True), False),
        (build_rtp(payload_type=111), False),
        (build_rtp(payload_type=0), False),
        (build_rtp(payload_type=127, marker=True), False),
        (b"\x80", False),
        (b"", False),
    ],
)
def test_is_rtcp(packet: bytes, expected: bool) -> None:
    assert is_rtcp(packet) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1, 0, True),
        (0, 1, False),
        (5, 5, False),
        (0, 65535, True),
        (65535, 0, False),
        (10, 65530, True),
        (0x7FFF, 0, True),
        (0x8001, 0, False),
        (0, 0x8001, True),
    ],
)
def test_seq_newer(a: int, b: int, expected: bool) -> None:
    assert seq_newer(a, b) is expected


def test_read_extension_one_byte_with_padding_between() -> None:
    # padding bytes between elements are allowed (RFC 8285 4.2)
    body = b"\x10\xaa" + b"\x00\x00" + b"\x21\xbb\xcc" + b"\x00"
    packet = build_rtp(payload=b"")[:12] + b"\xbe\xde\x00\x02" + body + b"PAY"
    packet = bytes((packet[0] | 0x10,)) + packet[1:]
    header = parse_rtp(packet)
    assert header is not None
    assert read_extension(packet, header, 1) == b"\xaa"
    assert read_extension(packet, header, 2) == b"\xbb\xcc"
    assert read_extension(packet, header, 3) is None


def test_read_extension_stops_at_reserved_id_15() -> None:
    body = b"\xf0\x00\x10\xaa"  # id 15 first: the rest must be ignored
    packet = build_rtp(payload=b"")[:12] + b"\xbe\xde\x00\x01" + body
    packet = bytes((packet[0] | 0x10,)) + packet[1:]
    header = parse_rtp(packet)
    assert header is not None
    assert read_extension(packet, header, 1) is None


def test_read_extension_two_byte() -> None:
    long_value = bytes(range(40))
    packet = build_rtp(extensions=[(1, b""), (200, long_value), (3, b"\x05")], two_byte=True)
    header = parse_rtp(packet)
    assert header is not None
    assert read_extension(packet, header, 1) == b""
    assert read_extension(packet, header, 200) == long_value
    assert read_extension(packet, header, 3) == b"\x05"
    assert read_extension(packet, header, 4) is None


def test_read_extension_element_overrunning_block() -> None:
    body = b"\x1f\x00\x00\x00"  # id 1 claims 16 bytes in a 4-byte block
    packet = build_rtp(payload=b"")[:12] + b"\xbe\xde\x00\x01" + body
    packet = bytes((packet[0] | 0x10,)) + packet[1:]
    header = parse_rtp(packet)
    assert header is not None
    assert read_extension(packet, header, 1) is None


def test_read_extension_without_extension() -> None:
    packet = build_rtp()
    header = parse_rtp(packet)
    assert header is not None
    assert read_extension(packet, header, 1) is None
