"""One peer's transport, sans-IO: ICE-lite answers, then DTLS, then SRTP.

Everything that decides the order of a WebRTC transport's life lives here, in the style of aioquic's
`QuicConnection`: datagrams and the time come in (`receive_stun`, `receive_dtls`, `handle_timer`), and
datagrams to send (`datagrams_to_send`), the next deadline (`get_timer`) and events (`next_event`) come
out. The caller owns sockets and the clock. Media is not an event: once `srtp` exists the caller
protects and unprotects on its own packet path, synchronously, and reports liveness with
`media_received`.
"""

from __future__ import annotations

import collections
import enum

import attrs
from aioice import stun

from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.dtls import DtlsEndpoint, DtlsState, SrtpProfile
from trio_sfu.transport.ice import CandidateEvicted, CandidateValidated, IceEvent, IceLiteAgent, PairSelected
from trio_sfu.transport.srtp import SrtpSession
from trio_sfu.wire.datagram import Address


class TransportState(enum.Enum):
    NEW = "new"  # no authenticated ICE check yet
    CONNECTING = "connecting"  # an address is validated; the DTLS handshake is under way
    CONNECTED = "connected"  # SRTP keys exist: media flows
    FAILED = "failed"  # see the Failed event for why
    CLOSED = "closed"  # closed on purpose, by the peer (close_notify) or by us


class Failure(enum.Enum):
    CONSENT_EXPIRED = "consent_expired"  # nothing authenticated from the peer for the consent timeout
    DTLS = "dtls"  # the handshake failed or timed out, or the fingerprint did not match
    ICE = "ice"  # no connectivity check was answered (a controlling agent's failure)


@attrs.frozen
class Connected:
    """DTLS is done and SRTP keyed: `srtp` and `media_address` are set."""

    profile: SrtpProfile


@attrs.frozen
class Failed:
    failure: Failure
    detail: str


@attrs.frozen
class PeerClosed:
    """The peer closed DTLS itself (close_notify after the handshake): it left on purpose."""


TransportEvent = IceEvent | Connected | Failed | PeerClosed
Outgoing = tuple[bytes, Address]


class DtlsSrtpTransport:
    """What every side of a WebRTC transport shares, whatever its ICE role: the state, the DTLS
    endpoint's outcome as events (Connected and SRTP keys, Failed, PeerClosed), and the datagrams and
    events waiting to be taken. `PeerTransport` is the server's side, the test client peer the other."""

    __slots__ = ("_events", "_outgoing", "counters", "dtls", "srtp", "state")

    def __init__(self, dtls: DtlsEndpoint) -> None:
        self.dtls = dtls
        self.state = TransportState.NEW
        self.srtp: SrtpSession | None = None
        self.counters: collections.Counter[str] = collections.Counter()
        self._outgoing: list[Outgoing] = []
        self._events: collections.deque[TransportEvent] = collections.deque()

    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> TransportEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def ended(self) -> bool:
        return self.state in (TransportState.FAILED, TransportState.CLOSED)

    def _keyed(self) -> None:
        """Called once DTLS has given SRTP keys, before the Connected event is queued."""

    def _after_dtls(self) -> None:
        dtls = self.dtls
        if dtls.state is DtlsState.CONNECTED and self.srtp is None:
            assert dtls.keys is not None
            self.srtp = SrtpSession(dtls.keys)  # at once: the peer's media follows its last flight
            self._keyed()
            self.state = TransportState.CONNECTED
            self._events.append(Connected(dtls.keys.profile))
        elif dtls.state is DtlsState.FAILED:
            self._fail(Failure.DTLS, dtls.failure or "DTLS failed")
        elif dtls.state is DtlsState.CLOSED and self.srtp is not None and not self.ended:
            self.state = TransportState.CLOSED
            self._events.append(PeerClosed())

    def _fail(self, failure: Failure, detail: str) -> None:
        if self.ended:
            return
        self.state = TransportState.FAILED
        self._events.append(Failed(failure, detail))


class PeerTransport(DtlsSrtpTransport):
    """The server's side of one peer: ICE-lite (controlled), DTLS in the role the SDP chose, SRTP.

    ICE events (`CandidateValidated`, `PairSelected`, `CandidateEvicted`) come out as they are, so
    the caller can route the addresses ICE proved; `media_address` is where media goes: the address
    the peer nominated, else the one DTLS completed on.
    """

    __slots__ = ("_dtls_address", "consent_timeout", "ice", "media_address")

    def __init__(
        self,
        *,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        remote_pwd: str,
        remote_fingerprints: tuple[tuple[str, str], ...],
        certificate: Certificate,
        dtls_server: bool,
        now: float,
        consent_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.consent_timeout = consent_timeout
        self.ice = IceLiteAgent(
            local_ufrag, local_pwd, remote_ufrag, remote_pwd, consent_timeout=consent_timeout, now=now
        )
        super().__init__(
            DtlsEndpoint(
                certificate,
                server=dtls_server,
                remote_fingerprints=remote_fingerprints,
                handshake_timeout=handshake_timeout,
            )
        )
        self.media_address: Address | None = None
        self._dtls_address: Address | None = None
        # A client's ClientHello waits (in the DTLS flight) until ICE tells us where the peer is.
        self.dtls.start(now)
        self._after_dtls()

    # -- outputs -------------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` must run next: a DTLS retransmission or timeout, or consent expiry."""
        if self.state in (TransportState.FAILED, TransportState.CLOSED):
            return None
        deadline = self.ice.consent_deadline()
        dtls_deadline = self.dtls.next_deadline()
        return deadline if dtls_deadline is None else min(deadline, dtls_deadline)

    # -- inputs --------------------------------------------------------------------------------------

    def receive_stun(self, message: stun.Message, data: bytes, source: Address, now: float) -> None:
        """One STUN datagram (parsed by the caller's demultiplexer); `data` is as received."""
        if self.ended:
            return
        response, events = self.ice.handle_stun(message, data, source, now)
        if response is not None:
            self._outgoing.append((response.data, response.address))
        for event in events:
            self._events.append(event)
            if isinstance(event, CandidateValidated):
                if self.state is TransportState.NEW:
                    self.state = TransportState.CONNECTING
                self._start_dtls_client(event.address, now)
            elif isinstance(event, PairSelected):
                self.media_address = event.address
                if self.dtls.state is DtlsState.CONNECTED:
                    self._dtls_address = event.address

    def receive_dtls(self, data: bytes, source: Address, now: float) -> None:
        if self.ended:
            return
        if not self.ice.is_validated(source):
            self.counters["dtls_unvalidated"] += 1
            return
        if self._dtls_address is None or self.dtls.state is not DtlsState.CONNECTED:
            self._dtls_address = source
        for out in self.dtls.receive(data, now):
            self._outgoing.append((out, source))
        self._after_dtls()

    def media_received(self, source: Address, now: float) -> None:
        """An SRTP or SRTCP packet from `source` passed authentication: the peer is alive."""
        self.ice.media_received(source, now)

    def handle_timer(self, now: float) -> None:
        if self.ended:
            return
        address = self._dtls_address
        for out in self.dtls.handle_timeout(now):
            if address is not None:
                self._outgoing.append((out, address))
        self._after_dtls()
        if not self.ended and self.ice.consent_expired(now):
            self._fail(Failure.CONSENT_EXPIRED, f"no ICE consent or media for {self.consent_timeout:g} s")

    def close(self) -> None:
        """End on our side: close_notify to the peer if DTLS got that far."""
        if self.ended:
            return
        address = self.media_address or self._dtls_address
        for out in self.dtls.close():
            if address is not None:
                self._outgoing.append((out, address))
        self.state = TransportState.CLOSED

    # -- internals -----------------------------------------------------------------------------------

    def _start_dtls_client(self, address: Address, now: float) -> None:
        """As the DTLS client (the offer said a=setup:passive), say ClientHello to the first address ICE
        validates: until then there is nobody to say it to."""
        if self.dtls.server or self._dtls_address is not None:
            return
        self._dtls_address = address
        for out in self.dtls.resend_flight(now):
            self._outgoing.append((out, address))

    def _keyed(self) -> None:
        if self.media_address is None:
            self.media_address = self._dtls_address


__all__ = [
    "CandidateEvicted",
    "CandidateValidated",
    "Connected",
    "DtlsSrtpTransport",
    "Failed",
    "Failure",
    "PairSelected",
    "PeerClosed",
    "PeerTransport",
    "TransportEvent",
    "TransportState",
]
