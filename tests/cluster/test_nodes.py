"""Three nodes on a LAN of their own, Redis on one of them: the cluster as an operator runs it.

The test makes the network: three network namespaces (nodes A, B, C at 10.77.0.1-3), each joined by a
veth pair to a bridge in the test's own namespace (10.77.0.100, where the aiortc peers run), and
Redis (Debian's redis-server) inside A's. Only these addresses are used. Each node is a real
`python -m trio_sfu --redis ... --node-name ... --cluster-host ...` process.

- publish on A, play on B and C: both decode the publisher's frames in order; mute reaches them;
- publishing the same stream on C gets 409;
- Redis stopped: the players keep decoding, a new play on B of a stream published on A gets 503 at
  once; Redis back (empty): the same play works, and the publisher's close reaches that player;
- a relay with a token not signed by the cluster secret is refused on A's cluster listener;
- A killed: the players on B and C get `stream.close` `publisher_gone` within 10 s.

Needs root and iproute2 (scripts/test runs the suite so); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
import trio
import trio_websocket

from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.signaling.auth import mint_token

from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, valid_counters, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.77.0"
CLIENT = f"{SUBNET}.100"  # the test's own end of the LAN (the bridge)
NODES = {"a": f"{SUBNET}.1", "b": f"{SUBNET}.2", "c": f"{SUBNET}.3"}
TOKEN_SECRET = "the-token-secret-of-the-test-cluster-0123456789"
CLUSTER_SECRET = "the-cluster-secret-of-the-test-cluster-012345"
REDIS_PORT = 6390
MIN_FRAMES = 20


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True)


def skip_reason() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 (scripts/test runs the suite as root in its own namespace)"
    if not os.environ.get("TRIO_SFU_NETNS"):
        return "makes network namespaces: runs only inside the test suite's private namespace"
    if shutil.which("redis-server") is None:
        return "redis-server missing: scripts/test installs Debian's"
    return None


@contextlib.contextmanager
def lan() -> Iterator[dict[str, str]]:
    """The namespaces, veths and bridge; removed on exit. Returns node -> namespace name."""
    tag = os.getpid() % 100000
    spaces = {node: f"tsfu{tag}{node}" for node in NODES}
    bridge = f"tsfubr{tag}"
    commands = [["ip", "link", "add", bridge, "type", "bridge"],
                ["ip", "addr", "add", f"{CLIENT}/24", "dev", bridge],
                ["ip", "link", "set", bridge, "up"]]
    for index, (node, address) in enumerate(NODES.items()):
        space, host_end, node_end = spaces[node], f"tsfu{tag}h{index}", f"tsfu{tag}n{index}"
        commands += [
            ["ip", "netns", "add", space],
            ["ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end],
            ["ip", "link", "set", node_end, "netns", space],
            ["ip", "link", "set", host_end, "master", bridge],
            ["ip", "link", "set", host_end, "up"],
            ["ip", "netns", "exec", space, "ip", "addr", "add", f"{address}/24", "dev", node_end],
            ["ip", "netns", "exec", space, "ip", "link", "set", node_end, "up"],
            ["ip", "netns", "exec", space, "ip", "link", "set", "lo", "up"],
        ]
    try:
        for command in commands:
            done = run(*command)
            if done.returncode != 0:
                pytest.skip(f"cannot build the test LAN (`{' '.join(command)}`: {done.stderr.strip()})")
        yield spaces
    finally:
        for space in spaces.values():
            run("ip", "netns", "del", space)
        run("ip", "link", "del", bridge)


class Node:
    """One `python -m trio_sfu` process in its namespace, and what it printed."""

    def __init__(self, name: str, space: str) -> None:
        self.name, self.space, self.address = name, space, NODES[name]
        address = self.address
        command = [
            "ip", "netns", "exec", space, sys.executable, "-m", "trio_sfu",
            "--signal", f"{address}:0", "--http", f"{address}:0", "--media", f"{address}:0",
            "--redis", f"redis://{NODES['a']}:{REDIS_PORT}/0", "--node-name", name,
            "--cluster-host", address, "--cluster-secret", CLUSTER_SECRET,
            "--token-secret", TOKEN_SECRET, "--log-level", "info",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.url = ""
        self.lines: list[str] = []

    async def read(self) -> None:
        async with trio.open_nursery() as nursery:
            for stream in (self.process.stdout, self.process.stderr):
                reader = partial(trio.to_thread.run_sync, self._read, stream, abandon_on_cancel=True)
                nursery.start_soon(reader)

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip())
            if line.startswith("signaling"):
                self.url = line.split()[1]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Redis:
    def __init__(self, space: str) -> None:
        self.space = space
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", self.space, "redis-server", "--bind", NODES["a"],
             "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = run("ip", "netns", "exec", self.space, "redis-cli", "-h", NODES["a"],
                       "-p", str(REDIS_PORT), "PING")
            if done.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def token() -> str:
    return mint_token(TOKEN_SECRET, "live", publish=True, play=True, now=time.time())


class Session:
    def __init__(self, peer: Publisher | Player, signaling: SignalingClient) -> None:
        self.peer = peer
        self.signaling = signaling
        self.requests: list[dict[str, Any]] = []

    def told(self, method: str) -> list[dict[str, Any]]:
        return [r.get("data", {}) for r in self.requests if r.get("method") == method]

    def frames(self) -> int:
        assert isinstance(self.peer, Player)
        return len(valid_counters(self.peer))


@contextlib.asynccontextmanager
async def session(
    node: Node, aio: AsyncioThread, peer: Publisher | Player, stream: str
) -> AsyncIterator[Session]:
    async with trio_websocket.open_websocket_url(node.url) as ws, trio.open_nursery() as nursery:
        signaling = SignalingClient(ws, "live", f"{node.name}-{stream}-{id(peer)}", auto_ack=True)
        entry = Session(peer, signaling)
        signaling.on_server_request = entry.requests.append
        nursery.start_soon(signaling.pump)
        assert (await signaling.connect(token()))["err"] == 0
        reply = await signaling.offer(stream, await aio.call(peer.offer), isinstance(peer, Publisher))
        assert reply["err"] == 0, reply
        await aio.call(peer.answer, reply["data"]["sdp"])
        try:
            yield entry
        finally:
            with contextlib.suppress(Exception):
                await aio.call(peer.close, timeout=5)
            nursery.cancel_scope.cancel()


async def refused(node: Node, stream: str, publish: bool) -> dict[str, Any]:
    """An offer that must be refused: the reply."""
    async with trio_websocket.open_websocket_url(node.url) as ws, trio.open_nursery() as nursery:
        signaling = SignalingClient(ws, "live", "refused", auto_ack=True)
        nursery.start_soon(signaling.pump)
        assert (await signaling.connect(token()))["err"] == 0
        peer = Publisher(audio=False) if publish else Player(audio=False)
        # Any valid offer will do; aiortc's is at hand.
        aio = AsyncioThread()
        try:
            offer = await aio.call(peer.offer)
            reply = await signaling.offer(stream, offer, publish)
            await aio.call(peer.close)
        finally:
            aio.close()
        nursery.cancel_scope.cancel()
        return reply


def mutes_told(players: tuple[Session, ...], count: int) -> bool:
    return all(len(player.told("stream.mute")) == count for player in players)


async def forged_relay_refused(node: Node) -> None:
    """Find the node's cluster listener (in its log) and try it with a token of the wrong secret."""
    listener = None
    for line in node.lines:
        if line.startswith("cluster"):
            listener = line.split()[1]
    assert listener is not None, "the node printed no cluster line"
    forged = mint_token("not-the-cluster-secret-0123456789abcdef", "live", play=True, now=time.time())
    async with trio_websocket.open_websocket_url(listener) as ws, trio.open_nursery() as nursery:
        signaling = SignalingClient(ws, "live", "trio_sfu-relay", auto_ack=True)
        nursery.start_soon(signaling.pump)
        reply = await signaling.connect(forged)
        assert reply["err"] == 401, reply
        # A user's token is no relay token either.
        assert (await signaling.connect(token()))["err"] == 401
        nursery.cancel_scope.cancel()


@pytest.fixture
def aio(monkeypatch: pytest.MonkeyPatch) -> Iterator[AsyncioThread]:
    # aiortc's candidates: the test's end of the LAN, not loopback (the nodes are not on this host's lo).
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: [CLIENT])
    thread = AsyncioThread()
    yield thread
    thread.close()


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
async def test_three_nodes_on_redis(aio: AsyncioThread) -> None:
    with lan() as spaces:
        redis = Redis(spaces["a"])
        redis.start()
        nodes = {name: Node(name, space) for name, space in spaces.items()}
        try:
            async with trio.open_nursery() as readers, contextlib.AsyncExitStack() as stack:
                for node in nodes.values():
                    readers.start_soon(node.read)
                await wait_for(lambda: all(n.url for n in nodes.values()), 20, "the nodes' start-up lines")
                a, b, c = nodes["a"], nodes["b"], nodes["c"]

                publisher = Publisher(audio=False)
                pub = await stack.enter_async_context(session(a, aio, publisher, "cam"))
                publisher2 = Publisher(audio=False)
                pub2 = await stack.enter_async_context(session(a, aio, publisher2, "cam2"))
                on_b = await stack.enter_async_context(session(b, aio, Player(audio=False), "cam"))
                on_c = await stack.enter_async_context(session(c, aio, Player(audio=False), "cam"))
                took = await wait_for(lambda: on_b.frames() >= MIN_FRAMES and on_c.frames() >= MIN_FRAMES,
                                      30, "frames on B and C")
                print(f"players on B and C decoded {MIN_FRAMES} frames within {took:.1f} s")
                for player in (on_b, on_c):
                    assert isinstance(player.peer, Player)
                    assert_video_matches(player.peer, publisher)

                # The publisher mutes video on A, then unmutes: both players hear each.
                for count, muted in enumerate((True, False), 1):
                    flags = {"video": muted, "audio": False}
                    assert (await pub.signaling.request("stream.mute", "cam", flags))["err"] == 0
                    await wait_for(partial(mutes_told, (on_b, on_c), count), 5, "stream.mute on B and C")
                    for player in (on_b, on_c):
                        assert player.told("stream.mute")[-1]["video"] is muted

                # 409 for a second publish of the stream, on C.
                reply = await refused(c, "cam", publish=True)
                assert reply["err"] == 409, reply

                # Redis goes away.
                redis.stop()
                seen = {id(p): p.frames() for p in (on_b, on_c)}
                await wait_for(lambda: all(p.frames() >= seen[id(p)] + MIN_FRAMES for p in (on_b, on_c)), 20,
                               "decoding to go on without Redis")
                started = time.monotonic()
                reply = await refused(b, "cam2", publish=False)
                took = time.monotonic() - started
                assert reply["err"] == 503, reply
                print(f"Redis down: a new cross-node play got 503 ({reply['err_msg']!r}) in {took:.2f} s "
                      f"(offer included)")

                # Redis back (empty): the heartbeat restores the claims; the play works, and close reaches it.
                redis.start()
                await trio.sleep(4)
                later = await stack.enter_async_context(session(b, aio, Player(audio=False), "cam2"))
                await wait_for(lambda: later.frames() >= MIN_FRAMES, 20, "cam2 on B after Redis returned")
                assert (await pub2.signaling.request("stream.close", "cam2"))["err"] == 0
                await wait_for(lambda: bool(later.told("stream.close")), 10, "stream.close on B")
                assert later.told("stream.close")[0]["reason"] == "publisher_closed"

                # A relay whose token is not signed by the cluster secret: refused on A's cluster listener.
                await forged_relay_refused(a)

                # Kill A: B's and C's players hear publisher_gone within 10 s.
                a.stop(signal.SIGKILL)
                killed = time.monotonic()
                await wait_for(lambda: all(p.told("stream.close") for p in (on_b, on_c)), 10,
                               "publisher_gone on B and C")
                print(f"A killed: B and C heard publisher_gone after {time.monotonic() - killed:.2f} s")
                for player in (on_b, on_c):
                    assert player.told("stream.close")[0]["reason"] == "publisher_gone"
                readers.cancel_scope.cancel()
        finally:
            for node in nodes.values():
                node.stop()
            redis.stop()
            for node in nodes.values():
                print(f"--- node {node.name}:", *node.lines[-30:], sep="\n")
