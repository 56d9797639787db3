"""The cluster's directory on a real Redis (Debian's redis-server, started here on a free loopback
port): two nodes in one process, each with its own RedisDirectory, as two hosts would have.

Publish on A, play on B through a relay; a second publish of the stream on B gets 409; the keys and
their lifetimes are what docs/cluster.md says. With Redis stopped, running sessions go on, a new
cross-node play fails fast with 503, and once Redis is back (empty, as after a restart) the
heartbeat restores the node and its claims and the same play works. Garbage in Redis (a claim that
names no reachable origin) gives the player a clear 503, and a Redis that answers slowly is cut at
REDIS_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from trio_sfu.cluster.redis_directory import CLAIM_TTL, HEARTBEAT, NODE_TTL, RedisDirectory
from trio_sfu.cluster.worker import WorkerCluster
from trio_sfu.server.server import Server
from trio_sfu.testing.client_transport import Client, open_client

from .test_relay import CONFIG, SECRET, Worker, endpoint, send_video, until, video_indexes

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server missing: scripts/test installs Debian's")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on loopback: no persistence, so a restart starts empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return done.stdout.strip()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def two_nodes(redis: RedisServer) -> AsyncIterator[tuple[Worker, Worker]]:
    async with trio.open_nursery() as nursery:
        nodes = []
        for name in ("a", "b"):
            server = Server(CONFIG)
            server.cluster = WorkerCluster(RedisDirectory(redis.url, name), secret=SECRET)
            await nursery.start(server.serve)
            nodes.append(Worker(server, nursery))
        yield nodes[0], nodes[1]
        nursery.cancel_scope.cancel()


def directory(worker: Worker) -> RedisDirectory:
    cluster = worker.server.cluster
    assert isinstance(cluster, WorkerCluster) and isinstance(cluster.directory, RedisDirectory)
    return cluster.directory


async def stream_until(client: Client, stop: trio.Event) -> None:
    index = 0
    while not stop.is_set():
        send_video(client, index)
        index += 1
        await trio.sleep(0.01)


async def test_nodes_share_streams_through_redis_and_survive_its_outage(redis: RedisServer) -> None:
    async with (
        two_nodes(redis) as (a, b),
        a.client("pub") as pub_sig,
        b.client("p1") as p1_sig,
        open_client(pub_sig, endpoint(), publish=True) as pub,
        trio.open_nursery() as nursery,
    ):
        stop = trio.Event()
        nursery.start_soon(stream_until, pub, stop)
        # The keys docs/cluster.md describes, with their lifetimes.
        assert redis.cli("GET", "trio_sfu:stream:live:cam") == a.server.cluster_url
        assert 0 < int(redis.cli("PTTL", "trio_sfu:stream:live:cam")) <= CLAIM_TTL * 1000
        await until(lambda: redis.cli("GET", "trio_sfu:node:b") == b.server.cluster_url, HEARTBEAT + 2)
        assert 0 < int(redis.cli("PTTL", "trio_sfu:node:a")) <= NODE_TTL * 1000

        async with open_client(p1_sig, endpoint(), publish=False) as p1:
            await until(lambda: len(video_indexes(p1)) >= 30)
            # A second publish of the stream on B: 409.
            async with b.client("pub2") as second:
                assert (await second.connect())["err"] == 0
                with pytest.raises(RuntimeError, match="409"):
                    async with open_client(second, endpoint(), publish=True, connect=False):
                        pass

            # Redis goes away: the relayed player keeps decoding; a new cross-node play fails fast.
            redis.stop()
            seen = len(video_indexes(p1))
            await until(lambda: len(video_indexes(p1)) >= seen + 50)
            async with b.client("p2") as p2_sig:
                assert (await p2_sig.connect())["err"] == 0
                async with a.client("pub3") as pub3_sig, open_client(pub3_sig, endpoint(), publish=False,
                                                                     stream="cam") as local:
                    # A play on the origin itself needs no Redis.
                    await until(lambda: len(video_indexes(local)) >= 10)
                started = time.monotonic()
                with pytest.raises(RuntimeError, match=r"503.*unavailable"):
                    async with open_client(p2_sig, endpoint(), publish=False, connect=False, stream="other"):
                        pass
                took = time.monotonic() - started
                assert took < 2.5, took
            print(f"with Redis down a cross-node play was refused in {took:.2f} s")

            # Redis is back, empty: the heartbeat restores the nodes and the claim; a new play works.
            redis.start()
            await until(lambda: redis.cli("GET", "trio_sfu:stream:live:cam") == a.server.cluster_url,
                        HEARTBEAT + 3)
            assert directory(a).available
            seen = len(video_indexes(p1))
            await until(lambda: len(video_indexes(p1)) >= seen + 20)
        stop.set()


async def test_a_claim_naming_no_reachable_origin_gives_a_clear_503(redis: RedisServer) -> None:
    async with two_nodes(redis) as (_, b), b.client("p1") as sig:
        # A stale or forged entry: a port nobody listens on.
        redis.cli("SET", "trio_sfu:stream:live:ghost", f"ws://127.0.0.1:{free_port()}/ws", "PX", "10000")
        redis.cli("SET", "trio_sfu:stream:live:junk", "not a url at all", "PX", "10000")
        assert (await sig.connect())["err"] == 0
        for stream in ("ghost", "junk"):
            with pytest.raises(RuntimeError, match="503"):
                async with open_client(sig, endpoint(), publish=False, connect=False, stream=stream):
                    pass
        # The node is fine: it still answers.
        assert (await sig.request("stream.connect", data={"token": ""}))["err"] == 0


async def test_a_slow_redis_is_cut_at_the_timeout(redis: RedisServer) -> None:
    from trio_sfu.cluster.directory import DirectoryUnavailable
    from trio_sfu.cluster.redis_directory import REDIS_TIMEOUT

    slow = RedisDirectory(redis.url, "slow")
    async with slow.client:
        assert await slow.locate(("live", "x")) is None
        assert redis.process is not None
        redis.process.send_signal(19)  # SIGSTOP: connected, but answering nothing
        try:
            started = time.monotonic()
            with pytest.raises(DirectoryUnavailable):
                await slow.locate(("live", "x"))
            assert time.monotonic() - started < REDIS_TIMEOUT + 1
            assert not slow.available
        finally:
            redis.process.send_signal(18)  # SIGCONT


async def test_a_node_shutting_down_releases_its_claims_at_once(redis: RedisServer) -> None:
    """SIGTERM's path: the node's claims leave Redis before its sessions end (not CLAIM_TTL later),
    its own clients hear server_shutdown and the relayed players elsewhere publisher_gone."""
    async with (
        two_nodes(redis) as (a, b),
        a.client("pub") as pub_sig,
        b.client("p1") as p1_sig,
        open_client(pub_sig, endpoint(), publish=True) as pub,
        open_client(p1_sig, endpoint(), publish=False),
    ):
        send_video(pub, 0)
        assert redis.cli("GET", "trio_sfu:stream:live:cam") == a.server.cluster_url
        started = time.monotonic()
        await a.server.shutdown()
        assert redis.cli("EXISTS", "trio_sfu:stream:live:cam") == "0"
        assert redis.cli("EXISTS", "trio_sfu:node:a") == "0"
        assert time.monotonic() - started < a.server.config.shutdown_grace + 1
        told = {}
        for name, sig in (("publisher", pub_sig), ("relayed player", p1_sig)):
            with trio.fail_after(10):
                while True:
                    message = await sig.next_server_request()
                    if message["method"] == "stream.close":
                        told[name] = message["data"]["reason"]
                        break
        assert told == {"publisher": "server_shutdown", "relayed player": "publisher_gone"}
