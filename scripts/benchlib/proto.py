"""A client leg as a browser would run it: signaling, an SDP offer, ICE (controlling), DTLS, SRTP.

The server-side objects of trio_sfu are reused for the client role: `DtlsEndpoint(server=False)` is a
DTLS client, `SrtpSession` protects with the client's key, `check_stun_auth` verifies the server's
STUN responses. Nothing here is on the per-packet path of a subscriber (see `subscriber.py`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio
from aioice import stun
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_sfu.media.negotiation import EXT_ABS_SEND_TIME, EXT_MID
from trio_sfu.testing.signaling import SignalingClient
from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.dtls import DtlsEndpoint, DtlsState
from trio_sfu.transport.ice import check_stun_auth, ice_credential
from trio_sfu.transport.srtp import SrtpSession

ABS_SEND_TIME_ID = 2  # Chromium's ids: abs-send-time 2, mid 4
MID_ID = 4
OPUS_PT = 111
VP8_PT = 96
AST_UNITS = 1 << 18  # abs-send-time: 6.18 fixed-point seconds, 24 bits (wraps every 64 s)
AST_MASK = 0xFFFFFF
JANUS_MEDIA_HOST = "127.0.0.2"


def abs_send_time(now: float) -> int:
    """The 24-bit abs-send-time of a CLOCK_MONOTONIC reading (every bench process shares that clock)."""
    return int(now * AST_UNITS) & AST_MASK


# --------------------------------------------------------------------------- SDP


@attrs.frozen
class LocalParams:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256, of the client's own certificate
    port: int  # the leg's UDP port (written as its host candidate)
    audio_ssrc: int
    video_ssrc: int
    cname: str
    host: str = "127.0.0.1"  # the leg's address (its host candidate)

    @classmethod
    def new(cls, certificate: Certificate, port: int, host: str = "127.0.0.1") -> LocalParams:
        ssrcs = struct.unpack("!II", os.urandom(8))
        return cls(
            ice_ufrag=ice_credential(8),
            ice_pwd=ice_credential(24),
            fingerprint=certificate.fingerprint("sha-256"),
            port=port,
            audio_ssrc=ssrcs[0] | 1,
            video_ssrc=ssrcs[1] | 1,
            cname=secrets.token_hex(8),
            host=host,
        )


def build_offer(local: LocalParams, *, publish: bool) -> str:
    """A Chromium-shaped BUNDLE offer: opus/111 and VP8/96, rtcp-mux, setup:active, abs-send-time.

    A publisher sends (a=ssrc lines name its SSRCs); a subscriber only receives.
    """
    direction = "sendonly" if publish else "recvonly"
    session_id = int.from_bytes(os.urandom(7), "big")
    lines = [
        "v=0",
        f"o=- {session_id} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS bench",
    ]
    sections = (
        ("audio", "0", OPUS_PT, local.audio_ssrc,
         [f"a=rtpmap:{OPUS_PT} opus/48000/2", f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1"]),
        ("video", "1", VP8_PT, local.video_ssrc,
         [f"a=rtpmap:{VP8_PT} VP8/90000", f"a=rtcp-fb:{VP8_PT} goog-remb", f"a=rtcp-fb:{VP8_PT} ccm fir",
          f"a=rtcp-fb:{VP8_PT} nack", f"a=rtcp-fb:{VP8_PT} nack pli"]),
    )
    for index, (kind, mid, pt, ssrc, codec_lines) in enumerate(sections):
        lines += [
            f"m={kind} {local.port if index == 0 else 9} UDP/TLS/RTP/SAVPF {pt}",
            "c=IN IP4 127.0.0.1" if index == 0 else "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
        ]
        if index == 0:
            lines += [
                f"a=candidate:1 1 udp 2122260223 {local.host} {local.port} typ host generation 0",
                "a=end-of-candidates",
            ]
        lines += [
            f"a=ice-ufrag:{local.ice_ufrag}",
            f"a=ice-pwd:{local.ice_pwd}",
            f"a=fingerprint:sha-256 {local.fingerprint}",
            "a=setup:active",
            f"a=mid:{mid}",
            f"a=extmap:{ABS_SEND_TIME_ID} {EXT_ABS_SEND_TIME}",
            f"a=extmap:{MID_ID} {EXT_MID}",
            f"a={direction}",
            "a=rtcp-mux",
            *codec_lines,
        ]
        if publish:
            msid = f"bench {kind}"
            lines += [f"a=msid:{msid}", f"a=ssrc:{ssrc} cname:{local.cname}", f"a=ssrc:{ssrc} msid:{msid}"]
    return "\r\n".join(lines) + "\r\n"


@attrs.frozen
class Section:
    kind: str
    port: int
    mid: str | None
    formats: tuple[str, ...]
    rtpmaps: dict[int, str]  # payload type -> "VP8/90000"
    extensions: dict[str, int]  # uri -> id


@attrs.frozen
class Answer:
    """The peer's session description (an answer from trio_sfu; an offer from Janus for players)."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    candidates: tuple[tuple[str, int], ...]
    ssrcs: dict[str, int]  # kind -> the SSRC the server sends (play answers)
    payload_types: dict[str, int]  # kind -> payload type
    sections: tuple[Section, ...] = ()

    @property
    def address(self) -> tuple[str, int]:
        """The server's IPv4 loopback candidate (the bench never uses any other address): 127.0.0.1
        first, else another 127/8 one (Janus gathers only on non-loopback interfaces)."""
        loopback = [(h, p) for h, p in self.candidates if h.startswith("127.")]
        for host, port in sorted(loopback, key=lambda c: c[0] != "127.0.0.1"):
            return host, port
        raise ValueError(f"the answer has no 127.0.0.0/8 candidate: {self.candidates}")

    def extension_id(self, uri: str) -> int:
        return next((s.extensions[uri] for s in self.sections if uri in s.extensions), 0)


def parse_answer(sdp: str) -> Answer:
    ufrag = pwd = None
    fingerprints: list[tuple[str, str]] = []
    candidates: list[tuple[str, int]] = []
    ssrcs: dict[str, int] = {}
    pts: dict[str, int] = {}
    sections: list[Section] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        section = sections[-1] if sections else None
        if line.startswith("m="):
            fields = line[2:].split()
            sections.append(Section(fields[0], int(fields[1]), None, tuple(fields[3:]), {}, {}))
            if fields[1] != "0" and len(fields) > 3:
                pts.setdefault(fields[0], int(fields[3]))
        elif line.startswith("a=ice-ufrag:"):
            ufrag = ufrag or line.split(":", 1)[1]
        elif line.startswith("a=ice-pwd:"):
            pwd = pwd or line.split(":", 1)[1]
        elif line.startswith("a=fingerprint:"):
            algorithm, _, value = line.split(":", 1)[1].partition(" ")
            if (algorithm, value) not in fingerprints:
                fingerprints.append((algorithm, value))
        elif line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) >= 6 and fields[2].lower() == "udp":
                candidate = (fields[4], int(fields[5]))
                if candidate not in candidates:
                    candidates.append(candidate)
        elif section is None:
            continue
        elif line.startswith("a=ssrc:"):
            ssrcs.setdefault(section.kind, int(line[7:].split()[0]))
        elif line.startswith("a=mid:"):
            sections[-1] = attrs.evolve(section, mid=line[6:])
        elif line.startswith("a=rtpmap:"):
            pt, _, codec = line[9:].partition(" ")
            section.rtpmaps[int(pt)] = codec
        elif line.startswith("a=extmap:"):
            ident, _, uri = line[9:].partition(" ")
            section.extensions[uri.split()[0]] = int(ident.split("/")[0])
    if ufrag is None or pwd is None or not fingerprints:
        raise ValueError("the answer lacks ICE credentials or a fingerprint")
    return Answer(ufrag, pwd, tuple(fingerprints), tuple(candidates), ssrcs, pts, tuple(sections))


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

    async def negotiate(self, local: LocalParams, *, publish: bool, token: str) -> Answer:
        """stream.connect, then our offer; the server's answer."""
        await self.call("stream.connect", {"token": token})
        self.offer_sent_at = time.monotonic()
        offer = build_offer(local, publish=publish)
        reply = await self.call("stream.offer", {"publish": publish, "sdp": offer})
        return parse_answer(reply["data"]["sdp"])

    async def call(self, method: str, data: dict[str, Any]) -> dict[str, Any]:
        """A request for this leg's stream; SignalingError unless it succeeded."""
        try:
            reply = await self.request(method, self.stream, data)
        except trio.EndOfChannel:
            raise SignalingError(f"{method}: the server closed the WebSocket") from None
        if reply.get("err") != 0:
            raise SignalingError(f"{method}: error {reply.get('err')} {reply.get('err_msg')}")
        return reply


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
    """One leg's media transport: connected UDP socket, ICE checks as the controlling agent, DTLS
    client, SRTP. `on_control` takes every datagram that is not RTP (STUN, DTLS, SRTCP)."""

    def __init__(self, sock: socket.socket, local: LocalParams, answer: Answer, certificate: Certificate):
        self.sock = sock
        self.local = local
        self.answer = answer
        sock.connect(answer.address)
        self._username = f"{answer.ice_ufrag}:{local.ice_ufrag}"
        self._key = answer.ice_pwd.encode()
        self._tie_breaker = int.from_bytes(os.urandom(8), "big")
        self._pending: dict[bytes, bool] = {}
        self.ice_done = False
        self.dtls = DtlsEndpoint(certificate, server=False, remote_fingerprints=answer.fingerprints)
        self.srtp: SrtpSession | None = None
        self._changed = trio.Event()
        self.counters: collections.Counter[str] = collections.Counter()
        self.rtcp_handler: Any = None

    # -- sending --

    def send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except BlockingIOError:
            self.counters["send_would_block"] += 1
        except OSError:
            self.counters["send_error"] += 1

    def send_binding(self, *, nominate: bool) -> None:
        """A connectivity check (nominating) or an RFC 7675 consent check."""
        attributes: dict[str, Any] = {
            "USERNAME": self._username,
            "PRIORITY": 0x6E7F1EFF,
            "ICE-CONTROLLING": self._tie_breaker,
        }
        if nominate:
            attributes["USE-CANDIDATE"] = None
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes=attributes)
        message.add_message_integrity(self._key)  # and FINGERPRINT, last
        if len(self._pending) > 64:
            self._pending.clear()
        self._pending[message.transaction_id] = nominate
        self.counters["stun_requests"] += 1
        self.send(bytes(message))

    # -- receiving (called by whoever reads the socket) --

    def on_control(self, data: bytes, now: float) -> None:
        first = data[0]
        if first < 4:
            self._on_stun(data)
        elif 20 <= first <= 63:
            for out in self.dtls.receive(data, now):
                self.send(out)
            if self.srtp is None and self.dtls.state is DtlsState.CONNECTED and self.dtls.keys is not None:
                # At once, not when `establish` next runs: the server's media follows its last flight.
                self.srtp = SrtpSession(self.dtls.keys)
            self._wake()
        elif 128 <= first <= 191:
            if not 192 <= data[1] <= 223:
                self.counters["rtp_before_srtp"] += 1  # media overtook our view of the handshake
                return
            self.counters["rtcp_in"] += 1
            if self.srtp is not None and self.rtcp_handler is not None:
                plain = self.srtp.unprotect_rtcp(data)
                if plain is not None:
                    self.rtcp_handler(plain, now)
        else:
            self.counters["unknown_datagram"] += 1

    def _on_stun(self, data: bytes) -> None:
        try:
            message = stun.parse_message(data)
        except Exception:
            self.counters["stun_malformed"] += 1
            return
        if message.message_class == stun.Class.REQUEST:
            self._answer_check(message, data)
            return
        if message.transaction_id not in self._pending:
            self.counters["stun_unexpected"] += 1
            return
        if message.message_class != stun.Class.RESPONSE:
            self.counters["stun_error_response"] += 1
            return
        if check_stun_auth(data, self._key) is not None:
            self.counters["stun_bad_auth"] += 1
            return
        nominated = self._pending.pop(message.transaction_id)
        self.counters["stun_responses"] += 1
        if nominated and not self.ice_done:
            self.ice_done = True
            self._wake()

    def _answer_check(self, message: stun.Message, data: bytes) -> None:
        """A full ICE peer (Janus's libnice, even in lite mode, sends triggered checks) checks us too:
        answer as a browser would, signed with our password."""
        expected = f"{self.local.ice_ufrag}:{self.answer.ice_ufrag}"
        if (
            message.message_method != stun.Method.BINDING
            or message.attributes.get("USERNAME") != expected
            or check_stun_auth(data, self.local.ice_pwd.encode()) is not None
        ):
            self.counters["stun_bad_request"] += 1
            return
        host, port = self.sock.getpeername()[:2]
        response = stun.Message(
            stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=message.transaction_id,
            attributes={"XOR-MAPPED-ADDRESS": (host, port)},
        )
        response.add_message_integrity(self.local.ice_pwd.encode())
        self.counters["stun_checks_answered"] += 1
        self.send(bytes(response))

    def _wake(self) -> None:
        self._changed.set()

    async def _wait_change(self, deadline: float) -> None:
        self._changed = trio.Event()
        with trio.move_on_at(deadline):
            await self._changed.wait()

    # -- set-up --

    async def establish(self, timeout: float = 20.0) -> None:
        """ICE, then the DTLS handshake; SetupError if either fails or takes longer than `timeout`."""
        give_up = trio.current_time() + timeout
        interval = 0.05
        while not self.ice_done:
            if trio.current_time() >= give_up:
                raise SetupError("ICE: no authenticated Binding success response")
            self.send_binding(nominate=True)
            await self._wait_change(min(give_up, trio.current_time() + interval))
            interval = min(interval * 2, 0.5)
        for out in self.dtls.start(trio.current_time()):
            self.send(out)
        while self.dtls.state is DtlsState.HANDSHAKING:
            deadline = self.dtls.next_deadline() or give_up
            await self._wait_change(min(deadline, give_up))
            now = trio.current_time()
            if now >= give_up:
                raise SetupError("DTLS handshake did not finish")
            for out in self.dtls.handle_timeout(now):
                self.send(out)
        if self.dtls.state is not DtlsState.CONNECTED or self.srtp is None:
            raise SetupError(f"DTLS failed: {self.dtls.failure}")

    async def consent(self, interval: float = 5.0) -> None:
        """RFC 7675 consent freshness, as browsers do (every 5 s, jittered)."""
        while True:
            await trio.sleep(interval * (0.8 + 0.4 * secrets.randbelow(1000) / 1000))
            self.send_binding(nominate=False)


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
) -> AsyncIterator[Leg]:
    """Connect, offer, do ICE and DTLS; the leg lives (WebSocket open, consent checks) inside the block.

    `on_transport` is called as soon as the socket exists, so the caller's reader can feed it.
    `limiter` bounds how many legs are in set-up at once (it is released once DTLS is done).
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
                answer = await signaling.negotiate(local, publish=publish, token=token)
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
