"""A client leg as a browser would run it: signaling, an SDP offer, ICE (controlling), DTLS, SRTP.

The transport is trio_sfu's sans-IO client peer (`trio_sfu.transport.client_peer`), the same one the
tests run against the server in memory; this module gives it a connected UDP socket and a clock.
Nothing here is on the per-packet path of a subscriber (see `subscriber.py`).
"""

from __future__ import annotations

import collections
import contextlib
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
        answer = parse_answer(reply["data"]["sdp"])
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
    takes every datagram that is not RTP (STUN, DTLS, SRTCP)."""

    def __init__(self, sock: socket.socket, local: LocalParams, answer: Answer, certificate: Certificate):
        self.sock = sock
        self.local = local
        self.answer = answer
        sock.connect(answer.address)
        self.peer = ClientPeer(
            local_ufrag=local.ice_ufrag,
            local_pwd=local.ice_pwd,
            remote_ufrag=answer.ice_ufrag,
            remote_pwd=answer.ice_pwd,
            remote_fingerprints=answer.fingerprints,
            certificate=certificate,
            remote_address=answer.address,
            now=trio.current_time(),
        )
        self.srtp: SrtpSession | None = None  # the peer's, once keyed (read per packet by the legs)
        self._changed = trio.Event()
        self._counters: collections.Counter[str] = collections.Counter()
        self.rtcp_handler: Any = None

    @property
    def counters(self) -> collections.Counter[str]:
        return self._counters + self.peer.counters

    # -- sending --

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except BlockingIOError:
            self._counters["send_would_block"] += 1
        except OSError:
            self._counters["send_error"] += 1

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
        self.peer.receive(data, self.answer.address, now)
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
) -> AsyncIterator[Leg]:
    """Connect, offer, do ICE and DTLS; the leg lives (WebSocket open, consent checks) inside the block.

    `on_transport` is called as soon as the socket exists, so the caller's reader can feed it.
    `limiter` bounds how many legs are in set-up at once (it is released once DTLS is done).
    `rids` (a publisher): offer the video as these simulcast layers, lowest first.
    """
    # Janus's media sockets live on a 127/8 address of a non-loopback interface (see janus.py), and
    # the kernel will not route from there to 127.0.0.1: the leg uses that address too.
    host = JANUS_MEDIA_HOST if url.startswith("http") else "127.0.0.1"
    sock = udp_socket(rcvbuf, host)
    holding = False
    if limiter is not None:
        await limiter.acquire()
        holding = True
    try:
        async with _signaling(url, app=app, stream=stream, uid=uid, timeout=timeout) as signaling:
            with trio.fail_after(timeout):
                local = LocalParams.new(certificate, sock.getsockname()[1], host)
                answer = await signaling.negotiate(local, publish=publish, token=token, rids=rids)
                transport = LegTransport(sock, local, answer, certificate)
                on_transport(transport)
            await transport.establish(timeout)
            leg = Leg(signaling, transport, signaling.offer_sent_at, time.monotonic())
            if limiter is not None and holding:
                limiter.release()
                holding = False
            async with trio.open_nursery() as nursery:
                nursery.start_soon(transport.consent)
                try:
                    yield leg
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        if limiter is not None and holding:
            limiter.release()
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
