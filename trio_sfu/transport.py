"""A peer's media transport: its ICE credentials, and the datagrams the mux routes to it.

This is the shell the ICE-lite agent, the DTLS endpoint and SRTP plug into: it owns the session's
route in the mux for exactly as long as its task runs, so a cancelled session can never leave a route
behind. Until those layers exist it only counts what reaches it.
"""

from __future__ import annotations

import secrets
import string

import trio

from .mux import Datagram, MediaMux
from .sdp import Offer

_ICE_CHARS = string.ascii_letters + string.digits + "+/"


def ice_credential(length: int) -> str:
    return "".join(secrets.choice(_ICE_CHARS) for _ in range(length))


class Transport:
    QUEUE = 256

    def __init__(self, mux: MediaMux, remote: Offer) -> None:
        self.mux = mux
        self.remote = remote
        self.local_ufrag = ice_credential(8)
        self.local_pwd = ice_credential(24)
        self.datagrams_received = 0
        self._inbox_send, self._inbox = trio.open_memory_channel[Datagram](self.QUEUE)

    def deliver(self, datagram: Datagram) -> bool:
        try:
            self._inbox_send.send_nowait(datagram)
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True

    async def run(self) -> None:
        with self.mux.route_ufrag(self.local_ufrag, self), self._inbox_send:
            async for _ in self._inbox:
                self.datagrams_received += 1
