"""A client's ICE-TCP connection (RFC 4571 framing) as the datagram endpoint the test client runs on,
with a way to stop reading it for a while: the slow reader of the ICE-TCP congestion tests."""

from __future__ import annotations

import socket as stdlib_socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trio_sfu.wire.datagram import Address


class TcpClientEndpoint:
    def __init__(self, stream: trio.SocketStream, remote: Address) -> None:
        self.stream = stream
        self.remote = remote
        local = stream.socket.getsockname()
        self._local: Address = (str(local[0]), int(local[1]))
        self._buffer = bytearray()
        self._outgoing: list[bytes] = []
        self._wake = trio.Event()
        self._reading = trio.Event()
        self._reading.set()
        self.frames_received = 0

    @property
    def local_address(self) -> Address:
        return self._local

    async def receive(self) -> tuple[bytes, Address]:
        while True:
            await self._reading.wait()
            if len(self._buffer) >= 2:
                length = self._buffer[0] << 8 | self._buffer[1]
                if len(self._buffer) >= 2 + length:
                    frame = bytes(self._buffer[2 : 2 + length])
                    del self._buffer[: 2 + length]
                    self.frames_received += 1
                    return frame, self.remote
            data = await self.stream.receive_some(65536)
            if not data:
                raise trio.EndOfChannel
            self._buffer += data

    def send(self, data: bytes | memoryview, address: Address) -> bool:
        self._outgoing.append(len(data).to_bytes(2, "big") + bytes(data))
        self._wake.set()
        return True

    def pause_reading(self) -> None:
        """Read nothing more until `resume_reading`: the server's sends pile up, then it must drop."""
        self._reading = trio.Event()

    def resume_reading(self) -> None:
        self._reading.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._outgoing = b"".join(self._outgoing), []
            await self.stream.send_all(batch)


@asynccontextmanager
async def open_tcp_client_endpoint(
    host: str, port: int, *, receive_buffer: int | None = None, local_port: int = 0
) -> AsyncIterator[TcpClientEndpoint]:
    """Connect to an ICE-TCP candidate; `receive_buffer` (bytes) keeps the kernel from hiding a slow
    reader behind megabytes of buffer; `local_port` binds the client's end to that port."""
    sock = trio.socket.socket(stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET)
    if receive_buffer is not None:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, receive_buffer)
    if local_port:
        await sock.bind((host, local_port))
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    endpoint = TcpClientEndpoint(stream, (host, port))
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(endpoint._write)
        yield endpoint
        nursery.cancel_scope.cancel()
