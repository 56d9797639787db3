"""`python -m trio_sfu --workers 2` as a user runs it: a supervisor and two worker processes sharing
the signaling port, aiortc peers that decode what they get.

One aiortc publisher, aiortc players over separate WebSockets until both workers have some (the
kernel spreads connections over the workers; a player's answer names its worker's media port).
Players on both workers decode the publisher's frames in order (the ones on the other worker through
a relay). `kill -9` of the worker without the publisher ends only its own players (the others keep
decoding) and the supervisor starts it again; `kill -9` of the publisher's worker gives the players on
the other worker `stream.close` `publisher_gone`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.cluster.worker import METRICS_REPORT_INTERVAL

from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, valid_counters, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
MAX_PLAYERS = 12  # connections opened until both workers have a player
MIN_FRAMES = 20


class Cluster:
    """The supervisor process and what it and its workers said on their way up."""

    def __init__(self, workers: int) -> None:
        command = [
            sys.executable, "-m", "trio_sfu", "--workers", str(workers),
            "--signal", "127.0.0.1:0", "--http", "127.0.0.1:0", "--media", "127.0.0.1:0",
            "--log-level", "info",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.url = ""
        self.http_url = ""
        self.media_ports: dict[int, int] = {}  # worker -> its media port (the latest, after restarts)
        self.pids: dict[int, list[int]] = {}  # worker -> pids, in start order

    async def read(self) -> None:
        """Collect both streams until the process ends (run in a thread each)."""
        async with trio.open_nursery() as nursery:
            for reader in (self._read_stdout, self._read_stderr):
                nursery.start_soon(partial(trio.to_thread.run_sync, reader, abandon_on_cancel=True))

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if line.startswith("signaling"):
                self.url = line.split()[1]
            if line.startswith("http "):
                self.http_url = line.split()[1]
            found = re.match(r"media\s+udp 127\.0\.0\.1:(\d+) \(worker (\d+)\)", line)
            if found:
                self.media_ports[int(found[2])] = int(found[1])

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.errors.append(line.rstrip())
            found = re.search(r"event=worker_started worker=(\d+) pid=(\d+)", line)
            if found:
                self.pids.setdefault(int(found[1]), []).append(int(found[2]))

    def worker_of(self, media_port: int) -> int:
        return next(worker for worker, port in self.media_ports.items() if port == media_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@attrs.define
class Peer:
    """A peer's session: its signaling, the worker that answered, what the server asked of it."""

    peer: Publisher | Player
    signaling: SignalingClient
    worker: int
    requests: list[dict[str, Any]] = attrs.field(factory=list)


@pytest.fixture
def aio() -> Iterator[AsyncioThread]:
    thread = AsyncioThread()
    yield thread
    thread.close()


@contextlib.asynccontextmanager
async def running_cluster(workers: int = 2) -> AsyncIterator[Cluster]:
    cluster = Cluster(workers)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cluster.read)
            await wait_for(lambda: cluster.url != "" and len(cluster.media_ports) == workers, 20,
                           "the supervisor's and workers' start-up lines")
            yield cluster
            nursery.cancel_scope.cancel()
    finally:
        cluster.stop()
        print("\n".join(["supervisor stdout:", *cluster.lines, "stderr:", *cluster.errors[-40:]]))


def answered_port(sdp: str) -> int:
    found = re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 (\d+) typ host", sdp)
    assert found, sdp
    return int(found[1])


@contextlib.asynccontextmanager
async def session(
    cluster: Cluster, aio: AsyncioThread, peer: Publisher | Player, uid: str
) -> AsyncIterator[Peer]:
    async with trio_websocket.open_websocket_url(cluster.url) as ws, trio.open_nursery() as nursery:
        signaling = SignalingClient(ws, "live", uid, auto_ack=True)
        nursery.start_soon(signaling.pump)
        assert (await signaling.connect())["err"] == 0
        offer = await aio.call(peer.offer)
        reply = await signaling.offer("cam", offer, isinstance(peer, Publisher))
        assert reply["err"] == 0, reply
        await aio.call(peer.answer, reply["data"]["sdp"])
        entry = Peer(peer, signaling, cluster.worker_of(answered_port(reply["data"]["sdp"])))
        signaling.on_server_request = entry.requests.append
        try:
            yield entry
        finally:
            await aio.call(peer.close)
            nursery.cancel_scope.cancel()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """A /metrics page as {(name, labels): value}."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def host_metrics_sum_the_workers(cluster: Cluster) -> None:
    """/metrics reaches one worker (the kernel picks); /metrics/host, from either, sums both."""
    own: dict[str, Samples] = {}
    for _ in range(40):
        page = await trio.to_thread.run_sync(scrape, cluster.http_url + "metrics")
        own.update({dict(labels)["worker"]: page for name, labels in page if name == "trio_sfu_worker"})
        if len(own) == 2:
            break
    assert len(own) == 2, f"40 scrapes of /metrics reached only workers {sorted(own)}"
    await trio.sleep(METRICS_REPORT_INTERVAL + 0.5)  # the other worker's report is at most this old
    host = await trio.to_thread.run_sync(scrape, cluster.http_url + "metrics/host")
    sessions = {dict(labels)["kind"]: v for (name, labels), v in host.items() if name == "trio_sfu_sessions"}
    print(f"/metrics/host: workers {host[('trio_sfu_worker', ())]}, sessions {sessions}")
    assert host[("trio_sfu_worker", ())] == 2
    for kind in ("publish", "play"):
        key = ("trio_sfu_sessions", (("kind", kind),))
        assert host[key] == sum(page[key] for page in own.values()), (kind, host, own)
    memory = ("process_resident_memory_bytes", ())
    assert host[memory] > max(page[memory] for page in own.values())


def closes(peer: Peer) -> list[str]:
    return [str(r.get("data", {}).get("reason")) for r in peer.requests if r.get("method") == "stream.close"]


async def test_two_workers_relay_a_stream_and_survive_a_worker_killed(aio: AsyncioThread) -> None:
    async with running_cluster(2) as cluster, contextlib.AsyncExitStack() as stack:
        publisher = Publisher(audio=False)
        pub = await stack.enter_async_context(session(cluster, aio, publisher, "pub"))
        origin = pub.worker
        players: list[Peer] = []
        while (len(players) < MAX_PLAYERS and len({p.worker for p in players}) < 2) or len(players) < 4:
            player = Player(audio=False)
            players.append(await stack.enter_async_context(session(cluster, aio, player, f"p{len(players)}")))
        by_worker = {w: [p for p in players if p.worker == w] for w in (0, 1)}
        print(f"publisher on worker {origin}; players per worker: "
              f"{ {w: len(ps) for w, ps in by_worker.items()} }")
        assert all(by_worker.values()), "the kernel put every connection on one worker"

        def decoded(peer: Peer) -> int:
            assert isinstance(peer.peer, Player)
            return len(valid_counters(peer.peer))

        took = await wait_for(lambda: all(decoded(p) >= MIN_FRAMES for p in players), 30,
                              f"{MIN_FRAMES} frames decoded by every player")
        print(f"every player decoded {MIN_FRAMES} frames within {took:.1f} s")
        for player in players:
            assert isinstance(player.peer, Player)
            assert_video_matches(player.peer, publisher)
        await host_metrics_sum_the_workers(cluster)

        # kill -9 the worker without the publisher: only its players lose their session.
        other = 1 - origin
        victim = cluster.pids[other][-1]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        survivors = by_worker[origin]
        counts = {id(p): decoded(p) for p in survivors}
        await wait_for(lambda: all(decoded(p) >= counts[id(p)] + MIN_FRAMES for p in survivors), 20,
                       "the origin worker's players to go on decoding")
        for player in survivors:
            assert not closes(player), player.requests
        await wait_for(lambda: len(cluster.pids[other]) == 2, 15, "the supervisor to restart the worker")
        print(f"worker {other} (pid {victim}) killed; restarted as pid {cluster.pids[other][-1]} after "
              f"{time.monotonic() - killed_at:.1f} s")

        # A new player that lands on the restarted worker is relayed again.
        relayed: Peer | None = None
        for index in range(MAX_PLAYERS):
            player = Player(audio=False)
            entry = await stack.enter_async_context(session(cluster, aio, player, f"q{index}"))
            if entry.worker == other:
                relayed = entry
                break
        assert relayed is not None, "no new connection reached the restarted worker"
        await wait_for(lambda: decoded(relayed) >= MIN_FRAMES, 20, "the restarted worker's player to decode")

        # kill -9 the publisher's worker: the other worker's players hear publisher_gone.
        os.kill(cluster.pids[origin][-1], signal.SIGKILL)
        killed_at = time.monotonic()
        took = await wait_for(lambda: closes(relayed) != [], 10, "publisher_gone on the other worker")
        assert closes(relayed) == ["publisher_gone"]
        print(f"publisher's worker killed: its relayed player got publisher_gone after {took:.2f} s")
