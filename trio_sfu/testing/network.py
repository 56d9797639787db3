"""An in-memory datagram network, for tests that run the server under `trio.testing.MockClock`.

The media layer needs only "receive a datagram" and "send one without blocking" (`DatagramEndpoint`),
so the whole server runs over this network without a socket: autojump would otherwise move the clock
while a task waits on the kernel.
"""

from __future__ import annotations

import errno

import trio

from trio_sfu.server.udp import ConnectedUdp
from trio_sfu.wire.datagram import Address


class MemoryNetwork:
    """A lossless in-process datagram network for tests under `trio.testing.MockClock`."""

    def __init__(self) -> None:
        self._endpoints: dict[Address, MemoryEndpoint] = {}
        self._next_port = 50000

    def endpoint(self, host: str = "127.0.0.1", port: int = 0) -> MemoryEndpoint:
        if port == 0:
            port = self._next_port
            self._next_port += 1
        address = (host, port)
        if address in self._endpoints:
            raise OSError(errno.EADDRINUSE, f"{address} is in use")
        endpoint = MemoryEndpoint(self, address)
        self._endpoints[address] = endpoint
        return endpoint

    def _deliver(self, data: bytes, source: Address, destination: Address) -> bool:
        target = self._endpoints.get(destination)
        if target is None:
            return False
        try:
            target._inbox_send.send_nowait((data, source))
        except trio.WouldBlock:
            return False
        return True

    def _forget(self, address: Address) -> None:
        self._endpoints.pop(address, None)


class MemoryEndpoint:
    QUEUE = 1024

    def __init__(self, network: MemoryNetwork, address: Address) -> None:
        self._network = network
        self._address = address
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[bytes, Address]](self.QUEUE)

    @property
    def local_address(self) -> Address:
        return self._address

    async def receive(self) -> tuple[bytes, Address]:
        return await self._inbox.receive()

    def send(self, data: bytes | memoryview, address: Address) -> bool:
        self._network._deliver(bytes(data), self._address, address)
        return True

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint()

    def connect(self, remote: Address) -> ConnectedUdp | None:
        return None

    def close(self) -> None:
        self._network._forget(self._address)
        self._inbox_send.close()
