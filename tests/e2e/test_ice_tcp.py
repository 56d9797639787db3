"""ICE over TCP with real peers: Chromium (and Firefox) behind a network that drops UDP publish and play
over TCP.

The test's private network namespace drops every UDP packet to and from the server's media port on
`lo` (a `tc` filter), as an office firewall would. Chromium then has only the server's passive TCP
candidate (RFC 6544): its selected candidate pair must be TCP, its frames decode, mute and close work.
Bad input over TCP (garbage, an oversized length prefix, a connection that never sends an ICE check)
closes only that connection, counted, while the sessions go on. Skipped outside a private network
namespace or without `tc` or Chromium.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_sfu.server.server import Server

from ..peers.browser_peers import (
    Browser,
    DemoPageBase,
    check_mute_unmute_close,
    frames,
    packets,
    serving,
    skip_reason,
    wait_until,
)
from ..peers.firefox_peers import Firefox, FirefoxProcess
from ..support.loopback_tc import limited_class, loopback_rules, port, udp_filter

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@asynccontextmanager
async def udp_dropped(media_port: int) -> AsyncIterator[None]:
    """Every UDP packet to or from `media_port` on `lo` is dropped while the block runs: it goes to a
    class whose queue holds one byte (this kernel has no `drop` action); everything else passes."""
    commands = [
        *limited_class("8kbit", 1),
        udp_filter(*port("sport", media_port)),
        udp_filter(*port("dport", media_port)),
    ]
    async with loopback_rules(commands):
        yield


async def selected_pair(page: DemoPageBase, index: int) -> dict[str, Any]:
    """The selected candidate pair's local and remote candidates, as the browser's getStats says
    (Chromium names it in its transport stats; Firefox marks the pair `selected`)."""
    raw = await page.raw_stats(index)
    transport = next((s for s in raw.values() if s.get("type") == "transport"), None)
    if transport is not None and transport.get("selectedCandidatePairId"):
        pair = raw[transport["selectedCandidatePairId"]]
    else:
        pair = next(s for s in raw.values() if s.get("type") == "candidate-pair" and s.get("selected"))
    return {"local": raw[pair["localCandidateId"]], "remote": raw[pair["remoteCandidateId"]]}


def media_port(server: Server) -> int:
    ((_, port),) = server.media_addresses
    return port


async def test_chromium_publishes_and_plays_over_tcp_when_udp_is_dropped(chromium: Browser) -> None:
    async with serving() as (server, url):
        port = media_port(server)
        assert server.tcp_candidates == (("127.0.0.1", port),), server.tcp_candidates
        async with udp_dropped(port):
            a, b = [await chromium.open(await chromium.new_context(), url) for _ in range(2)]
            started = trio.current_time()
            pub = await a.start("publish")
            await a.wait_state(pub, "live", timeout=20)
            play = await b.start("play")
            await b.wait_state(play, "live", timeout=20)
            stats = await wait_until(
                lambda: b.stats(play), lambda s: frames(s) >= 30 and packets(s, "audio") >= 50, 20,
                "30 decoded frames and 50 audio packets at the player, over TCP",
            )
            took = trio.current_time() - started
            for page, index in ((a, pub), (b, play)):
                pair = await selected_pair(page, index)
                assert pair["remote"]["protocol"] == "tcp" and pair["remote"]["port"] == port, pair
                assert pair["local"]["protocol"] == "tcp", pair
            assert (stats["video"]["width"], stats["video"]["height"]) == (640, 480)
            counters = server.snapshot().ice_tcp
            print(f"\nover TCP: publisher and player live, 30 frames decoded {took:.1f} s after publish; "
                  f"TCP counters {counters}; frames through the mux (UDP and TCP) {server.mux.received}")
            assert counters["open"] >= 2 and counters["accepted"] >= 2
            await check_mute_unmute_close(a, pub, b, [play])


async def test_firefox_publishes_and_plays_over_tcp_when_udp_is_dropped(
    firefox: Firefox, firefox_process: FirefoxProcess
) -> None:
    """As the Chromium test, with Firefox ESR on both ends."""
    async with serving(http=firefox_process.http) as (server, url):
        port = media_port(server)
        async with udp_dropped(port):
            a, b = [await firefox.open(url) for _ in range(2)]
            pub = await a.start("publish")
            await a.wait_state(pub, "live", timeout=20)
            play = await b.start("play")
            await b.wait_state(play, "live", timeout=20)
            await wait_until(
                lambda: b.stats(play), lambda s: frames(s) >= 30 and packets(s, "audio") >= 50, 20,
                "30 decoded frames and 50 audio packets at the Firefox player, over TCP",
            )
            for page, index in ((a, pub), (b, play)):
                pair = await selected_pair(page, index)
                remote = pair["remote"]
                assert remote.get("protocol") == "tcp" and remote.get("port") == port, pair
            print(f"\nFirefox over TCP: TCP counters {server.snapshot().ice_tcp}")
            await check_mute_unmute_close(a, pub, b, [play])


async def test_garbage_over_tcp_closes_only_its_connection(chromium: Browser) -> None:
    """Random bytes, a 65535-byte length prefix with nothing after it, and a connection that never
    sends an ICE check: each closed (counted); a Chromium session over TCP keeps decoding."""
    async with serving(dtls_handshake_timeout=2.0) as (server, url):
        port = media_port(server)
        async with udp_dropped(port):
            a, b = [await chromium.open(await chromium.new_context(), url) for _ in range(2)]
            pub = await a.start("publish")
            await a.wait_state(pub, "live", timeout=20)
            play = await b.start("play")
            await b.wait_state(play, "live", timeout=20)
            await wait_until(lambda: b.stats(play), lambda s: frames(s) >= 10, 20, "frames over TCP")

            garbage = await trio.open_tcp_stream("127.0.0.1", port)
            await garbage.send_all(b"\x10\x00" + bytes(range(256)) * 16)  # a 4096-byte frame of noise
            await garbage.send_all(b"\xff\xff")  # then a length over the cap
            oversized = await trio.open_tcp_stream("127.0.0.1", port)
            await oversized.send_all(b"\xff\xff")
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            for stream in (garbage, oversized, silent):
                with trio.fail_after(5):
                    while await stream.receive_some(1024):
                        pass  # the server closes it
                await stream.aclose()
            counters = server.snapshot().ice_tcp
            print(f"\nafter the bad connections: {counters}; mux {dict(server.mux.dropped)}")
            assert counters["oversized_frames"] == 2 and counters["handshake_timeouts"] >= 1, counters
            before = frames(await b.stats(play))
            await wait_until(lambda: b.stats(play), lambda s: frames(s) >= before + 30, 10,
                             "30 more frames at the player")


async def test_chromium_moves_from_udp_to_tcp_when_udp_stops(chromium: Browser) -> None:
    """A network change: a Chromium publisher and player start over UDP; then UDP to the server stops
    (as when a laptop moves to a network that drops it). Chromium's ICE moves both to their TCP
    pairs (checked at the start, kept as backups); the server follows the newly nominated address
    (the same DTLS session), and the player's frames go on."""
    async with serving() as (server, url):
        port = media_port(server)
        a, b = [await chromium.open(await chromium.new_context(), url) for _ in range(2)]
        pub = await a.start("publish")
        await a.wait_state(pub, "live", timeout=20)
        play = await b.start("play")
        await b.wait_state(play, "live", timeout=20)
        await wait_until(lambda: b.stats(play), lambda s: frames(s) >= 30, 20, "frames over UDP")
        for page, index in ((a, pub), (b, play)):
            assert (await selected_pair(page, index))["remote"]["protocol"] == "udp"
        async with udp_dropped(port):
            cut = trio.current_time()
            before = frames(await b.stats(play))
            await wait_until(lambda: b.stats(play), lambda s: frames(s) >= before + 60, 30,
                             "60 more frames after UDP stopped")
            took = trio.current_time() - cut
            pairs = [await selected_pair(page, index) for page, index in ((a, pub), (b, play))]
            print(f"\nUDP stopped: 60 more frames at the player {took:.1f} s later, over "
                  f"{[p['remote']['protocol'] for p in pairs]}; TCP counters {server.snapshot().ice_tcp}")
            assert all(p["remote"]["protocol"] == "tcp" for p in pairs), pairs
