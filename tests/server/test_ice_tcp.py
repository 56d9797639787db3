"""The ICE-TCP listener against bad input, with raw TCP clients on loopback: garbage and oversized
length prefixes close only their connection, a connection that sends no ICE check is closed after the
handshake timeout, the connection limits (per address, in all) refuse the excess, each counted on
/metrics; the answer announces the passive candidate after the UDP one. (tests/e2e/test_ice_tcp.py
has Chromium over TCP.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trio_sfu.config import Config, HostPort
from trio_sfu.media.negotiation import TransportParameters, answer_publish
from trio_sfu.server.server import Server
from trio_sfu.wire.sdp import parse_offer

from ..conftest import fixture_sdp
from .test_http import get

LOOPBACK = HostPort("127.0.0.1", 0)


@asynccontextmanager
async def listening(**settings: object) -> AsyncIterator[Server]:
    config = Config(signal=LOOPBACK, http=LOOPBACK, media=(LOOPBACK,), **settings)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(config).serve)
        yield server
        nursery.cancel_scope.cancel()


def tcp_port(server: Server) -> int:
    ((_, port),) = server.tcp_candidates
    return port


async def closed_by_server(stream: trio.SocketStream, within: float = 5.0) -> bool:
    """Whether the server closes `stream` within `within` s (reading whatever it sends)."""
    with trio.move_on_after(within):
        try:
            while await stream.receive_some(1024):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def test_the_tcp_candidate_shares_the_udp_port_and_follows_it_in_the_answer() -> None:
    async with listening() as server:
        ((host, udp_port),) = server.media_addresses
        assert server.tcp_candidates == ((host, udp_port),)
        fingerprint = "AA:" * 31 + "AA"
        local = TransportParameters("ufrag", "p" * 24, fingerprint, server.candidates, server.tcp_candidates)
        sdp = answer_publish(parse_offer(fixture_sdp("chromium_offer_publish")), local).answer
        lines = [line for line in sdp.splitlines() if line.startswith("a=candidate")]
        udp, tcp = lines[0].split(), lines[1].split()
        assert udp[2] == "udp" and tcp[2] == "tcp" and tcp[-2:] == ["tcptype", "passive"]
        assert int(tcp[3]) < int(udp[3])  # the fallback: a lower priority
        assert tcp[5] == str(udp_port)


async def test_garbage_oversized_and_silent_connections_are_closed_and_counted() -> None:
    async with listening(dtls_handshake_timeout=1.0) as server:
        port = tcp_port(server)
        garbage = await trio.open_tcp_stream("127.0.0.1", port)
        await garbage.send_all(b"\x00\x10" + b"\xee" * 16)  # a 16-byte frame of no known kind
        await garbage.send_all(b"\xff\xff")  # then a length over the cap: closed
        assert await closed_by_server(garbage)
        empty = await trio.open_tcp_stream("127.0.0.1", port)
        await empty.send_all(b"\x00\x00")  # a zero-length frame: closed
        assert await closed_by_server(empty)
        prefix_only = await trio.open_tcp_stream("127.0.0.1", port)
        await prefix_only.send_all(b"\x0f\xff")  # 4095 announced, none sent: waits, then no ICE check
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        assert await closed_by_server(prefix_only, 4.0) and await closed_by_server(silent, 4.0)
        counters = server.snapshot().ice_tcp
        assert counters["oversized_frames"] == 2 and counters["handshake_timeouts"] == 2, counters
        assert counters["open"] == 0 and counters["accepted"] == 4
        assert server.mux.dropped["unknown_kind"] == 1  # the noise frame went to the mux, dropped there
        metrics = (await get(server, "/metrics")).body.decode()
        assert 'trio_sfu_ice_tcp_refused_total{reason="oversized_frames"} 2.0' in metrics
        assert "trio_sfu_ice_tcp_connections 0.0" in metrics


async def test_connection_limits_refuse_the_excess() -> None:
    async with listening(tcp_max_per_address=3, tcp_max_connections=5) as server:
        port = tcp_port(server)
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await trio.sleep(0.2)
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        assert await closed_by_server(refused, 2.0)
        counters = server.snapshot().ice_tcp
        assert counters["refused_per_address"] == 1 and counters["open"] == 3, counters
        for stream in held:
            assert not await closed_by_server(stream, 0.05)  # the first three are still open
            await stream.aclose()


async def test_ice_tcp_can_be_off() -> None:
    async with listening(ice_tcp=False) as server:
        assert server.tcp_candidates == () and server.tcp_listeners == []
