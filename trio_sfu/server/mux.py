"""The media port demultiplexer: one socket for every session, datagrams routed by content.

RFC 7983 tells STUN, DTLS and RTP/RTCP apart by their first byte. STUN is routed by the ICE
username (our ufrag before the colon), because a peer's address is not trusted until it has passed a
check; everything else is routed by the remote address that such a check proved. Nothing is created for
a datagram that matches no session: it is counted and dropped, so hostile traffic costs no memory.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

import attrs
import trio
from aioice import stun

from trio_sfu.server.udp import DatagramEndpoint
from trio_sfu.wire.datagram import Address, Kind, classify, stun_username

log = logging.getLogger(__name__)


@attrs.frozen
class Datagram:
    kind: Kind
    data: bytes
    source: Address
    endpoint: DatagramEndpoint
    stun: stun.Message | None = None


class Receiver(Protocol):
    """What a session's transport offers the mux: a non-blocking hand-off."""

    def deliver(self, datagram: Datagram) -> bool:
        """Take the datagram now; False if the transport's queue is full (mux counts a drop)."""
        ...


class MediaMux:
    def __init__(self) -> None:
        self._by_ufrag: dict[str, Receiver] = {}
        # A proven address, and the endpoint (UDP socket or ICE-TCP connection) its check came over:
        # UDP and ICE-TCP ports share numbers, so an address alone does not name the path.
        self._by_address: dict[Address, tuple[Receiver, DatagramEndpoint]] = {}
        self.received: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def route_ufrag(self, ufrag: str, receiver: Receiver) -> Iterator[None]:
        """Send STUN for `ufrag` to `receiver` while the block runs (a session's lifetime)."""
        if ufrag in self._by_ufrag:
            raise ValueError(f"ICE ufrag {ufrag!r} already routed")
        self._by_ufrag[ufrag] = receiver
        try:
            yield
        finally:
            del self._by_ufrag[ufrag]
            for address in [a for a, (r, _) in self._by_address.items() if r is receiver]:
                del self._by_address[address]

    def route_address(self, address: Address, receiver: Receiver, endpoint: DatagramEndpoint) -> None:
        """Send non-STUN datagrams from `address` over `endpoint` to `receiver` (after a valid ICE
        check that came that way)."""
        self._by_address[address] = (receiver, endpoint)

    def unroute_address(self, address: Address, receiver: Receiver) -> None:
        route = self._by_address.get(address)
        if route is not None and route[0] is receiver:
            del self._by_address[address]

    def is_routed(self, address: Address, endpoint: DatagramEndpoint) -> bool:
        """Whether a valid ICE check from `address` over `endpoint` made it a session's (ICE-TCP's
        handshake check: a UDP peer with the same numbers is another path)."""
        route = self._by_address.get(address)
        return route is not None and route[1] is endpoint

    def routes(self, address: Address, receiver: Receiver, endpoint: DatagramEndpoint) -> bool:
        """Is what comes from `address` over `endpoint` routed to `receiver`?"""
        route = self._by_address.get(address)
        return route is not None and route[0] is receiver and route[1] is endpoint

    def forget_address(self, address: Address, endpoint: DatagramEndpoint) -> None:
        """`endpoint` is gone (an ICE-TCP connection closed): nothing more is routed from `address`
        over it (a UDP route with the same numbers stays)."""
        if self.is_routed(address, endpoint):
            del self._by_address[address]

    @property
    def sessions_routed(self) -> int:
        return len(self._by_ufrag)

    def handle(self, data: bytes, source: Address, endpoint: DatagramEndpoint) -> None:
        kind = classify(data)
        self.received[kind.value] += 1
        if kind is Kind.UNKNOWN:
            self.dropped["unknown_kind"] += 1
            return
        message = None
        if kind is Kind.STUN:
            try:
                message = stun.parse_message(data)
            except Exception:  # aioice raises ValueError, struct.error, UnicodeDecodeError...
                self.dropped["malformed_stun"] += 1
                return
            username = stun_username(message)
            receiver = self._by_ufrag.get(username.partition(":")[0]) if username else None
        else:
            route = self._by_address.get(source)
            if route is None:
                receiver = None
            elif route[1] is not endpoint:  # the proven address, over the other transport
                self.dropped["wrong_transport"] += 1
                return
            else:
                receiver = route[0]
        if receiver is None:
            self.dropped["unknown_source"] += 1
            return
        if not receiver.deliver(Datagram(kind, data, source, endpoint, message)):
            self.dropped["queue_full"] += 1

    async def serve(self, endpoint: DatagramEndpoint) -> None:
        """Read the socket until cancelled; a datagram never stops the loop."""
        while True:
            try:
                data, source = await endpoint.receive()
            except ConnectionResetError:
                continue  # an ICMP error for an earlier send on some platforms
            except trio.EndOfChannel:
                return
            self.handle(data, source, endpoint)
