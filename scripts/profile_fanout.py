#!/usr/bin/env python3
"""Profile the per-player half of the packet path on its own: rewrite, SRTP protect, send.

The benchmark (scripts/bench.py) measures the whole server; this isolates the part that scales with
the number of players, so a change to it can be seen without the noise of 300 real legs. It feeds a
recorded-like VP8 packet sequence through one Producer to N Consumers whose transports protect with
real SRTP keys and send on a real UDP socket to a sink socket that is never read (the kernel drops).

    python scripts/profile_fanout.py [--players 100] [--packets 2000]
    py-spy record -o docs/flamegraph-fanout.svg -- .venv/bin/python scripts/profile_fanout.py
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from pathlib import Path

import trio

from trio_sfu.config import HostPort
from trio_sfu.media.consumer import Consumer
from trio_sfu.media.negotiation import EXT_ABS_SEND_TIME, EXT_MID, NegotiatedTrack
from trio_sfu.media.producer import Producer
from trio_sfu.media.totals import Totals
from trio_sfu.server.mux import MediaMux
from trio_sfu.server.session import ChannelBacklog
from trio_sfu.server.transport_driver import TransportDriver
from trio_sfu.server.udp import UdpEndpoint
from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.dtls import SrtpKeys, SrtpProfile
from trio_sfu.transport.srtp import SrtpSession
from trio_sfu.wire.rtp import parse_rtp
from trio_sfu.wire.sdp import Codec, HeaderExtension, parse_offer

try:
    from trio_sfu.media.fanout import COMPILED
except ImportError:  # a tree from before the compiled fan-out (scripts/instructions.py --tree)
    COMPILED = False

try:
    from trio_sfu.server.timers import Timers

    TIMERS = {"timers": Timers()}
except ImportError:  # a tree from before the shared timers
    TIMERS = {}

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sdp"
CERTIFICATE = Certificate.generate()


def connected_transport(
    endpoint: UdpEndpoint, peer: tuple[str, int], connected: bool, totals: Totals
) -> TransportDriver:
    """A real TransportDriver in the state a finished ICE + DTLS handshake leaves it: SRTP keys, the
    selected peer and (unless --sendto) the peer's own connected socket."""
    offer = parse_offer((FIXTURES / "aiortc_offer_play.sdp").read_text())
    transport = TransportDriver(MediaMux(), offer, CERTIFICATE, totals=totals, **TIMERS)
    keys = SrtpKeys(SrtpProfile.AEAD_AES_128_GCM, os.urandom(28), os.urandom(28))
    srtp = transport._srtp = transport.peer.srtp = SrtpSession(keys)
    transport._media_peer = (endpoint, peer)
    transport._connected = endpoint.connect(peer) if connected else None
    wire = getattr(transport, "wire", None)  # what the compiled fan-out sends with (none before it)
    if wire is not None:
        wire.attach(*srtp.fanout_handles, srtp)
        if transport._connected is not None:
            wire.fd = transport._connected.fileno()
            shared = getattr(transport._connected, "shared_fileno", -1)  # batched sends (none before them)
            if shared >= 0:
                wire.share(shared)
    return transport


class Link:
    def send_keyframe_request(self, producer: Producer) -> None:
        pass

    def send_nack(self, producer: Producer, sequences: list[int]) -> None:
        pass


def vp8_track(ssrc: int | None, pt: int, ext_ids: tuple[int, int]) -> NegotiatedTrack:
    return NegotiatedTrack(
        mid="0",
        kind="video",
        codec=Codec(pt, "VP8", 90000, None, (), ("nack", "nack pli")),
        rtx_payload_type=None,
        header_extensions=(
            HeaderExtension(ext_ids[0], EXT_MID),
            HeaderExtension(ext_ids[1], EXT_ABS_SEND_TIME),
        ),
        feedback=("nack", "nack pli"),
        ssrc=ssrc,
        rtx_ssrc=None,
        cname="c",
        msid=None,
    )


def packets(count: int) -> list[bytes]:
    """VP8-like packets: 1200 bytes, two one-byte extensions, a keyframe every 300."""
    result = []
    for i in range(count):
        header = bytes([0x90, 96 | (0x80 if i % 5 == 4 else 0)]) + (i & 0xFFFF).to_bytes(2, "big")
        header += (3000 * (i // 5)).to_bytes(4, "big") + (1234).to_bytes(4, "big")
        extension = b"\xbe\xde\x00\x02" + b"\x10\x30" + b"\x32\x01\x02\x03" + b"\x00\x00"
        descriptor = b"\x10" + (b"\x00" if i % 300 == 0 else b"\x01")
        result.append(header + extension + descriptor + os.urandom(1200 - 28))
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=100)
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument(
        "--sendto", action="store_true", help="sendto on the shared socket, not send on a connected one"
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the caches between packets, as the rest of a busy machine does between a real "
        "server's packets (timed: the fan-out alone)",
    )
    args = parser.parse_args()
    endpoint = UdpEndpoint.bind(HostPort("127.0.0.1", 0))
    sink_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink_socket.bind(("127.0.0.1", 0))
    sink_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer = sink_socket.getsockname()
    producer = Producer(vp8_track(1234, 96, (1, 3)), Link())
    totals = Totals()
    for index in range(args.players):
        send, _ = trio.open_memory_channel[bytes](128)
        sink = connected_transport(endpoint, peer, not args.sendto, totals)
        consumer = Consumer(None, producer, vp8_track(5000 + index, 97, (4, 2)), sink, ChannelBacklog(send))
        producer.add_player(consumer)
    stream = packets(args.packets)
    headers = [parse_rtp(p) for p in stream]
    scratch = bytearray(32 << 20) if args.cold else None
    cpu = wall = 0.0
    for packet, header in zip(stream, headers, strict=True):
        assert header is not None
        if scratch is not None:
            scratch[::64] = bytes(len(scratch) // 64)  # a write to every cache line of 32 MB
        started_cpu, started = time.process_time(), time.perf_counter()
        producer.receive(packet, header, time.monotonic())
        cpu += time.process_time() - started_cpu
        wall += time.perf_counter() - started
    forwarded = args.packets * args.players
    mode = ("sendto" if args.sendto else "connected send") + (", cold caches" if args.cold else "")
    mode += ", compiled fan-out" if COMPILED else ", Python fan-out"
    print(
        f"{mode}: {args.players} players x {args.packets} packets: {cpu / forwarded * 1e6:.2f} µs CPU "
        f"({wall / forwarded * 1e6:.2f} µs wall) per forwarded packet"
    )


if __name__ == "__main__":
    trio.run(main)
