"""Datagram endpoints: the UDP socket shared by every session, and each peer's own connected socket.

The server needs only "receive a datagram" and "send one without blocking": the small
`DatagramEndpoint` protocol, which trio_sfu.testing.network also implements, so mock-clock tests run
the whole server without a socket.
"""

from __future__ import annotations

import socket as stdlib_socket
import sys
import time
from collections.abc import Callable
from typing import Protocol

import trio

from trio_sfu.config import HostPort
from trio_sfu.wire.datagram import Address


class DatagramEndpoint(Protocol):
    @property
    def local_address(self) -> Address: ...

    async def receive(self) -> tuple[bytes, Address]: ...

    def send(self, data: bytes | memoryview, address: Address) -> bool:
        """Send now; False only when the kernel buffer is full (other errors count as sent:
        UDP gives no delivery promise, and an unreachable peer is found out by consent)."""
        ...

    async def wait_writable(self) -> None: ...

    def connect(self, remote: Address) -> ConnectedUdp | None:
        """A socket of its own for one peer (same local address), or None where not supported."""
        ...

    def close(self) -> None: ...


RECEIVE_BUFFER = 4 * 1024 * 1024
"""The shared socket's: it carries every session's ICE and handshakes, and media until a peer's own
socket is up."""
SEND_BUFFER = 4 * 1024 * 1024
"""The shared socket's: the compiled fan-out sends each packet to the players of a track through it in
batches, where a NIC holds each datagram until it is on the wire (a refused one goes out through the
player's own socket instead, so this only saves syscalls)."""
PEER_RECEIVE_BUFFER = 256 * 1024
"""A peer's own socket's, unless the server sets it from max_input_delay (Config.peer_receive_buffer)."""
TRUESIZE_FACTOR = 2
"""The kernel charges a datagram's whole buffer (~2.3 KB for 1.2 KB of media on loopback) to SO_RCVBUF."""
_SO_MEMINFO = 55  # Linux: struct of sk_meminfo counters; index 8 is the socket's drop count
_MEMINFO_DROPS = 8
YIELD_AFTER = 0.001
"""A peer's reader lets other tasks run once it has been busy this long (s) without waiting."""


class UdpEndpoint:
    """One bound UDP socket shared by every session on that media address (single-port mux)."""

    RECEIVE_SIZE = 2048

    def __init__(self, sock: stdlib_socket.socket) -> None:
        sock.setblocking(False)
        self.peer_receive_buffer = PEER_RECEIVE_BUFFER  # bytes of media a peer's socket may queue
        self._plain = sock  # for synchronous sends on the packet path
        self.send_errors = 0
        self._socket = trio.socket.from_stdlib_socket(sock)
        host, port = sock.getsockname()[:2]
        self._local = (host, port)

    @classmethod
    def bind(cls, address: HostPort) -> UdpEndpoint:
        family = stdlib_socket.AF_INET6 if ":" in address.host else stdlib_socket.AF_INET
        if address.port:
            # SO_REUSEPORT (below) would let a second server share the port silently: make sure
            # nobody holds it first, so a clash still fails with "address in use".
            _socket(family, reuse=False, bind=(address.host, address.port)).close()
        sock = _socket(family, reuse=True, bind=(address.host, address.port))
        _set_buffer(sock, RECEIVE_BUFFER, "RCV")
        _set_buffer(sock, SEND_BUFFER, "SND")
        return cls(sock)

    def connect(self, remote: Address) -> ConnectedUdp:
        """A socket bound to this endpoint's address and connected to `remote`: the kernel hands it
        that peer's datagrams, and `send` on it skips the per-packet route lookup of `sendto`."""
        family = self._plain.family
        sock = _socket(family, reuse=True, bind=self._plain.getsockname())
        # A publisher's media arrives here once connected: bounded, so an overloaded server drops
        # (counted) instead of serving seconds-old media.
        _set_buffer(sock, self.peer_receive_buffer * TRUESIZE_FACTOR, "RCV")
        try:
            sock.connect(remote)
        except OSError:
            sock.close()
            raise
        return ConnectedUdp(sock, remote, shared_fileno=self._plain.fileno())

    @property
    def local_address(self) -> Address:
        return self._local

    async def receive(self) -> tuple[bytes, Address]:
        data, address = await self._socket.recvfrom(self.RECEIVE_SIZE)
        return data, (address[0], address[1])

    def send(self, data: bytes | memoryview, address: Address) -> bool:
        # A non-blocking send straight on the socket: no task switch on the packet path.
        try:
            self._plain.sendto(data, address)
        except BlockingIOError:
            return False
        except OSError:
            self.send_errors += 1
        return True

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self._plain)

    def close(self) -> None:
        self._socket.close()


def _set_buffer(sock: stdlib_socket.socket, size: int, direction: str) -> None:
    """SO_RCVBUF or SO_SNDBUF (`direction` "RCV" or "SND"). A keyframe reaches the server as a burst of
    ~70 datagrams per publisher, while the loop may be busy sending the previous one to every player:
    the kernel's ~208 KB default may be too small or, for one peer, too large. The ...FORCE option
    where allowed, to pass rmem_max or wmem_max. The kernel doubles the value for its bookkeeping, so
    half is asked for; memory is only used by what is queued."""
    forced = getattr(stdlib_socket, f"SO_{direction}BUFFORCE", None)
    for option in (forced, getattr(stdlib_socket, f"SO_{direction}BUF")):
        if option is None:
            continue
        try:
            sock.setsockopt(stdlib_socket.SOL_SOCKET, option, max(size // 2, 1024))
            return
        except OSError:
            continue


def kernel_drops(sock: stdlib_socket.socket) -> int:
    """Datagrams the kernel dropped for this socket because its receive buffer was full (0 where the
    kernel cannot tell: SO_MEMINFO's drop count is Linux 4.15+)."""
    try:
        info = sock.getsockopt(stdlib_socket.SOL_SOCKET, _SO_MEMINFO, 9 * 4)
    except OSError:
        return 0
    if len(info) < (_MEMINFO_DROPS + 1) * 4:
        return 0
    return int.from_bytes(info[_MEMINFO_DROPS * 4 : (_MEMINFO_DROPS + 1) * 4], sys.byteorder)


def _socket(family: int, *, reuse: bool, bind: tuple[object, ...]) -> stdlib_socket.socket:
    sock = stdlib_socket.socket(family, stdlib_socket.SOCK_DGRAM)
    try:
        if family == stdlib_socket.AF_INET6:
            sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
        if reuse:
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
        sock.bind(bind)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ConnectedUdp:
    """One peer's own socket on the shared media port (SO_REUSEPORT + connect)."""

    __slots__ = ("_socket", "dropped_counted", "reader_scope", "remote", "send_errors", "shared_fileno")

    def __init__(self, sock: stdlib_socket.socket, remote: Address, *, shared_fileno: int = -1) -> None:
        self._socket = sock
        self.remote = remote
        self.shared_fileno = shared_fileno  # the endpoint's socket: the fan-out sends through it
        self.send_errors = 0
        self.dropped_counted = 0
        self.reader_scope = trio.CancelScope()

    def new_drops(self) -> int:
        """Datagrams the kernel dropped (receive buffer full) since the last call."""
        total = kernel_drops(self._socket)
        new, self.dropped_counted = total - self.dropped_counted, total
        return max(new, 0)

    def fileno(self) -> int:
        return self._socket.fileno()

    def send(self, data: bytes | memoryview) -> bool:
        try:
            self._socket.send(data)
        except BlockingIOError:
            return False
        except OSError:
            self.send_errors += 1
        return True

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self._socket)

    async def receive_into(self, handle: Callable[[bytes, Address], None]) -> None:
        """Read until cancelled or closed, draining the socket before waiting again.

        Each datagram goes with its own source: between bind() and connect() the socket is an
        unconnected member of the port's SO_REUSEPORT group and may be handed another peer's."""
        sock = self._socket
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                busy_since = time.monotonic()
                while True:
                    try:
                        data, source = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    except OSError:
                        # ICMP port unreachable or the like for an earlier send, which went out
                        # through this socket or, batched, through the shared one
                        self.send_errors += 1
                        continue
                    handle(data, (source[0], source[1]))
                    # One of a publisher's datagrams can mean a fan-out to hundreds of players
                    # (milliseconds), and a keyframe is a burst of dozens: let signaling and other
                    # peers' handshakes run in between, but without a scheduler pass per datagram
                    # when the work is small (that costs a small room ~20 %).
                    if time.monotonic() - busy_since > YIELD_AFTER:
                        await trio.lowlevel.checkpoint()
                        busy_since = time.monotonic()
        except trio.ClosedResourceError:
            return

    def close(self) -> None:
        trio.lowlevel.notify_closing(self._socket)  # wakes the reader instead of leaving it on a dead fd
        self._socket.close()
