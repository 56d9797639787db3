"""The keyframe cache end to end with aiortc: a new player starts at once from the latest keyframe the
server keeps, even when the publisher ignores keyframe requests (as OBS and FFmpeg do), and however
many players join, the publisher is asked for keyframes at most about once a second."""

from __future__ import annotations

import itertools
import time
from contextlib import AsyncExitStack

import pytest
import trio

from trio_sfu.media.consumer import Consumer
from trio_sfu.media.producer import Producer

from ..conftest import Harness, running_server
from ..peers.aiortc_peers import AsyncioThread, KeyframePublisher, TimedPlayer
from ..support.aiortc_sessions import (
    assert_video_matches,
    player_session,
    session,
    valid_counters,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

GOP = 10.0  # seconds between the deaf publisher's keyframes
FIRST_FRAME_BAR = 0.150  # the bar: a new player's first decoded frame, after its answer


def video_producer(sfu: Harness) -> Producer:
    publication = sfu.server.router.lookup(("live", "cam"))
    assert publication is not None
    (producer,) = [p for p in publication.producers if p.kind == "video"]
    return producer


def video_consumer(sfu: Harness, uid: str) -> Consumer:
    (consumer,) = [c for c, _ in player_session(sfu, uid).consumers if c.kind == "video"]
    return consumer


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def test_a_new_player_starts_at_once_from_a_publisher_that_ignores_keyframe_requests(
    aio: AsyncioThread,
) -> None:
    """The publisher sends a keyframe every 10 s and ignores PLI and FIR; a player joining 3 s after a
    keyframe decodes its first frame within 150 ms of its stream.offer answer (7 s before the next
    keyframe), starting at the keyframe the server cached, and every frame it decodes is the publisher's:
    the cached ones, then live."""
    publisher, player = KeyframePublisher(keyframe_interval=GOP, answers_requests=False), TimedPlayer()
    async with running_server(udp=True) as sfu, session(sfu, aio, publisher, "pub"):
        await wait_for(lambda: bool(publisher.keyframes), 10, "the publisher's first keyframe")
        producer = video_producer(sfu)
        await wait_for(lambda: bool(producer.keyframe_cache), 5, "the keyframe in the server's cache")
        keyframe_at, keyframe_counter = publisher.keyframes[0]
        await trio.sleep(max(0.0, keyframe_at + 3.0 - time.monotonic()))
        joined_at = time.monotonic()
        cache_packets, cache_bytes = len(producer.keyframe_cache), producer.keyframe_cache_bytes
        requests_before = producer.keyframe_requests

        async with session(sfu, aio, player, "late"):
            answered_at = player.answered_at
            try:
                await wait_for(lambda: bool(player.frames), 5, "the new player's first decoded frame")
            except AssertionError:
                consumer = video_consumer(sfu, "late")
                since = {
                    name: None if at is None else ms(at - answered_at)
                    for name, at in (("connected", player.connected_at), ("rtp", player.first_video_rtp_at))
                }
                raise AssertionError(
                    f"no frame within 5 s of the answer (cache: {cache_packets} packets); after the answer: "
                    f"DTLS connected {since['connected']}, first video RTP {since['rtp']}; player: "
                    f"{player.video_rtp_packets} RTP packets, {player.srtp_before_dtls} SRTP datagrams "
                    f"before its DTLS connected (dropped), {player.plis_sent} PLIs; consumer "
                    f"{dict(consumer.counters)}, awaiting keyframe {consumer.awaiting_keyframe}; "
                    f"{len(publisher.keyframe_requests)} keyframe requests reached the publisher"
                ) from None
            first_at, first_counter, _, _ = player.frames[0]
            # Caught up: the player shows what the publisher sends now, not the cached past.
            await wait_for(
                lambda: (
                    bool(valid_counters(player))
                    and (publisher.video.counter - 1 - valid_counters(player)[-1]) % 256 < 5
                ),
                5,
                "the player to catch up with the live stream",
            )
            caught_up = time.monotonic() - first_at
            # However the server started the player, the publisher is asked at least once now.
            consumer = video_consumer(sfu, "late")
            await aio.call(player.send_pli, consumer.ssrc)
            await trio.sleep(1.0)  # a second of live frames; the request reaches the publisher
            assert_video_matches(player, publisher)
            counters = dict(consumer.counters)
            server_requests = producer.keyframe_requests - requests_before
        assert player.connected_at is not None and player.first_video_rtp_at is not None

        keyframes = list(publisher.keyframes)
        next_keyframe = publisher.encoder.next_keyframe
        assert next_keyframe is not None
        print(
            f"\njoined {ms(joined_at - keyframe_at)} after the publisher's keyframe "
            f"(cache: {cache_packets} packets, {cache_bytes} bytes); answer -> DTLS connected "
            f"{ms(player.connected_at - answered_at)}, connected -> first RTP "
            f"{ms(player.first_video_rtp_at - player.connected_at)}, first RTP -> first decoded frame "
            f"{ms(first_at - player.first_video_rtp_at)}; answer -> first frame "
            f"{ms(first_at - answered_at)}, "
            f"connected -> first frame {ms(first_at - player.connected_at)}; next keyframe "
            f"{ms(next_keyframe - first_at)} later; caught up with live in {ms(caught_up)}; "
            f"{len(player.frames)} frames decoded\n"
            f"keyframe requests: {server_requests} by the server, {len(publisher.keyframe_requests)} "
            f"reached the publisher, {player.plis_sent} PLIs from the player (1 on purpose); publisher "
            f"keyframes at {[ms(t - keyframe_at) for t, _ in keyframes]}; consumer counters {counters}"
        )

        # At once, from the server's cache: within 150 ms of the answer reaching the player's client (ICE
        # and DTLS included), 7 s before the publisher's next keyframe; the first frame is the cached
        # keyframe itself.
        assert first_at - answered_at <= FIRST_FRAME_BAR
        assert first_at < next_keyframe - 5.0
        assert first_counter == keyframe_counter % 256
        assert counters.get("keyframe_cache_starts") == 1
        # No help from the publisher: asked (by the server while the player's transport connected, if the
        # publisher sent a frame meanwhile, and for the PLI the player sent above), it did not answer;
        # its only keyframe is the first one, its schedule untouched.
        assert len(publisher.keyframe_requests) >= 1
        assert [t for t, _ in keyframes] == [keyframe_at]
        assert publisher.encoder.requested_keyframes == 0
        assert next_keyframe == pytest.approx(keyframe_at + GOP)


JOIN_WINDOW = 6.0  # seconds over which the players join
SETTLE = 1.5  # seconds counted after the last join


@pytest.mark.parametrize("players", [1, 20])
async def test_keyframe_requests_stay_at_most_one_per_second_per_layer(
    aio: AsyncioThread, players: int
) -> None:
    """Players join one by one over 6 s (the publisher answers every PLI, as a browser does): the
    publisher is asked for a keyframe at most once a second over the window, plus one for the start,
    and every player decodes the publisher's frames."""
    publisher = KeyframePublisher(keyframe_interval=None, answers_requests=True)
    group = [TimedPlayer() for _ in range(players)]
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        AsyncExitStack() as stack,
    ):
        await wait_for(lambda: bool(publisher.keyframes), 10, "the publisher's first keyframe")
        producer = video_producer(sfu)
        await trio.sleep(0.5)
        start = time.monotonic()
        requests_before = producer.keyframe_requests
        received_before = len(publisher.keyframe_requests)
        spacing = JOIN_WINDOW / players
        for index, player in enumerate(group):
            await trio.sleep(max(0.0, start + index * spacing - time.monotonic()))
            await stack.enter_async_context(session(sfu, aio, player, f"p{index}"))
        await trio.sleep(max(0.0, start + JOIN_WINDOW + SETTLE - time.monotonic()))
        window = time.monotonic() - start
        sent = producer.keyframe_requests - requests_before
        received = [t - start for t in publisher.keyframe_requests[received_before:]]
        keyframes = [t - start for t, _ in publisher.keyframes if t >= start]
        await wait_for(
            lambda: all(len(valid_counters(p)) >= 10 for p in group), 10, "10 frames at every player"
        )
        for player in group:
            assert_video_matches(player, publisher)
        consumers = [video_consumer(sfu, f"p{i}") for i in range(players)]
        cache_starts = sum(c.counters["keyframe_cache_starts"] for c in consumers)
        lost_before_connect = sum(1 for c in consumers if c.counters["not_connected"])
        dropped_replays = sum(p.srtp_before_dtls for p in group)
        plis = sum(p.plis_sent for p in group)
        first_frames = sorted(p.frames[0][0] - p.connected_at for p in group if p.connected_at is not None)

    per_second = [sum(1 for t in received if s <= t < s + 1) for s in range(int(window) + 1)]
    gaps = [b - a for a, b in itertools.pairwise(received)]
    print(
        f"\n{players} players over {window:.1f} s: {sent} keyframe requests by the server, "
        f"{len(received)} reached the publisher (per second: {per_second}; shortest gap "
        f"{ms(min(gaps)) if gaps else '-'}), {len(keyframes)} keyframes encoded; players sent {plis} "
        f"PLIs, {cache_starts} started from the cache, {lost_before_connect} had video sent before their "
        f"transport connected (not_connected), {dropped_replays} SRTP datagrams reached players before "
        f"their DTLS connected; connected -> first frame: median {ms(first_frames[len(first_frames) // 2])}"
        f", max {ms(first_frames[-1])}"
    )
    assert len(received) >= sent - 1  # an RTCP packet may be on its way when the window closes
    assert sent <= window + 1, f"{sent} keyframe requests in {window:.1f} s"
