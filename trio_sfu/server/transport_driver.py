"""The Trio side of a peer's transport: sockets, the clock and the mux routes for a `PeerTransport`.

Datagrams are handled synchronously on the mux's receive task (`deliver`), so a media packet goes from
the socket to the players' sockets without a task switch. The driver's own task (`run`) owns the
session's route in the mux and its timer for exactly as long as it runs. The timer (in the server's
`Timers`, whose task calls it back) holds the next deadline: the transport's (a DTLS retransmission,
consent expiry) or the media's next RTCP report. Every decision about ICE, DTLS and SRTP is the sans-IO
transport's; this module only moves bytes and time.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable

import trio

from trio_sfu.media.fanout import Wire
from trio_sfu.media.leg import MediaHandler
from trio_sfu.media.negotiation import answer_setup
from trio_sfu.media.totals import Totals
from trio_sfu.server.mux import Datagram, MediaMux
from trio_sfu.server.timers import Timer, Timers
from trio_sfu.server.udp import ConnectedUdp, DatagramEndpoint
from trio_sfu.transport.certificate import Certificate
from trio_sfu.transport.ice import ice_credential
from trio_sfu.transport.peer import (
    CandidateEvicted,
    CandidateValidated,
    Connected,
    Failed,
    Failure,
    PairSelected,
    PeerClosed,
    PeerTransport,
)
from trio_sfu.transport.srtp import SrtpSession
from trio_sfu.wire.datagram import Address, Kind
from trio_sfu.wire.rtp import is_rtcp
from trio_sfu.wire.sdp import Offer

log = logging.getLogger(__name__)


async def _raise(exc: Exception) -> None:
    raise exc

TransportEnded = Failed | PeerClosed


class TransportDriver:
    # Slots, here and in the other objects the fan-out touches per player and packet: each player's
    # state is cold in the cache when a packet arrives, and slots take fewer cache lines than a dict.
    __slots__ = (
        "_connected",
        "_endpoints",
        "_media_peer",
        "_next_tick",
        "_nursery",
        "_srtp",
        "_timer",
        "connected",
        "counters",
        "handler",
        "local_pwd",
        "local_ufrag",
        "mux",
        "on_ended",
        "on_established",
        "peer",
        "timers",
        "totals",
        "wire",
    )

    def __init__(
        self,
        mux: MediaMux,
        remote: Offer,
        certificate: Certificate,
        *,
        timers: Timers,
        consent_timeout: float = 30.0,
        handshake_timeout: float = 10.0,
        totals: Totals | None = None,
    ) -> None:
        self.mux = mux
        self.timers = timers
        self.local_ufrag = ice_credential(8)
        self.local_pwd = ice_credential(24)
        self.peer = PeerTransport(
            local_ufrag=self.local_ufrag,
            local_pwd=self.local_pwd,
            remote_ufrag=remote.ice_ufrag,
            remote_pwd=remote.ice_pwd,
            remote_fingerprints=remote.fingerprints,
            certificate=certificate,
            dtls_server=answer_setup(remote) == "passive",
            now=trio.current_time(),
            consent_timeout=consent_timeout,
            handshake_timeout=handshake_timeout,
        )
        self.handler = MediaHandler()
        self.on_ended: Callable[[TransportEnded], None] = lambda event: None
        self.on_established: Callable[[], None] = lambda: None
        self._endpoints: dict[Address, DatagramEndpoint] = {}  # the socket each validated address uses
        self._media_peer: tuple[DatagramEndpoint, Address] | None = None
        self._srtp: SrtpSession | None = None  # the transport's, once keyed: one lookup less per packet
        self._connected: ConnectedUdp | None = None
        # What the compiled fan-out sends with (media/fanout.py): the SRTP keys once DTLS is up and the
        # peer's own socket while it has one; without both, the player's packets take `send_rtp_as`.
        self.wire = Wire()
        self._nursery: trio.Nursery | None = None
        self.connected = trio.Event()
        self.counters: collections.Counter[str] = collections.Counter()
        self.totals = Totals() if totals is None else totals  # the server's, shared by every transport
        self._timer: Timer | None = None  # while `run` runs
        self._next_tick = float("inf")  # the media's next RTCP round, once connected

    # ---- receive path (runs on the mux task) ----

    def deliver(self, datagram: Datagram) -> bool:
        peer = self.peer
        if peer.ended:
            return False
        now = trio.current_time()
        try:
            if datagram.kind is Kind.STUN:
                assert datagram.stun is not None
                peer.receive_stun(datagram.stun, datagram.data, datagram.source, now)
                self._after_input(now, datagram.endpoint)
            elif datagram.kind is Kind.DTLS:
                peer.receive_dtls(datagram.data, datagram.source, now)
                self._after_input(now, datagram.endpoint)
            else:
                self._on_srtp(datagram.data, datagram.source, now)
        except Exception:
            # A bug must cost one datagram, never the mux task that serves every session.
            self.counters["internal_error"] += 1
            log.exception("event=datagram_error kind=%s", datagram.kind.value)
        return True

    def _deliver_srtp(self, data: bytes, source: Address) -> None:
        """`deliver` of SRTP or SRTCP that came over this peer's connected socket (see
        `_read_connected`): the same handling, without the mux's classification and hand-off."""
        if self.peer.ended:
            return
        try:
            self._on_srtp(data, source, trio.current_time())
        except Exception:
            self.counters["internal_error"] += 1
            log.exception("event=datagram_error kind=rtp")

    def _on_srtp(self, data: bytes, source: Address, now: float) -> None:
        srtp = self._srtp
        if srtp is None:
            self.counters["srtp_before_dtls"] += 1
            return
        totals = self.totals
        if is_rtcp(data):
            plain = srtp.unprotect_rtcp(data)
            if plain is None:
                totals.drop_srtcp_auth += 1
                return
            totals.rtcp_packets_in += 1
            self.peer.media_received(source, now)
            self.handler.on_rtcp(plain, now)
        else:
            plain = srtp.unprotect_rtp(data)
            if plain is None:
                totals.drop_srtp_auth += 1
                return
            totals.rtp_packets_in += 1
            totals.rtp_bytes_in += len(data)
            self.peer.media_received(source, now)
            self.handler.on_rtp(plain, now)

    def _after_input(self, now: float, endpoint: DatagramEndpoint | None = None) -> None:
        """Act on what the transport decided: routes, the media peer, the session; then send."""
        peer = self.peer
        connected: Connected | None = None
        while (event := peer.next_event()) is not None:
            if isinstance(event, CandidateValidated):
                if endpoint is not None:
                    self._endpoints[event.address] = endpoint
                    self.mux.route_address(event.address, self, endpoint)
            elif isinstance(event, CandidateEvicted):
                self._endpoints.pop(event.address, None)
                self.mux.unroute_address(event.address, self)
            elif isinstance(event, PairSelected):
                self._follow_media_address()
            elif isinstance(event, Connected):
                connected = event
            else:
                self._ended(event)
        for data, address in peer.datagrams_to_send():
            target = self._endpoints.get(address, endpoint)
            if target is not None:
                target.send(data, address)
        if connected is not None:
            # After our last DTLS flight has gone: as the DTLS server, the peer has no SRTP keys until
            # it reads it, and the media may start at once (a new player's keyframe cache).
            self._connected_now(connected, now)
        self._reschedule()

    def _connected_now(self, event: Connected, now: float) -> None:
        self._srtp = srtp = self.peer.srtp
        if srtp is not None:
            self.wire.attach(*srtp.fanout_handles, srtp)
        self._follow_media_address()
        self.connected.set()
        self.totals.dtls_handshakes += 1
        self.on_established()
        log.info("event=dtls_connected profile=%s", event.profile.name)
        self.handler.on_connected(now)
        self._next_tick = now

    def _ended(self, event: TransportEnded) -> None:
        if isinstance(event, PeerClosed):
            log.info("event=transport_ended reason=peer_closed_dtls")
        else:
            if event.failure is Failure.DTLS:
                self.totals.dtls_failures += 1
            log.warning("event=transport_ended reason=%s detail=%r", event.failure.value, event.detail)
        self.on_ended(event)

    # ---- send path ----

    def send_rtp(self, packet: bytes) -> bool | None:
        srtp, peer = self._srtp, self._media_peer
        if srtp is None or peer is None:
            return None
        try:
            protected = srtp.protect_rtp(packet)
        except ValueError:  # too long for SRTP, or too old to protect again
            self.totals.drop_protect_failed += 1
            return True
        return self._send_rtp_protected(protected, peer)

    def send_rtp_as(self, packet: bytes, sequence: int, timestamp: int, ssrc: int) -> bool | None:
        """`send_rtp` of `packet` with its sequence number, timestamp and SSRC replaced (the fan-out's
        path: see `SrtpSession.protect_rtp_as`)."""
        srtp, peer = self._srtp, self._media_peer
        if srtp is None or peer is None:
            return None
        try:
            protected = srtp.protect_rtp_as(packet, sequence, timestamp, ssrc)
        except ValueError:  # too long for SRTP
            self.totals.drop_protect_failed += 1
            return True
        return self._send_rtp_protected(protected, peer)

    def _send_rtp_protected(
        self, protected: bytes | memoryview, peer: tuple[DatagramEndpoint, Address]
    ) -> bool:
        if not self._send_protected(protected, peer):
            return False
        totals = self.totals
        totals.rtp_packets_out += 1
        totals.rtp_bytes_out += len(protected)
        return True

    def _send_protected(
        self, protected: bytes | memoryview, peer: tuple[DatagramEndpoint, Address]
    ) -> bool:
        """On the peer's own connected socket once it has one, else from the shared one."""
        connected = self._connected
        return connected.send(protected) if connected is not None else peer[0].send(protected, peer[1])

    def send_rtcp(self, packet: bytes) -> bool | None:
        srtp, peer = self._srtp, self._media_peer
        if srtp is None or peer is None:
            return None
        try:
            protected = srtp.protect_rtcp(packet)
        except ValueError:
            self.totals.drop_protect_failed += 1
            return True
        self.totals.rtcp_packets_out += 1
        return self._send_protected(protected, peer)

    @property
    def whole_frames_only(self) -> bool:
        """Whether the player's media goes over a stream (ICE-TCP): when full, drop whole frames."""
        peer = self._media_peer
        return peer is not None and getattr(peer[0], "stream_transport", False)

    async def wait_writable(self) -> None:
        peer, connected = self._media_peer, self._connected
        if connected is not None:
            await connected.wait_writable()
        elif peer is not None:
            await peer[0].wait_writable()
        else:
            await trio.sleep(0.01)

    # ---- the driver's task ----

    def _deadline(self) -> float:
        deadline = self.peer.get_timer()
        return self._next_tick if deadline is None else min(deadline, self._next_tick)

    def _reschedule(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.set(math.inf if self.peer.ended else self._deadline())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.mux.route_ufrag(self.local_ufrag, self):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._timer = timer = self.timers.add(self._on_alarm)
                task_status.started()
                try:
                    self._after_input(trio.current_time())  # e.g. no usable fingerprint: failed already
                    # The timer's callbacks do the rest. Ended or not, the session is cancelled from
                    # outside; until then this task keeps the route, so nothing arrives for a
                    # half-torn-down transport.
                    await trio.sleep_forever()
                finally:
                    timer.cancel()
                    self._timer = None
                    self._drop_connected()
                    self.wire.detach()
                    self._fold_unsent()

    def _on_alarm(self, now: float) -> None:
        """The timer's callback (on the Timers task): a bug ends this session, as it would have in its
        own task, and nothing else."""
        try:
            self._on_timer(now)
        except Exception as exc:
            if self._nursery is not None:
                self._nursery.start_soon(_raise, exc)
            return
        self._reschedule()

    def _on_timer(self, now: float) -> None:
        self.peer.handle_timer(now)
        self._after_input(now)
        if self.peer.ended or now < self._next_tick:
            return
        self._next_tick = now + 0.1
        connected = self._connected
        if connected is not None:
            dropped = connected.new_drops()
            if dropped:
                self.totals.drop_input_overflow += dropped
        try:
            self._next_tick = self.handler.tick(now, time.time())
        except Exception:
            # Like deliver(): a bug costs one round of reports, never the session or server.
            self.counters["internal_error"] += 1
            log.exception("event=tick_error")

    # ---- the peer's own socket (fast path) ----

    def _follow_media_address(self) -> None:
        """Send media where the transport says; once DTLS is up, through a socket connected there."""
        address = self.peer.media_address
        endpoint = self._endpoints.get(address) if address is not None else None
        if address is None or endpoint is None:
            return
        self._media_peer = (endpoint, address)
        connected = self._connected
        if connected is not None and connected.remote == address:
            return
        self._drop_connected()
        if self._srtp is None or self._nursery is None:
            return
        try:
            connected = endpoint.connect(address)
        except OSError as exc:
            log.info("event=connected_socket_unavailable error=%r", exc)
            return
        if connected is None:
            return
        self._connected = connected
        self.wire.fd = connected.fileno()
        if connected.shared_fileno >= 0:
            try:
                self.wire.share(connected.shared_fileno)
            except OSError as exc:  # not connected after all: its own socket sends
                log.info("event=shared_send_unavailable error=%r", exc)
        self._nursery.start_soon(self._read_connected, connected, endpoint)

    async def _read_connected(self, connected: ConnectedUdp, endpoint: DatagramEndpoint) -> None:
        """The kernel now hands this peer's datagrams to its own socket: feed them to the mux as if
        they had come on the shared one (same classification, same routes).

        SRTP and SRTCP from the connected address while the mux routes it here (every packet of a
        publisher, in the steady state) skip the mux's classification and hand-off: the mux only
        counts them. The rest, e.g. another peer's datagram taken between bind() and connect(),
        goes through it."""
        mux, remote = self.mux, connected.remote
        handle, received, routes = mux.handle, mux.received, mux.routes
        counted_as = Kind.RTP.value

        def on_datagram(data: bytes, source: Address) -> None:
            if data and 127 < data[0] < 192 and source == remote and routes(source, self, endpoint):
                received[counted_as] += 1
                self._deliver_srtp(data, source)
            else:
                handle(data, source, endpoint)

        with connected.reader_scope:
            await connected.receive_into(on_datagram)

    def _drop_connected(self) -> None:
        connected, self._connected = self._connected, None
        self.wire.fd = -1  # before the socket closes: its number may be reused at once
        if connected is not None:
            self.totals.drop_send_error += connected.send_errors
            connected.reader_scope.cancel()
            connected.close()

    def unsent(self) -> tuple[int, int]:
        """Packets this transport could not send and `totals` does not have yet: (refused by SRTP,
        failed in the kernel's send). The compiled fan-out counts them on the wire and the peer's
        socket counts its own, so nothing is added to the packet path; /metrics adds these."""
        connected, wire = self._connected, self.wire
        return wire.protect_failed, wire.send_errors + (connected.send_errors if connected is not None else 0)

    def _fold_unsent(self) -> None:
        wire, totals = self.wire, self.totals
        totals.drop_protect_failed += wire.protect_failed
        totals.drop_send_error += wire.send_errors
        wire.protect_failed = wire.send_errors = 0
