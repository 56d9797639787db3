"""The sans-IO client peer on a Trio task: it moves datagrams and time, nothing else.

The client-side counterpart of server/transport_driver.py. A relay leg plays a stream from its
origin with it (decrypted media to the leg's PublisherMedia, whose reports `tick` sends); tests run it
over an in-memory network under MockClock (trio_sfu.testing.client_transport keeps what arrives).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import trio

from trio_sfu.transport.client_peer import ClientEvent, ClientPeer
from trio_sfu.transport.peer import Connected
from trio_sfu.wire.datagram import Address
from trio_sfu.wire.rtp import is_rtcp


class Endpoint(Protocol):
    """What the driver needs of a datagram socket (the server's UdpEndpoint, a MemoryEndpoint)."""

    @property
    def local_address(self) -> Address: ...

    async def receive(self) -> tuple[bytes, Address]: ...

    def send(self, data: bytes | memoryview, address: Address) -> bool: ...


def _ignore(packet: bytes, now: float) -> None:
    pass


class ClientDriver:
    """Runs a `ClientPeer` over `endpoint` until cancelled.

    `on_rtp` / `on_rtcp` get the media the peer decrypts (with the Trio time it arrived), `on_event`
    the peer's events; `tick(now, wall)` is called once connected and returns when to be called next
    (periodic media work, e.g. receiver reports)."""

    def __init__(
        self,
        peer: ClientPeer,
        endpoint: Endpoint,
        *,
        on_rtp: Callable[[bytes, float], object] = _ignore,
        on_rtcp: Callable[[bytes, float], object] = _ignore,
        on_event: Callable[[ClientEvent], object] | None = None,
        tick: Callable[[float, float], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.peer = peer
        self.endpoint = endpoint
        self.on_rtp, self.on_rtcp, self.on_event = on_rtp, on_rtcp, on_event
        self._tick = tick
        self._wall_clock = wall_clock
        self.connected = trio.Event()
        self.ended = trio.Event()
        self.silent = False  # True: send nothing at all (a client whose network went away)
        self.srtp_failures = 0
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            task_status.started()
            while True:
                self._after_input()
                now = trio.current_time()
                wake = math.inf
                if self._tick is not None and self.connected.is_set():
                    wall = self._wall_clock() if self._wall_clock is not None else 0.0
                    wake = self._tick(now, wall)
                timer = self.peer.get_timer()
                deadline = min(wake, math.inf if timer is None else timer)
                self._changed = trio.Event()
                with trio.move_on_at(deadline):
                    await self._changed.wait()
                now = trio.current_time()
                if timer is not None and now >= timer:
                    self.peer.handle_timer(now)

    async def _read(self) -> None:
        while True:
            data, source = await self.endpoint.receive()
            now = trio.current_time()
            if data and 128 <= data[0] <= 191:
                self._on_media(data, now)
            else:
                self.peer.receive(data, source, now)
                self._after_input()
                self._changed.set()

    def _on_media(self, data: bytes, now: float) -> None:
        srtp = self.peer.srtp
        if srtp is None:
            return
        if is_rtcp(data):
            plain = srtp.unprotect_rtcp(data)
            if plain is not None:
                self.on_rtcp(plain, now)
        else:
            plain = srtp.unprotect_rtp(data)
            if plain is not None:
                self.on_rtp(plain, now)
        if plain is None:
            self.srtp_failures += 1

    def _after_input(self) -> None:
        while (event := self.peer.next_event()) is not None:
            if isinstance(event, Connected):
                self.connected.set()
            else:
                self.ended.set()
            if self.on_event is not None:
                self.on_event(event)
        for data, address in self.peer.datagrams_to_send():
            if not self.silent:
                self.endpoint.send(data, address)

    def send_rtp(self, packet: bytes) -> bool | None:
        srtp = self.peer.srtp
        if srtp is None or self.silent:
            return None
        return self.endpoint.send(srtp.protect_rtp(packet), self.peer.remote_address)

    def send_rtcp(self, packet: bytes) -> bool | None:
        srtp = self.peer.srtp
        if srtp is None or self.silent:
            return None
        return self.endpoint.send(srtp.protect_rtcp(packet), self.peer.remote_address)

    def close(self) -> None:
        """Close DTLS (close_notify), as aiortc's close() does."""
        self.peer.close()
        self._after_input()
