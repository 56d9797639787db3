"""VP8 temporal layers, sans-IO: measured per layer, dropped per player, numbering kept continuous.

The publisher here sends Chromium's L1T3 pattern on each simulcast layer: TIDs 0, 2, 1, 2 over and
over at 30 fps (so TL0 is 7.5 fps, up to TL1 15, all 30), with the layer-sync bit (Y) on the TL1 and
TL2 frames that follow a TL0 frame, as libwebrtc sets it. The packets go through the real
PublisherMedia, Producer, Consumer and PlayerMedia on the test's clock (tests/media/test_simulcast.py's
Bench).
"""

from __future__ import annotations

import itertools

import pytest

from trio_sfu.media.consumer import Consumer
from trio_sfu.media.player import PlayerMedia
from trio_sfu.media.simulcast import MIN_TEMPORAL_FPS, LayerControl, choose_option, layer_options, option_bps
from trio_sfu.wire.vp8 import parse_descriptor

from ..support.media_model import header, rtp_packet
from .test_simulcast import LAYER_SSRCS, VP8, Bench, forwarded, keep_sending, player_media, remb_to

PATTERN = (0, 2, 1, 2)  # L1T3: the TID of each frame in turn
FRAME = 1 / 30


def descriptor(
    picture_id: int, tl0: int, tid: int, *, sync: bool = False, start: bool = True, narrow: bool = False
) -> bytes:
    """RFC 7741: X (and S at a frame's first packet); I (a 15-bit id, or `narrow`: 7 bits), L and T;
    TID and Y."""
    picture = bytes([picture_id & 0x7F]) if narrow else bytes([0x80 | picture_id >> 8, picture_id & 0xFF])
    return bytes([0x90 if start else 0x80, 0xE0]) + picture + bytes([tl0, tid << 6 | (0x20 if sync else 0)])


class L1T3:
    """One simulcast layer's frames in L1T3, each `packets` packets long."""

    def __init__(
        self, bench: Bench, rid: str, *, picture_id: int = 100, tl0: int = 10, narrow: bool = False
    ) -> None:
        self.bench, self.rid = bench, rid
        self.picture_id, self.tl0 = picture_id, tl0
        self.narrow = narrow  # 7-bit picture ids (GStreamer's and FFmpeg's choice), else 15-bit
        self.frame = 0
        self.sent: list[tuple[int, int, int]] = []  # (input sequence, picture id, tid) of each packet

    def next_frame(
        self, *, packets: int = 1, size: int = 100, keyframe: bool = False, advance: bool = True
    ) -> int:
        """Send the next frame of the pattern, FRAME s after the last (`advance`: this moves the
        clock; else the caller does, once for all layers); its TID."""
        if advance:
            self.bench.now += FRAME
        tid = 0 if keyframe else PATTERN[self.frame % len(PATTERN)]
        if tid == 0 and self.frame:
            self.tl0 = (self.tl0 + 1) & 0xFF
        sync = tid > 0 and PATTERN[(self.frame - 1) % len(PATTERN)] == 0  # right after a TL0 frame
        frame_header = b"\x10\x02\x00" if keyframe else b"\x01\x00\x00"  # P bit clear: a keyframe
        for index in range(packets):
            start = index == 0
            payload = descriptor(self.picture_id, self.tl0, tid, sync=sync, start=start, narrow=self.narrow)
            payload += (frame_header if index == 0 else b"") + bytes(size)
            self.sent.append((self.bench.sequence[self.rid], self.picture_id, tid))
            self.bench.send(self.rid, payload, first=not self.sent[:-1])  # mid and rid at first
        self.picture_id = (self.picture_id + 1) & (0x7F if self.narrow else 0x7FFF)
        self.frame += 1
        return tid

    def run(self, seconds: float, *, packets: int = 1) -> None:
        """Frames for `seconds`, the producer ticking after each."""
        for _ in range(round(seconds / FRAME)):
            self.next_frame(packets=packets)
            layer = self.bench.layers[self.rid]
            layer.tick(self.bench.now)


def pictures(consumer: Consumer) -> list[tuple[int, int, int]]:
    """(picture id, TL0PICIDX, TID) of each packet the player was sent."""
    out = []
    for packet in consumer.sink.rtp:  # type: ignore[attr-defined]
        parsed = parse_descriptor(packet, header(packet).header_length)
        assert parsed is not None
        start = header(packet).header_length
        out.append((parsed.picture_id, packet[start + parsed.tl0_at], parsed.temporal_id))
    return out


def continuous(values: list[int], mask: int) -> bool:
    """Each value is the previous one or one more (a picture's packets share its id)."""
    return all((b - a) & mask in (0, 1) for a, b in itertools.pairwise(values))


SIZES = {"q": 40, "h": 300, "f": 1000}  # bytes a packet, one packet a frame


def three_layers(bench: Bench) -> dict[str, L1T3]:
    """q, h and f in L1T3, each from a keyframe."""
    streams = {rid: L1T3(bench, rid, picture_id=1000 * i) for i, rid in enumerate(SIZES)}
    for stream in streams.values():
        stream.next_frame(keyframe=True)
    return streams


def run_all(bench: Bench, streams: dict[str, L1T3], seconds: float, media: PlayerMedia | None = None) -> None:
    """Every layer's next frames for `seconds`; the producers (and the player, if any) tick after each."""
    for _ in range(round(seconds / FRAME)):
        bench.now += FRAME
        for rid, stream in streams.items():
            stream.next_frame(size=SIZES[rid], advance=False)
        for layer in bench.layers.values():
            layer.tick(bench.now)
        if media is not None:
            media.tick(bench.now, 0.0)


def measured_bench(rid: str = "f") -> tuple[Bench, L1T3]:
    bench = Bench()
    stream = L1T3(bench, rid)
    stream.next_frame(keyframe=True)
    stream.run(2.2)
    return bench, stream


def test_the_producer_measures_each_temporal_layer() -> None:
    bench, _ = measured_bench()
    layer = bench.layers["f"]
    assert layer.temporal_fps == pytest.approx([7.5, 15, 30], rel=0.1)
    rates = layer.temporal_rates
    assert rates[0] < rates[1] < rates[2] and rates[2] == pytest.approx(layer.byte_rate, rel=0.05)
    # A layer without the T bit (no temporal layering) offers no temporal options.
    assert bench.layers["q"].temporal_rates == []


def test_a_capped_player_gets_only_the_lower_temporal_layers_numbered_without_gaps() -> None:
    bench, stream = measured_bench()
    consumer = bench.player("f")
    consumer.select_layer(bench.layers["f"], bench.now, temporal=1)
    before = len(consumer.sink.rtp)  # type: ignore[attr-defined]
    stream.run(1.0, packets=3)
    sent = forwarded(consumer)[before:]
    seen = pictures(consumer)[before:]
    # The first frame after the cap may still be whole (the cap applies from the next frame on).
    assert {tid for _, _, tid in seen[3:]} == {0, 1}
    assert consumer.counters["temporal_drops"] == 3 * 15  # every TL2 frame's three packets
    sequences = [sequence for sequence, *_ in forwarded(consumer)]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(sequences))]
    assert continuous([picture for picture, _, _ in pictures(consumer)], 0x7FFF)
    assert continuous([tl0 for _, tl0, _ in pictures(consumer)], 0xFF)
    # Timestamps are the publisher's: a dropped frame leaves a longer step, never a rewind.
    stamps = [timestamp for _, timestamp, *_ in sent]
    assert stamps == sorted(stamps) and len(set(stamps)) in (15, 16)


def test_the_cap_goes_down_at_a_frame_start_and_up_at_a_layer_sync_frame() -> None:
    bench, stream = measured_bench()
    consumer = bench.player("f")
    # A TL2 frame is in progress when the cap comes: its other packets still go (whole frames only).
    while PATTERN[stream.frame % len(PATTERN)] != 2:
        stream.next_frame()
    picture = stream.picture_id
    bench.now += FRAME
    bench.send("f", descriptor(picture, stream.tl0, 2, start=True) + bytes(50))
    consumer.select_layer(bench.layers["f"], bench.now, temporal=0)
    bench.send("f", descriptor(picture, stream.tl0, 2, start=False) + bytes(50))
    assert [tid for _, _, tid in pictures(consumer)[-2:]] == [2, 2]
    stream.picture_id += 1
    stream.frame += 1
    before = len(pictures(consumer))
    stream.run(0.5)
    assert {tid for _, _, tid in pictures(consumer)[before:]} == {0}
    # Back up: TL1 and TL2 frames without Y wait; the first one marked Y brings the layer back.
    consumer.select_layer(bench.layers["f"], bench.now)
    resumed = []
    for _ in range(8):
        tid = stream.next_frame()
        last = stream.sent[-1]
        resumed.append((tid, last[1], pictures(consumer)[-1][2] == tid))
    first_up = next(i for i, (tid, _, sent) in enumerate(resumed) if tid > 0 and sent)
    assert resumed[first_up][0] > 0 and consumer.temporal == 2
    assert consumer.counters["temporal_switches"] == 2  # down once, up once (TL2 at once: Y on both)
    assert continuous([picture for picture, _, _ in pictures(consumer)], 0x7FFF)


def test_retransmissions_and_probes_never_carry_a_dropped_layer() -> None:
    from trio_sfu.wire.rtcp import Nack, serialize

    bench, stream = measured_bench()
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    consumer.select_layer(bench.layers["f"], bench.now, temporal=0)
    stream.run(1.5)  # PROBE_DEPTH packets back are all from after the cap
    sent = forwarded(consumer)
    asked = [sequence for sequence, *_ in sent[-4:]]
    media.on_rtcp(serialize(Nack(sender_ssrc=1, media_ssrc=consumer.ssrc, lost=tuple(asked))), bench.now)
    assert consumer.counters["nack_answered"] == 4
    probed = consumer.send_probe(100_000, bench.now)
    assert probed > 0
    resent = consumer.sink.rtp[len(sent) :]  # type: ignore[attr-defined]
    for packet in resent:
        start = header(packet).header_length + (2 if consumer.rtx_ssrc is not None else 0)
        parsed = parse_descriptor(packet, start)
        assert parsed is not None and parsed.temporal_id == 0
    # The retransmissions carry the numbers the originals had (picture ids included).
    originals = {p[0] for p in pictures(consumer)}
    for packet in resent:
        start = header(packet).header_length + 2
        parsed = parse_descriptor(packet, start)
        assert parsed is not None and parsed.picture_id in originals


def test_a_late_packet_of_a_forwarded_frame_keeps_its_numbers_amid_drops() -> None:
    bench, stream = measured_bench()
    consumer = bench.player("f")
    consumer.select_layer(bench.layers["f"], bench.now, temporal=1)
    stream.run(0.2)
    # A TL0 frame of two packets whose second is late: a TL2 frame is dropped in between.
    while PATTERN[stream.frame % len(PATTERN)] != 0:
        stream.next_frame()
    first = bench.sequence["f"]
    tl0_picture = stream.picture_id
    bench.now += FRAME
    bench.send("f", descriptor(tl0_picture, stream.tl0 + 1, 0) + bytes(10))
    bench.sequence["f"] += 1  # the second packet is held back
    late = rtp_packet(first + 1, int(bench.now * 90000), LAYER_SSRCS["f"], VP8,
                      descriptor(tl0_picture, stream.tl0 + 1, 0, start=False) + bytes(10))
    bench.now += FRAME
    bench.send("f", descriptor(tl0_picture + 1, stream.tl0 + 1, 2, sync=True) + bytes(10))  # dropped
    bench.now += FRAME
    bench.send("f", descriptor(tl0_picture + 2, stream.tl0 + 1, 1, sync=True) + bytes(10))
    bench.publisher.on_rtp(late, bench.now)
    sent = forwarded(consumer)[-3:]
    seen = pictures(consumer)[-3:]
    # The TL0 frame's two packets, then the TL1 frame; the late one takes the number left for it.
    assert [tid for *_, tid in seen] == [0, 1, 0]
    assert sent[2][0] == (sent[0][0] + 1) & 0xFFFF and sent[1][0] == (sent[0][0] + 2) & 0xFFFF
    assert seen[2][0] == seen[0][0] and seen[1][0] == (seen[0][0] + 1) & 0x7FFF


@pytest.fixture
def caps_on_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporal caps on the higher layers too (off by default: media/simulcast.py says why)."""
    monkeypatch.setattr("trio_sfu.media.simulcast.TEMPORAL_CAPS_ABOVE_LOWEST", True)


def test_by_default_only_the_lowest_layer_has_temporal_caps() -> None:
    bench = Bench()
    streams = three_layers(bench)
    run_all(bench, streams, 2.2)
    options = layer_options(list(bench.layers.values()), bench.now)
    assert [(layer.rid, tid) for layer, tid in options] == [
        ("q", 0), ("q", 1), ("q", None), ("h", None), ("f", None)]


@pytest.mark.usefixtures("caps_on_every_layer")
def test_options_rank_spatial_first_then_temporal_with_a_frame_rate_floor() -> None:
    bench = Bench()
    streams = three_layers(bench)
    run_all(bench, streams, 2.2)
    options = layer_options(list(bench.layers.values()), bench.now)
    named = [(layer.rid, tid) for layer, tid in options]
    # TL0 (7.5 fps < MIN_TEMPORAL_FPS) is offered on the lowest layer only.
    assert MIN_TEMPORAL_FPS > 7.5
    assert named == [("q", 0), ("q", 1), ("q", None), ("h", 1), ("h", None), ("f", 1), ("f", None)]
    rates = [option_bps(option) for option in options]
    assert rates[:3] == sorted(rates[:3]) and rates[3] < rates[4] and rates[5] < rates[6]
    f1, f2 = option_bps(options[5]), option_bps(options[6])
    chosen = choose_option(options, (f1 + f2) / 2 / 0.9)
    assert (chosen[0].rid, chosen[1]) == ("f", 1)  # down a temporal step first, not a spatial one
    # A congested player steps down one option at a time without an estimate.
    control = LayerControl()
    control.on_loss(0.2, bench.now)
    step = control.choose(options[6], list(bench.layers.values()), bench.now)
    assert step is not None and (step[0].rid, step[1]) == ("f", 1)


@pytest.mark.usefixtures("caps_on_every_layer")
def test_a_congested_player_drops_a_temporal_layer_before_a_spatial_one() -> None:
    """Through PlayerMedia: an estimate between f's TL1 and its whole rate caps f at TL1 at once,
    with no keyframe and no change of layer."""
    bench = Bench()
    streams = three_layers(bench)
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    run_all(bench, streams, 2.2, media)
    f = bench.layers["f"]
    whole, tl1 = f.byte_rate * 8, f.temporal_rates[1] * 8
    remb_to(media, consumer, whole * 1.2, bench.now)
    run_all(bench, streams, 0.5, media)
    remb_to(media, consumer, (whole + tl1) / 2, bench.now)  # a drop: congestion
    run_all(bench, streams, 0.5, media)
    assert consumer.producer is f and consumer.target is None and consumer.temporal == 1
    assert consumer.counters["layer_switches"] == 0 and f.keyframe_requests == 0


def test_keep_sending_without_temporal_layers_keeps_whole_layers() -> None:
    """Layers without the T bit (H264, VP8 without temporal layers) choose whole layers as before."""
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    keep_sending(bench, 1.0, media)
    assert consumer.temporal_choice is None and consumer.counters["temporal_drops"] == 0


def test_a_switch_keyframe_sharing_a_dropped_frames_timestamp_is_forwarded() -> None:
    """Simulcast layers are encoded in step, so their frames share timestamps: the TL2 frame of f
    that a capped player drops and h's keyframe that moves it to h can carry the same one. The
    decision for f's frame must not be taken for the keyframe (the player would never get it)."""
    bench = Bench()
    streams = three_layers(bench)
    run_all(bench, streams, 1.2)
    consumer = bench.player("f")
    consumer.select_layer(bench.layers["f"], bench.now, temporal=1)
    f, h = streams["f"], streams["h"]
    while PATTERN[f.frame % len(PATTERN)] != 2:
        bench.now += FRAME
        f.next_frame(advance=False)
        h.next_frame(advance=False)
    consumer.select_layer(bench.layers["h"], bench.now, temporal=1)
    bench.now += FRAME
    assert f.next_frame(advance=False) == 2  # dropped for this player
    sent = len(consumer.sink.rtp)  # type: ignore[attr-defined]
    h.next_frame(keyframe=True, advance=False, packets=2)  # same timestamp: the switch
    assert consumer.producer is bench.layers["h"]
    assert len(consumer.sink.rtp) == sent + 2  # type: ignore[attr-defined]


def test_7_bit_picture_ids_stay_continuous_across_their_wrap_with_drops_and_a_switch() -> None:
    """A 7-bit picture id wraps every 128 pictures (~4 s at 30 fps): the renumbering must follow it
    through dropped TL2 pictures and a layer switch, as it does 15-bit ones."""
    bench = Bench()
    streams = {rid: L1T3(bench, rid, picture_id=100 + 10 * i, narrow=True) for i, rid in enumerate(SIZES)}
    for stream in streams.values():
        stream.next_frame(keyframe=True)
    run_all(bench, streams, 1.2)
    consumer = bench.player("f")
    consumer.select_layer(bench.layers["f"], bench.now, temporal=1)  # TL2 dropped: ids shift down
    before = len(consumer.sink.rtp)  # type: ignore[attr-defined]
    run_all(bench, streams, 5.0)  # f's ids wrap past 127 at least once, its shifted ones too
    consumer.select_layer(bench.layers["h"], bench.now)
    bench.now += FRAME
    streams["h"].next_frame(keyframe=True, advance=False)  # the switch, in h's own numbering
    run_all(bench, streams, 5.0)
    assert consumer.producer is bench.layers["h"]
    seen = pictures(consumer)[before:]
    assert consumer.counters["temporal_drops"] > 50
    ids = [picture for picture, _, _ in seen]
    assert max(ids) < 0x80 and continuous(ids, 0x7F), ids
    assert continuous([tl0 for _, tl0, _ in seen], 0xFF)
