"""FrameAssembler, sans-IO: RTP packets in (any order, some lost), whole VP8 / H264 / Opus frames out.

Packets are built by hand (tests/support/rtp_packets.py) with RFC 7741 VP8 descriptors and RFC 6184
H264 payloads written out byte by byte here; the clock is a number the test moves.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import pytest

from trio_sfu.media.depacketizer import (
    NACK_AGAIN,
    NACK_TRIES,
    REORDER_WAIT,
    START_CODE,
    Frame,
    FrameAssembler,
    vp8_payload_offset,
)
from trio_sfu.wire.rtp import RtpHeader, parse_rtp

from ..support.rtp_packets import OPUS, VP8, build_rtp

H264 = 102
T0 = 10.0  # the clock when the packets arrive
Packet = tuple[bytes, RtpHeader]

# VP8 payloads (after the descriptor): the frame tag's first byte has the P bit (0x01) clear on a keyframe.
VP8_KEY = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + bytes(range(30))
VP8_DELTA_1 = bytes([0x11, 0x05, 0x00]) + b"delta one, in two packets"
VP8_DELTA_2 = bytes([0x31, 0x01, 0x00]) + b"delta two"
VP8_DELTA_3 = bytes([0x51, 0x01, 0x00]) + b"delta three"


def rtp(
    sequence: int, timestamp: int, payload: bytes, *, marker: bool = False, payload_type: int = VP8
) -> Packet:
    """An RTP packet and its parsed header."""
    packet = build_rtp(
        sequence=sequence & 0xFFFF,
        timestamp=timestamp & 0xFFFFFFFF,
        payload_type=payload_type,
        marker=marker,
        payload=payload,
    )
    header = parse_rtp(packet)
    assert header is not None
    return packet, header


def vp8_descriptor(
    *,
    start: bool,
    picture_id: int | None = None,
    tl0picidx: int | None = None,
    tid: int | None = None,
    keyidx: int | None = None,
) -> bytes:
    """An RFC 7741 payload descriptor (PID 0): the X byte and I/L/T/K extensions when given."""
    first = 0x10 if start else 0x00  # S
    extension = 0
    tail = b""
    if picture_id is not None:
        extension |= 0x80
        tail += struct.pack("!H", 0x8000 | picture_id) if picture_id > 0x7F else bytes([picture_id])
    if tl0picidx is not None:
        extension |= 0x40
        tail += bytes([tl0picidx])
    if tid is not None or keyidx is not None:
        extension |= (0x20 if tid is not None else 0) | (0x10 if keyidx is not None else 0)
        tail += bytes([((tid or 0) << 6) | 0x20 | (keyidx or 0)])  # TID, Y, KEYIDX
    if not extension:
        return bytes([first])
    return bytes([first | 0x80, extension]) + tail


def vp8_frame(
    first_sequence: int, timestamp: int, data: bytes, parts: int = 1, **descriptor: int | None
) -> list[Packet]:
    """A VP8 frame cut into `parts` packets, S set on the first and the marker on the last."""
    size = -(-len(data) // parts)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert len(chunks) == parts
    return [
        rtp(
            first_sequence + i,
            timestamp,
            vp8_descriptor(start=i == 0, **descriptor) + chunk,
            marker=i == parts - 1,
        )
        for i, chunk in enumerate(chunks)
    ]


def push_all(assembler: FrameAssembler, packets: Iterable[Packet], now: float = T0) -> None:
    for packet, header in packets:
        assembler.push(packet, header, now)


# ---- the VP8 payload descriptor ----


def test_vp8_payload_offset_without_extensions() -> None:
    """A descriptor without the X bit is one byte long."""
    assert vp8_payload_offset(b"\x10\x9d\x01") == 1
    assert vp8_payload_offset(memoryview(b"\x00\x11")) == 1


@pytest.mark.parametrize(
    ("descriptor", "length"),
    [
        (vp8_descriptor(start=True, picture_id=0x12), 3),  # X, I with a 7-bit picture id
        (vp8_descriptor(start=True, picture_id=0x1234), 4),  # X, I with a 15-bit picture id
        (vp8_descriptor(start=True, tl0picidx=7), 3),  # X, L
        (vp8_descriptor(start=True, tid=1), 3),  # X, T
        (vp8_descriptor(start=True, keyidx=3), 3),  # X, K
        (vp8_descriptor(start=True, picture_id=0x1234, tl0picidx=7, tid=2, keyidx=1), 6),  # all of them
        (bytes([0x90, 0x00]), 2),  # X with no extension bits set
    ],
    ids=["pid7", "pid15", "L", "T", "K", "ILTK", "X-only"],
)
def test_vp8_payload_offset_with_extensions(descriptor: bytes, length: int) -> None:
    """The X/I/L/T/K extension bytes (and the 15-bit picture id's second byte) are counted."""
    assert len(descriptor) == length
    assert vp8_payload_offset(descriptor + b"\x10\x02\x00") == length


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x90",  # X set, no extension byte
        b"\x90\x80",  # I set, no picture id
        b"\x90\x80\x81",  # 15-bit picture id cut after its first byte
        b"\x90\xe0\x81\x02\x03",  # I (15-bit), L and T: the T/K byte is missing
    ],
    ids=["empty", "no-extension-byte", "no-picture-id", "half-picture-id", "no-tk-byte"],
)
def test_vp8_payload_offset_truncated(payload: bytes) -> None:
    """A descriptor cut short gives None."""
    assert vp8_payload_offset(payload) is None


# ---- VP8 frames ----


def test_vp8_shuffled_packets_come_out_as_whole_frames_in_order() -> None:
    """Shuffled VP8 packets come out as whole frames in order, descriptors stripped, keyframe by P bit."""
    key = vp8_frame(200, 1000, VP8_KEY, 3, picture_id=0x1234, tl0picidx=5, tid=0)
    delta_1 = vp8_frame(203, 4000, VP8_DELTA_1, 2, picture_id=0x35)
    delta_2 = vp8_frame(205, 7000, VP8_DELTA_2)
    delta_3 = vp8_frame(206, 10000, VP8_DELTA_3, keyidx=2)
    packets = key + delta_1 + delta_2 + delta_3
    assembler = FrameAssembler("vp8")
    push_all(assembler, [packets[i] for i in (0, 6, 2, 4, 1, 5, 3)])

    assert assembler.release(T0) == [
        Frame(1000, VP8_KEY, True),
        Frame(4000, VP8_DELTA_1, False),
        Frame(7000, VP8_DELTA_2, False),
        Frame(10000, VP8_DELTA_3, False),
    ]
    assert (assembler.lost, assembler.dropped_frames) == (0, 0)
    assert assembler.missing(T0) == []
    assert assembler.release(T0 + 1) == []


def test_vp8_packets_older_than_the_first_pushed_are_kept() -> None:
    """Before anything is released, a packet older than the first one pushed still takes its place."""
    packets = vp8_frame(200, 1000, VP8_KEY, 3) + vp8_frame(203, 4000, VP8_DELTA_2)
    assembler = FrameAssembler("vp8")
    push_all(assembler, [packets[i] for i in (1, 0, 3, 2)])

    assert assembler.release(T0) == [Frame(1000, VP8_KEY, True), Frame(4000, VP8_DELTA_2, False)]
    assert (assembler.lost, assembler.dropped_frames) == (0, 0)


def test_video_before_the_first_keyframe_is_dropped() -> None:
    """Delta frames before the first keyframe are dropped and counted; the keyframe and after come out."""
    packets = (
        vp8_frame(1, 0, VP8_DELTA_1, 2)
        + vp8_frame(3, 3000, VP8_DELTA_2)
        + vp8_frame(4, 6000, VP8_KEY, 2)
        + vp8_frame(6, 9000, VP8_DELTA_3)
    )
    assembler = FrameAssembler("vp8")
    push_all(assembler, packets)

    assert assembler.release(T0) == [Frame(6000, VP8_KEY, True), Frame(9000, VP8_DELTA_3, False)]
    assert assembler.dropped_frames == 2
    assert assembler.lost == 0


def test_vp8_frame_joined_midway_is_not_taken_for_a_keyframe() -> None:
    """A first packet that is not a frame's start (S=0) is no keyframe, though its byte looks like one."""
    tail = rtp(50, 0, vp8_descriptor(start=False) + b"\x00tail of a keyframe", marker=True)
    packets = [tail, *vp8_frame(51, 3000, VP8_DELTA_1), *vp8_frame(52, 6000, VP8_KEY, 2)]
    assembler = FrameAssembler("vp8")
    push_all(assembler, packets)

    assert assembler.release(T0) == [Frame(6000, VP8_KEY, True)]
    assert assembler.dropped_frames == 2


def test_lost_packet_is_nacked_then_frames_dropped_until_the_next_keyframe() -> None:
    """A lost packet is NACKed, holds later frames REORDER_WAIT, then frames are dropped to a keyframe."""
    packets = (
        vp8_frame(100, 0, VP8_KEY, 3)
        + vp8_frame(103, 3000, VP8_DELTA_1, 3)  # 104 is lost
        + vp8_frame(106, 6000, VP8_DELTA_2)
        + vp8_frame(107, 9000, VP8_KEY, 2)
        + vp8_frame(109, 12000, VP8_DELTA_3)
    )
    assembler = FrameAssembler("vp8")
    push_all(assembler, packets[:4] + packets[5:])

    assert assembler.release(T0) == [Frame(0, VP8_KEY, True)]
    epsilon = 0.001
    assert assembler.missing(T0) == [104]
    assert assembler.missing(T0 + NACK_AGAIN / 2) == []  # asked too recently
    for attempt in range(1, NACK_TRIES):
        assert assembler.missing(T0 + attempt * (NACK_AGAIN + epsilon)) == [104]
    assert assembler.missing(T0 + NACK_TRIES * (NACK_AGAIN + epsilon)) == []  # asked NACK_TRIES times
    assert assembler.release(T0 + REORDER_WAIT - 0.05) == []  # still waited for
    assert assembler.lost == 0

    assert assembler.release(T0 + REORDER_WAIT + 0.01) == [
        Frame(9000, VP8_KEY, True),
        Frame(12000, VP8_DELTA_3, False),
    ]
    assert assembler.lost == 1
    assert assembler.dropped_frames == 2  # the frame with the hole and the delta after it
    assert assembler.missing(T0 + 1) == []


def test_retransmission_within_reorder_wait_fills_the_hole() -> None:
    """A retransmission arriving before REORDER_WAIT is over fills the hole: nothing lost or dropped."""
    packets = (
        vp8_frame(100, 0, VP8_KEY, 3)
        + vp8_frame(103, 3000, VP8_DELTA_1, 3)  # 104 is late
        + vp8_frame(106, 6000, VP8_DELTA_2)
    )
    assembler = FrameAssembler("vp8")
    push_all(assembler, packets[:4] + packets[5:])
    assert assembler.release(T0) == [Frame(0, VP8_KEY, True)]
    assert assembler.missing(T0) == [104]

    push_all(assembler, [packets[4]], T0 + REORDER_WAIT / 2)
    assert assembler.missing(T0 + REORDER_WAIT / 2) == []
    assert assembler.release(T0 + REORDER_WAIT / 2) == [
        Frame(3000, VP8_DELTA_1, False),
        Frame(6000, VP8_DELTA_2, False),
    ]
    assert (assembler.lost, assembler.dropped_frames) == (0, 0)


# ---- H264 ----

SPS = bytes([0x67, 0x42, 0xC0, 0x1F, 0x8C, 0x8D, 0x40])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84]) + b"an IDR slice"  # nal_ref_idc 3, type 5
IDR_FRAGMENTS = (b"first fragment ", b"middle fragment ", b"last fragment")
NON_IDR = bytes([0x41, 0x9A, 0x02]) + b"a non-IDR slice"  # nal_ref_idc 2, type 1


def stap_a(*nal_units: bytes) -> bytes:
    return bytes([0x78]) + b"".join(struct.pack("!H", len(nal)) + nal for nal in nal_units)


def fu_a(nal_header: int, fragment: bytes, *, start: bool = False, end: bool = False) -> bytes:
    indicator = (nal_header & 0xE0) | 28
    fu_header = (0x80 if start else 0) | (0x40 if end else 0) | (nal_header & 0x1F)
    return bytes([indicator, fu_header]) + fragment


def test_h264_single_nal_stap_a_and_fu_a_give_annex_b() -> None:
    """Single NAL, STAP-A and FU-A payloads become Annex B access units; an IDR makes a keyframe."""
    packets = [
        rtp(1, 0, IDR, marker=True, payload_type=H264),
        rtp(2, 3000, stap_a(SPS, PPS), payload_type=H264),
        rtp(3, 3000, fu_a(0x65, IDR_FRAGMENTS[0], start=True), payload_type=H264),
        rtp(4, 3000, fu_a(0x65, IDR_FRAGMENTS[1]), payload_type=H264),
        rtp(5, 3000, fu_a(0x65, IDR_FRAGMENTS[2], end=True), marker=True, payload_type=H264),
        rtp(6, 6000, NON_IDR, marker=True, payload_type=H264),
    ]
    assembler = FrameAssembler("h264")
    push_all(assembler, [packets[i] for i in (0, 4, 2, 5, 1, 3)])

    fragmented_idr = bytes([0x65]) + b"".join(IDR_FRAGMENTS)
    assert assembler.release(T0) == [
        Frame(0, START_CODE + IDR, True),
        Frame(3000, START_CODE + SPS + START_CODE + PPS + START_CODE + fragmented_idr, True),
        Frame(6000, START_CODE + NON_IDR, False),
    ]
    assert (assembler.lost, assembler.dropped_frames) == (0, 0)


def test_h264_frames_without_an_idr_wait_for_one() -> None:
    """Before an IDR, parameter sets and non-IDR slices are not a keyframe: they are dropped."""
    packets = [
        rtp(1, 0, stap_a(SPS, PPS), payload_type=H264),
        rtp(2, 0, NON_IDR, marker=True, payload_type=H264),
        rtp(3, 3000, IDR, marker=True, payload_type=H264),
    ]
    assembler = FrameAssembler("H264")
    push_all(assembler, packets)

    assert assembler.release(T0) == [Frame(3000, START_CODE + IDR, True)]
    assert assembler.dropped_frames == 1


# ---- Opus ----


def test_opus_every_packet_is_a_frame_and_loss_drops_nothing_else() -> None:
    """Every Opus packet is a frame; a lost one is counted but the packets after it still come out."""
    payloads = [bytes([0x78, n]) + b"opus" for n in range(5)]
    packets = [rtp(7 + n, 960 * n, payloads[n], marker=n == 0, payload_type=OPUS) for n in range(5)]
    assembler = FrameAssembler("opus")
    push_all(assembler, packets[:2] + packets[3:])

    assert assembler.release(T0) == [Frame(0, payloads[0], True), Frame(960, payloads[1], True)]
    assert assembler.missing(T0) == [9]
    assert assembler.release(T0 + REORDER_WAIT + 0.01) == [
        Frame(2880, payloads[3], True),
        Frame(3840, payloads[4], True),
    ]
    assert assembler.lost == 1
    assert assembler.dropped_frames == 0


# ---- wrap-around ----


def test_sequence_and_timestamp_wrap_keep_order() -> None:
    """Sequence numbers wrapping 65535 -> 0 and timestamps wrapping 2^32 keep order, timestamps unwrapped."""
    start = 0xFFFFFFF0
    packets = (
        vp8_frame(65534, start, VP8_KEY, 2)
        + vp8_frame(65536, start + 3000, VP8_DELTA_1)  # sequence 0, timestamp 2984
        + vp8_frame(65537, start + 6000, VP8_DELTA_2)
    )
    assert [header.sequence for _, header in packets] == [65534, 65535, 0, 1]
    assert [header.timestamp for _, header in packets] == [start, start, 2984, 5984]
    assembler = FrameAssembler("vp8")
    push_all(assembler, [packets[0], packets[3], packets[1]])

    assert assembler.missing(T0) == [0]
    assert assembler.release(T0) == [Frame(start, VP8_KEY, True)]
    push_all(assembler, [packets[2]], T0 + 0.05)
    frames = assembler.release(T0 + 0.05)
    assert frames == [Frame(start + 3000, VP8_DELTA_1, False), Frame(start + 6000, VP8_DELTA_2, False)]
    assert frames[0].timestamp > 1 << 32
    assert (assembler.lost, assembler.dropped_frames) == (0, 0)


# ---- what is ignored ----


def padding_only(sequence: int, timestamp: int) -> Packet:
    """A packet with no payload, only padding (as senders probe bandwidth with)."""
    packet = build_rtp(sequence=sequence, timestamp=timestamp, payload=b"", padding=224)
    header = parse_rtp(packet)
    assert header is not None and header.payload_length == 0
    return packet, header


def test_padding_only_packets_are_ignored() -> None:
    """Padding-only packets (no payload) add nothing to a frame and are not a loss."""
    packets = [
        rtp(10, 0, vp8_descriptor(start=True) + VP8_KEY[:20]),
        padding_only(11, 0),
        rtp(12, 0, vp8_descriptor(start=False) + VP8_KEY[20:], marker=True),
        padding_only(13, 0),
        padding_only(14, 0),
        *vp8_frame(15, 3000, VP8_DELTA_1),
    ]
    assembler = FrameAssembler("vp8")
    push_all(assembler, packets)

    assert assembler.release(T0) == [Frame(0, VP8_KEY, True), Frame(3000, VP8_DELTA_1, False)]
    assert (assembler.lost, assembler.dropped_frames) == (0, 0)


def test_duplicate_and_too_late_packets_are_ignored() -> None:
    """A duplicate (held or already released) and a packet arriving after it was given up change nothing."""
    packets = (
        vp8_frame(1, 0, VP8_KEY, 2)
        + vp8_frame(3, 3000, VP8_DELTA_1, 2)  # 3 is lost, then arrives too late
        + vp8_frame(5, 6000, VP8_KEY, 2)
        + vp8_frame(7, 9000, VP8_DELTA_2)
    )
    assembler = FrameAssembler("vp8")
    push_all(assembler, [packets[0], packets[0], packets[1], packets[3], packets[4], packets[5]])
    assert assembler.release(T0) == [Frame(0, VP8_KEY, True)]
    push_all(assembler, [packets[1]], T0 + 0.01)  # a duplicate of one already released
    assert assembler.release(T0 + REORDER_WAIT + 0.01) == [Frame(6000, VP8_KEY, True)]
    assert (assembler.lost, assembler.dropped_frames) == (1, 1)

    push_all(assembler, [packets[2], packets[5]], T0 + 0.5)  # too late, and a released duplicate
    assert assembler.missing(T0 + 0.5) == []
    assert assembler.release(T0 + 0.5) == []
    push_all(assembler, [packets[6]], T0 + 0.5)
    assert assembler.release(T0 + 0.5) == [Frame(9000, VP8_DELTA_2, False)]
    assert (assembler.lost, assembler.dropped_frames) == (1, 1)


# ---- codecs and flushing ----


def test_unrecordable_codec_is_refused() -> None:
    """A codec that cannot be recorded raises ValueError naming the recordable ones."""
    with pytest.raises(ValueError, match="vp9") as raised:
        FrameAssembler("vp9")
    assert all(codec in str(raised.value) for codec in ("vp8", "h264", "opus"))


def test_flush_gives_up_every_hole_and_drops_the_frame_in_progress() -> None:
    """flush=True gives up every hole at once; the frame in progress (its marker packet never came)
    may be cut short, so it is dropped, never written."""
    packets = (
        vp8_frame(1, 0, VP8_KEY, 2)
        + vp8_frame(3, 3000, VP8_DELTA_1, 4)  # 4 and 5 are lost
        + vp8_frame(7, 6000, VP8_KEY, 2)
        + vp8_frame(9, 9000, VP8_DELTA_2, 2)[:1]  # in progress: its marker packet has not come yet
    )
    assembler = FrameAssembler("vp8")
    push_all(assembler, packets[:3] + packets[5:])
    assert assembler.missing(T0) == [4, 5]

    assert assembler.release(T0, flush=True) == [Frame(0, VP8_KEY, True), Frame(6000, VP8_KEY, True)]
    assert (assembler.lost, assembler.dropped_frames) == (2, 2)
    assert assembler.missing(T0) == []


def test_flush_drops_a_frame_in_progress_with_a_hole() -> None:
    """flush=True drops the frame in progress when one of its packets is missing."""
    delta = vp8_frame(3, 3000, VP8_DELTA_1, 4)
    packets = [*vp8_frame(1, 0, VP8_KEY, 2), delta[0], delta[2]]  # 4 is lost, 6 (the marker) not come
    assembler = FrameAssembler("vp8")
    push_all(assembler, packets)

    assert assembler.release(T0, flush=True) == [Frame(0, VP8_KEY, True)]
    assert (assembler.lost, assembler.dropped_frames) == (1, 1)
