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


@contextlib.asynccontextmanager
async def two_workers() -> AsyncIterator[tuple[Worker, Worker]]:
    table = DirectoryTable()
    async with trio.open_nursery() as nursery:
        workers = []
        for _ in range(2):
            server = Server(CONFIG)
            server.cluster = WorkerCluster(TableDirectory(table), secret=SECRET)
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
        assert relay._endpoint is not None
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as sock:
            junk = (b"", bytes(20), b"\x80" + bytes(40), b"\x16\xfe\xfd" + bytes(9), bytes(1500))
            for datagram in junk:
                sock.sendto(datagram, relay._endpoint.local_address)
        for index in range(40):
            send_video(pub, index)
            await trio.sleep(0.005)
        await until(lambda: len(video_indexes(p1)) >= 30)
        assert relay.counters["srtp_failures"] >= 1  # the fake RTP, counted and dropped
        assert not relay._ended.is_set()
