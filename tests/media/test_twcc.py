"""Transport-wide feedback: what the recorder saw must come back out of the wire bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sfu.media.twcc import MAX_RECEIVED_PER_PACKET, TwccRecorder
from trio_sfu.wire.rtcp import TransportCc, parse_compound, serialize, serialize_compound

WRAP_S = (1 << 24) * 0.064  # the reference time wraps after 2^24 * 64 ms
TOLERANCE_S = 125e-6 + 1e-9  # each arrival is rounded once to 250 µs


def over_the_wire(feedback: list[TransportCc]) -> list[TransportCc]:
    """Serialize and parse back, so every assertion is about the bytes a publisher would get."""
    if not feedback:
        return []
    parsed = parse_compound(serialize_compound(feedback))
    assert all(isinstance(p, TransportCc) for p in parsed)
    return parsed  # type: ignore[return-value]


def decode(feedback: list[TransportCc]) -> tuple[dict[int, float], set[int]]:
    """Arrival time (modulo the reference wrap) of every reported-received sequence, and the lost ones."""
    received: dict[int, float] = {}
    lost: set[int] = set()
    for fb in feedback:
        assert fb.packets and fb.packets[0][0] == fb.base_sequence
        time_us = fb.reference_time * 64_000
        for index, (seq, delta) in enumerate(fb.packets):
            assert seq == (fb.base_sequence + index) & 0xFFFF
            if delta is None:
                lost.add(seq)
            else:
                time_us += delta
                received[seq] = time_us / 1e6
    return received, lost


def assert_close_mod_wrap(actual: float, expected: float) -> None:
    difference = (actual - expected) % WRAP_S
    assert min(difference, WRAP_S - difference) <= TOLERANCE_S, (actual, expected)


def test_nothing_recorded_nothing_sent() -> None:
    recorder = TwccRecorder(1, 2)
    assert recorder.feedback(0.0) == []
    recorder.record(5, 1.0)
    assert len(recorder.feedback(1.05)) == 1
    assert recorder.feedback(1.1) == []


def test_received_pattern_and_deltas() -> None:
    recorder = TwccRecorder(0xAAAA, 0xBBBB)
    arrivals = {100: 10.0001, 101: 10.0052, 102: 10.0053, 104: 10.0201, 105: 10.0206}
    for seq, arrival in arrivals.items():
        recorder.record(seq, arrival)
    (fb,) = over_the_wire(recorder.feedback(10.05))
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_sequence, fb.feedback_count) == (0xAAAA, 0xBBBB, 100, 0)
    # reference time: the first arrival floored to 64 ms
    assert fb.reference_time == int(10.0001 / 0.064)
    assert fb.packets[0][1] == round((10.0001 - fb.reference_time * 0.064) / 250e-6) * 250
    received, lost = decode([fb])
    assert lost == {103}
    assert set(received) == set(arrivals)
    for seq, arrival in arrivals.items():
        assert_close_mod_wrap(received[seq], arrival)


def test_reference_time_wraps_at_24_bits() -> None:
    recorder = TwccRecorder(1, 2)
    base = WRAP_S * 3 + 123.4567  # a large clock value: the reference time wraps
    for i in range(10):
        recorder.record(i, base + i * 0.003)
    (fb,) = over_the_wire(recorder.feedback(base + 0.1))
    assert fb.reference_time == int(base / 0.064) % (1 << 24)
    received, _ = decode([fb])
    for i in range(10):
        assert_close_mod_wrap(received[i], base + i * 0.003)


def test_transport_sequence_wraps() -> None:
    recorder = TwccRecorder(1, 2)
    seqs = [65530, 65531, 65532, 65533, 65535, 0, 1, 2]  # 65534 lost
    for i, seq in enumerate(seqs):
        recorder.record(seq, 5.0 + i * 0.001)
    (fb,) = over_the_wire(recorder.feedback(5.05))
    assert fb.base_sequence == 65530
    assert [seq for seq, _ in fb.packets] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2]
    received, lost = decode([fb])
    assert lost == {65534}
    for i, seq in enumerate(seqs):
        assert_close_mod_wrap(received[seq], 5.0 + i * 0.001)
    # the next report continues after the wrap
    recorder.record(4, 5.06)
    (fb2,) = over_the_wire(recorder.feedback(5.1))
    assert fb2.base_sequence == 3 and fb2.packets == ((3, None), (4, fb2.packets[1][1]))
    assert fb2.feedback_count == 1


def test_long_run_of_lost_packets() -> None:
    recorder = TwccRecorder(1, 2)
    recorder.record(1000, 1.0)
    recorder.record(1001, 1.001)
    recorder.record(1800, 1.05)  # 798 lost in between
    feedback = recorder.feedback(1.1)
    wire = serialize_compound(feedback)
    assert len(wire) <= 40  # run-length chunks, not 57 status vectors
    received, lost = decode(over_the_wire(feedback))
    assert lost == set(range(1002, 1800))
    assert set(received) == {1000, 1001, 1800}
    assert_close_mod_wrap(received[1800], 1.05)


def test_large_delta_and_negative_delta() -> None:
    recorder = TwccRecorder(1, 2)
    recorder.record(1, 2.0)
    recorder.record(2, 2.0 + 0.070)  # 70 ms later: beyond one byte of 250 µs
    recorder.record(4, 2.2)
    recorder.record(3, 2.21)  # arrives after 4: a negative delta from 3 to 4
    (fb,) = recorder.feedback(2.3)
    wire = serialize(fb)
    (parsed,) = over_the_wire([fb])
    deltas = dict(parsed.packets)
    assert deltas[2] == 280 * 250  # large (2-byte) delta
    assert deltas[4] is not None and deltas[4] < 0  # 4 arrived before 3
    received, _ = decode([parsed])
    for seq, arrival in ((1, 2.0), (2, 2.07), (3, 2.21), (4, 2.2)):
        assert_close_mod_wrap(received[seq], arrival)
    # status chunk uses 2-bit symbols for the large deltas
    assert wire[20] & 0xC0 == 0xC0


def test_delta_beyond_16_bits_splits_the_report() -> None:
    recorder = TwccRecorder(1, 2)
    recorder.record(10, 1.0)
    recorder.record(11, 1.001)
    recorder.record(12, 10.0)  # 9 s later: more than 32767 * 250 µs
    recorder.record(13, 10.002)
    feedback = over_the_wire(recorder.feedback(10.05))
    assert len(feedback) == 2
    assert [fb.base_sequence for fb in feedback] == [10, 12]
    assert [fb.feedback_count for fb in feedback] == [0, 1]
    received, lost = decode(feedback)
    assert not lost
    for seq, arrival in ((10, 1.0), (11, 1.001), (12, 10.0), (13, 10.002)):
        assert_close_mod_wrap(received[seq], arrival)


def test_many_packets_split_into_mtu_sized_reports() -> None:
    recorder = TwccRecorder(1, 2)
    count = MAX_RECEIVED_PER_PACKET * 3 + 6  # the last one is received: nothing reports beyond it
    for i in range(count):
        if i % 3 != 1:
            recorder.record(i, 1.0 + i * 0.0004 + (0.08 if i % 5 == 0 else 0.0))
    feedback = recorder.feedback(2.0)
    assert len(feedback) >= 2
    for fb in feedback:
        assert len(serialize(fb)) <= 1200
    received, lost = decode(over_the_wire(feedback))
    assert set(received) | lost == set(range(count))
    assert lost == {i for i in range(count) if i % 3 == 1}


def test_late_arrival_is_reported_again() -> None:
    recorder = TwccRecorder(1, 2)
    for seq in (1, 2, 4, 5):
        recorder.record(seq, 1.0 + seq * 0.001)
    received, lost = decode(over_the_wire(recorder.feedback(1.05)))
    assert lost == {3}
    recorder.record(3, 1.06)  # too late for the first report
    recorder.record(6, 1.061)
    (fb,) = over_the_wire(recorder.feedback(1.1))
    assert fb.base_sequence == 3
    received, lost = decode([fb])
    assert not lost
    assert set(received) == {3, 4, 5, 6}
    assert_close_mod_wrap(received[4], 1.004)
    assert_close_mod_wrap(received[3], 1.06)


def test_duplicates_and_ancient_packets_ignored() -> None:
    recorder = TwccRecorder(1, 2)
    recorder.record(7, 1.0)
    recorder.record(7, 1.5)
    (fb,) = over_the_wire(recorder.feedback(1.6))
    received, _ = decode([fb])
    assert_close_mod_wrap(received[7], 1.0)
    for seq in range(8, 3000):
        recorder.record(seq, 2.0)
    recorder.feedback(2.1)
    recorder.record(9, 3.0)  # far behind the history: cannot be reported consistently
    assert recorder.feedback(3.1) == []


def test_feedback_count_wraps() -> None:
    recorder = TwccRecorder(1, 2)
    counts = []
    for i in range(300):
        recorder.record(i, i * 0.01)
        (fb,) = recorder.feedback(i * 0.01)
        counts.append(fb.feedback_count)
    assert counts == [i % 256 for i in range(300)]


@settings(max_examples=200)
@given(
    start=st.integers(0, 0xFFFF),
    base_time=st.floats(0, 2e7),
    events=st.lists(
        st.tuples(st.integers(0, 40), st.integers(-20_000, 200_000), st.booleans()), min_size=1, max_size=150
    ),
)
def test_recorded_equals_reported(start: int, base_time: float, events: list[tuple[int, int, bool]]) -> None:
    """Random arrivals (with reordering, gaps and big time jumps), fed back at random moments."""
    recorder = TwccRecorder(1, 2)
    recorded: dict[int, float] = {}
    reported: dict[int, float] = {}
    reported_lost: set[int] = set()
    time = base_time
    newest = start
    for offset, step_us, flush in events:
        seq = (newest + offset - 10) & 0xFFFF
        time += step_us / 1e6
        if seq not in recorded:
            recorded[seq] = time
        recorder.record(seq, time)
        if 0 < ((seq - newest) & 0xFFFF) < 0x8000:
            newest = seq
        if flush:
            received, lost = decode(over_the_wire(recorder.feedback(time)))
            reported.update(received)
            reported_lost |= lost
    received, lost = decode(over_the_wire(recorder.feedback(time)))
    reported.update(received)
    reported_lost |= lost
    assert set(reported) == set(recorded)
    for seq, arrival in recorded.items():
        assert_close_mod_wrap(reported[seq], arrival)
    # a packet reported lost was never recorded, or was recorded late and then reported received
    assert reported_lost - set(recorded) <= set(range(0x10000))


@pytest.mark.parametrize("interval", [0.05, 0.1])
def test_steady_stream(interval: float) -> None:
    recorder = TwccRecorder(1, 2)
    now, seq, sent = 100.0, 65000, 0
    all_received: dict[int, float] = {}
    while sent < 2000:
        arrival = now + (sent % 7) * 0.0003
        if sent % 50 != 49:
            recorder.record(seq & 0xFFFF, arrival)
            all_received[seq & 0xFFFF] = arrival
        seq += 1
        sent += 1
        now += 0.002
        if sent % int(interval / 0.002) == 0:
            received, _ = decode(over_the_wire(recorder.feedback(now)))
            for s, t in received.items():
                assert_close_mod_wrap(t, all_received[s])
