"""TCP listeners for signaling and HTTP, shared between worker processes when asked.

With `reuse_port` every worker binds the same address with SO_REUSEPORT and the kernel spreads new
connections over them (a WebSocket stays with the worker that accepted it). Otherwise these are
trio's own listeners.
"""

from __future__ import annotations

import socket as stdlib_socket
import ssl

import trio

BACKLOG = 512


async def tcp_listeners(
    host: str, port: int, ssl_context: ssl.SSLContext | None = None, *, reuse_port: bool = False
) -> list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]:
    """Listeners on host:port (every address it resolves to), TLS-wrapped when `ssl_context`."""
    if not reuse_port:
        listeners = await trio.open_tcp_listeners(port, host=host)
    else:
        listeners = []
        infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_STREAM)
        for family, kind, proto, _, address in infos:
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
                if family == stdlib_socket.AF_INET6:
                    sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(BACKLOG)
            except OSError:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    if ssl_context is None:
        return listeners
    return [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners]


def bound_addresses(
    listeners: list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]],
) -> list[tuple[str, int]]:
    out = []
    for listener in listeners:
        plain = listener.transport_listener if isinstance(listener, trio.SSLListener) else listener
        assert isinstance(plain, trio.SocketListener)
        host, port = plain.socket.getsockname()[:2]
        out.append((str(host), int(port)))
    return out
