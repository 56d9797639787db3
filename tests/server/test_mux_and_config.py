"""The media port demultiplexer and the configuration loader."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest
import trio
from aioice import stun

from trio_sfu.config import MIN_PEER_RECEIVE_BUFFER, Config, ConfigError, HostPort, load
from trio_sfu.server.mux import Datagram, MediaMux
from trio_sfu.server.udp import YIELD_AFTER, ConnectedUdp, UdpEndpoint
from trio_sfu.testing.network import MemoryNetwork
from trio_sfu.wire.datagram import Kind, classify


class Inbox:
    def __init__(self, accept: bool = True) -> None:
        self.datagrams: list[Datagram] = []
        self.accept = accept

    def deliver(self, datagram: Datagram) -> bool:
        if self.accept:
            self.datagrams.append(datagram)
        return self.accept


def binding_request(username: str) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.add_message_integrity(b"x" * 22)
    message.add_fingerprint()
    return bytes(message)


@pytest.mark.parametrize(
    ("first", "kind"),
    [(0, Kind.STUN), (3, Kind.STUN), (4, Kind.UNKNOWN), (19, Kind.UNKNOWN), (20, Kind.DTLS),
     (63, Kind.DTLS), (64, Kind.UNKNOWN), (127, Kind.UNKNOWN), (128, Kind.RTP), (191, Kind.RTP),
     (192, Kind.UNKNOWN), (255, Kind.UNKNOWN)],
)
def test_classify_by_first_byte(first: int, kind: Kind) -> None:
    assert classify(bytes([first]) + b"\x00" * 20) is kind


def test_routing_by_ufrag_then_by_proven_address() -> None:
    network = MemoryNetwork()
    endpoint = network.endpoint()
    mux = MediaMux()
    a, b = Inbox(), Inbox()
    peer = ("127.0.0.1", 5000)
    with mux.route_ufrag("aaaa", a), mux.route_ufrag("bbbb", b):
        mux.handle(binding_request("aaaa:peer"), peer, endpoint)
        mux.handle(binding_request("bbbb:peer"), ("127.0.0.1", 5001), endpoint)
        assert len(a.datagrams) == 1 and a.datagrams[0].stun is not None
        assert len(b.datagrams) == 1
        # DTLS/RTP from an address no check has proven: dropped, counted, nothing created.
        mux.handle(b"\x16\xfe\xfd" + b"\x00" * 20, peer, endpoint)
        mux.handle(b"\x80" + b"\x00" * 20, peer, endpoint)
        assert mux.dropped["unknown_source"] == 2
        mux.route_address(peer, a, endpoint)
        mux.handle(b"\x80" + b"\x00" * 20, peer, endpoint)
        assert [d.kind for d in a.datagrams] == [Kind.STUN, Kind.RTP]
        # The same address over another endpoint (an ICE-TCP connection shares the numbers): not it.
        mux.handle(b"\x80" + b"\x00" * 20, peer, network.endpoint())
        assert len(a.datagrams) == 2 and mux.dropped.pop("wrong_transport") == 1
        # ...and that other endpoint going away (a closed ICE-TCP connection) leaves the route be.
        other = network.endpoint()
        assert not mux.is_routed(peer, other) and mux.is_routed(peer, endpoint)
        mux.forget_address(peer, other)
        assert mux.is_routed(peer, endpoint)
        # Unknown ufrag, malformed STUN, unknown first byte, empty datagram.
        mux.handle(binding_request("zzzz:peer"), peer, endpoint)
        mux.handle(b"\x00\x01\x00\x08" + b"\x00" * 10, peer, endpoint)
        mux.handle(b"\x50hello", peer, endpoint)
        mux.handle(b"", peer, endpoint)
        assert mux.dropped == {"unknown_source": 3, "malformed_stun": 1, "unknown_kind": 2}
    # Leaving the block removes every route of the session, address routes included.
    assert mux.sessions_routed == 0
    mux.handle(b"\x80" + b"\x00" * 20, peer, endpoint)
    assert len(a.datagrams) == 2 and mux.dropped["unknown_source"] == 4


def test_full_queue_is_a_counted_drop() -> None:
    mux = MediaMux()
    with mux.route_ufrag("aaaa", Inbox(accept=False)):
        mux.handle(binding_request("aaaa:peer"), ("127.0.0.1", 1), MemoryNetwork().endpoint())
    assert mux.dropped["queue_full"] == 1


def test_duplicate_ufrag_refused() -> None:
    mux = MediaMux()
    with mux.route_ufrag("aaaa", Inbox()), pytest.raises(ValueError), \
            mux.route_ufrag("aaaa", Inbox()):
        pass


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:8080", "127.0.0.1", 8080), ("[::1]:0", "::1", 0), ("localhost:1", "localhost", 1)],
)
def test_host_port(text: str, host: str, port: int) -> None:
    parsed = HostPort.parse(text)
    assert (parsed.host, parsed.port) == (host, port)
    assert str(parsed) == text


@pytest.mark.parametrize("text", ["8080", "::1:80", "host:", "host:x", "host:70000", ":80"])
def test_bad_host_port(text: str) -> None:
    with pytest.raises(ConfigError):
        HostPort.parse(text)


def test_toml_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        'signal = "127.0.0.1:9000"\nmedia = ["127.0.0.1:1", "[::1]:2"]\nannounce = "127.0.0.1"\n'
        'max_sessions_per_socket = 4\nlog_level = "info"\n'
    )
    config = load(file, log_level="debug")
    assert config.signal == HostPort("127.0.0.1", 9000)
    assert config.media == (HostPort("127.0.0.1", 1), HostPort("::1", 2))
    assert config.announce == ("127.0.0.1",)
    assert config.max_sessions_per_socket == 4
    assert config.log_level == "debug"
    assert load() == Config()
    file.write_text('record = "live/*=rec"\nrecording_dir = "/tmp/r"\n')
    assert load(file).record == ("live/*=rec",) and load(file).recording_dir == Path("/tmp/r")


@pytest.mark.parametrize(
    ("toml", "message"),
    [("nonsense = 1", "unknown setting"), ('media = ["nope"]', "HOST:PORT"),
     ("max_sessions = 0", "at least 1"), ('announce = ["not-an-ip"]', "IP address"),
     ("signal = ", "config file"), ('token_secret = "a"\ntoken_public_key = "/k"', "either"),
     ("max_sessions = \"many\"", "max_sessions"), ('record = ["live-no-dir"]', "APP/STREAM=DIRECTORY"),
     ('record = ["nostream=rec"]', "APP/STREAM=DIRECTORY")],
)
def test_config_errors_say_what_is_wrong(tmp_path: Path, toml: str, message: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load(file)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file"):
        load(Path(os.devnull) / "missing.toml")


async def test_a_busy_peer_reader_lets_other_tasks_run() -> None:
    """One of a publisher's datagrams can take milliseconds to fan out, and a keyframe is a burst of
    them: the peer's reader lets other tasks (signaling, handshakes) run once it has been busy for
    YIELD_AFTER, instead of draining the whole burst first."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    reader = ConnectedUdp(receiver, sender.getsockname())
    others_between: list[int] = []
    others = 0

    def handle(data: bytes, source: tuple[str, int]) -> None:
        nonlocal others
        others_between.append(others)
        others = 0
        time.sleep(2 * YIELD_AFTER)  # the fan-out: CPU the event loop cannot interrupt

    async def other_task() -> None:
        nonlocal others
        while True:
            others += 1
            await trio.sleep(0)

    with sender, receiver:
        for _ in range(6):
            sender.sendto(b"burst", receiver.getsockname())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.receive_into, handle)
            nursery.start_soon(other_task)
            with trio.fail_after(5):
                while len(others_between) < 6:
                    await trio.sleep(0)
            nursery.cancel_scope.cancel()
    # Draining the burst in one go would leave no turn for the other task after the first datagram;
    # with a turn after each (scheduling order within a turn is random) it gets about one per gap.
    assert sum(others_between[1:]) >= 3, others_between


def test_peer_receive_buffer_follows_max_input_delay() -> None:
    # 0.5 s of 2.5 Mbit/s is 156 KB; a tiny delay still leaves room for a keyframe burst.
    assert Config().peer_receive_buffer == 156_250
    assert Config(max_input_delay=0.01).peer_receive_buffer == MIN_PEER_RECEIVE_BUFFER
    assert Config(max_input_delay=2, max_publisher_bitrate=8_000_000).peer_receive_buffer == 2_000_000
    with pytest.raises(ConfigError, match="max_input_delay"):
        load(max_input_delay=0)


async def test_a_peer_socket_queues_about_its_bound_and_counts_what_the_kernel_dropped() -> None:
    """A server too busy to read its publisher's socket keeps about peer_receive_buffer bytes of its
    media (then serves them, late by at most that much) and drops the rest, counted, instead of piling
    up seconds of it."""
    endpoint = UdpEndpoint.bind(HostPort("127.0.0.1", 0))
    endpoint.peer_receive_buffer = 128 * 1024
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    try:
        peer = endpoint.connect(sender.getsockname())
        sent = 1000  # 1.2 MB of media while nobody reads
        for _ in range(sent):
            sender.sendto(b"\x80" * 1200, endpoint.local_address)
        queued = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                peer._socket.recv(2048)
                queued += 1
        # ~128 KB of 1.2 KB datagrams is ~107; the kernel's per-datagram overhead varies a little.
        assert 60 <= queued <= 160, queued
        assert peer.new_drops() == sent - queued
        assert peer.new_drops() == 0  # counted once
        peer.close()
    finally:
        sender.close()
        endpoint.close()
