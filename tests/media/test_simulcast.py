"""Simulcast, sans-IO: layers learnt from the rid extension, a layer per player, switches at keyframes.

Packets are built by hand in Chromium's shape (mid 4, rid 10, repaired-rid 11 in its simulcast offer)
and driven through the real PublisherMedia, Producer, Consumer and PlayerMedia on a clock the test
moves; the player's transport is a fake that keeps what it was sent.
"""

from __future__ import annotations

import itertools

import pytest
import trio

from trio_sfu.media.consumer import Consumer
from trio_sfu.media.player import LAYER_INTERVAL, PlayerMedia
from trio_sfu.media.producer import Producer
from trio_sfu.media.publisher import SIMULCAST_MIN_BITRATE, PublisherMedia
from trio_sfu.media.simulcast import IDLE_AFTER, PROBE_BACKOFF, UP_AFTER, active_layers, choose_layer
from trio_sfu.server.session import ChannelBacklog
from trio_sfu.wire.rtcp import ReceiverReport, Remb, ReportBlock, serialize

from ..support.media_model import (
    SERVER_SSRC,
    VP8_DELTA,
    VP8_KEYFRAME,
    FakeTransport,
    header,
    play,
    publish,
    rtp_packet,
)

MID, RID, RRID = 4, 10, 11  # Chromium's ids in its simulcast offer
VP8, RTX = 96, 97
LAYER_SSRCS = {"q": 1111, "h": 2222, "f": 3333}
LAYER_RTX_SSRCS = {"q": 4111, "h": 4222, "f": 4333}
WALL = 1_767_225_600.0


class Bench:
    """A Chromium simulcast publisher (q, h, f) and players of its video, on a clock the test moves."""

    def __init__(self) -> None:
        self.published = publish("chromium_offer_publish_simulcast")
        self.publisher_sink = FakeTransport()
        self.publisher = PublisherMedia(
            self.publisher_sink, self.published, ssrc=SERVER_SSRC, max_bitrate=2_500_000
        )
        self.layers = {str(p.rid): p for p in self.publisher.producers if p.kind == "video"}
        self.sequence = dict.fromkeys(LAYER_SSRCS, 1000)
        self.now = 10.0
        self.step = 0  # 20 ms steps of keep_sending
        self.sinks: list[FakeTransport] = []

    def send(self, rid: str, payload: bytes, *, first: bool = False, size: int = 0) -> None:
        """One packet of layer `rid`; `first` carries mid and rid as Chromium's first packets do."""
        sequence = self.sequence[rid]
        self.sequence[rid] = (sequence + 1) & 0xFFFF
        extensions = [(MID, b"1"), (RID, rid.encode())] if first else []
        packet = rtp_packet(
            sequence,
            int(self.now * 90000),
            LAYER_SSRCS[rid],
            VP8,
            payload + bytes(size),
            extensions=extensions,
        )
        self.publisher.on_rtp(packet, self.now)

    def start_layers(self, sizes: dict[str, int]) -> None:
        """Every layer sends for 1.1 s at its size per packet (50 packets/s), so rates are measured."""
        for rid in LAYER_SSRCS:
            self.send(rid, VP8_KEYFRAME, first=True)
        for layer in self.layers.values():
            layer.tick(self.now)  # the rate window starts (the publisher's tick does it every 0.1 s)
        for _ in range(55):
            self.now += 0.02
            for rid, size in sizes.items():
                self.send(rid, VP8_DELTA, size=size)
        for layer in self.layers.values():
            layer.tick(self.now)

    def player(self, layer: str) -> Consumer:
        played = play(self.published.tracks)
        (track,) = [t for t in played.tracks if t.kind == "video"]
        sink = FakeTransport()
        self.sinks.append(sink)
        send, _ = trio.open_memory_channel[bytes](64)
        consumer = Consumer(None, self.layers[layer], track, sink, ChannelBacklog(send))
        consumer.awaiting_keyframe = False
        self.layers[layer].add_player(consumer)
        return consumer


def forwarded(consumer: Consumer) -> list[tuple[int, int, int, bytes]]:
    """(sequence, timestamp, ssrc, payload start) of what the player was sent."""
    sink = consumer.sink
    assert isinstance(sink, FakeTransport)
    out = []
    for packet in sink.rtp:
        parsed = header(packet)
        out.append((parsed.sequence, parsed.timestamp, parsed.ssrc, packet[parsed.header_length :][:2]))
    return out


def registered(bench: Bench, consumer: Consumer) -> list[str]:
    return [str(rid) for rid, layer in bench.layers.items() if consumer in layer.consumers]


# ---- intake ------------------------------------------------------------------------------------


def test_layers_are_learnt_from_the_rid_extension_of_the_first_packets() -> None:
    bench = Bench()
    assert list(bench.layers) == ["q", "h", "f"]
    layers = list(bench.layers.values())
    assert all(layer.ssrc is None and layer.layers == layers for layer in layers)
    assert [p.primary for p in bench.layers.values()] == [True, False, False]
    for rid in ("f", "q", "h"):  # any order
        bench.send(rid, VP8_KEYFRAME, first=True)
    assert {rid: layer.ssrc for rid, layer in bench.layers.items()} == LAYER_SSRCS
    # Chromium then drops mid and rid: the SSRC alone finds the layer.
    bench.send("h", VP8_DELTA)
    assert bench.layers["h"].packets == 2 and bench.layers["q"].packets == 1
    # A retransmission names its layer with repaired-rid.
    rtx = rtp_packet(
        1, 0, LAYER_RTX_SSRCS["f"], RTX, b"\x03\xe8" + VP8_DELTA, extensions=[(MID, b"1"), (RRID, b"f")]
    )
    bench.publisher.on_rtp(rtx, bench.now)
    assert bench.publisher._rtx_by_ssrc[LAYER_RTX_SSRCS["f"]] is bench.layers["f"]
    assert bench.publisher.counters["unknown_ssrc"] == 0


def test_an_unknown_rid_is_not_a_layer() -> None:
    bench = Bench()
    packet = rtp_packet(1, 0, 999, VP8, VP8_KEYFRAME, extensions=[(MID, b"1"), (RID, b"zz")])
    bench.publisher.on_rtp(packet, bench.now)
    assert all(layer.ssrc is None for layer in bench.layers.values())


def test_the_remb_cap_leaves_room_for_every_layer() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    bench.publisher._send_reports(bench.now)
    (remb,) = [p for p in bench.publisher_sink.rtcp_packets() if isinstance(p, Remb)]
    assert remb.bitrate >= SIMULCAST_MIN_BITRATE * 0.999
    assert set(remb.ssrcs) >= set(LAYER_SSRCS.values())


def test_a_publication_plays_one_track_per_simulcast_track() -> None:
    from trio_sfu.media.router import Publication

    bench = Bench()
    publication = Publication(("live", "cam"), None, bench.publisher.producers)
    assert [t.kind for t in publication.negotiated_tracks] == ["audio", "video"]
    played = play(bench.published.tracks).tracks
    assert [p.rid for p in publication.producers_for(list(played))] == [None, "q"]


# ---- choosing ----------------------------------------------------------------------------------


def test_layers_rank_by_what_they_send_not_by_name() -> None:
    bench = Bench()
    # Firefox names them high to low: here "q" sends the most.
    bench.start_layers({"q": 1200, "h": 400, "f": 40})
    assert [layer.rid for layer in active_layers(list(bench.layers.values()), bench.now)] == ["f", "h", "q"]
    layers = list(bench.layers.values())
    assert choose_layer(layers, bench.now).rid == "q"  # type: ignore[union-attr]
    assert choose_layer(layers, bench.now, max_rank=0).rid == "f"  # type: ignore[union-attr]
    assert choose_layer(layers, bench.now, max_rank=1).rid == "h"  # type: ignore[union-attr]


def test_picture_size_from_keyframes_ranks_before_bitrate() -> None:
    """Firefox was seen spending more on its smallest layer than on its largest."""
    bench = Bench()
    sizes = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}
    for rid, (width, height) in sizes.items():
        frame = b"\x10\x02\x00\x9d\x01\x2a" + width.to_bytes(2, "little") + height.to_bytes(2, "little")
        bench.send(rid, b"\x10" + frame, first=True)
    pixels = {rid: layer.pixels for rid, layer in bench.layers.items()}
    assert pixels == {"q": 57600, "h": 230400, "f": 921600}
    bench.start_layers({"q": 1500, "h": 300, "f": 600})  # bitrates upside down
    assert [layer.rid for layer in active_layers(list(bench.layers.values()), bench.now)] == ["q", "h", "f"]


def test_the_estimate_picks_the_best_layer_that_fits() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    layers = list(bench.layers.values())
    rates = {rid: layer.byte_rate * 8 for rid, layer in bench.layers.items()}
    assert rates["q"] < rates["h"] < rates["f"]
    assert choose_layer(layers, bench.now, budget_bps=rates["f"] * 1.2).rid == "f"  # type: ignore[union-attr]
    assert choose_layer(layers, bench.now, budget_bps=rates["f"] * 0.9).rid == "h"  # type: ignore[union-attr]
    assert choose_layer(layers, bench.now, budget_bps=rates["q"] * 0.5).rid == "q"  # type: ignore[union-attr]


def test_a_layer_the_publisher_stopped_is_chosen_by_nobody() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    for _ in range(int(IDLE_AFTER / 0.02) + 2):  # "f" stops (the browser's CPU adaptation)
        bench.now += 0.02
        bench.send("q", VP8_DELTA, size=40)
        bench.send("h", VP8_DELTA, size=400)
    assert choose_layer(list(bench.layers.values()), bench.now).rid == "h"  # type: ignore[union-attr]
    bench.now += 1.0
    assert choose_layer(list(bench.layers.values()), bench.now) is None  # nothing sends


# ---- switching ---------------------------------------------------------------------------------


def test_a_switch_waits_for_the_target_keyframe_and_keeps_the_stream_continuous() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("q")
    for _ in range(5):
        bench.now += 0.02
        bench.send("q", VP8_DELTA)
        bench.send("f", VP8_DELTA)
    keyframe_requests = bench.layers["f"].keyframe_requests
    consumer.select_layer(bench.layers["f"], bench.now)
    assert consumer.target is bench.layers["f"] and registered(bench, consumer) == ["q", "f"]
    assert bench.layers["f"].keyframe_requests == keyframe_requests + 1
    for _ in range(5):  # the target's delta frames are not forwarded; the current layer's are
        bench.now += 0.02
        bench.send("q", VP8_DELTA)
        bench.send("f", VP8_DELTA)
    bench.now += 0.02
    bench.send("f", VP8_KEYFRAME)
    bench.send("q", VP8_DELTA)  # the old layer after the switch: not forwarded
    for _ in range(5):
        bench.now += 0.02
        bench.send("f", VP8_DELTA)
        bench.send("q", VP8_DELTA)
    out = forwarded(consumer)
    assert consumer.producer is bench.layers["f"] and consumer.target is None
    assert registered(bench, consumer) == ["f"] and consumer.counters["layer_switches"] == 1
    # 10 packets of q, then the keyframe of f and 5 more: one SSRC, no sequence gap, time moving on.
    assert [payload for *_, payload in out] == [VP8_DELTA[:2]] * 10 + [VP8_KEYFRAME[:2]] + [VP8_DELTA[:2]] * 5
    sequences = [s for s, *_ in out]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(out))]
    assert {ssrc for _, _, ssrc, _ in out} == {consumer.ssrc}
    timestamps = [t for _, t, _, _ in out]
    assert all(0 < (b - a) & 0xFFFFFFFF < 90000 for a, b in itertools.pairwise(timestamps))


def test_fifty_rapid_target_changes_leave_no_player_stuck() -> None:
    """mediasoup issue 990: a target changed again and again before a keyframe froze players."""
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("h")
    order = ["q", "f", "h", "f", "q"] * 10
    for rid in order:
        consumer.select_layer(bench.layers[rid], bench.now)
        bench.now += 0.01
        for layer in ("q", "h", "f"):
            bench.send(layer, VP8_DELTA)
    assert consumer.producer is bench.layers["h"]  # no keyframe yet: still on h, still fed
    assert consumer.target is bench.layers["q"] and registered(bench, consumer) == ["q", "h"]
    sent = len(forwarded(consumer))
    assert sent == 50  # every h packet went on meanwhile
    bench.send("f", VP8_KEYFRAME)  # a keyframe of a layer that is no longer the target: ignored
    bench.send("q", VP8_KEYFRAME)
    assert consumer.producer is bench.layers["q"] and registered(bench, consumer) == ["q"]
    # Keyframe requests stayed throttled per layer (at most one per second each).
    assert all(layer.keyframe_requests <= 2 for layer in bench.layers.values())


def test_reordered_and_padding_packets_around_a_switch() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("q")
    consumer.select_layer(bench.layers["h"], bench.now)
    bench.send("h", b"")  # padding only: not a keyframe, nothing forwarded
    bench.send("h", VP8_KEYFRAME)
    late_q = bench.sequence["q"] - 3  # a q packet reordered behind the switch
    late = rtp_packet(late_q, int(bench.now * 90000), LAYER_SSRCS["q"], VP8, VP8_DELTA)
    bench.publisher.on_rtp(late, bench.now)
    bench.send("h", VP8_DELTA)
    out = forwarded(consumer)
    assert [p for *_, p in out] == [VP8_KEYFRAME[:2], VP8_DELTA[:2]]


def test_nacks_for_the_previous_layer_are_not_answered_from_the_new_one() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("q")
    for _ in range(3):
        bench.send("q", VP8_DELTA)
    before_switch = forwarded(consumer)[-1][0]
    consumer.select_layer(bench.layers["f"], bench.now)
    bench.send("f", VP8_KEYFRAME)
    bench.send("f", VP8_DELTA)
    after_switch = forwarded(consumer)[-1][0]
    sink = consumer.sink
    assert isinstance(sink, FakeTransport)
    sent = len(sink.rtp)
    assert consumer.retransmit((before_switch,), bench.now + 0.1) == []
    assert consumer.counters["nack_previous_layer"] == 1 and len(sink.rtp) == sent
    consumer.retransmit((after_switch,), bench.now + 0.1)
    assert consumer.counters["nack_answered"] == 1


# ---- the player's estimate ---------------------------------------------------------------------


def player_media(bench: Bench, consumer: Consumer) -> tuple[PlayerMedia, list[bytes]]:
    sent: list[bytes] = []
    return PlayerMedia([consumer], cname="c", send_rtcp=sent.append), sent


def keep_sending(bench: Bench, seconds: float, media: PlayerMedia, *, reports: bool = True) -> None:
    """All layers send (a keyframe every second, so switches can happen); the player ticks, and sends
    a loss-free receiver report every second, as browsers do (unless `reports` is False)."""
    sizes = {"q": 40, "h": 400, "f": 1200}
    end = bench.now + seconds
    while bench.now < end:
        bench.now += 0.02
        bench.step += 1
        for rid, size in sizes.items():
            bench.send(rid, VP8_KEYFRAME if bench.step % 50 == 0 else VP8_DELTA, size=size)
        if reports and bench.step % 50 == 25:
            for consumer in media.consumers:
                loss_report(media, consumer, 0.0, bench.now)
        if bench.step % int(LAYER_INTERVAL / 0.02) == 0:
            media.tick(bench.now, WALL)
            for layer in bench.layers.values():
                layer.tick(bench.now)


def remb_to(media: PlayerMedia, consumer: Consumer, bitrate: float, now: float) -> None:
    media.on_rtcp(serialize(Remb(sender_ssrc=1, bitrate=int(bitrate), ssrcs=(consumer.ssrc,))), now)


def loss_report(media: PlayerMedia, consumer: Consumer, fraction: float, now: float) -> None:
    """A receiver report from the player, counting loss up to the last packet sent to it."""
    highest = (consumer.rewriter.next_sequence - 1) & 0xFFFF
    block = ReportBlock(consumer.ssrc, int(fraction * 256), 0, highest, 0, 0, 0)
    media.on_rtcp(serialize(ReceiverReport(0x1234, (block,))), now)


def test_a_player_goes_down_when_its_link_shows_congestion_and_up_after_sustained_headroom() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    rates = {rid: layer.byte_rate * 8 for rid, layer in bench.layers.items()}

    remb_to(media, consumer, rates["f"] * 0.95, bench.now)  # below f, but no sign of congestion yet
    keep_sending(bench, 1.0, media)
    assert consumer.producer is bench.layers["f"]  # a ramping estimate is not a full link
    remb_to(media, consumer, rates["h"] * 1.3, bench.now)  # the estimate falls: overuse
    keep_sending(bench, 1.2, media)
    assert consumer.producer is bench.layers["h"]
    remb_to(media, consumer, rates["f"] * 1.5, bench.now)  # room again: not at once
    keep_sending(bench, UP_AFTER - 0.6, media)
    assert consumer.producer is bench.layers["h"]
    for _ in range(7):  # UP_AFTER, then up to a keyframe interval (1 s here) for f's keyframe
        remb_to(media, consumer, rates["f"] * 1.5, bench.now)
        keep_sending(bench, 0.5, media)
    assert consumer.producer is bench.layers["f"]
    assert consumer.counters["layer_switches"] == 2


def test_loss_alone_moves_a_player_down() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    rates = {rid: layer.byte_rate * 8 for rid, layer in bench.layers.items()}
    remb_to(media, consumer, rates["f"] * 0.8, bench.now)
    loss_report(media, consumer, 0.2, bench.now)
    keep_sending(bench, 1.2, media)
    assert consumer.producer is bench.layers["h"]


def test_below_the_top_the_server_probes_and_backs_off_when_the_probe_meets_congestion() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("h")
    media, _ = player_media(bench, consumer)
    rates = {rid: layer.byte_rate * 8 for rid, layer in bench.layers.items()}
    remb_to(media, consumer, rates["h"] * 1.2, bench.now)  # room for h, not for f: probe toward f
    loss_report(media, consumer, 0.1, bench.now)  # its link has shown congestion before: the estimate rules
    keep_sending(bench, 2.5, media)  # past the congestion's memory: probing starts
    sink = consumer.sink
    assert isinstance(sink, FakeTransport)
    sink.rtp.clear()
    remb_to(media, consumer, rates["h"] * 1.2, bench.now)
    keep_sending(bench, 1.0, media)
    probes = [p for p in sink.rtp if header(p).ssrc == consumer.rtx_ssrc]
    assert probes and consumer.counters["probe_bytes"] > 0
    assert media.layers.probe_bps == pytest.approx(rates["h"] * 1.2 * 1.25 - rates["h"], rel=0.05)
    # About probe_bps of them over that second (bursts every 50 ms, whole packets).
    assert 0.5 < sum(len(p) for p in probes) * 8 / media.layers.probe_bps < 2.0
    loss_report(media, consumer, 0.1, bench.now)  # the probe filled the link
    assert media.layers.probe_bps == 0
    before = consumer.counters["probe_bytes"]
    for _ in range(int(PROBE_BACKOFF - 1.0)):  # the player's REMB goes on, once a second
        remb_to(media, consumer, rates["h"] * 1.2, bench.now)
        keep_sending(bench, 1.0, media)
    assert consumer.counters["probe_bytes"] == before  # backing off
    for _ in range(2):
        remb_to(media, consumer, rates["h"] * 1.2, bench.now)
        keep_sending(bench, 1.0, media)
    assert consumer.counters["probe_bytes"] > before
    assert consumer.producer is bench.layers["h"]


def test_a_player_cap_holds_whatever_the_estimate() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    media.max_rank = 0
    keep_sending(bench, 1.2, media)
    assert consumer.producer is bench.layers["q"]


def test_a_stopped_layer_moves_its_players_within_a_second() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    started = bench.now
    step = 0
    while consumer.producer is bench.layers["f"] and bench.now - started < 3:
        bench.now += 0.02
        step += 1
        bench.send("q", VP8_KEYFRAME if step % 10 == 0 else VP8_DELTA, size=40)
        bench.send("h", VP8_KEYFRAME if step % 10 == 0 else VP8_DELTA, size=400)
        if step % int(LAYER_INTERVAL / 0.02) == 0:
            media.tick(bench.now, WALL)
            for layer in bench.layers.values():
                layer.tick(bench.now)
    assert consumer.producer is bench.layers["h"]
    assert bench.now - started <= IDLE_AFTER + LAYER_INTERVAL + 0.2 + 0.05


@pytest.mark.parametrize("layer", ["q", "h", "f"])
def test_players_on_any_layer_get_sender_reports_of_their_layer(layer: str) -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player(layer)
    bench.send(layer, VP8_DELTA)
    report = consumer.sender_report(bench.now, WALL)
    assert report is not None and report.ssrc == consumer.ssrc


def test_producers_of_one_track_share_their_layers() -> None:
    bench = Bench()
    layers = list(bench.layers.values())
    assert all(isinstance(p, Producer) and p.layers is layers[0].layers for p in layers)
    assert len(layers[0].layers) == 3


# ---- VP8 picture ids ---------------------------------------------------------------------------


def vp8_descriptor(picture_id: int, tl0: int, *, start: bool = True) -> bytes:
    """RFC 7741: X and S (start) set, I with a 15-bit picture id, L with TL0PICIDX, then a frame byte."""
    return bytes([0x90 if start else 0x80, 0xC0, 0x80 | picture_id >> 8, picture_id & 0xFF, tl0])


def pictures_of(consumer: Consumer) -> list[tuple[int, int]]:
    sink = consumer.sink
    assert isinstance(sink, FakeTransport)
    out = []
    for packet in sink.rtp:
        payload = packet[header(packet).header_length :]
        out.append((((payload[2] & 0x7F) << 8) | payload[3], payload[4]))
    return out


def test_picture_ids_and_tl0picidx_stay_continuous_across_a_switch() -> None:
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("q")
    assert consumer.pictures is not None
    q_pid, f_pid = 30000, 500  # each layer numbers its own pictures; q wraps past 32767 meanwhile
    for index in range(3):
        bench.send("q", vp8_descriptor(q_pid + index, 7 + index) + b"\x00")
        bench.send("f", vp8_descriptor(f_pid + index, 200 + index) + b"\x00")
    consumer.select_layer(bench.layers["f"], bench.now)
    bench.send("f", vp8_descriptor(f_pid + 3, 203) + b"\x10\x02\x00")  # f's keyframe: the switch
    bench.send("f", vp8_descriptor(f_pid + 3, 203, start=False) + b"more")  # same picture, 2nd packet
    bench.send("f", vp8_descriptor(f_pid + 4, 204) + b"\x01")
    assert consumer.producer is bench.layers["f"]
    assert pictures_of(consumer) == [
        (30000, 7), (30001, 8), (30002, 9),  # q as it came
        (30003, 10), (30003, 10), (30004, 11),  # f, continuing q's numbering
    ]


def test_a_late_packet_does_not_move_the_numbering_back() -> None:
    from trio_sfu.media.vp8_pictures import Vp8Pictures
    from trio_sfu.wire.vp8 import parse_descriptor

    pictures = Vp8Pictures()

    def rewrite(packet: bytes) -> bytes:
        start = header(packet).header_length
        descriptor = parse_descriptor(packet, start)
        return packet if descriptor is None else pictures.rewrite(packet, descriptor, start)

    rewrite(rtp_packet(1, 0, 1, VP8, vp8_descriptor(10, 1) + b"\x00"))
    rewrite(rtp_packet(0, 0, 1, VP8, vp8_descriptor(9, 0) + b"\x00"))  # late
    pictures.needs_sync = True
    switched = rewrite(rtp_packet(2, 0, 2, VP8, vp8_descriptor(777, 50) + b"\x00"))
    payload = switched[header(switched).header_length :]
    assert (((payload[2] & 0x7F) << 8) | payload[3], payload[4]) == (11, 2)
    # Packets without a picture id, or too short to hold one, pass unchanged.
    bare = rtp_packet(3, 0, 1, VP8, b"\x10\x00")
    assert rewrite(bare) == bare
    short = rtp_packet(3, 0, 1, VP8, b"\x90\xc0")
    assert rewrite(short) == short


def test_a_player_can_go_back_to_a_layer_it_left() -> None:
    """Down to h and back up to f: f's packets are not taken for stragglers of a replaced stream."""
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    for there, back in (("h", "f"), ("q", "h"), ("f", "q")):
        consumer.select_layer(bench.layers[there], bench.now)
        bench.send(there, VP8_KEYFRAME)
        consumer.select_layer(bench.layers[back], bench.now)
        bench.send(back, VP8_KEYFRAME)
        sent = len(forwarded(consumer))
        for _ in range(3):
            bench.now += 0.02
            bench.send(back, VP8_DELTA)
        assert consumer.producer is bench.layers[back]
        assert len(forwarded(consumer)) == sent + 3, (there, back)
    sequences = [s for s, *_ in forwarded(consumer)]
    assert sequences == [(sequences[0] + i) & 0xFFFF for i in range(len(sequences))]


def test_an_estimate_that_keeps_growing_ends_a_probe_backoff() -> None:
    from trio_sfu.media.simulcast import RISING_FOR, LayerControl

    control = LayerControl()
    control.probe_bps = 100_000.0  # a probe was running
    control.on_estimate(400_000, 1.0)
    control.on_loss(0.2, 1.0)  # ...and met congestion
    assert control.probe_bps == 0 and control._probe_allowed_at == 1.0 + PROBE_BACKOFF
    bps, now = 300_000.0, 1.0
    while now < 1.0 + RISING_FOR + 1.0:
        now += 0.5
        bps *= 1.04
        control.on_estimate(bps, now)
    assert control._probe_allowed_at <= now < 1.0 + PROBE_BACKOFF


def test_a_player_never_congested_goes_up_when_a_higher_layer_starts() -> None:
    """Firefox turns its top layer on seconds after the others: a player that started below it goes
    up once it sends, whatever its young estimate says, until its link has shown congestion once."""
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400})  # f not sending yet
    consumer = bench.player("h")
    media, _ = player_media(bench, consumer)
    rates = {rid: layer.byte_rate * 8 for rid, layer in bench.layers.items()}
    remb_to(media, consumer, rates["h"] * 1.2, bench.now)  # what h gives it, far below f's rate
    # Now f sends too (keep_sending sends every layer): once its rate ranks it on top (these test
    # keyframes carry no picture size), up after UP_AFTER, at f's next keyframe.
    keep_sending(bench, 4.0, media)
    assert consumer.producer is bench.layers["f"]
    keep_sending(bench, 0.2, media)
    loss_report(media, consumer, 0.0, bench.now)  # the player's first report since it got f
    # After congestion once, the estimate rules: down, and not up again without room.
    loss_report(media, consumer, 0.2, bench.now)
    keep_sending(bench, 1.0, media)
    assert consumer.producer is not bench.layers["f"]
    for _ in range(4):
        remb_to(media, consumer, rates["h"] * 1.2, bench.now)
        keep_sending(bench, 1.0, media)
    assert consumer.producer is not bench.layers["f"]


def test_without_an_estimate_loss_moves_a_player_down_a_step_and_quiet_up_again() -> None:
    from trio_sfu.media.simulcast import QUIET_FOR, STEP_SETTLE

    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)  # this player sends no REMB
    loss_report(media, consumer, 0.2, bench.now)
    keep_sending(bench, 0.5, media)
    loss_report(media, consumer, 0.2, bench.now)  # the old rate's loss, still draining: no new step
    keep_sending(bench, 1.0, media)
    assert consumer.producer is bench.layers["h"]  # one step, not to the bottom
    keep_sending(bench, STEP_SETTLE, media)
    loss_report(media, consumer, 0.2, bench.now)  # h's own, STEP_SETTLE after it began: another step
    keep_sending(bench, 1.2, media)
    assert consumer.producer is bench.layers["q"]
    keep_sending(bench, QUIET_FOR - 3.0, media)
    assert consumer.producer is bench.layers["q"]  # not yet: the loss was recent
    keep_sending(bench, 5.0, media)
    assert consumer.producer is bench.layers["h"]  # quiet for long enough: up one


def test_an_estimate_just_below_the_playing_option_does_not_move_a_player_down() -> None:
    """Chromium's estimate after an overuse is 0.85 of what it received: a player taking that for its
    link stepped down at each one, and its estimate followed it down. Well below is a thin link."""
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)
    rates = {rid: layer.byte_rate * 8 for rid, layer in bench.layers.items()}
    remb_to(media, consumer, rates["f"] * 1.05, bench.now)
    keep_sending(bench, 0.5, media)
    remb_to(media, consumer, rates["f"] * 0.85, bench.now)  # an overuse, measured on what f gives
    keep_sending(bench, 1.5, media)
    assert consumer.producer is bench.layers["f"] and consumer.target is None
    remb_to(media, consumer, rates["f"] * 0.5, bench.now)  # far below: the link is thinner than f
    keep_sending(bench, 1.2, media)
    assert consumer.producer is bench.layers["h"]


def test_loss_counted_before_a_step_took_effect_does_not_move_a_player_again() -> None:
    """A receiver report counts loss since the previous one: the first after a switch still holds the
    old layer's (the link's queue drains). Taking it for the new layer's once stepped a Chromium player
    from h to q's base layer on a 500 kbit/s link, from which its estimate took over 30 s to climb."""
    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    consumer = bench.player("f")
    media, _ = player_media(bench, consumer)  # this player sends no REMB: loss moves it
    keep_sending(bench, 1.0, media)
    loss_report(media, consumer, 0.2, bench.now)
    while consumer.producer is not bench.layers["h"]:
        keep_sending(bench, 0.02, media)
    keep_sending(bench, 1.1, media, reports=False)  # the player's next report comes a second later
    stale = media.counters["stale_loss_reports"]
    loss_report(media, consumer, 0.3, bench.now)  # began under f
    assert media.counters["stale_loss_reports"] == stale + 1
    keep_sending(bench, 2.0, media)
    assert consumer.producer is bench.layers["h"] and consumer.target is None
    loss_report(media, consumer, 0.2, bench.now)  # h's own loss
    keep_sending(bench, 1.2, media)
    assert consumer.producer is bench.layers["q"]


def test_a_new_player_starts_within_its_cap_even_while_no_layer_sends() -> None:
    """A pause (or a relay's first moments): nothing is active, yet a capped player must not start
    above its cap; by picture size where known, else by what each layer last sent."""
    from trio_sfu.media.simulcast import start_layer

    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    layers = list(bench.layers.values())
    assert start_layer(layers, bench.now, max_rank=0).rid == "q"
    later = bench.now + 5  # every layer idle
    assert choose_layer(layers, later) is None
    assert start_layer(layers, later, max_rank=0).rid == "q"
    assert start_layer(layers, later, max_rank=1).rid == "h"
    assert start_layer(layers, later).rid == "f"


def test_a_first_estimate_moves_a_player_only_when_far_below_its_option() -> None:
    """Chromium's first estimate is about what the player received, not its link: beside loss (here
    just after a step, so the loss does not step on its own), one at 0.8 of the option keeps it; at
    0.6 it moves. An estimate that fell (an overuse) moves it from below 0.8."""
    from trio_sfu.media.simulcast import LayerControl, option_bps

    bench = Bench()
    bench.start_layers({"q": 40, "h": 400, "f": 1200})
    layers = list(bench.layers.values())
    h = bench.layers["h"]
    playing = (h, None)
    now = bench.now

    def after_loss(first_estimate: float) -> LayerControl:
        control = LayerControl()
        control.option_changed(now)
        control.on_loss(0.2, now + 0.05)  # within STEP_SETTLE of the step: congestion, no step
        control.on_estimate(first_estimate, now + 0.05)
        return control

    assert after_loss(option_bps(playing) * 0.78).choose(playing, layers, now + 0.1) == playing
    moved = after_loss(option_bps(playing) * 0.6).choose(playing, layers, now + 0.1)
    assert moved is not None and moved[0] is bench.layers["q"]
    fell = after_loss(option_bps(playing) * 1.1)
    fell.on_estimate(option_bps(playing) * 0.78, now + 0.1)  # a fall of 29 %: the player saw overuse
    moved = fell.choose(playing, layers, now + 0.15)
    assert moved is not None and moved[0] is bench.layers["q"]


def test_7_bit_picture_ids_are_widened_keeping_their_low_bits() -> None:
    from trio_sfu.media.vp8_pictures import PictureIdWidener
    from trio_sfu.wire.vp8 import parse_descriptor

    widener = PictureIdWidener()

    def widened(payload: bytes, sequence: int) -> int:
        descriptor = parse_descriptor(payload, 0)
        assert descriptor is not None
        widener.widen(descriptor, sequence)
        return descriptor.picture_id

    # (picture id, RTP sequence): across the wrap; a late packet of 127; 100 pictures on after a
    # pause (a 7-bit id cannot tell more); a retransmission from before the pause.
    sent = [(126, 65534), (127, 65535), (0, 0), (1, 1), (127, 65533), (2, 2), (102, 3), (1, 1)]
    narrow = [(bytes([0x90, 0x80, picture, 0x00]), sequence) for picture, sequence in sent]
    assert [widened(*p) for p in narrow] == [126, 127, 128, 129, 127, 130, 230, 129]
    assert widened(vp8_descriptor(5000, 1), 4) == 5000  # 15-bit ids pass as they are
    assert widened(bytes([0x10, 0x00]), 5) == -1  # no picture id
