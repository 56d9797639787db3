"""ICE over TCP (RFC 6544 passive candidates, RFC 4571 framing): media for clients whose network
drops UDP.

A TCP listener on the media address (by default the UDP port's number) accepts connections; each one
is a `TcpConnection`, which the rest of the server sees as one more datagram endpoint: its frames go to
the same mux as UDP datagrams (STUN by ICE username, the rest by the address a check proved), and
sends are framed onto the connection. A session's transport neither knows nor cares.

A slow reader must never hold up anyone else: sends go to a bounded queue per connection (never
waited on by the packet path); past SEND_QUEUE_BYTES the connection says "full", and its player drops
instead of queueing: whole frames, video resuming at a keyframe it asks for (Consumer._congested),
counted as `stream_congestion` drops. Queueing more would only make its media later.

Limits: connections in all and per address, a first valid STUN check within the handshake timeout
(else closed), frames of at most MAX_FRAME bytes, and connections silent for the liveness timeout are
closed; garbage closes only the connection it came on. Everything refused is counted (`TcpCounters`,
on /metrics).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
from typing import TYPE_CHECKING

import attrs
import trio

from trio_sfu.wire.datagram import Address

if TYPE_CHECKING:
    from trio_sfu.server.mux import MediaMux
    from trio_sfu.server.udp import ConnectedUdp

log = logging.getLogger(__name__)

MAX_FRAME = 4096  # bytes: STUN, DTLS records and SRTP packets are far smaller; more is garbage
SEND_QUEUE_BYTES = 256 * 1024  # a connection's unsent bytes before it reports itself full
KERNEL_SEND_BUFFER = 64 * 1024  # SO_SNDBUF of each connection (Linux doubles it)
READ_SIZE = 65536


@attrs.define
class TcpCounters:
    accepted: int = 0
    refused_total: int = 0  # over tcp_max_connections
    refused_per_address: int = 0  # over tcp_max_per_address
    handshake_timeouts: int = 0  # no valid ICE check in time
    idle_closed: int = 0
    oversized_frames: int = 0  # a frame longer than MAX_FRAME: the connection is closed
    send_queue_full: int = 0  # sends refused because the connection's queue was full
    open: int = 0


class TcpConnection:
    """One accepted connection as a datagram endpoint (trio_sfu.server.udp.DatagramEndpoint)."""

    stream_transport = True  # a full queue means a slow reader: players drop whole frames (Consumer)

    def __init__(
        self, stream: trio.SocketStream, local: Address, remote: Address, counters: TcpCounters
    ) -> None:
        self.stream = stream
        self._local = local
        self.remote = remote
        self.counters = counters
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._writing = False  # the writer task has bytes in flight: no direct send may overtake them
        self._fd = stream.socket.fileno()
        self._wake = trio.Event()
        self._writable = trio.Event()
        self._writable.set()
        self.last_received = trio.current_time()
        self.closed = False

    # ---- DatagramEndpoint ----

    @property
    def local_address(self) -> Address:
        return self._local

    async def receive(self) -> tuple[bytes, Address]:
        raise NotImplementedError("a TcpConnection is read by its listener")

    def send(self, data: bytes | memoryview, address: Address) -> bool:
        """Frame `data` onto the connection's queue; False (nothing queued) when the queue is full."""
        if self.closed or address != self.remote:
            return True  # gone: as a datagram to a peer that left, it is lost
        if self._queued >= SEND_QUEUE_BYTES:
            self.counters.send_queue_full += 1
            self._writable = trio.Event()
            return False
        frame = len(data).to_bytes(2, "big") + bytes(data)
        if not self._queue and not self._writing:
            # The fast path, as a UDP send: straight to the kernel, no task switch. Whatever it does
            # not take (a full kernel buffer) is queued for the writer, so frames stay whole and in
            # order.
            try:
                sent = os.write(self._fd, frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                return True  # broken: the reader sees the connection end
            if sent == len(frame):
                return True
            frame = frame[sent:]
        self._queue.append(frame)
        self._queued += len(frame)
        self._wake.set()
        return True

    async def wait_writable(self) -> None:
        await self._writable.wait()

    def connect(self, remote: Address) -> ConnectedUdp | None:
        return None  # the connection is the peer's own already

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        self._writable.set()

    # ---- the connection's tasks ----

    async def write(self) -> None:
        """Send what is queued, as the peer reads it."""
        while not self.closed:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                batch = b"".join(self._queue)
                self._queue.clear()
                self._writing = True
                try:
                    await self.stream.send_all(batch)
                finally:
                    self._writing = False
                self._queued = max(0, self._queued - len(batch))
                if self._queued < SEND_QUEUE_BYTES // 2:
                    self._writable.set()

    async def read(self, mux: MediaMux) -> None:
        """Frames to the mux until the peer closes; a frame over MAX_FRAME ends the connection."""
        buffer = bytearray()
        while True:
            data = await self.stream.receive_some(READ_SIZE)
            if not data:
                return
            self.last_received = trio.current_time()
            buffer += data
            while len(buffer) >= 2:
                length = buffer[0] << 8 | buffer[1]
                if length > MAX_FRAME or length == 0:
                    self.counters.oversized_frames += 1
                    log.info(
                        "event=ice_tcp_closed remote=%s:%d reason=bad_frame length=%d", *self.remote, length
                    )
                    return
                if len(buffer) < 2 + length:
                    break
                frame = bytes(buffer[2 : 2 + length])
                del buffer[: 2 + length]
                mux.handle(frame, self.remote, self)


class IceTcpListener:
    """Accepts ICE-TCP connections on one media address and serves each until it ends or misbehaves."""

    def __init__(
        self,
        mux: MediaMux,
        *,
        max_connections: int,
        max_per_address: int,
        handshake_timeout: float,
        idle_timeout: float,
    ) -> None:
        self.mux = mux
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.counters = TcpCounters()
        self._per_address: collections.Counter[str] = collections.Counter()
        self.addresses: list[Address] = []

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.addresses = [
            (str(sock_name[0]), int(sock_name[1]))
            for sock_name in (listener.socket.getsockname() for listener in listeners)
        ]
        task_status.started(self.addresses)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        counters = self.counters
        peer = stream.socket.getpeername()
        local = stream.socket.getsockname()
        remote: Address = (str(peer[0]), int(peer[1]))
        ip = remote[0]
        if counters.open >= self.max_connections:
            counters.refused_total += 1
            await trio.aclose_forcefully(stream)
            return
        if self._per_address[ip] >= self.max_per_address:
            counters.refused_per_address += 1
            await trio.aclose_forcefully(stream)
            return
        # A kernel buffer of megabytes would hold seconds of stale media before the queue (which drops
        # whole frames) noticed the slow reader.
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)
        counters.accepted += 1
        counters.open += 1
        self._per_address[ip] += 1
        connection = TcpConnection(stream, (str(local[0]), int(local[1])), remote, counters)
        try:
            await self._serve(stream, connection)
        except Exception:  # a bug must cost this connection only, never the listener
            log.exception("event=ice_tcp_internal_error remote=%s:%d", *remote)
        finally:
            connection.close()
            self.mux.forget_address(remote, connection)
            counters.open -= 1
            self._per_address[ip] -= 1
            if not self._per_address[ip]:
                del self._per_address[ip]

    async def _serve(self, stream: trio.SocketStream, connection: TcpConnection) -> None:
        """Read, write and watch the connection until one of them ends it. The peer going away (a
        reset included) arrives from the nursery as an exception group: it ends this connection."""
        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, connection, nursery.cancel_scope)
                nursery.start_soon(connection.write)
                await connection.read(self.mux)
                nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer went away

    async def _watch(self, connection: TcpConnection, scope: trio.CancelScope) -> None:
        """Close a connection that passes no ICE check in time, or falls silent."""
        started = trio.current_time()
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            if not self.mux.is_routed(connection.remote, connection):
                if now - started >= self.handshake_timeout:
                    self.counters.handshake_timeouts += 1
                    log.info("event=ice_tcp_closed remote=%s:%d reason=no_ice_check", *connection.remote)
                    scope.cancel()
                    return
            elif now - connection.last_received >= self.idle_timeout:
                self.counters.idle_closed += 1
                log.info("event=ice_tcp_closed remote=%s:%d reason=idle", *connection.remote)
                scope.cancel()
                return
