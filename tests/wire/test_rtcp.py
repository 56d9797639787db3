"""RTCP codec: hand-assembled wire bytes, round trips, hostile input, and interop with aiortc."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.wire.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpError,
    RtcpPacket,
    Sdes,
    SenderReport,
    TransportCc,
    Unknown,
    ntp_timestamp,
    parse_compound,
    remb_encode,
    serialize,
    serialize_compound,
)

U32 = st.integers(0, 0xFFFFFFFF)

BLOCK = ReportBlock(
    ssrc=0x12345678,
    fraction_lost=16,
    packets_lost=5,
    highest_sequence=0x0001ABCD,
    jitter=32,
    last_sr=0xAABBCCDD,
    delay_since_last_sr=0x00010000,
)

EXAMPLES: list[RtcpPacket] = [
    SenderReport(1, 0xE5F1E2D3C4B5A697, 123456, 10, 12000, (BLOCK,)),
    SenderReport(2, 0, 0, 0, 0),
    ReceiverReport(3, (BLOCK, ReportBlock(9, 255, -(1 << 23), 0xFFFFFFFF, 0, 0, 0))),
    ReceiverReport(4),
    Sdes(((0x11, ((1, b"user@host"),)), (0x22, ((1, b"abcd"), (2, b"name"))), (0x33, ()))),
    Sdes(()),
    Bye((1, 2, 3), b"bye now"),
    Bye((), None),
    Bye((5,), b""),
    Pli(1, 2),
    Fir(1, ((2, 7), (3, 255))),
    Nack(1, 2, (100, 101, 103, 200)),
    Remb(1, 1_000_000, (2, 3)),
    Remb(1, 0, ()),
    TransportCc(1, 2, 65530, 0x123456, 7, ((65530, 250), (65531, None), (65532, -1000), (65533, 100_000))),
    Unknown(204, 3, b"APPLname-data"),  # APP, unaligned: padded with the P bit
    Unknown(207, 0, b"\x00\x00\x00\x01" * 3),  # XR
]


def header(first: int, packet_type: int, words: int) -> bytes:
    return struct.pack("!BBH", first, packet_type, words)


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("packet", EXAMPLES, ids=lambda p: type(p).__name__)
def test_round_trip_examples(packet: RtcpPacket) -> None:
    wire = serialize(packet)
    assert len(wire) % 4 == 0
    assert parse_compound(wire) == [packet]


def test_compound_round_trip() -> None:
    wire = serialize_compound(EXAMPLES)
    assert parse_compound(wire) == EXAMPLES


report_blocks = st.builds(
    ReportBlock,
    ssrc=U32,
    fraction_lost=st.integers(0, 255),
    packets_lost=st.integers(-(1 << 23), (1 << 23) - 1),
    highest_sequence=U32,
    jitter=U32,
    last_sr=U32,
    delay_since_last_sr=U32,
)
sdes_items = st.tuples(st.integers(1, 255), st.binary(max_size=255))
packets = st.one_of(
    st.builds(
        SenderReport,
        U32,
        st.integers(0, 2**64 - 1),
        U32,
        U32,
        U32,
        st.lists(report_blocks, max_size=31).map(tuple),
    ),
    st.builds(ReceiverReport, U32, st.lists(report_blocks, max_size=31).map(tuple)),
    st.builds(
        Sdes, st.lists(st.tuples(U32, st.lists(sdes_items, max_size=4).map(tuple)), max_size=31).map(tuple)
    ),
    st.builds(Bye, st.lists(U32, max_size=31).map(tuple), st.none() | st.binary(max_size=255)),
    st.builds(Pli, U32, U32),
    st.builds(Fir, U32, st.lists(st.tuples(U32, st.integers(0, 255)), max_size=10).map(tuple)),
    st.builds(
        Nack,
        U32,
        U32,
        st.tuples(st.integers(0, 0xFFFF), st.lists(st.integers(1, 40), max_size=50)).map(
            lambda a: tuple((a[0] + sum(a[1][:i])) & 0xFFFF for i in range(len(a[1]) + 1))
        ),
    ),
    st.builds(Remb, U32, st.integers(0, 0x3FFFF), st.lists(U32, max_size=20).map(tuple)),
    st.builds(
        lambda s, m, base, ref, count, deltas: TransportCc(
            s, m, base, ref, count, tuple(((base + i) & 0xFFFF, d) for i, d in enumerate(deltas))
        ),
        U32,
        U32,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFFFF),
        st.integers(0, 255),
        st.lists(st.none() | st.integers(-32768, 32767).map(lambda t: t * 250), min_size=1, max_size=300),
    ),
    st.builds(Unknown, st.sampled_from([204, 207, 210]), st.integers(0, 31), st.binary(max_size=64)),
)


@settings(max_examples=400)
@given(st.lists(packets, min_size=1, max_size=5))
def test_round_trip_property(items: list[RtcpPacket]) -> None:
    assert parse_compound(serialize_compound(items)) == items


# --------------------------------------------------------------------- hand-assembled captured bytes


def test_chromium_like_rr_plus_remb() -> None:
    wire = bytes.fromhex(
        # RR, one report block, from SSRC 1
        "81c90007 00000001"
        "12345678 10 000005 0001abcd 00000020 aabbccdd 00010000"
        # PSFB fmt 15 REMB: 1 SSRC, exp 2, mantissa 250000 -> 1 Mbit/s
        "8fce0005 00000001 00000000 52454d42 01 0b d090 12345678"
    )
    rr, remb = parse_compound(wire)
    assert rr == ReceiverReport(1, (BLOCK,))
    assert remb == Remb(1, 1_000_000, (0x12345678,))
    assert serialize_compound([rr, remb]) == wire


def test_remb_encoding_rounds_down_within_mantissa_precision() -> None:
    assert remb_encode(1_000_000) == (2, 250000)
    for bitrate in (1_000_001, 2_500_003, 123_456_789, 10**12 + 7, 0x3FFFF, 0x40000, 1):
        wire = serialize(Remb(0, bitrate, ()))
        (decoded,) = parse_compound(wire)
        assert isinstance(decoded, Remb)
        assert decoded.bitrate <= bitrate
        assert bitrate - decoded.bitrate < max(1, bitrate >> 17)
    (huge,) = parse_compound(serialize(Remb(0, 2**100, ())))
    assert isinstance(huge, Remb) and huge.bitrate == 0x3FFFF << 63


def test_nack_pid_blp() -> None:
    wire = bytes.fromhex("81cd0003 00000001 00000002 0064 0005")
    assert parse_compound(wire) == [Nack(1, 2, (100, 101, 103))]
    assert serialize(Nack(1, 2, (100, 101, 103))) == wire


def test_nack_packing_across_wrap_and_long_lists() -> None:
    wire = serialize(Nack(1, 2, (65534, 65535, 0, 3, 15, 16, 40)))
    # 65534 + bits for 65535(0), 0(1), 3(4), 15(16 -> beyond 16: new pair)
    body = wire[12:]
    assert struct.unpack("!HHHHHH", body) == (65534, 0b10011, 15, 0b1, 40, 0)
    assert parse_compound(wire) == [Nack(1, 2, (65534, 65535, 0, 3, 15, 16, 40))]


def test_pli_and_fir_bytes() -> None:
    assert serialize(Pli(0x11111111, 0x22222222)) == bytes.fromhex("81ce0002 11111111 22222222")
    assert serialize(Fir(1, ((0x22222222, 9),))) == bytes.fromhex(
        "84ce0004 00000001 00000000 22222222 09000000"
    )


def test_sdes_cname_bytes() -> None:
    # ssrc, CNAME "abc" (2+3 bytes), null, pad to 12 bytes
    wire = bytes.fromhex("81ca0003 00000042 0103616263 000000")
    assert parse_compound(wire) == [Sdes(((0x42, ((1, b"abc"),)),))]
    assert serialize(Sdes(((0x42, ((1, b"abc"),)),))) == wire
    # items ending exactly on a boundary need a full word of nulls
    assert serialize(Sdes(((0x42, ((1, b"ab"),)),))) == bytes.fromhex("81ca0003 00000042 01026162 00000000")


def test_sender_report_bytes_and_extension_tolerated() -> None:
    wire = bytes.fromhex("80c80006 00000001 0102030405060708 0000abcd 00000010 00000200")
    expected = SenderReport(1, 0x0102030405060708, 0xABCD, 16, 512)
    assert parse_compound(wire) == [expected]
    assert serialize(expected) == wire
    # a profile-specific extension after the report blocks is skipped
    extended = bytes.fromhex("80c80007") + wire[4:] + b"EXTN"
    assert parse_compound(extended) == [expected]


def test_bye_with_reason_bytes() -> None:
    wire = bytes.fromhex("81cb0003 00000007 056279652021 0000")
    assert parse_compound(wire) == [Bye((7,), b"bye !")]


def test_transport_cc_known_bytes_run_length() -> None:
    wire = bytes.fromhex(
        "8fcd0006 00000001 00000002"
        "000a 0005 000100 03"  # base 10, 5 packets, reference 256 (* 64 ms), feedback #3
        "2005"  # run length: 5 x "received, small delta"
        "04 08 00 ff 01"  # deltas in 250 us
        "01"  # padding to 32 bits... (P bit not set: trailing bytes are ignored)
    )
    (fb,) = parse_compound(wire)
    assert fb == TransportCc(1, 2, 10, 256, 3, ((10, 1000), (11, 2000), (12, 0), (13, 63750), (14, 250)))


def test_transport_cc_known_bytes_status_vectors() -> None:
    wire = bytes.fromhex(
        "8fcd0007 00000001 00000002"
        "fffe 0009 000000 00"  # base 65534, 9 packets, wraps
        "d900"  # 2-bit vector: [1, 2, 1, 0, 0, 0, 0]
        "a000"  # 1-bit vector: [1, 0, ...] (only 2 used)
        "01 fffc 02 03 000000"  # 250 us, -1000 us (large), 500 us, 750 us; padding
    )
    (fb,) = parse_compound(wire)
    assert fb == TransportCc(
        1,
        2,
        65534,
        0,
        0,
        (
            (65534, 250),
            (65535, -1000),
            (0, 500),
            (1, None),
            (2, None),
            (3, None),
            (4, None),
            (5, 750),
            (6, None),
        ),
    )


def test_transport_cc_serialization_is_compact_and_padded_like_chromium() -> None:
    many = TransportCc(1, 2, 0, 0, 0, tuple((i, 250) for i in range(100)))
    wire = serialize(many)
    # header 4 + 16, one run-length chunk, 100 one-byte deltas = 122 -> padded to 124 with P bit
    assert len(wire) == 124
    assert wire[0] & 0x20 and wire[-1] == 2
    assert wire[20:22] == struct.pack("!H", (1 << 13) | 100)
    lost_run = TransportCc(1, 2, 0, 0, 0, ((0, 0), *((i, None) for i in range(1, 1001)), (1001, 1000)))
    wire = serialize(lost_run)
    assert len(wire) <= 4 + 16 + 3 * 2 + 2 + 2
    assert parse_compound(wire) == [lost_run]
    mixed = TransportCc(1, 2, 0, 0, 0, tuple((i, (None, 250, -250)[i % 3]) for i in range(21)))
    wire = serialize(mixed)
    assert len(wire) == 20 + 3 * 2 + 7 * 1 + 7 * 2 + 1  # three 2-bit vectors; padded
    assert parse_compound(wire) == [mixed]


def test_transport_cc_delta_out_of_range() -> None:
    with pytest.raises(RtcpError):
        serialize(TransportCc(1, 2, 0, 0, 0, ((0, 32768 * 250),)))


def test_unknown_psfb_afb_without_remb_is_unknown() -> None:
    wire = bytes.fromhex("8fce0003 00000001 00000000 41424344")
    assert parse_compound(wire) == [Unknown(206, 15, bytes.fromhex("00000001 00000000 41424344"))]


def test_ntp_timestamp() -> None:
    assert ntp_timestamp(0.0) == 2_208_988_800 << 32
    assert ntp_timestamp(1.5) == ((2_208_988_800 + 1) << 32) | (1 << 31)
    assert ntp_timestamp(1_700_000_000.25) >> 32 == 1_700_000_000 + 2_208_988_800


# ----------------------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x81\xc9",  # truncated header
        header(0x81, 201, 7) + b"\x00" * 20,  # length beyond the datagram
        header(0x41, 201, 1) + b"\x00" * 4,  # version 1
        header(0x01, 201, 1) + b"\x00" * 4,  # version 0
        header(0x81, 201, 0xFFFF) + b"\x00" * 8,  # huge length
        header(0x81, 201, 1) + b"\x00" * 4,  # RR claims a block it lacks
        header(0x81, 200, 6) + b"\x00" * 24,  # SR claims a block it lacks
        header(0x80, 200, 1) + b"\x00" * 4,  # SR without sender info
        header(0xA0, 201, 1) + b"\x00\x00\x00\x00",  # padding count 0
        header(0xA0, 201, 1) + b"\x00\x00\x00\x09",  # padding beyond the packet
        header(0xA0, 201, 0),  # padding bit, no body
        header(0x81, 202, 2) + b"\x00\x00\x00\x01" + b"\x01\x05ab",  # SDES item overruns
        header(0x81, 202, 2) + b"\x00\x00\x00\x01" + b"\x01\x02ab",  # SDES never terminated
        header(0x82, 203, 1) + b"\x00" * 4,  # BYE: 2 SSRCs declared
        header(0x81, 203, 2) + b"\x00" * 4 + b"\x09abc",  # BYE reason overruns
        header(0x81, 205, 1) + b"\x00" * 4,  # NACK without media SSRC
        header(0xA1, 205, 3) + b"\x00" * 8 + b"\x00\x01\x00\x02",  # NACK FCI not whole once unpadded
        header(0x81, 206, 1) + b"\x00" * 4,  # PLI truncated
        header(0x84, 206, 3) + b"\x00" * 12,  # FIR entry truncated
        header(0x8F, 206, 4) + b"\x00" * 8 + b"REMB" + b"\x03\x00\x00\x00",  # REMB SSRCs missing
        header(0x8F, 206, 3) + b"\x00" * 8 + b"REMB",  # REMB truncated
        header(0x8F, 205, 4) + b"\x00" * 8 + b"\x00\x00\x00\x05" + b"\x00\x00\x00\x00",  # TWCC chunks
        header(0x8F, 205, 5) + b"\x00" * 8 + b"\x00\x00\x00\x02" + b"\x00" * 4 + b"\x40\x02\x00\x00",
        header(0x8F, 205, 5) + b"\x00" * 8 + b"\x00\x00\x00\x01" + b"\x00" * 4 + b"\x60\x01\x00\x00",
        header(0x8F, 205, 3) + b"\x00" * 8 + b"\x00\x00\x00",  # TWCC header truncated
        serialize(Pli(1, 2)) + b"\x81",  # trailing garbage after a good packet
    ],
)
def test_malformed_raises_rtcp_error(wire: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_compound(wire)


def test_rtcp_error_is_value_error() -> None:
    assert issubclass(RtcpError, ValueError)


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_rtcp_error(data: bytes) -> None:
    with contextlib.suppress(RtcpError):
        parse_compound(data)


@settings(max_examples=500)
@given(
    st.lists(packets, min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000),
)
def test_mutated_packets_raise_only_rtcp_error(
    items: list[RtcpPacket], flips: list[tuple[int, int]], cut: int
) -> None:
    """Valid packets with bytes changed and the tail cut: the paths past the header checks."""
    wire = bytearray(serialize_compound(items))
    for position, value in flips:
        wire[position % len(wire)] = value
    if cut % len(wire):
        del wire[-(cut % len(wire)) :]
    with contextlib.suppress(RtcpError):
        parse_compound(bytes(wire))


# -------------------------------------------------------------------------------- aiortc interop


def test_aiortc_parses_ours() -> None:
    aiortc_rtp = pytest.importorskip("aiortc.rtp")  # aiortc keeps its RTCP classes in aiortc.rtp
    sr = SenderReport(1, 0x0102030405060708, 999, 10, 2000, (BLOCK,))
    rr = ReceiverReport(3, (BLOCK, ReportBlock(9, 1, -5, 2, 3, 4, 5)))
    # One chunk: aiortc reads a (type, length) pair as the terminator and so misplaces later chunks.
    sdes = Sdes(((0x11, ((1, b"cname-1"), (2, b"name"))),))
    bye = Bye((1, 2))
    pli = Pli(5, 6)
    nack = Nack(5, 6, (65530, 65531, 65535, 2, 100))
    remb = Remb(5, 1_234_567, (6, 7))
    fir = Fir(5, ((6, 3),))
    parsed = aiortc_rtp.RtcpPacket.parse(serialize_compound([sr, rr, sdes, bye, pli, nack, remb, fir]))
    a_sr, a_rr, a_sdes, a_bye, a_pli, a_nack, a_remb, a_fir = parsed
    assert isinstance(a_sr, aiortc_rtp.RtcpSrPacket)
    assert (a_sr.ssrc, a_sr.sender_info.ntp_timestamp, a_sr.sender_info.rtp_timestamp) == (
        1,
        0x0102030405060708,
        999,
    )
    assert (a_sr.sender_info.packet_count, a_sr.sender_info.octet_count) == (10, 2000)
    assert [
        (r.ssrc, r.fraction_lost, r.packets_lost, r.highest_sequence, r.jitter, r.lsr, r.dlsr)
        for r in a_sr.reports
    ] == [(BLOCK.ssrc, 16, 5, 0x0001ABCD, 32, 0xAABBCCDD, 0x00010000)]
    assert isinstance(a_rr, aiortc_rtp.RtcpRrPacket)
    assert a_rr.ssrc == 3 and [r.packets_lost for r in a_rr.reports] == [5, -5]
    assert isinstance(a_sdes, aiortc_rtp.RtcpSdesPacket)
    assert [(c.ssrc, c.items) for c in a_sdes.chunks] == [(0x11, [(1, b"cname-1"), (2, b"name")])]
    assert isinstance(a_bye, aiortc_rtp.RtcpByePacket) and a_bye.sources == [1, 2]
    assert isinstance(a_pli, aiortc_rtp.RtcpPsfbPacket)
    assert (a_pli.fmt, a_pli.ssrc, a_pli.media_ssrc, a_pli.fci) == (1, 5, 6, b"")
    assert isinstance(a_nack, aiortc_rtp.RtcpRtpfbPacket)
    assert (a_nack.fmt, a_nack.ssrc, a_nack.media_ssrc) == (1, 5, 6)
    # aiortc does not wrap BLP-expanded numbers at 65536
    assert [s & 0xFFFF for s in a_nack.lost] == [65530, 65531, 65535, 2, 100]
    assert isinstance(a_remb, aiortc_rtp.RtcpPsfbPacket) and a_remb.fmt == 15
    bitrate, ssrcs = aiortc_rtp.unpack_remb_fci(a_remb.fci)
    assert bitrate == remb_encode(1_234_567)[1] << remb_encode(1_234_567)[0]
    assert ssrcs == [6, 7]
    assert isinstance(a_fir, aiortc_rtp.RtcpPsfbPacket) and a_fir.fmt == 4
    assert a_fir.fci == struct.pack("!IB3x", 6, 3)


def test_ours_parses_aiortc() -> None:
    aiortc_rtp = pytest.importorskip("aiortc.rtp")
    info = aiortc_rtp.RtcpReceiverInfo(
        ssrc=7, fraction_lost=3, packets_lost=-2, highest_sequence=70000, jitter=9, lsr=10, dlsr=11
    )
    sr = aiortc_rtp.RtcpSrPacket(
        ssrc=1,
        sender_info=aiortc_rtp.RtcpSenderInfo(
            ntp_timestamp=0xDEADBEEF00000001, rtp_timestamp=5, packet_count=6, octet_count=7
        ),
        reports=[info],
    )
    rr = aiortc_rtp.RtcpRrPacket(ssrc=2, reports=[info])
    pli = aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=3, media_ssrc=4)
    nack = aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=3, media_ssrc=4, lost=[10, 11, 13, 40, 41])
    remb = aiortc_rtp.RtcpPsfbPacket(
        fmt=15, ssrc=3, media_ssrc=0, fci=aiortc_rtp.pack_remb_fci(3_000_000, [4, 5])
    )
    sdes = aiortc_rtp.RtcpSdesPacket(chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=3, items=[(1, b"cn")])])
    bye = aiortc_rtp.RtcpByePacket(sources=[3, 4])
    wire = b"".join(bytes(p) for p in (sr, rr, pli, nack, remb, sdes, bye))
    block = ReportBlock(7, 3, -2, 70000, 9, 10, 11)
    assert parse_compound(wire) == [
        SenderReport(1, 0xDEADBEEF00000001, 5, 6, 7, (block,)),
        ReceiverReport(2, (block,)),
        Pli(3, 4),
        Nack(3, 4, (10, 11, 13, 40, 41)),
        Remb(3, 3_000_000, (4, 5)),
        Sdes(((3, ((1, b"cn"),)),)),
        Bye((3, 4)),
    ]
