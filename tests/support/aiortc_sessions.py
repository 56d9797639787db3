"""aiortc peers in sessions with the server: signaling them, putting a relay between them and the server,
and checking what a player decoded (shared by the aiortc end-to-end, fault and fuzz tests)."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from trio_sfu.server.session import Session

from ..conftest import Client, Harness
from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..peers.udp_relay import UdpRelay


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `condition` holds; returns the time it took."""
    start = time.monotonic()
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return time.monotonic() - start
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def valid_counters(player: Player, since: float = 0.0) -> list[int]:
    return [c for t, c, _, _ in player.frames if t >= since and c is not None]


def assert_video_matches(player: Player, publisher: Publisher, since: float = 0.0) -> None:
    """Decoded frames show counters the publisher sent, in order, and no corrupt frame."""
    frames = [f for f in player.frames if f[0] >= since]
    assert frames, "no frames decoded"
    counters = [c for _, c, _, _ in frames]
    assert None not in counters, f"{counters.count(None)} of {len(counters)} frames unreadable"
    sent = {c for _, c in publisher.video.sent}
    assert set(counters) <= sent
    steps = [(b - a) % 256 for a, b in itertools.pairwise(counters)]
    assert all(0 < step < 64 for step in steps), steps
    assert {(w, h) for _, _, w, h in frames} == {(320, 240)}


@asynccontextmanager
async def session(
    sfu: Harness,
    aio: AsyncioThread,
    peer: Publisher | Player,
    uid: str,
    stream: str = "cam",
    munge: Callable[[str], str] = lambda sdp: sdp,
) -> AsyncIterator[Client]:
    async with sfu.client(uid=uid) as client:
        assert (await client.connect())["err"] == 0
        peer.offered_at = time.monotonic()
        offer = munge(await aio.call(peer.offer))
        reply = await client.offer(stream, offer, isinstance(peer, Publisher))
        peer.answered_at = time.monotonic()
        assert reply["err"] == 0, reply
        await aio.call(peer.answer, reply["data"]["sdp"])
        try:
            yield client
        finally:
            await aio.call(peer.close)


@asynccontextmanager
async def relayed(
    sfu: Harness, aio: AsyncioThread, peer: Publisher | Player, uid: str, seed: int = 1
) -> AsyncIterator[tuple[Client, UdpRelay]]:
    """A session whose media goes through a relay the test can pause, filter, make lossy or inject from."""
    relay = UdpRelay(sfu.server.candidates[0], seed=seed)
    await relay.bind()
    try:
        async with trio.open_nursery() as nursery, sfu.client(uid=uid) as client:
            nursery.start_soon(relay.run)
            assert (await client.connect())["err"] == 0
            reply = await client.offer("cam", await aio.call(peer.offer), isinstance(peer, Publisher))
            assert reply["err"] == 0, reply
            await aio.call(peer.answer, relay.rewrite_answer(reply["data"]["sdp"]))
            try:
                yield client, relay
            finally:
                await aio.call(peer.close)
                nursery.cancel_scope.cancel()
    finally:
        relay.close()


def player_session(sfu: Harness, uid: str = "relayed") -> Session:
    for connection in sfu.server.connections:
        for candidate in connection.sessions.values():
            if not candidate.publish and candidate.header.uid == uid:
                return candidate
    raise AssertionError("no player session")
