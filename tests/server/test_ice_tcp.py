"""The ICE-TCP listener against bad input, with raw TCP clients on loopback: garbage and oversized
length prefixes close only their connection, a connection that sends no ICE check is closed after the
handshake timeout, the connection limits (per address, in all) refuse the excess, each counted on
/metrics; the answer announces the passive candidate after the UDP one. (tests/e2e/test_ice_tcp.py
has Chromium over TCP.)"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trio_sfu.config import Config, HostPort
from trio_sfu.media.negotiation import TransportParameters, answer_publish
from trio_sfu.server.server import Server
from trio_sfu.server.udp import UdpEndpoint
from trio_sfu.testing.client_transport import open_client
from trio_sfu.testing.offer import VP8_PT
from trio_sfu.testing.tcp_endpoint import open_tcp_client_endpoint
from trio_sfu.wire.rtp import parse_rtp
from trio_sfu.wire.sdp import parse_offer

from ..conftest import Harness, fixture_sdp
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


# ---------------------------------------------------------------------- a slow reader over TCP

FPS, PACKETS_PER_FRAME, PAYLOAD = 30, 8, 1000
KEYFRAME_EVERY = 60  # frames: every 2 s


def video_frame(index: int, first_sequence: int, ssrc: int) -> list[bytes]:
    """One test VP8 frame as PACKETS_PER_FRAME packets (the marker on the last); each payload carries
    the frame's index after its descriptor, so a player's packets can be matched to when they left."""
    keyframe = index % KEYFRAME_EVERY == 0
    packets = []
    for part in range(PACKETS_PER_FRAME):
        descriptor = b"\x10" if part == 0 else b"\x00"  # S=1 on the frame's first packet
        head = (b"\x00\x00\x00\x9d\x01\x2a" if keyframe else b"\x01\x00\x00") if part == 0 else b""
        body = head + index.to_bytes(4, "big") + bytes(PAYLOAD)
        header = struct.pack("!BBHII", 0x80, (0x80 if part == PACKETS_PER_FRAME - 1 else 0) | VP8_PT,
                             (first_sequence + part) & 0xFFFF, index * 3000, ssrc)
        packets.append(header + descriptor + body)
    return packets


def frame_index(packet: bytes) -> int | None:
    """The index a test frame's packet carries (None for other packets: padding, probes)."""
    header = parse_rtp(packet)
    if header is None or header.payload_length < 12:
        return None
    start = header.header_length + 1
    if packet[header.header_length] & 0x10:  # a frame's first packet: after the VP8 start
        start += 6 if packet[start] & 0x01 == 0 else 3
    return int.from_bytes(packet[start : start + 4], "big")


def latencies(
    received: list[tuple[float, bytes]], sent_at: dict[int, float], since: float, until: float
) -> list[float]:
    """Seconds from each frame's send to each of its packets' arrival, for frames sent in [since, until)."""
    out = []
    for arrived, packet in received:
        index = frame_index(packet)
        if index is not None and index in sent_at and since <= sent_at[index] < until:
            out.append(arrived - sent_at[index])
    return sorted(out)


def percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(len(values) * share))]


async def test_a_slow_tcp_reader_loses_whole_frames_and_delays_nobody() -> None:
    """A player over TCP stops reading for 4 s: its connection fills, and its frames are dropped
    whole (video then waits for a keyframe it asked for), counted; a UDP player beside it keeps the
    same latency; once the TCP player reads again it gets a keyframe first and then frames."""
    async with listening() as server, trio.open_nursery() as nursery:
        ((host, port),) = server.tcp_candidates
        harness = Harness(server, nursery)
        async with (
            harness.client(uid="pub") as pub_sig,
            harness.client(uid="fast") as fast_sig,
            harness.client(uid="slow") as slow_sig,
            open_client(pub_sig, UdpEndpoint.bind(LOOPBACK), publish=True) as pub,
            open_client(fast_sig, UdpEndpoint.bind(LOOPBACK), publish=False) as fast,
            open_tcp_client_endpoint(host, port, receive_buffer=8192) as slow_endpoint,
            open_client(slow_sig, slow_endpoint, publish=False) as slow,
        ):
            sent_at: dict[int, float] = {}
            sequence = 0

            async def publish(frames: int) -> None:
                nonlocal sequence
                start = len(sent_at)
                for index in range(start, start + frames):
                    sent_at[index] = trio.current_time()
                    for packet in video_frame(index, sequence, pub.local.video_ssrc):
                        pub.transport.send_rtp(packet)
                    sequence += PACKETS_PER_FRAME
                    await trio.sleep(1 / FPS)

            await publish(2 * FPS)  # both players started (each from a keyframe)
            phase_a = trio.current_time()
            await publish(3 * FPS)
            slow_endpoint.pause_reading()
            phase_b = trio.current_time()
            await publish(4 * FPS)
            slow_endpoint.resume_reading()
            resumed = trio.current_time()
            await publish(3 * FPS)
            await trio.sleep(0.3)

        totals = server.totals
        fast_a = latencies(fast.transport.received.rtp, sent_at, phase_a, phase_b)
        fast_b = latencies(fast.transport.received.rtp, sent_at, phase_b, resumed)
        slow_after = [(t, frame_index(p)) for t, p in slow.transport.received.rtp if t > resumed]
        print(f"\nUDP player latency ms, TCP player reading: p50 {percentile(fast_a, 0.5) * 1000:.2f} "
              f"p99 {percentile(fast_a, 0.99) * 1000:.2f} ({len(fast_a)} packets); TCP player stalled: "
              f"p50 {percentile(fast_b, 0.5) * 1000:.2f} p99 {percentile(fast_b, 0.99) * 1000:.2f} "
              f"({len(fast_b)} packets); stream_congestion drops {totals.drop_stream_congestion}, "
              f"ICE-TCP {server.snapshot().ice_tcp}")
        assert len(fast_b) >= 0.99 * 4 * FPS * PACKETS_PER_FRAME  # the UDP player lost nothing
        assert percentile(fast_b, 0.99) <= 2 * percentile(fast_a, 0.99) + 0.005  # within noise
        # Whole frames: from the first packet refused, everything up to the next keyframe.
        assert totals.drop_stream_congestion > PACKETS_PER_FRAME
        # After it reads again: what was queued, then from a keyframe on (indices at multiples of
        # KEYFRAME_EVERY start each run the player gets after a gap).
        indices = [index for _, index in slow_after if index is not None]
        assert indices, "the TCP player got nothing after it read again"
        late = [i for i in indices if sent_at[i] >= resumed]
        assert late and late[0] % KEYFRAME_EVERY == 0, late[:10]
        assert late == sorted(late)


async def test_a_thousand_idle_connections_are_held_to_the_limit_and_media_goes_on() -> None:
    """1000 connections that never send an ICE check, up to tcp_max_connections: the excess is refused
    at once (counted), a session's media keeps flowing meanwhile, and the idle ones are closed after
    the handshake timeout."""
    limit = 1000
    settings = {"tcp_max_connections": limit, "tcp_max_per_address": limit, "dtls_handshake_timeout": 3.0}
    async with listening(**settings) as server:
        ((host, port),) = server.tcp_candidates
        async with trio.open_nursery() as nursery:
            harness = Harness(server, nursery)
            async with (
                harness.client(uid="pub") as pub_sig,
                harness.client(uid="viewer") as play_sig,
                open_client(pub_sig, UdpEndpoint.bind(LOOPBACK), publish=True) as pub,
                open_client(play_sig, UdpEndpoint.bind(LOOPBACK), publish=False) as viewer,
            ):
                idle = [await trio.open_tcp_stream(host, port) for _ in range(limit)]
                extra = [await trio.open_tcp_stream(host, port) for _ in range(20)]
                await trio.sleep(0.5)
                counters = server.snapshot().ice_tcp
                assert counters["open"] == limit and counters["refused_total"] == 20, counters
                for stream in extra:
                    assert await closed_by_server(stream, 2.0)
                before = len(viewer.transport.received.rtp)
                for index in range(30):
                    for packet in video_frame(index, index * PACKETS_PER_FRAME, pub.local.video_ssrc):
                        pub.transport.send_rtp(packet)
                    await trio.sleep(1 / FPS)
                await trio.sleep(0.2)
                got = len(viewer.transport.received.rtp) - before
                assert got >= 30 * PACKETS_PER_FRAME * 0.99, got  # the viewer's media went on
                with trio.fail_after(30):  # the handshake timeout (3 s), then 1000 closes
                    while server.snapshot().ice_tcp["open"]:
                        await trio.sleep(0.2)
                counters = server.snapshot().ice_tcp
                print(f"\n{limit} idle connections: {counters}; the viewer got {got} packets meanwhile")
                assert counters["handshake_timeouts"] == limit
                for stream in idle + extra:
                    await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_reset_connection_ends_only_itself() -> None:
    """A client that resets its connection (SO_LINGER 0: RST, not FIN), before and after sending,
    ends its own connection; the server and its other connections go on."""
    async with listening() as server:
        port = tcp_port(server)
        bystander = await trio.open_tcp_stream("127.0.0.1", port)
        for payload in (b"", b"\x00\x10" + b"\xee" * 16, b"\x0f"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.connect(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if payload:
                sock.sendall(payload)
            await trio.sleep(0.1)
            sock.close()  # RST
            await trio.sleep(0.1)
        await trio.sleep(0.3)
        counters = server.snapshot().ice_tcp
        assert counters["accepted"] == 4 and counters["open"] == 1, counters  # the bystander
        assert not await closed_by_server(bystander, 0.2)
        assert (await get(server, "/healthz")).status == 200
        await bystander.aclose()


async def test_udp_from_a_tcp_players_address_is_not_its_media() -> None:
    """UDP and ICE-TCP ports share numbers: UDP datagrams from the address (IP and port) of a player's
    TCP connection are not what its ICE check proved: the mux drops them (counted), its session unharmed."""
    async with listening() as server, trio.open_nursery() as nursery:
        ((host, port),) = server.tcp_candidates
        harness = Harness(server, nursery)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as impostor:
            impostor.bind((host, 0))
            shared_port = impostor.getsockname()[1]
            async with (
                harness.client(uid="pub") as pub_sig,
                harness.client(uid="tcp") as tcp_sig,
                open_client(pub_sig, UdpEndpoint.bind(LOOPBACK), publish=True) as pub,
                open_tcp_client_endpoint(host, port, local_port=shared_port) as endpoint,
                open_client(tcp_sig, endpoint, publish=False) as player,
            ):
                for garbage in (b"\x16\xfe\xfd" + bytes(40), b"\x80\x60" + bytes(40)):  # DTLS, RTP
                    impostor.sendto(garbage, (host, port))
                await trio.sleep(0.2)
                assert server.mux.dropped["wrong_transport"] == 2
                metrics = (await get(server, "/metrics")).body.decode()
                assert 'trio_sfu_dropped_packets_total{reason="wrong_transport"} 2.0' in metrics
                before = len(player.transport.received.rtp)
                for index in range(10):
                    for packet in video_frame(index, index * PACKETS_PER_FRAME, pub.local.video_ssrc):
                        pub.transport.send_rtp(packet)
                    await trio.sleep(1 / FPS)
                await trio.sleep(0.2)
                assert len(player.transport.received.rtp) - before >= 10 * PACKETS_PER_FRAME
        nursery.cancel_scope.cancel()
