"""The per-player header rewriter: sequence numbers, timestamps, SSRC, payload types and header
extensions as each player gets them, byte for byte."""

from __future__ import annotations

import gc
import struct
import weakref
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.media.rewriter import HeaderMap, Rewriter
from trio_sfu.wire.rtp import MAX_DROPOUT, MAX_MISORDER, RtpHeader, parse_rtp, read_extension

from ..support.rtp_packets import OPUS, VP8, build_rtp


def rewriter(**kwargs: object) -> Rewriter:
    args: dict[str, object] = {
        "ssrc": 0xCAFEBABE,
        "clock_rate": 90000,
        "payload_types": {VP8: 97},
        "extension_ids": {},
        "initial_sequence": 5000,
        "initial_timestamp": 700000,
    }
    args.update(kwargs)
    return Rewriter(**args)  # type: ignore[arg-type]


def rewrite(rw: Rewriter, packet: bytes, header: RtpHeader, now: float) -> bytes | None:
    """The packet as the fan-out sends it: numbered, its extensions mapped, its fields patched."""
    numbered = rw.number(header, now)
    if numbered is None:
        return None
    return rw.patch(rw.header_map.apply(packet, header), *numbered)


def forward(rw: Rewriter, packet: bytes, now: float) -> RtpHeader | None:
    """Rewrite and re-parse: the output must always be a valid RTP packet."""
    header = parse_rtp(packet)
    assert header is not None
    out = rewrite(rw, packet, header, now)
    if out is None:
        return None
    parsed = parse_rtp(out)
    assert parsed is not None
    return parsed


# ------------------------------------------------------------------------------------------ rewriter


def test_rewrite_sets_ssrc_pt_and_preserves_the_rest() -> None:
    rw = rewriter()
    packet = build_rtp(sequence=100, timestamp=90000, marker=True, csrcs=(7, 8), payload=b"hello", padding=5)
    header = parse_rtp(packet)
    assert header is not None
    out = rewrite(rw, packet, header, 10.0)
    assert out is not None
    parsed = parse_rtp(out)
    assert parsed is not None
    assert parsed.ssrc == 0xCAFEBABE
    assert parsed.payload_type == 97
    assert parsed.marker is True
    assert (parsed.sequence, parsed.timestamp) == (5000, 700000)
    assert parsed.padding == 5
    assert out[12:20] == struct.pack("!II", 7, 8)
    assert out[parsed.header_length : len(out) - 5] == b"hello"
    assert out[0] == packet[0]
    assert len(out) == len(packet)
    assert (rw.packets, rw.octets, rw.last_timestamp, rw.last_sent_at) == (1, 5, 700000, 10.0)


def test_random_initial_offsets() -> None:
    outs = set()
    for _ in range(8):
        rw = Rewriter(ssrc=1, clock_rate=90000, payload_types={VP8: VP8}, extension_ids={})
        header = forward(rw, build_rtp(sequence=1, timestamp=1), 0.0)
        assert header is not None
        outs.add((header.sequence, header.timestamp))
    assert len(outs) > 1


def test_initial_sequence_cannot_wrap_early() -> None:
    """SRTP receivers infer the rollover counter from the sequence numbers they see: starting below
    0x8000 keeps a wrap 32768 packets away from the start, so one that missed the first packets
    cannot guess it wrong (seen in the bench: one player failing every packet for a whole run)."""
    starts = set()
    for _ in range(200):
        rw = Rewriter(ssrc=1, clock_rate=90000, payload_types={VP8: VP8}, extension_ids={})
        header = forward(rw, build_rtp(sequence=60000, timestamp=1), 0.0)
        assert header is not None and header.sequence < 0x8000
        starts.add(header.sequence)
    assert len(starts) > 150


def test_unmapped_payload_type_dropped_and_sequence_stays_contiguous() -> None:
    rw = rewriter(payload_types={VP8: 97, 98: 99})
    outs = []
    for seq in range(10, 20):
        pt = 120 if seq in (12, 15, 16) else VP8  # 120: e.g. FEC the player did not negotiate
        header = forward(rw, build_rtp(sequence=seq, payload_type=pt), 1.0)
        if pt == 120:
            assert header is None
        else:
            assert header is not None and header.payload_type == 97
            outs.append(header.sequence)
    assert outs == list(range(5000, 5007))


def test_late_packet_after_dropped_ones_keeps_its_place() -> None:
    rw = rewriter()
    out = {}
    for seq in (1, 2, 4, 5, 6, 8):
        pt = 120 if seq in (5,) else VP8
        h = forward(rw, build_rtp(sequence=seq, payload_type=pt), 0.0)
        if h is not None:
            out[seq] = h.sequence
    # 3 and 7 arrive late: 3 precedes the drop of 5, 7 follows it
    for seq in (3, 7):
        h = forward(rw, build_rtp(sequence=seq), 0.0)
        assert h is not None
        out[seq] = h.sequence
    ordered = [out[s] for s in sorted(out)]
    assert ordered == list(range(5000, 5000 + len(ordered)))


def test_mute_drops_and_reports() -> None:
    rw = rewriter()
    assert not rw.muted
    rw.mute(1.0)
    assert rw.muted
    assert forward(rw, build_rtp(), 1.0) is None
    rw.unmute(2.0)
    assert not rw.muted
    assert forward(rw, build_rtp(), 2.0) is not None


def test_sequence_wraps_on_input_and_output() -> None:
    rw = rewriter(initial_sequence=65533)
    ins = [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3]
    outs = []
    for i, seq in enumerate(ins):
        h = forward(rw, build_rtp(sequence=seq, timestamp=3000 * i), i / 30)
        assert h is not None
        outs.append(h.sequence)
    assert outs == [65533, 65534, 65535, 0, 1, 2, 3, 4, 5, 6]


def test_timestamp_wraps_at_2_32() -> None:
    rw = rewriter(initial_timestamp=2**32 - 6000)
    outs = []
    for i in range(4):
        h = forward(rw, build_rtp(sequence=i, timestamp=(2**32 - 3000 + 3000 * i) % 2**32), i / 30)
        assert h is not None
        outs.append(h.timestamp)
    assert outs == [2**32 - 6000, 2**32 - 3000, 0, 3000]


def test_reordering_and_retransmission_map_consistently() -> None:
    rw = rewriter()
    mapping: dict[int, int] = {}
    for seq in (100, 101, 103, 104, 102, 105, 99, 103, 110, 106):
        h = forward(rw, build_rtp(sequence=seq, timestamp=seq * 3000), 0.0)
        assert h is not None
        assert (h.sequence - seq) % 65536 == (5000 - 100) % 65536
        assert (h.timestamp - seq * 3000) % 2**32 == (700000 - 300000) % 2**32
        mapping.setdefault(seq, h.sequence)
        assert mapping[seq] == h.sequence
    # last_* follow the newest packet only
    assert rw.last_sequence == (110 + 4900) % 65536
    assert rw.last_timestamp == 700000 + 10 * 3000


def test_reordering_across_output_wrap() -> None:
    rw = rewriter(initial_sequence=65535)
    for seq, expected in ((10, 65535), (12, 1), (11, 0), (13, 2), (9, 65534)):
        h = forward(rw, build_rtp(sequence=seq), 0.0)
        assert h is not None and h.sequence == expected


def test_far_too_old_packet_dropped() -> None:
    rw = rewriter()
    for seq in range(5000, 5000 + MAX_MISORDER + 10):
        assert forward(rw, build_rtp(sequence=seq), 0.0) is not None
    # beyond the window behind: neither a reorder nor (alone) a restart
    assert forward(rw, build_rtp(sequence=5000), 0.0) is None
    h = forward(rw, build_rtp(sequence=5000 + MAX_MISORDER + 10), 0.0)
    assert h is not None and h.sequence == (5000 + MAX_MISORDER + 10) % 65536


def test_mute_gap_contiguous_sequence_and_wall_clock_timestamps() -> None:
    rw = rewriter()
    frame = 3000  # 30 fps at 90 kHz
    seq, ts, now = 1000, 50000, 100.0
    last = None
    for _ in range(30):
        last = forward(rw, build_rtp(sequence=seq, timestamp=ts), now)
        seq, ts, now = seq + 1, ts + frame, now + 1 / 30
    assert last is not None
    rw.mute(now)
    # the publisher keeps sending for 2 s; none of it reaches this player
    for _ in range(60):
        assert forward(rw, build_rtp(sequence=seq, timestamp=ts), now) is None
        seq, ts, now = seq + 1, ts + frame, now + 1 / 30
    rw.unmute(now)
    first = forward(rw, build_rtp(sequence=seq, timestamp=ts), now)
    assert first is not None
    assert first.sequence == last.sequence + 1
    advance = first.timestamp - last.timestamp
    assert abs(advance - 180000 - frame) <= frame  # 2 s of mute plus one frame period
    assert advance == round((60 + 1) / 30 * 90000)
    # subsequent packets keep the new offset: input deltas carry through
    second = forward(rw, build_rtp(sequence=seq + 1, timestamp=ts + frame), now + 1 / 30)
    assert second is not None
    assert second.sequence == first.sequence + 1
    assert second.timestamp == first.timestamp + frame


def test_packet_older_than_the_splice_is_dropped() -> None:
    rw = rewriter()
    for seq in range(10):
        forward(rw, build_rtp(sequence=seq), 0.0)
    rw.mute(1.0)
    rw.unmute(2.0)
    h = forward(rw, build_rtp(sequence=30), 2.0)
    assert h is not None and h.sequence == 5010
    # 29 would take 5009, which was already sent before the mute
    assert forward(rw, build_rtp(sequence=29), 2.0) is None
    h = forward(rw, build_rtp(sequence=32), 2.0)
    assert h is not None and h.sequence == 5012
    h = forward(rw, build_rtp(sequence=31), 2.0)  # after the splice: keeps its place
    assert h is not None and h.sequence == 5011


def test_publisher_ssrc_change_is_spliced() -> None:
    rw = rewriter(clock_rate=48000, payload_types={OPUS: OPUS})
    now = 0.0
    last = None
    for i in range(5):
        last = forward(rw, build_rtp(ssrc=1, sequence=40000 + i, timestamp=960 * i, payload_type=OPUS), now)
        now += 0.02
    assert last is not None
    now += 0.5  # the publisher restarts its track half a second later
    first = forward(rw, build_rtp(ssrc=2, sequence=7, timestamp=123456789, payload_type=OPUS), now)
    assert first is not None
    assert first.sequence == last.sequence + 1
    assert first.timestamp == last.timestamp + round((0.5 + 0.02) * 48000)
    assert first.ssrc == 0xCAFEBABE
    # a straggler from the replaced stream must not splice back
    assert forward(rw, build_rtp(ssrc=1, sequence=40005, payload_type=OPUS), now) is None
    second = forward(rw, build_rtp(ssrc=2, sequence=8, timestamp=123456789 + 960, payload_type=OPUS), now)
    assert second is not None
    assert (second.sequence, second.timestamp) == (first.sequence + 1, first.timestamp + 960)


def test_same_ssrc_sequence_restart_is_spliced_after_confirmation() -> None:
    rw = rewriter()
    for seq in range(10):
        last = forward(rw, build_rtp(sequence=seq, timestamp=seq * 3000), seq / 30)
    assert last is not None
    # the sequence jumps by 20000: one packet could be garbage, two in a row are a restart
    assert forward(rw, build_rtp(sequence=20000, timestamp=9), 1.0) is None
    h = forward(rw, build_rtp(sequence=20001, timestamp=3009), 1.0)
    assert h is not None
    assert h.sequence == last.sequence + 1
    assert h.timestamp == last.timestamp + round((1.0 - 9 / 30) * 90000)
    h2 = forward(rw, build_rtp(sequence=20002, timestamp=6009), 1.03)
    assert h2 is not None and h2.sequence == h.sequence + 1 and h2.timestamp == h.timestamp + 3000


def test_backward_sequence_jump_is_never_spliced() -> None:
    """Stale packets (NACKed retransmissions from before a long mute) must not look like a restart."""
    rw = rewriter()
    for seq in range(100):
        forward(rw, build_rtp(sequence=seq), 0.0)
    rw.mute(1.0)
    rw.unmute(60.0)  # a minute of mute: the input moved on by thousands of packets
    h = forward(rw, build_rtp(sequence=15000), 60.0)
    assert h is not None and h.sequence == 5100
    for seq in (98, 99):  # consecutive, far behind: retransmissions of what was sent before the mute
        assert forward(rw, build_rtp(sequence=seq), 60.0) is None
    h = forward(rw, build_rtp(sequence=15001), 60.01)
    assert h is not None and h.sequence == 5101


def test_retransmission_from_an_older_ssrc_does_not_splice() -> None:
    rw = rewriter()
    outs = []
    for ssrc in (1, 2, 3):
        for seq in range(ssrc * 1000, ssrc * 1000 + 3):
            h = forward(rw, build_rtp(ssrc=ssrc, sequence=seq), float(ssrc))
            assert h is not None
            outs.append(h.sequence)
    assert forward(rw, build_rtp(ssrc=1, sequence=1002), 4.0) is None
    assert forward(rw, build_rtp(ssrc=2, sequence=2002), 4.0) is None
    h = forward(rw, build_rtp(ssrc=3, sequence=3003), 4.0)
    assert h is not None
    assert [*outs, h.sequence] == list(range(5000, 5010))


def test_counters_for_sender_reports() -> None:
    rw = rewriter()
    forward(rw, build_rtp(sequence=1, timestamp=10, payload=b"x" * 100, padding=4), 1.0)
    forward(rw, build_rtp(sequence=2, timestamp=20, payload=b"x" * 50, extensions=[(1, b"a")]), 2.0)
    forward(rw, build_rtp(sequence=3, timestamp=30, payload_type=5, payload=b"x" * 70), 3.0)  # dropped
    assert rw.packets == 2
    assert rw.octets == 150
    assert rw.last_timestamp == 700000 + 10
    assert rw.last_sent_at == 2.0


# ------------------------------------------------------------------------------- extension rewriting


def rewrite_exts(
    exts: Sequence[tuple[int, bytes]], mapping: dict[int, int], *, two_byte: bool = False, csrcs: int = 0
) -> tuple[bytes, RtpHeader]:
    rw = rewriter(extension_ids=mapping)
    packet = build_rtp(
        extensions=exts, two_byte=two_byte, payload=b"PAYLOAD", csrcs=tuple(range(csrcs)), padding=2
    )
    header = parse_rtp(packet)
    assert header is not None
    out = rewrite(rw, packet, header, 0.0)
    assert out is not None
    parsed = parse_rtp(out)
    assert parsed is not None
    assert out[parsed.header_length : len(out) - parsed.padding] == b"PAYLOAD"
    assert parsed.padding == 2
    assert out[12 : 12 + 4 * csrcs] == b"".join(struct.pack("!I", c) for c in range(csrcs))
    return out, parsed


def test_extension_ids_mapped_in_place() -> None:
    # Chromium ids (mid=4, abs-send-time=2, transport-cc=3) to aiortc ids (mid=1, abs-send-time=3, ...)
    exts = [(2, b"\x01\x02\x03"), (3, b"\x00\x07"), (4, b"0")]
    out, parsed = rewrite_exts(exts, {4: 1, 2: 3, 3: 5})
    assert read_extension(out, parsed, 1) == b"0"
    assert read_extension(out, parsed, 3) == b"\x01\x02\x03"
    assert read_extension(out, parsed, 5) == b"\x00\x07"
    assert read_extension(out, parsed, 2) is None
    assert read_extension(out, parsed, 4) is None
    assert parsed.header_length == 12 + 4 + 12


def test_players_with_equal_maps_share_one_mapped_packet() -> None:
    """One browser version negotiates the same ids: a packet is mapped once for all its players, and
    each writes only its own sequence number, timestamp and SSRC."""
    registry: dict[object, HeaderMap] = {}
    exts = {4: 1, 2: 3}
    players = [
        rewriter(ssrc=1000 + i, extension_ids=dict(exts), header_maps=registry, initial_sequence=i)
        for i in range(3)
    ]
    other = rewriter(ssrc=2000, extension_ids={4: 1}, header_maps=registry)
    assert len({id(p.header_map) for p in players}) == 1
    assert other.header_map is not players[0].header_map and len(registry) == 2
    packet = build_rtp(sequence=9, extensions=[(2, b"\x01\x02\x03"), (4, b"0")])
    header = parse_rtp(packet)
    assert header is not None
    mapped = players[0].header_map.apply(packet, header)
    assert players[1].header_map.apply(packet, header) is mapped  # computed once
    copy = bytes(bytearray(packet))
    assert players[0].header_map.apply(copy, header) is not mapped  # another object: mapped again
    for index, player in enumerate(players):
        out = rewrite(player, packet, header, 0.0)
        assert out is not None
        parsed = parse_rtp(out)
        assert parsed is not None
        assert (parsed.ssrc, parsed.sequence, parsed.payload_type) == (1000 + index, index, 97)
        assert read_extension(out, parsed, 3) == b"\x01\x02\x03" and read_extension(out, parsed, 1) == b"0"
    out = rewrite(other, packet, header, 0.0)
    assert out is not None
    parsed = parse_rtp(out)
    assert parsed is not None and read_extension(out, parsed, 3) is None


def test_a_header_map_goes_with_its_last_player() -> None:
    """Players choose their extension ids: a producer's weak registry must not keep every map a
    stream of players ever used."""
    registry: weakref.WeakValueDictionary[object, HeaderMap] = weakref.WeakValueDictionary()
    players = [rewriter(extension_ids={1: 1 + i % 14}, header_maps=registry) for i in range(28)]
    assert len(registry) == 14
    del players[:14]
    gc.collect()
    assert len(registry) == 14  # the other 14 players still use every map
    del players[:]
    gc.collect()
    assert len(registry) == 0


def test_unmapped_extensions_removed() -> None:
    exts = [(2, b"\x01\x02\x03"), (3, b"\x00\x07"), (4, b"0")]
    out, parsed = rewrite_exts(exts, {2: 3}, csrcs=2)
    assert read_extension(out, parsed, 3) == b"\x01\x02\x03"
    for ident in range(1, 15):
        if ident != 3:
            assert read_extension(out, parsed, ident) is None
    assert parsed.header_length == 12 + 8 + 4 + 4


def test_all_extensions_removed_clears_x_bit() -> None:
    out, parsed = rewrite_exts([(2, b"\x01\x02\x03"), (3, b"\x00\x07")], {}, csrcs=1)
    assert parsed.extension_offset == -1
    assert out[0] & 0x10 == 0
    assert parsed.header_length == 16


def test_mapping_to_a_high_id_switches_to_two_byte_form() -> None:
    out, parsed = rewrite_exts([(2, b"\x01\x02\x03"), (4, b"0")], {2: 20, 4: 1})
    assert out[parsed.extension_offset : parsed.extension_offset + 2] == b"\x10\x00"
    assert read_extension(out, parsed, 20) == b"\x01\x02\x03"
    assert read_extension(out, parsed, 1) == b"0"


def test_two_byte_extensions_mapped_and_removed() -> None:
    exts = [(1, b""), (200, bytes(range(30))), (3, b"\x05")]
    out, parsed = rewrite_exts(exts, {200: 2, 3: 7, 1: 9}, two_byte=True)
    assert read_extension(out, parsed, 2) == bytes(range(30))
    assert read_extension(out, parsed, 7) == b"\x05"
    assert read_extension(out, parsed, 9) == b""
    out, parsed = rewrite_exts(exts, {3: 7}, two_byte=True)
    assert read_extension(out, parsed, 7) == b"\x05"
    assert read_extension(out, parsed, 200) is None
    assert read_extension(out, parsed, 2) is None


def test_unknown_extension_profile_removed() -> None:
    packet = build_rtp(payload=b"")[:12] + b"\xab\xcd\x00\x01" + b"\x10\xaa\x00\x00" + b"PAY"
    packet = bytes((packet[0] | 0x10,)) + packet[1:]
    header = parse_rtp(packet)
    assert header is not None
    out = rewrite(rewriter(extension_ids={1: 1}), packet, header, 0.0)
    assert out is not None
    parsed = parse_rtp(out)
    assert parsed is not None and parsed.extension_offset == -1 and out[12:] == b"PAY"


@given(
    exts=st.lists(
        st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)),
        max_size=6,
        unique_by=lambda e: e[0],
    ),
    mapping=st.dictionaries(st.integers(1, 14), st.integers(1, 255), max_size=14),
    two_byte=st.booleans(),
)
def test_extension_rewrite_property(
    exts: list[tuple[int, bytes]], mapping: dict[int, int], two_byte: bool
) -> None:
    targets = [mapping[i] for i, _ in exts if i in mapping]
    if len(set(targets)) != len(targets):
        return  # two publisher ids onto one player id is a caller bug
    out, parsed = rewrite_exts(exts, mapping, two_byte=two_byte)
    for ident, value in exts:
        if ident in mapping:
            assert read_extension(out, parsed, mapping[ident]) == value
    expected_ids = {mapping[i] for i, _ in exts if i in mapping}
    for ident in range(1, 256):
        if ident not in expected_ids:
            assert read_extension(out, parsed, ident) is None
    if not expected_ids:
        assert parsed.extension_offset == -1


def raw_extension_packet(profile: int, block: bytes, payload: bytes = b"PAYLOAD") -> bytes:
    """A packet with a hand-made extension block (padding between elements, odd endings)."""
    block += bytes(-len(block) % 4)
    fixed = bytearray(build_rtp(payload=b"")[:12])
    fixed[0] |= 0x10
    return bytes(fixed) + struct.pack("!HH", profile, len(block) // 4) + block + payload


def test_padding_between_elements_is_compacted_away() -> None:
    packet = raw_extension_packet(
        0xBEDE, b"\x10\xaa" + b"\x00\x00\x00" + b"\x21\xbb\xcc" + b"\x00" + b"\x30\xdd"
    )
    header = parse_rtp(packet)
    assert header is not None
    for mapping in ({1: 5, 2: 6, 3: 7}, {2: 6, 3: 7}, {1: 5, 3: 7}, {1: 5}):
        out = rewrite(rewriter(extension_ids=mapping), packet, header, 0.0)
        assert out is not None
        parsed = parse_rtp(out)
        assert parsed is not None and out[parsed.header_length :] == b"PAYLOAD"
        for source, value in ((1, b"\xaa"), (2, b"\xbb\xcc"), (3, b"\xdd")):
            expected = value if source in mapping else None
            assert read_extension(out, parsed, source + 4) == expected


def test_broken_elements_are_dropped_not_forwarded() -> None:
    # one-byte: id 15 (reserved) stops parsing; two-byte: an element overrunning the block
    for profile, block in ((0xBEDE, b"\x10\xaa\xf0\x20\xbb"), (0x1000, b"\x01\x01\xaa\x02\x09\xbb")):
        packet = raw_extension_packet(profile, block)
        header = parse_rtp(packet)
        assert header is not None
        out = rewrite(rewriter(extension_ids={1: 3, 2: 4}), packet, header, 0.0)
        assert out is not None
        parsed = parse_rtp(out)
        assert parsed is not None and out[parsed.header_length :] == b"PAYLOAD"
        assert read_extension(out, parsed, 3) == b"\xaa"
        assert read_extension(out, parsed, 4) is None


@given(
    profile=st.sampled_from([0xBEDE, 0x1000, 0x1005, 0x1234]),
    block=st.binary(max_size=40),
    mapping=st.dictionaries(st.integers(1, 255), st.integers(1, 255), max_size=20),
)
def test_garbage_extension_blocks_still_give_valid_packets(
    profile: int, block: bytes, mapping: dict[int, int]
) -> None:
    packet = raw_extension_packet(profile, block)
    header = parse_rtp(packet)
    assert header is not None
    out = rewrite(rewriter(extension_ids=mapping), packet, header, 0.0)
    assert out is not None
    parsed = parse_rtp(out)
    assert parsed is not None
    assert out[parsed.header_length :] == b"PAYLOAD"
    if parsed.extension_offset >= 0:
        for ident in range(1, 256):
            read_extension(out, parsed, ident)


# ------------------------------------------------------------------------------------------ property


@settings(max_examples=300)
@given(
    start_seq=st.integers(0, 0xFFFF),
    start_out=st.integers(0, 0xFFFF),
    events=st.lists(
        st.one_of(
            st.just("packet"),
            st.just("dropped_pt"),
            st.just("mute"),
            st.just("unmute"),
            st.just("new_ssrc"),
            st.integers(MAX_DROPOUT, 0x8000 - 3),  # a forward restart, both packets beyond the window
        ),
        min_size=1,
        max_size=200,
    ),
)
def test_in_order_output_always_contiguous(start_seq: int, start_out: int, events: list[object]) -> None:
    rw = rewriter(initial_sequence=start_out)
    seq, ssrc, now = start_seq, 1, 0.0
    outs: list[int] = []
    for event in events:
        now += 0.01
        if event == "mute":
            rw.mute(now)
            continue
        if event == "unmute":
            rw.unmute(now)
            continue
        if event == "new_ssrc":
            ssrc += 1
            seq = (seq * 7 + 12345) & 0xFFFF
        elif isinstance(event, int):
            seq = (seq + event) & 0xFFFF
        pt = 120 if event == "dropped_pt" else VP8
        # after a restart the stream goes on: the second packet is what confirms it
        for _ in range(2 if isinstance(event, int) else 1):
            h = forward(rw, build_rtp(sequence=seq, timestamp=seq * 100, ssrc=ssrc, payload_type=pt), now)
            seq = (seq + 1) & 0xFFFF
            if h is not None:
                outs.append(h.sequence)
    assert outs == [(start_out + i) & 0xFFFF for i in range(len(outs))]


@given(start=st.integers(0, 0xFFFF), gaps=st.lists(st.integers(1, MAX_DROPOUT - 1), max_size=30))
def test_input_loss_is_preserved_so_players_can_nack(start: int, gaps: list[int]) -> None:
    rw = rewriter(initial_sequence=100)
    seq = start
    first = forward(rw, build_rtp(sequence=seq), 0.0)
    assert first is not None
    for gap in gaps:
        seq = (seq + gap) & 0xFFFF
        h = forward(rw, build_rtp(sequence=seq), 0.0)
        assert h is not None and h.sequence == (seq - start + 100) & 0xFFFF


@given(
    start=st.integers(0, 0xFFFF),
    order=st.permutations(list(range(40))),
)
def test_reordering_within_window_maps_by_offset(start: int, order: list[int]) -> None:
    rw = rewriter(initial_sequence=0)
    first = forward(rw, build_rtp(sequence=start), 0.0)
    assert first is not None
    for i in order:
        h = forward(rw, build_rtp(sequence=(start + 1 + i) & 0xFFFF), 0.0)
        assert h is not None and h.sequence == 1 + i


# ----------------------------------------------------------------------------------- aiortc cross-check


def test_aiortc_parses_rewritten_packets() -> None:
    aiortc_rtp = pytest.importorskip("aiortc.rtp")
    rtcrtpparameters = pytest.importorskip("aiortc.rtcrtpparameters")
    rw = rewriter(extension_ids={4: 1, 2: 3})
    packet = build_rtp(
        sequence=77,
        timestamp=1234,
        marker=True,
        extensions=[(2, b"\x01\x02\x03"), (3, b"\x00\x07"), (4, b"0")],
    )
    header = parse_rtp(packet)
    assert header is not None
    out = rewrite(rw, packet, header, 0.0)
    assert out is not None
    ext_map = aiortc_rtp.HeaderExtensionsMap()
    ext_map.configure(
        rtcrtpparameters.RTCRtpParameters(
            headerExtensions=[
                rtcrtpparameters.RTCRtpHeaderExtensionParameters(
                    id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"
                ),
                rtcrtpparameters.RTCRtpHeaderExtensionParameters(
                    id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                ),
            ]
        )
    )
    parsed = aiortc_rtp.RtpPacket.parse(out, ext_map)
    assert (parsed.sequence_number, parsed.timestamp, parsed.ssrc, parsed.payload_type, parsed.marker) == (
        5000,
        700000,
        0xCAFEBABE,
        97,
        1,
    )
    assert parsed.extensions.mid == "0"
    assert parsed.extensions.abs_send_time == 0x010203
    assert parsed.payload == b"\x10\x02\x03\x04"


def test_abs_send_time_is_stamped_with_our_send_time_in_either_form() -> None:
    from trio_sfu.media.rewriter import abs_send_time, stamp_abs_send_time

    for two_byte in (False, True):
        packet = bytearray(build_rtp(extensions=[(1, b"ab"), (3, b"\x01\x02\x03")], two_byte=two_byte))
        assert stamp_abs_send_time(packet, 3, 64.5)
        parsed = parse_rtp(bytes(packet))
        assert parsed is not None
        stamped = read_extension(bytes(packet), parsed, 3)
        assert stamped == abs_send_time(64.5) == abs_send_time(0.5) == b"\x02\x00\x00"  # wraps at 64 s
        assert read_extension(bytes(packet), parsed, 1) == b"ab"
    assert abs_send_time(1.5) == (3 << 17).to_bytes(3, "big")
    without = bytearray(build_rtp(extensions=[(1, b"ab")]))
    assert not stamp_abs_send_time(without, 3, 1.0) and bytes(without) == build_rtp(extensions=[(1, b"ab")])
    assert not stamp_abs_send_time(bytearray(build_rtp()), 3, 1.0)  # no extension block at all
    truncated = bytearray(build_rtp(extensions=[(3, b"\x01\x02\x03")]))[:17]
    assert not stamp_abs_send_time(truncated, 3, 1.0)
