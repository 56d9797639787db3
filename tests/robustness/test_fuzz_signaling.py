"""Signaling fuzz: random and mutated frames against a live server while real media flows beside it."""

from __future__ import annotations

import gc
import json
import random
import time
import tracemalloc
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from ..conftest import eventually, fixture_sdp, running_server, task_names
from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, session, valid_counters, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DOCUMENTED = {400, 401, 403, 404, 409, 415, 426, 429, 500, 503}
METHODS = ["stream.connect", "stream.offer", "stream.mute", "stream.close", "ack", "stream.x", ""]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

requests = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from(["1.0", "2.0", 1.0, None, ""]) | json_values,
        "method": st.sampled_from(METHODS) | json_values,
        "app": st.sampled_from(["live", "other", ""]) | json_values,
        "uid": st.sampled_from(["fuzz", ""]) | json_values,
        "stream": st.sampled_from(["cam", "fuzzed", ""]) | json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "token": st.text(max_size=30) | json_values,
                "publish": st.booleans() | json_values,
                "sdp": st.sampled_from(["", "v=0", fixture_sdp("chromium_offer_publish")[:300]])
                | json_values,
                "video": st.booleans() | json_values,
                "audio": st.booleans() | json_values,
            },
        )
        | json_values,
    },
)


def mutate(frame: str, rng: random.Random) -> str:
    """Flip, drop or duplicate a few characters of a valid frame."""
    chars = list(frame)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(chars))
        action = rng.random()
        if action < 0.4:
            chars[position] = rng.choice('{}[]":,0aZ\\\x00é')
        elif action < 0.7:
            del chars[position]
        else:
            chars.insert(position, chars[position])
    return "".join(chars)


def assert_reply_shape(reply: dict[str, Any]) -> None:
    assert reply["method"] == "ack" and reply["version"] == "1.0"
    assert reply["err"] == 0 or reply["err"] in DOCUMENTED, reply
    assert isinstance(reply["err_msg"], str) and reply["err_msg"]
    assert reply["err"] != 500, reply  # a fuzzed frame must never reach an internal error


def server_memory() -> int:
    """Bytes held by allocations made in the server's own code (aiortc's buffers are not ours)."""
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/trio_sfu/*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(requests, min_size=1, max_size=8))
async def test_generated_frames_get_documented_replies(frames: list[dict[str, Any]]) -> None:
    async with running_server() as sfu, sfu.client(uid="fuzz") as client:
        for frame in frames:
            text = json.dumps(frame)
            reply = await client.send_raw(text) if frame.get("method") != "ack" else None
            if reply is not None:
                assert_reply_shape(reply)


async def test_fuzz_beside_live_media(aio: AsyncioThread) -> None:
    """Thousands of bad frames, floods and binary junk while an aiortc pair streams: the pair loses
    no media, every bad frame gets a documented answer, and tasks and memory return to baseline."""
    rng = random.Random(42)
    publisher, player = Publisher(), Player()
    valid = json.dumps(
        {
            "version": "1.0",
            "method": "stream.mute",
            "app": "live",
            "uid": "fuzz",
            "stream": "cam",
            "data": {"video": True},
        }
    )
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        session(sfu, aio, player, "p1"),
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 20, 20, "media before fuzzing")
        baseline_tasks = len(task_names())
        fuzz_start = time.monotonic()
        counts: dict[int, int] = {}
        for round_ in range(6):
            async with sfu.client(uid="fuzz") as fuzzer:
                frames: list[str | bytes] = []
                for _ in range(150):
                    kind = rng.random()
                    if kind < 0.5:
                        frames.append(mutate(valid, rng))
                    elif kind < 0.6:
                        frames.append(rng.randbytes(rng.randint(1, 200)))  # binary frame
                    elif kind < 0.7:
                        frames.append("[" * rng.randint(100, 5000))
                    elif kind < 0.8:
                        frames.append(
                            json.dumps(
                                {
                                    "version": "1.0",
                                    "method": "stream.offer",
                                    "app": "live",
                                    "stream": "s",
                                    "data": {"publish": True, "sdp": "x" * rng.randint(1, 60000)},
                                }
                            )
                        )
                    else:
                        method = rng.choice([m for m in METHODS if m != "ack"])  # an ack gets no reply
                        frames.append(
                            json.dumps(
                                {
                                    "version": "1.0",
                                    "method": method,
                                    "app": "live",
                                    "stream": rng.choice(["cam", "", "z"]),
                                    "data": {"token": "t", "publish": rng.random() < 0.5, "sdp": ""},
                                }
                            )
                        )
                # A flood: everything sent before reading any reply.
                for frame in frames:
                    await fuzzer.ws.send_message(frame)
                with trio.fail_after(20):
                    for _ in frames:
                        reply = await fuzzer._replies.receive()
                        assert_reply_shape(reply)
                        counts[reply["err"]] = counts.get(reply["err"], 0) + 1
                if round_ % 2:
                    # Drop the socket mid-stream without a close handshake.
                    await fuzzer.ws._stream.aclose()
        await trio.sleep(1)
        assert_video_matches(player, publisher, fuzz_start)
        assert len(valid_counters(player, fuzz_start)) >= 10
        await eventually(lambda: len(task_names()) <= baseline_tasks)
        assert len(sfu.server.connections) == 2 and sfu.server.mux.sessions_routed == 2
        assert sum(counts.values()) == 900
        print("replies by code:", dict(sorted(counts.items())))


async def test_fuzz_leaves_no_memory_behind() -> None:
    """The same kind of flood without media, measured with tracemalloc on the server's own code."""
    rng = random.Random(7)
    valid = json.dumps(
        {
            "version": "1.0",
            "method": "stream.offer",
            "app": "live",
            "uid": "fuzz",
            "stream": "cam",
            "data": {"publish": True, "sdp": fixture_sdp("chromium_offer_publish")},
        }
    )

    async def one_round(sfu: Any) -> None:
        async with sfu.client(uid="fuzz") as fuzzer:
            assert (await fuzzer.connect())["err"] == 0
            frames = [mutate(valid, rng) for _ in range(100)] + [valid]
            for frame in frames:
                await fuzzer.ws.send_message(frame)
            for _ in frames:
                assert_reply_shape(await fuzzer._replies.receive())

    async with running_server() as sfu:
        await one_round(sfu)  # warm caches (certificate contexts, interned strings)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start()
        baseline = server_memory()
        for _ in range(10):
            await one_round(sfu)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        grown = server_memory() - baseline
        tracemalloc.stop()
        assert not sfu.server.connections and not len(sfu.server.router)
        assert grown < 100_000, grown
        print(f"server memory after 10 rounds of 101 fuzzed offers: {grown:+} B")


async def test_oversized_frame_closes_only_that_socket() -> None:
    async with running_server() as sfu, sfu.client() as good, sfu.client() as bad:
        assert (await good.connect())["err"] == 0
        await bad.ws.send_message("{" + " " * (64 * 1024))
        with pytest.raises(ConnectionClosed):
            with trio.fail_after(5):
                await bad.ws.get_message()
        assert bad.ws.closed is not None and bad.ws.closed.code == 1009
        assert (await good.request("stream.mute", "none"))["err"] == 404


async def test_reply_echo_is_never_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    """Odd but valid JSON at every position of the header."""
    async with running_server() as sfu, sfu.client() as client:
        for value in [None, 1, 1.5, True, [], {}, "x" * 10000, "\u0000", "\ud800"]:
            frame = {
                "version": "1.0",
                "method": "stream.connect",
                "app": value,
                "uid": value,
                "stream": value,
                "data": {"token": value},
            }
            text = json.dumps(frame)
            reply = await client.send_raw(text)
            assert_reply_shape(reply)


async def test_client_that_never_reads_is_dropped() -> None:
    """A client that floods requests but never reads the replies is disconnected once the kernel
    buffers and the server's bounded outbox are full — not buffered without bound."""
    from trio_websocket import open_websocket_url

    from trio_sfu.config import Config, HostPort
    from trio_sfu.server.server import Server
    from trio_sfu.testing.network import MemoryNetwork

    server = Server(Config(signal=HostPort("127.0.0.1", 0)))
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: server.serve(
                media_endpoints=[MemoryNetwork().endpoint()], task_status=task_status
            )
        )
        host, port = server.signal_addresses[0]
        frame = json.dumps({"version": "1.0", "method": "stream.mute", "app": "a", "stream": "s"})
        sent = 0
        # message_queue_size=1: the client's reader stops reading the socket once one reply waits.
        async with open_websocket_url(f"ws://{host}:{port}/ws", message_queue_size=1) as ws:
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.connections) == 1
            with trio.move_on_after(30):
                while server.connections:
                    try:
                        await ws.send_message(frame)
                    except ConnectionClosed:
                        break
                    sent += 1
            # The server gave up on the socket by itself.
            assert not server.connections
        assert 256 < sent < 1_000_000, sent
        print(f"dropped after {sent} unread replies")
        nursery.cancel_scope.cancel()
