"""A userspace UDP relay between a peer and the server: loss and injection without netem.

The peer is given the relay's front address in place of the server's candidate; the server learns the
relay's back address from the peer's (relayed) ICE checks, so anything the test injects from the back
socket comes from the address the session trusts.
"""

from __future__ import annotations

import random
import re
import socket

import trio

Address = tuple[str, int]


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 4: on a muxed port, RTCP packet types 192-223 sit where RTP has marker + payload type."""
    return len(data) > 1 and 192 <= data[1] <= 223


class UdpRelay:
    def __init__(self, server: Address, *, seed: int = 1) -> None:
        self.server = server
        self.front = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer: Address | None = None
        self.loss_to_peer = 0.0  # probability of dropping an RTP/RTCP datagram on its way to the peer
        self.paused = False  # drop everything, both ways (a peer that went silent or away)
        self.drop_dtls = False  # drop DTLS both ways (a handshake that never finishes)
        self.dropped = 0
        self.captured: list[bytes] = []  # the peer's last SRTP/SRTCP datagrams, for replay attacks
        self.relayed = 0
        # A narrow link toward the peer: RTP beyond `rate_to_peer` bytes/s (a token bucket holding at most
        # `burst_to_peer` bytes) is dropped, as a bottleneck router's full queue would. RTCP, STUN and DTLS
        # pass (they are small), so the test depends on the rate of media alone. None: no limit.
        self.rate_to_peer: float | None = None
        self.burst_to_peer = 8000.0
        self.limited = 0  # RTP datagrams dropped by that limit
        self._tokens = 0.0
        self._tokens_at = 0.0
        # RTP bytes as they arrive at the relay, before any loss or limit: what each side sent.
        self.rtp_bytes_to_peer = 0
        self.rtp_bytes_to_server = 0
        self._random = random.Random(seed)
        self._running: trio.CancelScope | None = None
        self._stopped = trio.Event()

    async def bind(self) -> None:
        await self.front.bind(("127.0.0.1", 0))
        await self.back.bind(("127.0.0.1", 0))

    @property
    def front_port(self) -> int:
        return int(self.front.getsockname()[1])

    def rewrite_answer(self, sdp: str) -> str:
        """Point the peer at the relay instead of the server."""
        host, port = self.server
        return re.sub(rf"{re.escape(host)} {port} typ host", f"127.0.0.1 {self.front_port} typ host", sdp)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._running = nursery.cancel_scope
            nursery.start_soon(self._towards_server)
            nursery.start_soon(self._towards_peer)
        self._stopped.set()

    async def vanish(self) -> None:
        """The peer's host goes away without a word: the port the server sends to closes, so what it
        sends there now meets ICMP port unreachable."""
        assert self._running is not None, "run() first"
        self._running.cancel()
        await self._stopped.wait()
        self.back.close()

    async def _towards_server(self) -> None:
        while True:
            data, address = await self.front.recvfrom(4096)
            self.peer = (address[0], address[1])
            if self.paused or (self.drop_dtls and 20 <= data[0] <= 63):
                continue
            if 128 <= data[0] <= 191:
                self.captured.append(data)
                del self.captured[:-200]
                if not is_rtcp(data):
                    self.rtp_bytes_to_server += len(data)
            await self.back.sendto(data, self.server)

    async def _towards_peer(self) -> None:
        while True:
            data, _ = await self.back.recvfrom(4096)
            if self.peer is None or self.paused or (self.drop_dtls and 20 <= data[0] <= 63):
                continue
            is_media = 128 <= data[0] <= 191
            if is_media and not is_rtcp(data):
                self.rtp_bytes_to_peer += len(data)
                if not self._take(len(data)):
                    self.limited += 1
                    continue
            if is_media and self._random.random() < self.loss_to_peer:
                self.dropped += 1
                continue
            self.relayed += 1
            await self.front.sendto(data, self.peer)

    def _take(self, size: int) -> bool:
        """Whether the rate limit lets `size` bytes through now (and take them from the bucket)."""
        if self.rate_to_peer is None:
            return True
        now = trio.current_time()
        self._tokens = min(self.burst_to_peer, self._tokens + (now - self._tokens_at) * self.rate_to_peer)
        self._tokens_at = now
        if self._tokens < size:
            return False
        self._tokens -= size
        return True

    async def inject(self, data: bytes) -> None:
        """Send to the server from the address the session trusts."""
        await self.back.sendto(data, self.server)

    def close(self) -> None:
        self.front.close()
        self.back.close()
