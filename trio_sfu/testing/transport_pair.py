"""A client peer and the server's transport wired to each other in memory, on a clock the test owns.

Like aioquic's `client_and_server`: no sockets, no Trio, no waiting. `advance` runs both sides'
timers in order, so a 30 s consent timeout or a DTLS handshake timeout takes microseconds, and a
test says exactly when something must happen. `drop` loses the datagrams a fault test chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from aioice import stun

from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.client_peer import ClientEvent, ClientPeer
from trio_sfu.transport.ice import ice_credential
from trio_sfu.transport.peer import PeerTransport, TransportEvent
from trio_sfu.wire.datagram import Address, Kind, classify

CLIENT_ADDRESS: Address = ("127.0.0.1", 50000)
SERVER_ADDRESS: Address = ("127.0.0.1", 3478)

# Which way a datagram goes, for `drop`.
TO_SERVER = "to_server"
TO_CLIENT = "to_client"

_CERTIFICATES: dict[str, Certificate] = {}


def _certificate(name: str) -> Certificate:
    """One certificate per role for a test run: generating one costs a millisecond or two each time."""
    if name not in _CERTIFICATES:
        _CERTIFICATES[name] = Certificate.generate(name)
    return _CERTIFICATES[name]


@attrs.define
class TransportPair:
    client: ClientPeer
    server: PeerTransport
    now: float = 0.0
    drop: Callable[[str, bytes], bool] = lambda direction, data: False
    client_events: list[ClientEvent] = attrs.field(factory=list)
    server_events: list[TransportEvent] = attrs.field(factory=list)
    delivered: dict[str, list[bytes]] = attrs.field(factory=lambda: {TO_SERVER: [], TO_CLIENT: []})

    def exchange(self, limit: int = 1000) -> None:
        """Carry datagrams both ways until neither side has anything left to send."""
        for _ in range(limit):
            self._collect()
            to_server = self.client.datagrams_to_send()
            to_client = self.server.datagrams_to_send()
            if not to_server and not to_client:
                break
            for data, _address in to_server:
                if not self.drop(TO_SERVER, data):
                    self.delivered[TO_SERVER].append(data)
                    self._to_server(data)
            for data, _address in to_client:
                if not self.drop(TO_CLIENT, data):
                    self.delivered[TO_CLIENT].append(data)
                    self.client.receive(data, SERVER_ADDRESS, self.now)
        else:
            raise RuntimeError(f"the peers were still talking after {limit} rounds")

    def _to_server(self, data: bytes) -> None:
        kind = classify(data)
        if kind is Kind.STUN:
            self.server.receive_stun(stun.parse_message(data), data, CLIENT_ADDRESS, self.now)
        elif kind is Kind.DTLS:
            self.server.receive_dtls(data, CLIENT_ADDRESS, self.now)
        elif self.server.srtp is not None:
            self.server.media_received(CLIENT_ADDRESS, self.now)

    def _collect(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)
        while (server_event := self.server.next_event()) is not None:
            self.server_events.append(server_event)

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass: fire every timer due on the way, in order, exchanging after each."""
        end = self.now + seconds
        self.exchange()
        while True:
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            if not timers or min(timers) > end:
                break
            due = min(timers)
            self.now = max(self.now, due)
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self.exchange()
        self.now = end

    def run_until(self, condition: Callable[[], bool], limit: float = 60.0, step: float = 0.01) -> float:
        """Advance in `step`s until `condition` holds; the time it took. AssertionError after `limit`."""
        start = self.now
        self.exchange()
        while not condition():
            if self.now - start >= limit:
                raise AssertionError(f"not true after {limit:g} s of simulated time")
            self.advance(step)
        return self.now - start


def client_and_server(
    *,
    client_dtls_server: bool = False,
    client_sees_fingerprints: tuple[tuple[str, str], ...] | None = None,
    server_sees_fingerprints: tuple[tuple[str, str], ...] | None = None,
    server_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
    now: float = 0.0,
) -> TransportPair:
    """A `ClientPeer` and a `PeerTransport` that know each other's credentials, as after an
    offer/answer; the `*_sees_fingerprints` override what each side was told about the other."""
    client_certificate, server_certificate = _certificate("client"), _certificate("server")
    server_ufrag, server_pwd = ice_credential(8), ice_credential(24)
    client_ufrag, client_pwd = ice_credential(8), ice_credential(24)
    server = PeerTransport(
        local_ufrag=server_ufrag,
        local_pwd=server_pwd,
        remote_ufrag=client_ufrag,
        remote_pwd=client_pwd,
        remote_fingerprints=server_sees_fingerprints
        or (("sha-256", client_certificate.fingerprint("sha-256")),),
        certificate=server_certificate,
        dtls_server=not client_dtls_server,
        now=now,
        **(server_options or {}),
    )
    client = ClientPeer(
        local_ufrag=client_ufrag,
        local_pwd=client_pwd,
        remote_ufrag=server_ufrag,
        remote_pwd=server_pwd,
        remote_fingerprints=client_sees_fingerprints
        or (("sha-256", server_certificate.fingerprint("sha-256")),),
        certificate=client_certificate,
        remote_address=SERVER_ADDRESS,
        dtls_server=client_dtls_server,
        now=now,
        **(client_options or {}),
    )
    return TransportPair(client, server, now)
