"""A peer's media transport: ICE-lite, then DTLS, then SRTP, on the shared media port.

Datagrams are handled synchronously on the mux's receive task (`deliver`), so a media packet goes from
the socket to the players' sockets without a task switch. The transport's own task (`run`) owns the
session's route in the mux for exactly as long as it runs, and sleeps until the next deadline of its
sans-IO objects: a DTLS retransmission, consent expiry, or the next RTCP report.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

import trio

from trio_sfu.media.leg import MediaHandler
from trio_sfu.media.negotiation import answer_setup
from trio_sfu.server.mux import Datagram, MediaMux
from trio_sfu.server.udp import ConnectedUdp, DatagramEndpoint
from trio_sfu.signaling.messages import CloseReason
from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.dtls import DtlsEndpoint, DtlsState
from trio_sfu.transport.ice import (
    CandidateEvicted,
    CandidateValidated,
    IceLiteAgent,
    PairSelected,
    ice_credential,
)
from trio_sfu.transport.srtp import SrtpSession
from trio_sfu.wire.datagram import Address, Kind
from trio_sfu.wire.rtp import is_rtcp
from trio_sfu.wire.sdp import Offer

log = logging.getLogger(__name__)


class Transport:
    # Slots, here and in the other objects the fan-out touches per player and packet: each player's
    # state is cold in the cache when a packet arrives, and slots take fewer cache lines than a dict.
    __slots__ = (
        "_certificate",
        "_connected",
        "_consent_timeout",
        "_dtls_peer",
        "_failed",
        "_handshake_timeout",
        "_media_peer",
        "_next_tick",
        "_nursery",
        "_timer",
        "closed_by_peer",
        "connected",
        "counters",
        "dtls",
        "handler",
        "ice",
        "local_pwd",
        "local_ufrag",
        "mux",
        "on_established",
        "on_failed",
        "remote",
        "srtp",
        "stats",
    )

    def __init__(
        self,
        mux: MediaMux,
        remote: Offer,
        certificate: Certificate,
        *,
        consent_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        stats: collections.Counter[str] | None = None,
    ) -> None:
        self.mux = mux
        self.remote = remote
        self.local_ufrag = ice_credential(8)
        self.local_pwd = ice_credential(24)
        self._certificate = certificate
        self._consent_timeout = consent_timeout
        self._handshake_timeout = handshake_timeout
        self.handler = MediaHandler()
        self.on_failed: Callable[[CloseReason, str], None] = lambda reason, why: None
        self.on_established: Callable[[], None] = lambda: None
        self.ice: IceLiteAgent | None = None
        self.dtls: DtlsEndpoint | None = None
        self.srtp: SrtpSession | None = None
        self._dtls_peer: tuple[DatagramEndpoint, Address] | None = None
        self._media_peer: tuple[DatagramEndpoint, Address] | None = None
        self._connected: ConnectedUdp | None = None
        self._nursery: trio.Nursery | None = None
        self.connected = trio.Event()
        self.counters: collections.Counter[str] = collections.Counter()
        # Server-wide totals for /metrics, shared by every transport (one dict update per packet).
        self.stats: collections.Counter[str] = collections.Counter() if stats is None else stats
        self._timer: trio.CancelScope | None = None
        self._next_tick = 0.0
        self._failed = False
        self.closed_by_peer = False  # the peer ended DTLS itself (close_notify): it is leaving

    # ---- receive path (runs on the mux task) ----

    def deliver(self, datagram: Datagram) -> bool:
        if self.ice is None or self._failed:
            return False
        now = trio.current_time()
        try:
            if datagram.kind is Kind.STUN:
                self._on_stun(datagram, now)
            elif datagram.kind is Kind.DTLS:
                self._on_dtls(datagram, now)
            else:
                self._on_srtp(datagram, now)
        except Exception:
            # A bug must cost one datagram, never the mux task that serves every session.
            self.counters["internal_error"] += 1
            log.exception("event=datagram_error kind=%s", datagram.kind.value)
        return True

    def _on_stun(self, datagram: Datagram, now: float) -> None:
        assert self.ice is not None and datagram.stun is not None
        response, events = self.ice.handle_stun(datagram.stun, datagram.data, datagram.source, now)
        if response is not None:
            datagram.endpoint.send(response.data, response.address)
        for event in events:
            if isinstance(event, CandidateValidated):
                self.mux.route_address(event.address, self)
                self._start_dtls_client(datagram.endpoint, event.address, now)
            elif isinstance(event, PairSelected):
                self._use_media_peer(datagram.endpoint, event.address)
                if (
                    self._dtls_peer is not None
                    and self.dtls is not None
                    and self.dtls.state is DtlsState.CONNECTED
                ):
                    self._dtls_peer = self._media_peer
            elif isinstance(event, CandidateEvicted):
                self.mux.unroute_address(event.address, self)
        self._reschedule()

    def _start_dtls_client(self, endpoint: DatagramEndpoint, address: Address, now: float) -> None:
        """As the DTLS client (the offer said a=setup:passive), say ClientHello to the first address ICE
        validates: until then there is nobody to say it to."""
        dtls = self.dtls
        if dtls is None or dtls.server or self._dtls_peer is not None:
            return
        self._dtls_peer = (endpoint, address)
        for out in dtls.resend_flight(now):
            endpoint.send(out, address)

    def _on_dtls(self, datagram: Datagram, now: float) -> None:
        assert self.ice is not None and self.dtls is not None
        if not self.ice.is_validated(datagram.source):
            self.counters["dtls_unvalidated"] += 1
            return
        if self._dtls_peer is None or self.dtls.state is not DtlsState.CONNECTED:
            self._dtls_peer = (datagram.endpoint, datagram.source)
        for out in self.dtls.receive(datagram.data, now):
            datagram.endpoint.send(out, datagram.source)
        self._after_dtls(now)

    def _after_dtls(self, now: float) -> None:
        assert self.dtls is not None
        if self.dtls.state is DtlsState.CONNECTED and self.srtp is None:
            assert self.dtls.keys is not None
            self.srtp = SrtpSession(self.dtls.keys)
            peer = self._media_peer or self._dtls_peer
            if peer is not None:
                self._use_media_peer(*peer)
            self.connected.set()
            self.stats["dtls_handshakes"] += 1
            self.on_established()
            log.info("event=dtls_connected profile=%s", self.dtls.keys.profile.name)
            self.handler.on_connected(now)
        elif self.dtls.state is DtlsState.FAILED:
            self.stats["dtls_failures"] += 1
            self._fail(CloseReason.TRANSPORT_FAILED, self.dtls.failure or "DTLS failed")
        elif self.dtls.state is DtlsState.CLOSED and self.srtp is not None:
            self.closed_by_peer = True
            self._fail(CloseReason.TRANSPORT_FAILED, "the peer closed DTLS", expected=True)
        self._reschedule()

    def _on_srtp(self, datagram: Datagram, now: float) -> None:
        srtp = self.srtp
        if srtp is None:
            self.counters["srtp_before_dtls"] += 1
            return
        data = datagram.data
        stats = self.stats
        if is_rtcp(data):
            plain = srtp.unprotect_rtcp(data)
            if plain is None:
                stats["drop_srtcp_auth"] += 1
                return
            stats["rtcp_packets_in"] += 1
            assert self.ice is not None
            self.ice.media_received(datagram.source, now)
            self.handler.on_rtcp(plain, now)
        else:
            plain = srtp.unprotect_rtp(data)
            if plain is None:
                stats["drop_srtp_auth"] += 1
                return
            stats["rtp_packets_in"] += 1
            stats["rtp_bytes_in"] += len(data)
            assert self.ice is not None
            self.ice.media_received(datagram.source, now)
            self.handler.on_rtp(plain, now)

    # ---- send path ----

    def send_rtp(self, packet: bytes) -> bool | None:
        srtp, peer = self.srtp, self._media_peer
        if srtp is None or peer is None:
            return None
        try:
            protected = srtp.protect_rtp(packet)
        except ValueError:  # too long for SRTP, or too old to protect again: counted by srtp
            return True
        return self._send_rtp_protected(protected, peer)

    def send_rtp_as(self, packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bool | None:
        """`send_rtp` of `packet` with its sequence number, timestamp and SSRC replaced (the fan-out's
        path: see `SrtpSession.protect_rtp_as`)."""
        srtp, peer = self.srtp, self._media_peer
        if srtp is None or peer is None:
            return None
        try:
            protected = srtp.protect_rtp_as(packet, sequence, timestamp, ssrc)
        except ValueError:  # too long for SRTP: counted by srtp
            return True
        return self._send_rtp_protected(protected, peer)

    def _send_rtp_protected(
        self, protected: bytes | memoryview, peer: tuple[DatagramEndpoint, Address]
    ) -> bool:
        if not self._send_protected(protected, peer):
            return False
        stats = self.stats
        stats["rtp_packets_out"] += 1
        stats["rtp_bytes_out"] += len(protected)
        return True

    def _send_protected(
        self, protected: bytes | memoryview, peer: tuple[DatagramEndpoint, Address]
    ) -> bool:
        """On the peer's own connected socket once it has one, else from the shared one."""
        connected = self._connected
        return connected.send(protected) if connected is not None else peer[0].send(protected, peer[1])

    def send_rtcp(self, packet: bytes) -> bool | None:
        srtp, peer = self.srtp, self._media_peer
        if srtp is None or peer is None:
            return None
        try:
            protected = srtp.protect_rtcp(packet)
        except ValueError:
            return True
        self.stats["rtcp_packets_out"] += 1
        return self._send_protected(protected, peer)

    async def wait_writable(self) -> None:
        peer, connected = self._media_peer, self._connected
        if connected is not None:
            await connected.wait_writable()
        elif peer is not None:
            await peer[0].wait_writable()
        else:
            await trio.sleep(0.01)

    # ---- the transport's task ----

    def _fail(self, reason: CloseReason, why: str, *, expected: bool = False) -> None:
        if self._failed:
            return
        self._failed = True
        log.log(
            logging.INFO if expected else logging.WARNING,
            "event=transport_ended reason=%s detail=%r",
            reason.value,
            why,
        )
        self.on_failed(reason, why)

    def _deadline(self) -> float:
        assert self.ice is not None and self.dtls is not None
        deadline = min(self.ice.consent_deadline(), self._next_tick)
        dtls_deadline = self.dtls.next_deadline()
        if dtls_deadline is not None:
            deadline = min(deadline, dtls_deadline)
        return deadline

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.deadline = self._deadline()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        now = trio.current_time()
        self.ice = IceLiteAgent(
            self.local_ufrag,
            self.local_pwd,
            self.remote.ice_ufrag,
            self.remote.ice_pwd,
            consent_timeout=self._consent_timeout,
            now=now,
        )
        self.dtls = DtlsEndpoint(
            self._certificate,
            server=answer_setup(self.remote) == "passive",
            remote_fingerprints=self.remote.fingerprints,
            handshake_timeout=self._handshake_timeout,
        )
        self.dtls.start(now)
        with self.mux.route_ufrag(self.local_ufrag, self):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    while not self._failed:
                        with trio.CancelScope(deadline=self._deadline()) as self._timer:
                            await trio.sleep_forever()
                        self._timer = None
                        self._on_timer(trio.current_time())
                    # Failed: the session is being cancelled; wait for it here, still routed, so
                    # nothing arrives for a half-torn-down transport.
                    await trio.sleep_forever()
                finally:
                    self._drop_connected()

    # ---- the peer's own socket (fast path) ----

    def _use_media_peer(self, endpoint: DatagramEndpoint, address: Address) -> None:
        """Send media to `address`; once DTLS is up, through a socket connected to it."""
        self._media_peer = (endpoint, address)
        connected = self._connected
        if connected is not None and connected.remote == address:
            return
        self._drop_connected()
        if self.srtp is None or self._nursery is None:
            return
        try:
            connected = endpoint.connect(address)
        except OSError as exc:
            log.info("event=connected_socket_unavailable error=%r", exc)
            return
        if connected is None:
            return
        self._connected = connected
        self._nursery.start_soon(self._read_connected, connected, endpoint)

    async def _read_connected(self, connected: ConnectedUdp, endpoint: DatagramEndpoint) -> None:
        """The kernel now hands this peer's datagrams to its own socket: feed them to the mux as if
        they had come on the shared one (same classification, same routes)."""
        handle = self.mux.handle
        with connected.reader_scope:
            await connected.receive_into(lambda data, source: handle(data, source, endpoint))

    def _drop_connected(self) -> None:
        connected, self._connected = self._connected, None
        if connected is not None:
            connected.reader_scope.cancel()
            connected.close()

    def _on_timer(self, now: float) -> None:
        assert self.ice is not None and self.dtls is not None
        for out in self.dtls.handle_timeout(now):
            if self._dtls_peer is not None:
                self._dtls_peer[0].send(out, self._dtls_peer[1])
        self._after_dtls(now)
        if self.ice.consent_expired(now):
            self._fail(CloseReason.TIMEOUT, f"no ICE consent or media for {self._consent_timeout:g} s")
            return
        if now >= self._next_tick:
            self._next_tick = now + 0.1
            connected = self._connected
            if connected is not None:
                dropped = connected.new_drops()
                if dropped:
                    self.stats["drop_input_overflow"] += dropped
            if self.srtp is not None:
                try:
                    self._next_tick = self.handler.tick(now, time.time())
                except Exception:
                    # Like deliver(): a bug costs one round of reports, never the session or server.
                    self.counters["internal_error"] += 1
                    log.exception("event=tick_error")
