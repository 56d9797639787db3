"""A client leg as a browser would run it: signaling, an SDP offer, ICE (controlling), DTLS, SRTP.

The transport is trio_sfu's sans-IO client peer (`trio_sfu.transport.client_peer`), the same one the
tests run against the server in memory; this module gives it a connected UDP socket and a clock.
Nothing here is on the per-packet path of a subscriber (see `subscriber.py`).

A leg over ICE-TCP (`open_leg(transport="tcp")`, players only) connects a TCP socket to the server's
passive TCP candidate (RFC 6544, from the answer's `a=candidate:... tcp ... tcptype passive` line) and
runs the same peer over it: each STUN message, DTLS record or SRTCP packet it sends is one RFC 4571
frame (a 2-byte big-endian length, then the datagram); whoever reads the socket deframes
(`subscriber.FrameReader`) and hands each frame over as the UDP datagram it would have been.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.testing.offer import (  # noqa: F401 (the bench's modules import them from here)
    ABS_SEND_TIME_ID,
    MID_ID,
    OPUS_PT,
    RID_ID,
    SIMULCAST_RIDS,
    VP8_PT,
    Answer,
    LocalParams,
    build_offer,
    parse_answer,
    simulcast_answer_problem,
)
from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.client_peer import ClientPeer
from trio_sfu.transport.peer import Failed, TransportState
from trio_sfu.transport.srtp import SrtpSession
from trio_sfu.wire.datagram import Address

AST_UNITS = 1 << 18  # abs-send-time: 6.18 fixed-point seconds, 24 bits (wraps every 64 s)
AST_MASK = 0xFFFFFF
JANUS_MEDIA_HOST = "127.0.0.2"


def abs_send_time(now: float) -> int:
    """The 24-bit abs-send-time of a CLOCK_MONOTONIC reading (every bench process shares that clock)."""
    return int(now * AST_UNITS) & AST_MASK


# --------------------------------------------------------------------------- signaling


class SignalingError(Exception):
    pass


class Signaling(SignalingClient):
    """One leg's signaling: the tests' protocol client, acking what the server asks and raising on a
    failed request (the Janus client in janus.py offers the same negotiate/closed_by_server)."""

    def __init__(self, ws: WebSocketConnection, *, app: str, stream: str, uid: str) -> None:
        super().__init__(ws, app, uid, auto_ack=True)
        self.stream = stream
        self.closed_by_server: str | None = None
        self.offer_sent_at = 0.0
        self.answer_sdp = ""  # the server's answer as it came (parse_answer keeps only UDP candidates)
        self.on_server_request = self._note

    def _note(self, message: dict[str, Any]) -> None:
        if message.get("method") == "stream.close":
            self.closed_by_server = str(message.get("data", {}).get("reason", "?"))

    async def negotiate(
        self, local: LocalParams, *, publish: bool, token: str, rids: tuple[str, ...] = ()
    ) -> Answer:
        """stream.connect, then our offer (its video as simulcast layers `rids`, if any); the server's
        answer (SignalingError if it does not take the layers)."""
        await self.call("stream.connect", {"token": token})
        self.offer_sent_at = time.monotonic()
        offer = build_offer(local, publish=publish, rids=rids)
        reply = await self.call("stream.offer", {"publish": publish, "sdp": offer})
        self.answer_sdp = reply["data"]["sdp"]
        answer = parse_answer(self.answer_sdp)
        check_simulcast_answer(answer, rids)
        return answer

    async def call(self, method: str, data: dict[str, Any]) -> dict[str, Any]:
        """A request for this leg's stream; SignalingError unless it succeeded."""
        try:
            reply = await self.request(method, self.stream, data)
        except trio.EndOfChannel:
            raise SignalingError(f"{method}: the server closed the WebSocket") from None
        if reply.get("err") != 0:
            raise SignalingError(f"{method}: error {reply.get('err')} {reply.get('err_msg')}")
        return reply


def check_simulcast_answer(answer: Answer, rids: tuple[str, ...]) -> None:
    """SignalingError unless the answer receives every layer of our simulcast offer (if we made one)."""
    if rids and (problem := simulcast_answer_problem(answer, rids)) is not None:
        raise SignalingError(f"the server did not accept the simulcast offer ({';'.join(rids)}): {problem}")


# --------------------------------------------------------------------------- ICE + DTLS + SRTP


class SetupError(Exception):
    pass


TRANSPORTS = ("udp", "tcp")
FRAME_HEADER = 2  # RFC 4571: each frame is a 16-bit big-endian length, then that many bytes


def tcp_candidate(sdp: str) -> Address | None:
    """The server's passive ICE-TCP candidate on 127.0.0.1 (else another 127/8 one) in an answer:
    `a=candidate:F 1 tcp PRIORITY IP PORT typ host tcptype passive`; None if it offers none."""
    found: list[Address] = []
    for raw in sdp.splitlines():
        fields = raw.strip().split()
        if (
            fields
            and fields[0].startswith("a=candidate:")
            and len(fields) >= 8
            and fields[2].lower() == "tcp"
            and "passive" in fields[8:]
            and fields[4].startswith("127.")
        ):
            found.append((fields[4], int(fields[5])))
    for address in sorted(found, key=lambda a: a[0] != "127.0.0.1"):
        return address
    return None


def tcp_socket(host: str = "127.0.0.1") -> socket.socket:
    """A non-blocking TCP socket bound to `host` (its port is the leg's host candidate in the offer),
    not yet connected."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as browsers: each frame at once
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


async def connect_tcp(sock: socket.socket, address: Address) -> None:
    """Connect the non-blocking `sock` to the server's ICE-TCP candidate; SetupError if refused."""
    code = sock.connect_ex(address)
    if code in (errno.EINPROGRESS, errno.EALREADY):
        await trio.lowlevel.wait_writable(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code not in (0, errno.EISCONN):
        raise SetupError(f"ICE-TCP: connecting to the server's candidate {address[0]}:{address[1]} "
                         f"failed: {os.strerror(code)}")


def udp_socket(rcvbuf: int = 0, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        try:  # root may exceed net.core.rmem_max (the subscribers must not be the ones who drop)
            sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


class LegTransport:
    """One leg's media transport: a connected UDP socket and the sans-IO client peer. `on_control`
    takes every datagram that is not RTP (STUN, DTLS, SRTCP).

    With `tcp` (the server's ICE-TCP candidate; `sock` already connected to it) the peer runs over the
    TCP stream instead: what it sends is framed (RFC 4571), and the remote address it is given and
    sees its datagrams come from is the candidate's. `answer.address` stays the UDP candidate: the
    server's (worker's) media port the leg is counted under."""

    def __init__(
        self,
        sock: socket.socket,
        local: LocalParams,
        answer: Answer,
        certificate: Certificate,
        tcp: Address | None = None,
    ):
        self.sock = sock
        self.local = local
        self.answer = answer
        self.kind = "udp" if tcp is None else "tcp"
        self.remote: Address = answer.address if tcp is None else tcp
        if tcp is None:
            sock.connect(answer.address)
        self.peer = ClientPeer(
            local_ufrag=local.ice_ufrag,
            local_pwd=local.ice_pwd,
            remote_ufrag=answer.ice_ufrag,
            remote_pwd=answer.ice_pwd,
            remote_fingerprints=answer.fingerprints,
            certificate=certificate,
            remote_address=self.remote,
            now=trio.current_time(),
        )
        self.srtp: SrtpSession | None = None  # the peer's, once keyed (read per packet by the legs)
        self._changed = trio.Event()
        self._counters: collections.Counter[str] = collections.Counter()
        self.rtcp_handler: Any = None
        self._unsent = bytearray()  # TCP: framed bytes the kernel did not take yet
        self._unsent_added = trio.Event()
        self.stream_closed: str | None = None  # TCP: why the connection ended (its reader says)
        self.closing = False  # TCP: we ended it (`close_stream`)

    @property
    def counters(self) -> collections.Counter[str]:
        return self._counters + self.peer.counters

    # -- sending --

    def send(self, data: bytes) -> None:
        if self.kind == "tcp":
            self._send_frame(data)
            return
        try:
            self.sock.send(data)
        except BlockingIOError:
            self._counters["send_would_block"] += 1
        except OSError:
            self._counters["send_error"] += 1

    def _send_frame(self, data: bytes) -> None:
        """One RFC 4571 frame onto the stream; what the kernel does not take now goes after it, in
        order (`write_unsent`), never dropped: a lost byte would desynchronize the framing."""
        if self.stream_closed is not None:
            self._counters["send_error"] += 1
            return
        framed = len(data).to_bytes(FRAME_HEADER, "big") + data
        if self._unsent:
            self._unsent += framed
            self._counters["send_would_block"] += 1
            self._unsent_added.set()
            return
        try:
            sent = self.sock.send(framed)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._counters["send_error"] += 1
            return
        if sent < len(framed):
            self._unsent += framed[sent:]
            self._counters["send_would_block"] += 1
            self._unsent_added.set()

    async def write_unsent(self) -> None:
        """TCP: send what `_send_frame` could not, as the socket becomes writable."""
        while True:
            if not self._unsent:
                await self._unsent_added.wait()
            self._unsent_added = trio.Event()
            while self._unsent:
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    sent = self.sock.send(self._unsent)
                except BlockingIOError:
                    continue
                except OSError:
                    self._counters["send_error"] += 1
                    self._unsent.clear()
                    return
                del self._unsent[:sent]

    def on_stream_closed(self, reason: str) -> None:
        """TCP: the reader saw the connection end (the server closed it, or it broke)."""
        if self.stream_closed is None:
            self.stream_closed = reason
            self._counters["tcp_closed_as_asked" if self.closing else "tcp_closed"] += 1
        self._changed.set()

    async def close_stream(self, timeout: float = 2.0) -> None:
        """TCP: end the connection gracefully, even when cancelled: our FIN, then read (the reader goes
        on) until the server's end, at most `timeout` s. Closing with media still unread would reset
        the connection instead (RFC 2525), and a trio_sfu server whose ICE-TCP handler does not take
        a reset exits with it."""
        if self.stream_closed is not None:
            return
        self.closing = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            while self.stream_closed is None:
                self._changed = trio.Event()
                await self._changed.wait()
        if self.stream_closed is None:
            self._counters["tcp_close_timeouts"] += 1

    def _flush(self) -> None:
        for data, _address in self.peer.datagrams_to_send():  # the socket is connected to the server
            self.send(data)

    # -- receiving (called by whoever reads the socket) --

    def on_control(self, data: bytes, now: float) -> None:
        first = data[0]
        if 128 <= first <= 191:
            if not 192 <= data[1] <= 223:
                self._counters["rtp_before_srtp"] += 1  # media overtook our view of the handshake
                return
            self._counters["rtcp_in"] += 1
            if self.srtp is not None and self.rtcp_handler is not None:
                plain = self.srtp.unprotect_rtcp(data)
                if plain is not None:
                    self.rtcp_handler(plain, now)
            return
        self.peer.receive(data, self.remote, now)
        # At once, not when `establish` next runs: the server's media follows its last flight.
        self.srtp = self.peer.srtp
        self._flush()
        self._changed.set()

    # -- set-up and upkeep --

    async def establish(self, timeout: float = 20.0) -> None:
        """ICE, then the DTLS handshake; SetupError if either fails or takes longer than `timeout`."""
        give_up = trio.current_time() + timeout
        peer = self.peer
        while True:
            self._flush()
            if peer.state is TransportState.CONNECTED:
                return
            if self.stream_closed is not None:
                raise SetupError(
                    f"ICE-TCP: {self.stream_closed} before ICE and DTLS completed (state "
                    f"{peer.state.value}); a trio_sfu server closes connections over tcp_max_per_address "
                    "or tcp_max_connections at once (trio_sfu_ice_tcp_refused_total on /metrics)"
                )
            event = peer.next_event()
            if isinstance(event, Failed):
                raise SetupError(f"{event.failure.value}: {event.detail}")
            if event is not None:
                continue
            if trio.current_time() >= give_up:
                raise SetupError(f"ICE and DTLS did not finish in {timeout:g} s (state {peer.state.value})")
            timer = peer.get_timer()
            self._changed = trio.Event()
            with trio.move_on_at(give_up if timer is None else min(timer, give_up)):
                await self._changed.wait()
            now = trio.current_time()
            if timer is not None and now >= timer:
                peer.handle_timer(now)

    async def consent(self) -> None:
        """Keep the peer's clock running: RFC 7675 consent checks, as browsers send them."""
        peer = self.peer
        while not peer.ended:
            timer = peer.get_timer()
            if timer is None:
                return
            await trio.sleep_until(timer)
            peer.handle_timer(trio.current_time())
            self._flush()


# --------------------------------------------------------------------------- one leg, end to end


@attrs.define
class Leg:
    signaling: Any  # Signaling, or janus.JanusSignaling
    transport: LegTransport
    offer_sent_at: float  # time.monotonic()
    connected_at: float = 0.0  # DTLS done


@contextlib.asynccontextmanager
async def open_leg(
    url: str,
    *,
    publish: bool,
    certificate: Certificate,
    stream: str,
    token: str = "",
    app: str = "live",
    uid: str = "bench",
    rcvbuf: int = 0,
    on_transport: Callable[[LegTransport], None] = lambda transport: None,
    timeout: float = 20.0,
    limiter: trio.CapacityLimiter | None = None,
    rids: tuple[str, ...] = (),
    transport: str = "udp",
) -> AsyncIterator[Leg]:
    """Connect, offer, do ICE and DTLS; the leg lives (WebSocket open, consent checks) inside the block.

    `on_transport` is called as soon as the socket exists, so the caller's reader can feed it.
    `limiter` bounds how many legs are in set-up at once (it is released once DTLS is done).
    `rids` (a publisher): offer the video as these simulcast layers, lowest first.
    `transport` "tcp": over ICE-TCP to the server's passive candidate (see the module's docstring;
    `rcvbuf` is then not set: the kernel's autotuning sizes the receive buffer, as for a browser). The
    reader that `on_transport` sets up must deframe the stream and call `on_stream_closed` at its end,
    and go on reading after the block, while the leg closes its connection (`close_stream`).
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: one of {', '.join(TRANSPORTS)}")
    # Janus's media sockets live on a 127/8 address of a non-loopback interface (see janus.py), and
    # the kernel will not route from there to 127.0.0.1: the leg uses that address too.
    host = JANUS_MEDIA_HOST if url.startswith("http") else "127.0.0.1"
    sock = udp_socket(rcvbuf, host) if transport == "udp" else tcp_socket(host)
    leg_transport: LegTransport | None = None
    holding = False
    if limiter is not None:
        await limiter.acquire()
        holding = True
    try:
        async with _signaling(url, app=app, stream=stream, uid=uid, timeout=timeout) as signaling:
            with trio.fail_after(timeout):
                local = LocalParams.new(certificate, sock.getsockname()[1], host)
                answer = await signaling.negotiate(local, publish=publish, token=token, rids=rids)
                tcp = None
                if transport == "tcp":
                    tcp = tcp_candidate(getattr(signaling, "answer_sdp", ""))
                    if tcp is None:
                        raise SetupError(
                            "ICE-TCP: the server's answer has no passive TCP candidate on 127/8 "
                            "(a=candidate:... tcp ... typ host tcptype passive); is its ICE-TCP off?"
                        )
                    await connect_tcp(sock, tcp)
                leg_transport = LegTransport(sock, local, answer, certificate, tcp)
                on_transport(leg_transport)
            if tcp is None:
                await leg_transport.establish(timeout)
            else:
                async with trio.open_nursery() as writer:
                    writer.start_soon(leg_transport.write_unsent)
                    await leg_transport.establish(timeout)
                    writer.cancel_scope.cancel()
            leg = Leg(signaling, leg_transport, signaling.offer_sent_at, time.monotonic())
            if limiter is not None and holding:
                limiter.release()
                holding = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leg_transport.consent)
                if tcp is not None:
                    nursery.start_soon(leg_transport.write_unsent)
                try:
                    yield leg
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        if limiter is not None and holding:
            limiter.release()
        if leg_transport is not None and leg_transport.kind == "tcp":
            await leg_transport.close_stream()
        sock.close()


@contextlib.asynccontextmanager
async def _signaling(url: str, *, app: str, stream: str, uid: str, timeout: float) -> AsyncIterator[Any]:
    """trio_sfu's WebSocket protocol for ws:// URLs; Janus's VideoRoom over its HTTP API for http://."""
    if url.startswith("http"):
        from .janus import open_janus

        async with open_janus(url, timeout=timeout) as janus:
            yield janus
        return
    async with (
        open_websocket_url(url, connect_timeout=timeout, disconnect_timeout=5) as ws,
        trio.open_nursery() as nursery,
    ):
        signaling = Signaling(ws, app=app, stream=stream, uid=uid)
        nursery.start_soon(signaling.pump)
        try:
            yield signaling
        finally:
            nursery.cancel_scope.cancel()
