"""The DTLS endpoint, sans-IO: two endpoints (or one and a plain pyOpenSSL peer) over a simulated wire.

Time is a fake clock throughout, so loss, retransmission and timeouts are exact and instant.
"""

from __future__ import annotations

import collections
import datetime
import heapq
import itertools
import math
import random
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from trio_sfu.transport.certificate import Certificate, fingerprint_of_der
from trio_sfu.transport.dtls import DtlsEndpoint, DtlsState, SrtpKeys, SrtpProfile

GCM = SrtpProfile.AEAD_AES_128_GCM
CM = SrtpProfile.AES_CM_128_HMAC_SHA1_80
ENDED = (DtlsState.CONNECTED, DtlsState.FAILED, DtlsState.CLOSED)


@pytest.fixture(scope="module")
def certificates() -> tuple[Certificate, Certificate]:
    return Certificate.generate("client"), Certificate.generate("server")


def make_pair(
    certificates: tuple[Certificate, Certificate],
    *,
    client_profiles: tuple[SrtpProfile, ...] = (GCM, CM),
    server_profiles: tuple[SrtpProfile, ...] = (GCM, CM),
    client_options: dict[str, Any] | None = None,
    server_options: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    client_cert, server_cert = certificates
    client = DtlsEndpoint(
        client_cert,
        server=False,
        remote_fingerprints=[("sha-256", server_cert.fingerprint("sha-256"))],
        profiles=client_profiles,
        **(options | (client_options or {})),
    )
    server = DtlsEndpoint(
        server_cert,
        server=True,
        remote_fingerprints=[("sha-256", client_cert.fingerprint("sha-256"))],
        profiles=server_profiles,
        **(options | (server_options or {})),
    )
    return client, server


@attrs.define
class Sent:
    time: float
    sender: str
    size: int
    dropped: bool


@attrs.define
class Wire:
    """A fake clock and a network between a client and a server endpoint.

    `drop(sender, index, datagram)` loses a datagram (index counts what that side sent); `shape` maps
    each batch of datagrams an endpoint returns to what the network delivers (reorder, duplicate).
    """

    client: DtlsEndpoint
    server: DtlsEndpoint
    drop: Callable[[str, int, bytes], bool] = lambda sender, index, data: False
    shape: Callable[[list[bytes]], list[bytes]] = lambda datagrams: datagrams
    latency: float = 0.01
    now: float = 0.0
    log: list[Sent] = attrs.Factory(list)
    batches: list[list[bytes]] = attrs.Factory(list)
    _counts: collections.Counter[str] = attrs.Factory(collections.Counter)
    _queue: list[tuple[float, int, str, bytes]] = attrs.Factory(list)
    _order: Iterator[int] = attrs.Factory(itertools.count)

    def endpoint(self, name: str) -> DtlsEndpoint:
        return self.client if name == "client" else self.server

    def send(self, sender: str, datagrams: list[bytes]) -> None:
        if datagrams:
            self.batches.append(datagrams)
        receiver = "server" if sender == "client" else "client"
        for data in self.shape(list(datagrams)):
            index = self._counts[sender]
            self._counts[sender] += 1
            dropped = self.drop(sender, index, data)
            self.log.append(Sent(self.now, sender, len(data), dropped))
            if not dropped:
                heapq.heappush(self._queue, (self.now + self.latency, next(self._order), receiver, data))

    def done(self) -> bool:
        return self.client.state in ENDED and self.server.state in ENDED

    def run(self, limit: float = 120.0) -> float:
        """Start both sides and run until both end (or nothing is left to happen); return the time."""
        self.send("server", self.server.start(self.now))
        self.send("client", self.client.start(self.now))
        while not self.done():
            times = [self._queue[0][0]] if self._queue else []
            times += [d for d in (self.client.next_deadline(), self.server.next_deadline()) if d is not None]
            if not times or min(times) > limit:
                break
            self.now = max(self.now, min(times))
            while self._queue and self._queue[0][0] <= self.now:
                _, _, receiver, data = heapq.heappop(self._queue)
                self.send(receiver, self.endpoint(receiver).receive(data, self.now))
            for name in ("client", "server"):
                deadline = self.endpoint(name).next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.send(name, self.endpoint(name).handle_timeout(self.now))
        # Deliver what is still in flight (e.g. the server's Finished) at its time.
        while self._queue:
            time, _, receiver, data = heapq.heappop(self._queue)
            self.now = max(self.now, time)
            self.send(receiver, self.endpoint(receiver).receive(data, self.now))
        return self.now

    def sends(self, sender: str) -> list[Sent]:
        return [sent for sent in self.log if sent.sender == sender]


def assert_connected(client: DtlsEndpoint, server: DtlsEndpoint) -> tuple[SrtpKeys, SrtpKeys]:
    assert (client.state, client.failure) == (DtlsState.CONNECTED, None)
    assert (server.state, server.failure) == (DtlsState.CONNECTED, None)
    assert client.keys is not None and server.keys is not None
    return client.keys, server.keys


# -- a clean handshake --------------------------------------------------------------------------------


def test_handshake_connects_and_keys_mirror(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates)
    wire = Wire(client, server)
    finished = wire.run()
    client_keys, server_keys = assert_connected(client, server)
    assert client_keys.profile is server_keys.profile is GCM
    assert client_keys.local_key == server_keys.remote_key
    assert client_keys.remote_key == server_keys.local_key
    assert client_keys.local_key != client_keys.remote_key
    assert len(client_keys.local_key) == len(client_keys.remote_key) == 16 + 12
    assert finished < 0.05  # two round trips of 10 ms
    assert client.next_deadline() is None and server.next_deadline() is None
    assert client.counters["retransmits"] == server.counters["retransmits"] == 0
    assert "local_key" not in repr(client_keys)


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "expected"),
    [
        ((GCM, CM), (GCM, CM), GCM),
        ((CM,), (GCM, CM), CM),
        ((GCM, CM), (CM,), CM),
        ((GCM, CM), (CM, GCM), CM),  # the server's preference decides
    ],
)
def test_profile_selection(
    certificates: tuple[Certificate, Certificate],
    client_profiles: tuple[SrtpProfile, ...],
    server_profiles: tuple[SrtpProfile, ...],
    expected: SrtpProfile,
) -> None:
    client, server = make_pair(certificates, client_profiles=client_profiles, server_profiles=server_profiles)
    Wire(client, server).run()
    client_keys, server_keys = assert_connected(client, server)
    assert client_keys.profile is server_keys.profile is expected
    assert len(client_keys.local_key) == 16 + (12 if expected is GCM else 14)
    assert client_keys.local_key == server_keys.remote_key


def test_no_common_profile_fails_both_sides(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates, client_profiles=(GCM,), server_profiles=(CM,))
    Wire(client, server).run()
    for endpoint in (client, server):
        assert endpoint.state is DtlsState.FAILED
        assert endpoint.failure == "the peer negotiated no SRTP profile we offered"
        assert endpoint.keys is None


def test_flights_are_cut_to_the_mtu(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates, mtu=300)
    wire = Wire(client, server)
    wire.run()
    assert_connected(client, server)
    assert max(len(batch) for batch in wire.batches) >= 2
    assert all(len(datagram) <= 300 for batch in wire.batches for datagram in batch)


def test_constructor_rejects_nonsense(certificates: tuple[Certificate, Certificate]) -> None:
    with pytest.raises(ValueError, match="MTU"):
        make_pair(certificates, mtu=200)
    with pytest.raises(ValueError, match="profile"):
        make_pair(certificates, client_profiles=())
    with pytest.raises(ValueError, match="timeout"):
        make_pair(certificates, initial_timeout=5.0, max_timeout=1.0)


def test_server_clock_starts_on_first_datagram_without_start(
    certificates: tuple[Certificate, Certificate],
) -> None:
    client, server = make_pair(certificates)
    hello = client.start(5.0)
    assert server.state is DtlsState.NEW and server.next_deadline() is None
    flight = server.receive(hello[0], 6.0)
    assert flight
    assert server.state.value == "handshaking"  # (a plain `is` check confuses mypy's narrowing)
    assert server.next_deadline() == pytest.approx(6.1)
    assert server.start(7.0) == []  # already started


def test_server_waits_for_client_hello_until_handshake_timeout(
    certificates: tuple[Certificate, Certificate],
) -> None:
    _, server = make_pair(certificates, handshake_timeout=10.0)
    assert server.start(100.0) == []
    assert server.next_deadline() == 110.0
    assert server.handle_timeout(109.9) == []
    assert server.state is DtlsState.HANDSHAKING
    assert server.handle_timeout(110.0) == []
    assert (server.state, server.failure) == (DtlsState.FAILED, "DTLS handshake timed out")
    assert server.next_deadline() is None


# -- loss, reordering, duplication --------------------------------------------------------------------


def test_lost_server_flight_is_resent_by_server_clock(certificates: tuple[Certificate, Certificate]) -> None:
    # The client waits a whole second (like OpenSSL), so only the server's own timer can save time.
    client, server = make_pair(certificates, client_options={"initial_timeout": 1.0})
    wire = Wire(client, server, drop=lambda sender, index, data: sender == "server" and index == 0)
    finished = wire.run()
    assert_connected(client, server)
    server_sends = wire.sends("server")
    assert server_sends[0].dropped and server_sends[0].time == pytest.approx(0.01)
    assert server_sends[1].time == pytest.approx(0.11)  # initial_timeout after the lost flight
    assert server.counters["retransmits"] == 1
    assert client.counters["retransmits"] == 0
    assert finished < 0.2


def test_lost_server_flight_repeated_client_hello_triggers_resend(
    certificates: tuple[Certificate, Certificate],
) -> None:
    # OpenSSL ignores a repeated ClientHello; the endpoint answers it (RFC 6347 §4.2.4).
    client, server = make_pair(certificates, server_options={"initial_timeout": 1.0})
    wire = Wire(client, server, drop=lambda sender, index, data: sender == "server" and index == 0)
    finished = wire.run()
    assert_connected(client, server)
    assert client.counters["retransmits"] == 1
    assert server.counters["peer_retransmits"] == 1
    assert server.counters["retransmits"] == 0
    assert finished < 0.2


def test_lost_client_hello(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates)
    wire = Wire(client, server, drop=lambda sender, index, data: sender == "client" and index == 0)
    finished = wire.run()
    assert_connected(client, server)
    assert [sent.time for sent in wire.sends("client")][:2] == [0.0, pytest.approx(0.1)]
    assert finished < 0.2


def test_lost_server_finished_is_resent_when_client_repeats(
    certificates: tuple[Certificate, Certificate],
) -> None:
    # The server is done and has no timer; OpenSSL drops the client's repeated (identical) Finished as
    # a replay, so the endpoint itself must answer with its last flight.
    client, server = make_pair(certificates)
    wire = Wire(client, server, drop=lambda sender, index, data: sender == "server" and index == 1)
    finished = wire.run()
    assert_connected(client, server)
    assert server.counters["peer_retransmits"] == 1
    assert client.counters["retransmits"] == 1
    assert finished < 0.2


def test_lost_client_finished_flight(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates)
    wire = Wire(client, server, drop=lambda sender, index, data: sender == "client" and index == 1)
    finished = wire.run()
    assert_connected(client, server)
    assert finished < 0.3


def test_several_flights_lost_backoff_doubles(certificates: tuple[Certificate, Certificate]) -> None:
    # Every datagram is lost until t = 0.6: the ClientHello goes at 0, 0.1, 0.3, 0.7.
    client, server = make_pair(certificates)
    wire = Wire(client, server)
    wire.drop = lambda sender, index, data: wire.now < 0.6
    finished = wire.run()
    assert_connected(client, server)
    assert [sent.time for sent in wire.sends("client")][:4] == pytest.approx([0.0, 0.1, 0.3, 0.7])
    assert finished < 1.0


def test_every_other_datagram_lost(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates)
    wire = Wire(client, server, drop=lambda sender, index, data: index % 2 == 0)
    finished = wire.run()
    assert_connected(client, server)
    assert finished < 1.0


def test_retransmit_interval_caps_then_handshake_times_out(
    certificates: tuple[Certificate, Certificate],
) -> None:
    client, server = make_pair(certificates)
    wire = Wire(client, server, drop=lambda sender, index, data: True)
    finished = wire.run()
    times = [sent.time for sent in wire.sends("client")]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.0]
    assert set(gaps[6:]) == {3.0}
    assert finished == pytest.approx(30.0)
    for endpoint in (client, server):
        assert (endpoint.state, endpoint.failure) == (DtlsState.FAILED, "DTLS handshake timed out")
        assert endpoint.keys is None and endpoint.next_deadline() is None
    assert client.handle_timeout(100.0) == []


def test_handle_timeout_before_deadline_sends_nothing(certificates: tuple[Certificate, Certificate]) -> None:
    client, _ = make_pair(certificates)
    assert len(client.start(0.0)) == 1
    assert client.next_deadline() == pytest.approx(0.1)
    assert client.handle_timeout(0.05) == []
    assert len(client.handle_timeout(0.1)) == 1
    assert client.next_deadline() == pytest.approx(0.3)
    assert client.counters["retransmits"] == 1


def test_datagrams_reordered_within_each_flight(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates, mtu=300)
    wire = Wire(client, server, shape=lambda datagrams: datagrams[::-1])
    finished = wire.run()
    assert_connected(client, server)
    assert max(len(batch) for batch in wire.batches) >= 2
    assert finished < 1.0


def test_duplicated_datagrams(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates, mtu=300)
    wire = Wire(client, server, shape=lambda datagrams: [d for d in datagrams for _ in range(2)])
    finished = wire.run()
    assert_connected(client, server)
    assert finished < 0.1


def test_random_loss_reorder_and_duplication(certificates: tuple[Certificate, Certificate]) -> None:
    """40% loss, 20% duplication, every batch shuffled, assorted MTUs and latencies: always connects."""
    for seed in range(200):
        rng = random.Random(seed)

        def shape(datagrams: list[bytes], rng: random.Random = rng) -> list[bytes]:
            datagrams = datagrams + [d for d in datagrams if rng.random() < 0.2]
            rng.shuffle(datagrams)
            return datagrams

        client, server = make_pair(certificates, mtu=rng.choice([256, 300, 600, 1200]))

        def drop(sender: str, index: int, data: bytes, rng: random.Random = rng) -> bool:
            return rng.random() < 0.4

        wire = Wire(client, server, drop=drop, shape=shape)
        wire.latency = rng.choice([0.001, 0.01, 0.05, 0.2])
        finished = wire.run()
        assert client.state is server.state is DtlsState.CONNECTED, seed
        assert finished < 25.0, seed
        assert client.keys is not None and server.keys is not None
        assert client.keys.local_key == server.keys.remote_key, seed


def test_repeats_carry_fresh_epoch0_record_numbers(certificates: tuple[Certificate, Certificate]) -> None:
    """A repeat must not look like a replay: new numbers in epoch 0, the same bytes otherwise."""
    client, server = make_pair(certificates)
    server.start(0.0)
    hello = client.start(0.0)
    flight = server.receive(hello[0], 0.0)
    repeats = [server.handle_timeout(t) for t in (0.1, 0.31)]
    numbers = [[r.seq for r in parse(datagram)] for datagram in [flight[0]] + [r[0] for r in repeats]]
    assert all(numbers)
    flat = [n for row in numbers for n in row]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)
    for repeat in repeats:
        assert [r.body for r in parse(repeat[0])] == [r.body for r in parse(flight[0])]
    # The client ignores copies of what it has, and still completes with the original.
    finished = [out for datagram in flight + repeats[0] for out in client.receive(datagram, 0.35)]
    assert len(finished) == 1
    for datagram in server.receive(finished[0], 0.4):
        client.receive(datagram, 0.45)
    assert_connected(client, server)


def test_openssl_wall_clock_timer_does_not_double_retransmissions(
    certificates: tuple[Certificate, Certificate],
) -> None:
    """OpenSSL would re-send from inside a read once its 1 s wall-clock timer expires (this waits 1 s)."""
    client, server = make_pair(certificates, mtu=300)
    flight = server.receive(client.start(0.0)[0], 0.0)
    assert len(flight) >= 2
    time.sleep(1.05)
    assert client.receive(flight[0], 0.02) == []  # part of a flight: nothing to say yet
    assert client.counters["openssl_timer_absorbed"] == 1
    replies = [out for datagram in flight[1:] for out in client.receive(datagram, 0.03)]
    assert replies and client.counters["datagrams_out"] == 1 + len(replies)


async def test_handshake_over_lossy_trio_channels(
    certificates: tuple[Certificate, Certificate], autojump_clock: trio.testing.MockClock
) -> None:
    """Trio tasks drive each endpoint at its next_deadline; the link loses 40% and delays 20 ms."""
    client, server = make_pair(certificates)
    rng = random.Random(2024)
    start = trio.current_time()

    async def run(
        endpoint: DtlsEndpoint,
        inbox: trio.MemoryReceiveChannel[bytes],
        outbox: trio.MemorySendChannel[bytes],
        nursery: trio.Nursery,
    ) -> None:
        async def deliver(data: bytes) -> None:
            await trio.sleep(0.02)
            await outbox.send(data)

        def transmit(datagrams: list[bytes]) -> None:
            for data in datagrams:
                if rng.random() >= 0.4:
                    nursery.start_soon(deliver, data)

        transmit(endpoint.start(trio.current_time()))
        while True:
            deadline = endpoint.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                data = await inbox.receive()
                transmit(endpoint.receive(data, trio.current_time()))
                continue
            transmit(endpoint.handle_timeout(trio.current_time()))

    to_server_send, to_server = trio.open_memory_channel[bytes](100)
    to_client_send, to_client = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, server, to_server, to_client_send, nursery)
        nursery.start_soon(run, client, to_client, to_server_send, nursery)
        while not (client.state in ENDED and server.state in ENDED):
            await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    assert_connected(client, server)
    elapsed = trio.current_time() - start
    assert elapsed < 5.0
    assert client.counters["retransmits"] + server.counters["retransmits"] >= 1


# -- fingerprints -------------------------------------------------------------------------------------


def test_client_rejects_server_with_wrong_fingerprint(certificates: tuple[Certificate, Certificate]) -> None:
    client_cert, server_cert = certificates
    impostor = Certificate.generate("impostor")
    client = DtlsEndpoint(
        client_cert, server=False, remote_fingerprints=[("sha-256", server_cert.fingerprint())]
    )
    server = DtlsEndpoint(impostor, server=True, remote_fingerprints=[("sha-256", client_cert.fingerprint())])
    Wire(client, server).run()
    assert (client.state, client.failure) == (
        DtlsState.FAILED,
        "certificate fingerprint does not match the SDP",
    )
    assert client.keys is None
    assert server.state is DtlsState.FAILED and server.keys is None
    assert server.failure is not None and server.failure.startswith("DTLS alert: ")  # told by the client


def test_server_rejects_client_with_wrong_fingerprint(certificates: tuple[Certificate, Certificate]) -> None:
    client_cert, server_cert = certificates
    client = DtlsEndpoint(
        client_cert, server=False, remote_fingerprints=[("sha-256", server_cert.fingerprint())]
    )
    server = DtlsEndpoint(
        server_cert, server=True, remote_fingerprints=[("sha-256", Certificate.generate().fingerprint())]
    )
    Wire(client, server).run()
    assert (server.state, server.failure) == (
        DtlsState.FAILED,
        "certificate fingerprint does not match the SDP",
    )
    assert server.keys is None
    assert client.state is DtlsState.FAILED and client.keys is None
    assert client.failure is not None and client.failure.startswith("DTLS alert: ")


@pytest.mark.parametrize("fingerprints", [[], [("md5", "AB:CD")], [("sha-3", "AB:CD")]])
def test_no_fingerprint_of_a_known_algorithm_fails_at_once(
    certificates: tuple[Certificate, Certificate], fingerprints: list[tuple[str, str]]
) -> None:
    client_cert, _ = certificates
    for server_role in (False, True):
        endpoint = DtlsEndpoint(client_cert, server=server_role, remote_fingerprints=fingerprints)
        assert endpoint.start(0.0) == []
        assert endpoint.state is DtlsState.FAILED and endpoint.keys is None
        assert endpoint.failure is not None
        assert "no certificate fingerprint with a supported hash function" in endpoint.failure
        assert endpoint.next_deadline() is None


def test_fingerprint_match_ignores_case_and_checks_strongest_hash(
    certificates: tuple[Certificate, Certificate],
) -> None:
    client_cert, server_cert = certificates
    other = Certificate.generate()

    def run(client_fingerprints: list[tuple[str, str]]) -> DtlsEndpoint:
        client = DtlsEndpoint(client_cert, server=False, remote_fingerprints=client_fingerprints)
        server = DtlsEndpoint(
            server_cert, server=True, remote_fingerprints=[("sha-256", client_cert.fingerprint())]
        )
        Wire(client, server).run()
        return client

    # Lower-case value and upper-case algorithm name, with a wrong SHA-1 beside it: SHA-256 decides.
    right = [("SHA-256", server_cert.fingerprint("sha-256").lower()), ("sha-1", other.fingerprint("sha-1"))]
    assert run(right).state is DtlsState.CONNECTED
    # Several fingerprints of the best hash: any may match.
    several = [("sha-512", other.fingerprint("sha-512")), ("sha-512", server_cert.fingerprint("sha-512"))]
    assert run(several).state is DtlsState.CONNECTED
    # A right SHA-1 does not excuse a wrong SHA-256 (RFC 8122 §5).
    wrong = [("sha-256", other.fingerprint("sha-256")), ("sha-1", server_cert.fingerprint("sha-1"))]
    client = run(wrong)
    assert (client.state, client.failure) == (
        DtlsState.FAILED,
        "certificate fingerprint does not match the SDP",
    )


# -- garbage ------------------------------------------------------------------------------------------


@attrs.frozen
class Record:
    type: int
    epoch: int
    seq: int
    body: bytes


def parse(datagram: bytes) -> list[Record]:
    records = []
    while datagram:
        content_type, _version, epoch, seq_hi, seq_lo, length = struct.unpack("!BHHHIH", datagram[:13])
        records.append(Record(content_type, epoch, seq_hi << 32 | seq_lo, datagram[13 : 13 + length]))
        datagram = datagram[13 + length :]
    return records


def record(content_type: int, epoch: int, seq: int, body: bytes, version: int = 0xFEFD) -> bytes:
    return struct.pack("!BHHHIH", content_type, version, epoch, seq >> 32, seq & 0xFFFFFFFF, len(body)) + body


def garbage(rng: random.Random) -> list[bytes]:
    """Things no peer should send: noise, truncation, plausible headers around junk."""
    junk = rng.randbytes
    handshake_header = bytes([11]) + (200).to_bytes(3, "big") + b"\x00\x07" + (0).to_bytes(3, "big")
    return [
        b"",
        b"\x16",
        junk(1),
        junk(12),
        junk(100),
        junk(1400),
        bytes([0x80]) + junk(200),  # RTP-looking
        record(22, 0, 9, junk(60))[:40],  # truncated
        record(22, 0, 9, junk(60)) + b"\x17\xfe",  # trailing fragment
        record(22, 0, 9, junk(60)),  # handshake record with an inconsistent header
        record(22, 0, 9, handshake_header + (50).to_bytes(3, "big") + junk(40)),  # lengths disagree
        record(23, 0, 9, junk(60)),  # application data in epoch 0
        record(23, 1, 9, junk(60)),  # application data with a bad tag
        record(22, 1, 9, junk(60)),
        record(21, 1, 9, junk(26)),
        record(20, 0, 9, b"\x07"),
        record(21, 0, 9, b"\x09\x09"),  # alert with an impossible level
        record(99, 0, 9, junk(10)),  # unknown content type
        record(22, 0, 9, junk(60), version=0x0303),  # TLS, not DTLS
        record(22, 5, 9, junk(60)),  # unknown epoch
        record(22, 0, 9, b""),
        record(23, 1, 9, b""),
        record(22, 0, 9, junk(20)) * 50,
        struct.pack("!BHHHIH", 22, 0xFEFD, 0, 0, 9, 0xFFFF) + junk(30),  # length beyond the datagram
    ]


def test_garbage_never_raises_nor_starts_anything(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates)
    for endpoint in (client, server):
        for data in garbage(random.Random(1)):
            assert endpoint.receive(data, 0.0) == []
        assert endpoint.state is DtlsState.NEW and endpoint.next_deadline() is None
        assert endpoint.counters["bad_record"] > 10
    wire = Wire(client, server)
    wire.run()
    assert_connected(client, server)


def test_garbage_between_handshake_flights_is_dropped(certificates: tuple[Certificate, Certificate]) -> None:
    """Each datagram on the wire is preceded by every kind of junk, to both sides, at every step."""
    client, server = make_pair(certificates, mtu=300)
    rng = random.Random(3)
    junk = garbage(rng)

    class JunkyWire(Wire):
        def send(self, sender: str, datagrams: list[bytes]) -> None:
            receiver = self.endpoint("server" if sender == "client" else "client")
            for data in junk:
                assert receiver.receive(data, self.now) == [] or receiver.state is DtlsState.CONNECTED
            super().send(sender, datagrams)

    wire = JunkyWire(client, server)
    wire.run()
    assert_connected(client, server)
    assert client.counters["bad_record"] > 0 and server.counters["bad_record"] > 0


def test_connected_endpoints_survive_garbage_and_mutated_records(
    certificates: tuple[Certificate, Certificate],
) -> None:
    client, server = make_pair(certificates)
    wire = Wire(client, server)
    wire.run()
    keys = assert_connected(client, server)
    rng = random.Random(4)
    captured = [datagram for batch in wire.batches for datagram in batch]
    inputs = garbage(rng) + captured
    for _ in range(300):  # real records, bit-flipped: valid headers around corrupt bodies
        mutated = bytearray(rng.choice(captured))
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(13, len(mutated))] ^= 1 << rng.randrange(8)
        inputs.append(bytes(mutated))
    inputs += [record(21, 0, 99, b"\x02\x28"), record(21, 0, 99, b"\x01\x00")]  # forged epoch-0 alerts
    for endpoint in (client, server):
        for index, data in enumerate(inputs):
            endpoint.receive(data, 1.0 + index)
            assert endpoint.state is DtlsState.CONNECTED, (index, data[:16].hex(), endpoint.failure)
    assert (client.keys, server.keys) == keys
    # Still a working connection: close_notify gets through.
    closing = client.close()
    assert closing and client.state is DtlsState.CLOSED
    for data in closing:
        server.receive(data, 2000.0)
    assert server.state is DtlsState.CLOSED


def test_forged_epoch0_alert_during_handshake_fails_cleanly(
    certificates: tuple[Certificate, Certificate],
) -> None:
    """The limit of DTLS 1.2: epoch 0 is unauthenticated. It must fail with a reason, not raise."""
    client, server = make_pair(certificates)
    server.receive(client.start(0.0)[0], 0.0)
    assert server.receive(record(21, 0, 9, b"\x02\x28"), 0.0) == []
    assert (server.state, server.failure) == (DtlsState.FAILED, "DTLS alert: handshake failure")
    assert server.receive(b"\x16\xfe\xfd" + bytes(20), 0.1) == []
    assert server.counters["ignored_datagrams"] == 1


# -- closing ------------------------------------------------------------------------------------------


def test_close_notify_closes_the_peer(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates)
    Wire(client, server).run()
    assert_connected(client, server)
    goodbye = server.close()
    assert len(goodbye) == 1 and server.state is DtlsState.CLOSED
    reply = [out for data in goodbye for out in client.receive(data, 1.0)]
    assert client.state is DtlsState.CLOSED and client.failure is None
    assert reply  # the client answers with its own close_notify
    assert server.receive(reply[0], 1.1) == []
    assert server.close() == []


def test_close_during_handshake(certificates: tuple[Certificate, Certificate]) -> None:
    client, server = make_pair(certificates)
    server.receive(client.start(0.0)[0], 0.0)
    client.close()
    server.close()
    assert client.state is server.state is DtlsState.CLOSED
    assert client.next_deadline() is None and client.handle_timeout(10.0) == []
    never_started, _ = make_pair(certificates)
    assert never_started.close() == [] and never_started.state is DtlsState.CLOSED


# -- an independent peer ------------------------------------------------------------------------------


def _rsa_certificate() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain-pyopenssl")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def test_server_interoperates_with_independent_pyopenssl_client(
    certificates: tuple[Certificate, Certificate],
) -> None:
    """A client built from plain pyOpenSSL with other choices: RSA key, AES-256 suite, CM profile only."""
    _, server_cert = certificates
    cert, key = _rsa_certificate()
    context = SSL.Context(SSL.DTLS_CLIENT_METHOD)
    context.use_certificate(cert)
    context.use_privatekey(key)
    context.set_cipher_list(b"ECDHE-ECDSA-AES256-GCM-SHA384")
    context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    seen: list[bytes] = []

    def verify(conn: SSL.Connection, x509_: Any, errno: int, depth: int, ok: int) -> bool:
        seen.append(x509_.to_cryptography().public_bytes(serialization.Encoding.DER))
        return True

    context.set_verify(SSL.VERIFY_PEER, verify)
    peer = SSL.Connection(context, None)
    peer.set_connect_state()
    der = cert.public_bytes(serialization.Encoding.DER)
    server = DtlsEndpoint(
        server_cert, server=True, remote_fingerprints=[("sha-256", fingerprint_of_der(der, "sha-256"))]
    )
    server.start(0.0)

    def peer_output() -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(peer.bio_read(65536))
            except SSL.WantReadError:
                return b"".join(chunks)

    peer_done = False
    for _ in range(10):
        try:
            peer.do_handshake()
            peer_done = True
        except SSL.WantReadError:
            pass
        outgoing = peer_output()
        if outgoing:
            for reply in server.receive(outgoing, 0.0):
                peer.bio_write(reply)
        if peer_done and server.state is DtlsState.CONNECTED:
            break
    assert server.state is DtlsState.CONNECTED and peer_done
    assert fingerprint_of_der(seen[0], "sha-256") == server_cert.fingerprint("sha-256")
    assert server.keys is not None and server.keys.profile is CM
    assert peer.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    # RFC 5764 §4.2 layout, computed by the peer: client key, server key, client salt, server salt.
    material = peer.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (16 + 14))
    assert server.keys.remote_key == material[0:16] + material[32:46]
    assert server.keys.local_key == material[16:32] + material[46:60]
