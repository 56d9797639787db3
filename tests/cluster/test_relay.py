"""Relays between workers, in one process: two real servers on loopback (WebSockets, UDP, DTLS,
SRTP), sharing a directory table as workers share their supervisor's. A publisher on A, players on
B: B plays the stream from A once, over A's cluster listener, and fans it out.

The same code runs between worker processes (tests/cluster/test_workers.py); here every step can be
looked at from both servers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio
import trio_websocket

from trio_sfu.cluster.directory import DirectoryTable, TableDirectory
from trio_sfu.cluster.relay import RELAY_UID
from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.cluster.worker import WorkerCluster
from trio_sfu.config import Config, HostPort
from trio_sfu.server.server import Server
from trio_sfu.server.udp import UdpEndpoint
from trio_sfu.signaling.auth import mint_token
from trio_sfu.testing.client_transport import Client, open_client, rtp_packet
from trio_sfu.testing.offer import VP8_PT, LocalParams, build_offer
from trio_sfu.transport.certificate import Certificate
from trio_sfu.wire.rtp import parse_rtp

from ..support.media_model import VP8_KEYFRAME

SECRET = "a-cluster-secret-of-at-least-32-bytes!!"
CONFIG = Config(
    signal=HostPort("127.0.0.1", 0),
    http=HostPort("127.0.0.1", 0),
    media=(HostPort("127.0.0.1", 0),),
    cluster_secret=SECRET,
)


@attrs.define
class Worker:
    server: Server
    nursery: trio.Nursery

    @property
    def url(self) -> str:
        host, port = self.server.signal_addresses[0]
        return f"ws://{host}:{port}/ws"

    @contextlib.asynccontextmanager
    async def client(self, uid: str, url: str | None = None) -> AsyncIterator[SignalingClient]:
        async with trio_websocket.open_websocket_url(url or self.url) as ws:
            client = SignalingClient(ws, "live", uid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.pump)
                yield client
                nursery.cancel_scope.cancel()


class SlowDirectory(TableDirectory):
    """The table, answering after `delay` as one over a socket does (so requests can interleave)."""

    def __init__(self, table: DirectoryTable, delay: float) -> None:
        super().__init__(table)
        self.delay = delay

    async def locate(self, key: tuple[str, str]) -> str | None:
        await trio.sleep(self.delay)
        return await super().locate(key)


@contextlib.asynccontextmanager
async def two_workers(delay: float = 0.0) -> AsyncIterator[tuple[Worker, Worker]]:
    table = DirectoryTable()
    async with trio.open_nursery() as nursery:
        workers = []
        for _ in range(2):
            server = Server(CONFIG)
            server.cluster = WorkerCluster(SlowDirectory(table, delay), secret=SECRET)
            await nursery.start(server.serve)
            workers.append(Worker(server, nursery))
        yield workers[0], workers[1]
        nursery.cancel_scope.cancel()


def endpoint() -> UdpEndpoint:
    return UdpEndpoint.bind(HostPort("127.0.0.1", 0))


def send_video(client: Client, index: int) -> None:
    payload = VP8_KEYFRAME + index.to_bytes(4, "big") + bytes(200)
    packet = rtp_packet(VP8_PT, 1000 + index, index * 3000, client.local.video_ssrc, payload)
    client.transport.send_rtp(packet)


def video_indexes(client: Client) -> list[int]:
    """The frame index each video packet the player decrypted carries."""
    out = []
    for _, packet in client.transport.received.rtp:
        header = parse_rtp(packet)
        assert header is not None
        if header.ssrc == client.answer.ssrcs["video"]:
            payload = packet[header.header_length : header.header_length + header.payload_length]
            out.append(int.from_bytes(payload[len(VP8_KEYFRAME) : len(VP8_KEYFRAME) + 4], "big"))
    return out


async def until(condition: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def next_request(signaling: SignalingClient, method: str, timeout: float = 5.0) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            message = await signaling.next_server_request()
            await signaling.ack(message)
            if message["method"] == method:
                return message


async def test_players_on_another_worker_get_the_stream_through_one_relay() -> None:
    async with (
        two_workers() as (a, b),
        a.client("pub") as pub_sig,
        b.client("p1") as p1_sig,
        b.client("p2") as p2_sig,
        open_client(pub_sig, endpoint(), publish=True) as pub,
    ):
        for index in range(5):
            send_video(pub, index)
        async with (
            open_client(p1_sig, endpoint(), publish=False) as p1,
            open_client(p2_sig, endpoint(), publish=False) as p2,
        ):
            assert len(b.server.cluster.relays.relays) == 1  # type: ignore[union-attr]
            # On A, the relay is one player; on B, the stream has two.
            publication_a = a.server.router.lookup(("live", "cam"))
            publication_b = b.server.router.lookup(("live", "cam"))
            assert publication_a is not None and publication_b is not None
            assert len(publication_a.players) == 1 and len(publication_b.players) == 2
            assert b.server.snapshot().relayed_in == 1 and a.server.snapshot().relayed_in == 0
            for index in range(5, 60):
                send_video(pub, index)
                await trio.sleep(0.005)
            await until(lambda: len(video_indexes(p1)) >= 55 and len(video_indexes(p2)) >= 55)
            for player in (p1, p2):
                indexes = video_indexes(player)
                # From the keyframe cache or live, in order and none twice, up to the last sent.
                assert indexes == sorted(set(indexes)) and indexes[-1] == 59
                assert player.transport.received.srtp_failures == 0

            # The publisher mutes video on A: both players on B are told, and media stops.
            reply = await pub_sig.request("stream.mute", "cam", {"video": True, "audio": False})
            assert reply["err"] == 0
            for sig in (p1_sig, p2_sig):
                muted = await next_request(sig, "stream.mute")
                assert muted["data"]["video"] is True
            # The publisher closes: both players on B hear publisher_closed.
            assert (await pub_sig.request("stream.close", "cam"))["err"] == 0
            for sig in (p1_sig, p2_sig):
                closed = await next_request(sig, "stream.close")
                assert closed["data"]["reason"] == "publisher_closed"
            await until(lambda: b.server.router.lookup(("live", "cam")) is None)
            await until(lambda: not b.server.cluster.relays.relays)  # type: ignore[union-attr]


async def test_a_stream_published_on_one_worker_cannot_be_published_on_another() -> None:
    async with two_workers() as (a, b):
        async with (
            a.client("pub") as pub_sig,
            b.client("pub2") as second_sig,
            open_client(pub_sig, endpoint(), publish=True),
        ):
            await second_sig.connect()
            local = LocalParams.new(Certificate.generate(), 9)
            reply = await second_sig.offer("cam", build_offer(local, publish=True), publish=True)
            assert reply["err"] == 409 and "another worker" in reply["err_msg"]
        # A's publisher is gone: its claim went with it, and B may publish now.
        await until(lambda: a.server.router.lookup(("live", "cam")) is None)
        async with b.client("pub3") as third_sig, open_client(third_sig, endpoint(), publish=True):
            assert b.server.router.lookup(("live", "cam")) is not None


async def test_a_relay_without_the_cluster_secret_is_refused() -> None:
    async with two_workers() as (a, _):
        host, port = a.server.cluster_addresses[0]
        cluster_url = f"ws://{host}:{port}/ws"
        async with a.client("pub") as pub_sig, open_client(pub_sig, endpoint(), publish=True):
            async with a.client(RELAY_UID, cluster_url) as forged:
                # A user's token (open mode on the public port) is not a cluster token.
                reply = await forged.connect("")
                assert reply["err"] == 401
                wrong = mint_token("another-secret-of-at-least-32-bytes!!!", "live", play=True, now=0,
                                   ttl=None)
                assert (await forged.connect(wrong))["err"] == 401
            async with a.client(RELAY_UID, cluster_url) as relay:
                good = mint_token(SECRET, "live", play=True, now=time.time(), ttl=None)
                assert (await relay.connect(good))["err"] == 0
                local = LocalParams.new(Certificate.generate(), 9)
                reply = await relay.offer("cam", build_offer(local, publish=True), publish=True)
                assert reply["err"] == 403  # the cluster listener serves plays only


async def test_a_play_of_a_stream_published_nowhere_is_still_404() -> None:
    async with two_workers() as (_, b), b.client("p1") as sig:
        await sig.connect()
        local = LocalParams.new(Certificate.generate(), 9)
        reply = await sig.offer("nothing", build_offer(local, publish=False), publish=False)
        assert reply["err"] == 404


async def test_garbage_on_the_cluster_paths_disturbs_no_relay() -> None:
    """Garbage frames on the cluster listener and garbage datagrams at a relay's UDP socket: answered
    or dropped and counted; the relayed player goes on receiving."""
    import socket as stdlib_socket

    async with (
        two_workers() as (a, b),
        a.client("pub") as pub_sig,
        b.client("p1") as p1_sig,
        open_client(pub_sig, endpoint(), publish=True) as pub,
        open_client(p1_sig, endpoint(), publish=False) as p1,
    ):
        host, port = a.server.cluster_addresses[0]
        async with a.client(RELAY_UID, f"ws://{host}:{port}/ws") as garbage:
            for frame in ("not json", "{}", '{"method": "stream.offer"}', "x" * 10_000):
                reply = await garbage.send_raw(frame)
                assert reply["err"] in (400, 401, 426), reply
        relay = b.server.cluster.relays.relays[("live", "cam")]  # type: ignore[union-attr]
        endpoint_of_relay = relay.legs[0].endpoint
        assert endpoint_of_relay is not None
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as sock:
            junk = (b"", bytes(20), b"\x80" + bytes(40), b"\x16\xfe\xfd" + bytes(9), bytes(1500))
            for datagram in junk:
                sock.sendto(datagram, endpoint_of_relay.local_address)
        for index in range(40):
            send_video(pub, index)
            await trio.sleep(0.005)
        await until(lambda: len(video_indexes(p1)) >= 30)
        assert relay.counters["srtp_failures"] >= 1  # the fake RTP, counted and dropped
        assert not relay.ended.is_set()


LAYER_SIZES = {"q": (320, 180), "h": (640, 360), "f": (1280, 720)}


def layer_keyframe(rid: str, index: int) -> bytes:
    """A VP8 keyframe's first packet (descriptor S=1, frame tag with P=0, start code, size), then the
    layer's name and the frame index, so a player's packets say which layer they came from."""
    width, height = LAYER_SIZES[rid]
    size = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    header = b"\x10" + b"\x50\x00\x00" + b"\x9d\x01\x2a" + size
    return header + rid.encode() + index.to_bytes(4, "big") + bytes(100 * len(rid))


def layers_seen(client: Client) -> list[str]:
    out = []
    for _, packet in client.transport.received.rtp:
        parsed = parse_rtp(packet)
        assert parsed is not None
        payload = packet[parsed.header_length :]
        if payload[:1] == b"\x10" and payload[4:7] == b"\x9d\x01\x2a":
            out.append(payload[11:12].decode())
    return out



async def test_all_simulcast_layers_travel_and_players_there_get_their_own() -> None:
    """A simulcast publisher on A: B's relay takes each layer on a leg of its own and publishes them as
    one track's layers again, so B's players are adapted and capped there (one gets the top layer, one
    capped to the lowest gets that)."""
    from ..support.media_model import rtp_packet as rtp_with_extensions

    rids = ("q", "h", "f")
    ssrcs = {"q": 0x1111, "h": 0x2222, "f": 0x3333}
    async with (
        two_workers() as (a, b),
        a.client("pub") as pub_sig,
        b.client("p1") as p1_sig,
        b.client("p2") as p2_sig,
        open_client(pub_sig, endpoint(), publish=True, rids=rids) as pub,
    ):
        def send_frame(index: int) -> None:
            for rid in rids:
                packet = rtp_with_extensions(
                    1000 + index, index * 3000, ssrcs[rid], VP8_PT, layer_keyframe(rid, index),
                    extensions=[(10, rid.encode())],
                )
                pub.transport.send_rtp(packet)

        async def stream(count: int, start: int = 0) -> None:
            for index in range(start, start + count):
                send_frame(index)
                await trio.sleep(0.02)

        await stream(10)
        async with open_client(p1_sig, endpoint(), publish=False) as p1:
            relay = b.server.cluster.relays.relays[("live", "cam")]  # type: ignore[union-attr]
            assert len(relay.legs) == 3
            publication = b.server.router.lookup(("live", "cam"))
            assert publication is not None
            video = [p for p in publication.producers if p.kind == "video"]
            assert [p.rid for p in video] == ["q", "h", "f"] and all(p.layers == video for p in video)
            # Three relay players at the origin, each pinned to its layer.
            origin = a.server.router.lookup(("live", "cam"))
            assert origin is not None
            assert sorted(str(p.rid) for p in origin.producers if p.kind == "video" and p.consumers) == [
                "f", "h", "q"]
            async with open_client(p2_sig, endpoint(), publish=False, max_layer=0) as p2:
                await stream(60, 10)
                await until(lambda: len(layers_seen(p2)) >= 30)
                assert set(layers_seen(p2)) == {"q"}, "".join(layers_seen(p2))  # capped to the lowest, at B

            await until(lambda: len(layers_seen(p1)) >= 30)
            assert layers_seen(p1)[-10:] == ["f"] * 10  # the top layer, through the relay
            assert [p.pixels for p in video] == [320 * 180, 640 * 360, 1280 * 720]


async def test_players_arriving_together_share_one_relay() -> None:
    """Six players ask B for the stream at the same moment (the directory answers in 50 ms, as over a
    socket): one relay starts, every offer is answered."""
    async with (
        two_workers(delay=0.05) as (a, b),
        a.client("pub") as pub_sig,
        open_client(pub_sig, endpoint(), publish=True) as pub,
    ):
        send_video(pub, 0)
        answered: list[int] = []

        async def play(index: int) -> None:
            async with b.client(f"p{index}") as sig, open_client(sig, endpoint(), publish=False):
                answered.append(index)
                await trio.sleep(0.3)

        async with trio.open_nursery() as nursery:
            for index in range(6):
                nursery.start_soon(play, index)
        assert sorted(answered) == list(range(6))
        assert b.server.cluster.relays.counters == {"started": 1, "failed": 0}  # type: ignore[union-attr]
