"""The top of the tree: listeners, the media mux, every connection, and a clean shutdown.

`Server` holds what all connections share (router, mux, token verifier, certificate, limits). Its
`serve` opens the top nursery; tests drive the same object over in-memory streams and an in-memory
datagram network (`serve_stream`, `media_endpoints=`), so the mock-clock tests run the real code.
"""

from __future__ import annotations

import collections
import logging
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
import trio
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    wrap_server_stream,
)

from trio_sfu.config import Config, ConfigError, HostPort
from trio_sfu.media.negotiation import TransportParameters, answer_play, answer_publish
from trio_sfu.media.router import Router, StreamKey
from trio_sfu.media.totals import Totals
from trio_sfu.server.hooks import Authorize, AuthRequest, OnEvent, authorize, tell
from trio_sfu.server.http import HttpFrontend
from trio_sfu.server.ice_tcp import IceTcpListener, TcpCounters
from trio_sfu.server.listeners import bound_addresses, tcp_listeners
from trio_sfu.server.mux import MediaMux
from trio_sfu.server.recording import Recordings
from trio_sfu.server.session import Session
from trio_sfu.server.signaling_socket import SignalingSocket
from trio_sfu.server.timers import Timers
from trio_sfu.server.transport_driver import TransportDriver
from trio_sfu.server.udp import DatagramEndpoint, UdpEndpoint
from trio_sfu.server.webhooks import Webhooks
from trio_sfu.server.websocket_failure import install as install_websocket_failure
from trio_sfu.signaling.auth import Grant, TokenVerifier
from trio_sfu.signaling.limits import Limits, LimitSettings
from trio_sfu.signaling.messages import ErrorCode, Header, SignalingError
from trio_sfu.transport.certificate import Certificate
from trio_sfu.wire.sdp import SdpError, parse_offer

log = logging.getLogger(__name__)

install_websocket_failure()  # 1007 on a non-UTF-8 text frame, not an abrupt TCP close


@attrs.frozen
class StatsSnapshot:
    """The server's figures at one moment: sessions and streams by kind, and its counters."""

    publishers: int
    players: int
    streams_published: int
    streams_played: int
    connections: int
    shutting_down: bool
    totals: Totals  # packets, handshakes and drops (a copy)
    datagrams: dict[str, int]  # by RFC 7983 kind, on the media ports
    mux_drops: dict[str, int]
    bad_requests: int
    http_responses: dict[int, int]
    keyframe_cache_bytes: int = 0  # held by all producers' keyframe caches
    keyframe_cache_packets: int = 0
    relayed_in: int = 0  # streams played here from another worker or node (trio_sfu.cluster)
    ice_tcp: dict[str, int] = attrs.field(factory=dict)  # TcpCounters, summed over the listeners

    @property
    def sessions(self) -> int:
        return self.publishers + self.players


class ClusterLink(Protocol):
    """What the server needs when it is one of several processes (trio_sfu.cluster implements it):
    streams claimed cluster-wide, and relays for streams held elsewhere."""

    async def run(self, server: Server, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def claim(self, key: StreamKey) -> None:
        """Before a publish is answered; SignalingError 409 if another worker or node holds it."""
        ...

    def release(self, key: StreamKey) -> None:
        """The stream's publisher is gone here (asynchronous: never blocks the caller)."""
        ...

    async def ensure_playable(self, key: StreamKey) -> None:
        """Before a play is answered: relay the stream here if it is published elsewhere."""
        ...

    async def close(self) -> None:
        """Shutting down: release this server's claims at once."""
        ...

    async def host_metrics(self) -> bytes | None:
        """Every worker's /metrics summed (None: not one of a host's workers); SignalingError 503."""
        ...


def announced_addresses(config: Config, endpoint: HostPort) -> list[str]:
    """The addresses written into ICE candidates for one media listener."""
    v6 = ":" in endpoint.host
    if config.announce:
        return [a for a in config.announce if (":" in a) == v6]
    if endpoint.is_wildcard:
        from aioice.ice import get_host_addresses  # skips loopback, which is right for a wildcard

        return [a for a in get_host_addresses(use_ipv4=not v6, use_ipv6=v6) if (":" in a) == v6]
    return [endpoint.host]


class Server:
    def __init__(
        self,
        config: Config,
        *,
        verifier: TokenVerifier | None = None,
        certificate: Certificate | None = None,
        wall_clock: Callable[[], float] = time.time,
        authorize: Authorize | None = None,
        on_event: OnEvent | None = None,
    ) -> None:
        """`authorize` and `on_event`: an embedding application's hooks (trio_sfu.server.hooks)."""
        config.check()
        self.config = config
        self.verifier = verifier or TokenVerifier.from_settings(
            config.token_secret,
            config.token_public_key.read_bytes() if config.token_public_key else None,
        )
        if certificate is None:
            if config.dtls_certificate and config.dtls_private_key:
                certificate = Certificate.load(
                    config.dtls_certificate.read_bytes(), config.dtls_private_key.read_bytes()
                )
            else:
                certificate = Certificate.generate()
        self.certificate = certificate
        self.fingerprint = certificate.fingerprint("sha-256")
        self.wall_clock = wall_clock
        self.router = Router()
        self.mux = MediaMux()
        self.timers = Timers()  # every transport's deadlines, on one task
        self.counters: collections.Counter[str] = collections.Counter()
        self.totals = Totals()  # packets, handshakes and drops across sessions, read by /metrics
        self.connections: set[SignalingSocket] = set()
        self._idle = trio.Event()  # set when the last connection ends during shutdown
        self._media_endpoints: list[DatagramEndpoint] = []  # the media sockets, once bound (run)
        self.limits = Limits(
            LimitSettings(
                max_sessions=config.max_sessions,
                max_sessions_per_socket=config.max_sessions_per_socket,
                max_sessions_per_address=config.max_sessions_per_address,
                max_players_per_stream=config.max_players_per_stream,
                max_handshakes=config.max_handshakes,
                requests_per_second=config.requests_per_second,
                request_burst=config.request_burst,
            )
        )
        self.shutting_down = False
        self.candidates: tuple[tuple[str, int], ...] = ()
        self.tcp_candidates: tuple[tuple[str, int], ...] = ()  # ICE-TCP (trio_sfu.server.ice_tcp)
        self.tcp_listeners: list[IceTcpListener] = []
        self.signal_addresses: list[tuple[str, int]] = []
        self.http_addresses: list[tuple[str, int]] = []
        self.http_responses: collections.Counter[int] = collections.Counter()
        self.ssl_context = self._ssl_context(config)
        self.http = HttpFrontend(self)
        self._ssrcs_used: set[int] = set()
        self._nursery: trio.Nursery | None = None
        # Several processes: the cluster layer, and the listener other workers' relays play from.
        self.cluster: ClusterLink | None = None
        self.cluster_verifier = (
            TokenVerifier.from_settings(config.cluster_secret, None) if config.cluster_secret else None
        )
        self.cluster_addresses: list[tuple[str, int]] = []
        self.webhooks = Webhooks(config.webhook_urls, config.webhook_secret, config.webhook_ca_file)
        self._authorize_hook = authorize
        self._on_event = on_event
        self.recordings = Recordings(list(config.record), config.recording_dir, self.emit_event)

    # ---- shared services for connections ----

    @property
    def session_count(self) -> int:
        return self.limits.sessions

    def snapshot(self) -> StatsSnapshot:
        """What /metrics and /healthz report, read in one place (copies: the caller may keep them)."""
        sessions = [s for connection in list(self.connections) for s in list(connection.sessions.values())]
        producers = [p for publication in self.router.publications() for p in publication.producers]
        return StatsSnapshot(
            publishers=sum(1 for s in sessions if s.publish),
            players=sum(1 for s in sessions if not s.publish),
            streams_published=len(self.router),
            streams_played=len({s.key for s in sessions if not s.publish}),
            connections=len(self.connections),
            shutting_down=self.shutting_down,
            totals=self._totals_now(sessions),
            datagrams=dict(self.mux.received),
            mux_drops=dict(self.mux.dropped),
            bad_requests=self.counters["bad_request"],
            http_responses=dict(self.http_responses),
            keyframe_cache_bytes=sum(p.keyframe_cache_bytes for p in producers),
            keyframe_cache_packets=sum(len(p.keyframe_cache) for p in producers),
            relayed_in=sum(1 for p in self.router.publications() if not isinstance(p.publisher, Session)),
            ice_tcp=self._ice_tcp_counters(),
        )

    def _totals_now(self, sessions: list[Session]) -> Totals:
        """The totals with what live transports and the shared sockets counted on their own."""
        totals = self.totals.copy()
        for session in sessions:
            protect_failed, send_errors = session.transport.unsent()
            totals.drop_protect_failed += protect_failed
            totals.drop_send_error += send_errors
        totals.drop_send_error += sum(
            e.send_errors for e in self._media_endpoints if isinstance(e, UdpEndpoint)
        )
        return totals

    def open_session(
        self,
        header: Header,
        *,
        publish: bool,
        sdp: str,
        notify: Callable[[Session, str, dict[str, Any]], None],
        socket_sessions: int,
        address: str,
        max_layer: int | None = None,
        relay_layer: str | None = None,
    ) -> Session:
        """Check the limits, answer the offer and join the router: a session ready to run (its client
        gets the answer before any media can flow). SignalingError says what the client must change."""
        key = (header.app, header.stream)
        publication = None
        if publish:
            self.router.check_free(key)
        else:
            publication = self.router.lookup(key)
            if publication is None:
                raise SignalingError(ErrorCode.NOT_FOUND, f"stream {header.stream!r} is not being published")
        if self.shutting_down:
            raise SignalingError(ErrorCode.UNAVAILABLE, "the server is shutting down")
        self.limits.check_new_session(
            socket_sessions=socket_sessions,
            address=address,
            players=None if publication is None else len(publication.players),
        )
        try:
            offer = parse_offer(sdp)
            transport = TransportDriver(
                self.mux,
                offer,
                self.certificate,
                timers=self.timers,
                consent_timeout=self.config.liveness_timeout,
                handshake_timeout=self.config.dtls_handshake_timeout,
                totals=self.totals,
            )
            local = TransportParameters(
                ice_ufrag=transport.local_ufrag,
                ice_pwd=transport.local_pwd,
                fingerprint_sha256=self.fingerprint,
                candidates=self.candidates,
                tcp_candidates=self.tcp_candidates,
            )
            if publication is None:
                negotiated = answer_publish(offer, local)
            else:
                negotiated = answer_play(offer, local, publication.negotiated_tracks, self.new_ssrc)
        except SdpError as exc:
            raise SignalingError(ErrorCode.UNSUPPORTED_MEDIA, f"SDP unusable: {exc}") from None
        session = Session(
            header=header,
            publish=publish,
            negotiated=negotiated,
            transport=transport,
            router=self.router,
            notify=notify,
            ssrc=self.new_ssrc(),
            max_bitrate=self.config.max_publisher_bitrate,
            max_layer=max_layer,
            adaptation=self.config.simulcast_adaptation,
            relay_layer=relay_layer,
        )
        session.attach(publication)
        self.limits.session_started(address)
        self._emit("publish" if publish else "play", session)
        if publish and session.publication is not None:
            self.recordings.on_publish(session.publication)
        transport.on_established = self.limits.handshake_done
        return session

    def session_ended(self, session: Session, address: str) -> None:
        self.limits.session_ended(address, handshake_pending=not session.transport.connected.is_set())
        ending = session.ending
        self._emit("unpublish" if session.publish else "stop", session,
                   reason=ending.label if ending is not None else "connection_closed")
        if session.publish:
            self.offer_failed(session.key, publish=True)

    def _emit(self, event: str, session: Session, **fields: Any) -> None:
        header = session.header
        self.emit_event(
            event, app=header.app, stream=header.stream, uid=header.uid, session=session.ident, **fields
        )

    def emit_event(self, event: str, **fields: Any) -> None:
        """An event for the webhooks and the embedding application's `on_event` (never blocks)."""
        self.webhooks.emit(event, **fields)
        tell(self._on_event, event, fields)

    async def authorize(self, token: str, app: str, uid: str | None, *, remote: str, via: str) -> Grant:
        """What a client's token allows (the `authorize` hook's say, else the JWT check's); raises
        AuthError (401/403) with a message for the client."""
        request = AuthRequest(token, app, uid, remote, via, self.verifier, self.wall_clock())
        return await authorize(self._authorize_hook, request)

    async def prepare_offer(self, key: StreamKey, *, publish: bool, relay: bool) -> None:
        """The cluster's part of an offer, before the answer: a publish claims the stream everywhere;
        a play of a stream held elsewhere starts (or joins) a relay. A relay's own play is served
        from here or not at all."""
        cluster = self.cluster
        if cluster is None:
            return
        if publish:
            self.router.check_free(key)
            await cluster.claim(key)
        elif not relay:
            await cluster.ensure_playable(key)

    def offer_failed(self, key: StreamKey, *, publish: bool) -> None:
        """A publish offer that claimed the stream was refused, or its session ended: unless a
        publisher here holds it after all, the claim goes."""
        if publish and self.cluster is not None and self.router.lookup(key) is None:
            self.cluster.release(key)

    def new_ssrc(self) -> int:
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self._ssrcs_used:
                self._ssrcs_used.add(ssrc)
                return ssrc

    @staticmethod
    def _ssl_context(config: Config) -> ssl.SSLContext | None:
        """The TLS context for https and wss, or None (plain http and ws)."""
        if config.tls_cert is None or config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"TLS certificate {config.tls_cert} / key {config.tls_key}: {exc}; "
                "give PEM files (--tls-cert FILE --tls-key FILE)"
            ) from None
        return context

    # ---- running ----

    def check_binds(self) -> None:
        if self.verifier.open_mode and self.config.non_loopback_binds():
            names = ", ".join(str(a) for a in self.config.non_loopback_binds())
            raise ConfigError(
                f"open development mode (no token key configured) refuses to bind {names}: "
                "set --token-secret or --token-public-key, or bind 127.0.0.1 / [::1]"
            )

    async def serve(
        self,
        *,
        media_endpoints: Sequence[DatagramEndpoint] | None = None,
        listen: bool = True,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled or `shutdown`; started() once every listener is bound."""
        endpoints = self._media_endpoints = list(media_endpoints or [])
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if media_endpoints is None:
                    self.check_binds()
                    for address in self.config.media:
                        endpoints.append(UdpEndpoint.bind(address))
                for endpoint in endpoints:
                    if isinstance(endpoint, UdpEndpoint):
                        endpoint.peer_receive_buffer = self.config.peer_receive_buffer
                self.candidates = self._candidates(endpoints)
                if self.config.ice_tcp and media_endpoints is None:
                    await self._serve_ice_tcp(nursery, endpoints)
                await nursery.start(self.timers.run)
                for endpoint in endpoints:
                    nursery.start_soon(self.mux.serve, endpoint, name="media-mux")
                await nursery.start(self.http.whip.run)  # WHIP/WHEP sessions (tests use it unlistened)
                await nursery.start(self.webhooks.run)
                await nursery.start(self.recordings.run)
                if listen:
                    signal = self.config.signal
                    listeners = await tcp_listeners(
                        signal.host, signal.port, self.ssl_context, reuse_port=self.config.reuse_port
                    )
                    self.signal_addresses = bound_addresses(listeners)
                    await nursery.start(self._serve_websocket, self._handle_request, listeners)
                    if self.cluster_verifier is not None:
                        # Relays from other workers and nodes: the cluster secret's tokens only.
                        relay_listeners = await tcp_listeners(self.config.cluster_host, 0)
                        self.cluster_addresses = bound_addresses(relay_listeners)
                        await nursery.start(
                            self._serve_websocket, self._handle_relay_request, relay_listeners
                        )
                    http = self.config.http
                    self.http_addresses = await nursery.start(
                        self.http.serve, http.host, http.port, self.ssl_context
                    )
                if self.cluster is not None:
                    await nursery.start(self.cluster.run, self)
                task_status.started(self)
        finally:
            for endpoint in endpoints:
                endpoint.close()

    async def _serve_websocket(
        self,
        handler: Callable[[WebSocketRequest], Any],
        listeners: Sequence[Any],
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        server = WebSocketServer(handler, listeners, max_message_size=self.config.max_message_size)
        await server.run(task_status=task_status)

    @property
    def cluster_url(self) -> str | None:
        """Where other workers' relays play this worker's streams."""
        if not self.cluster_addresses:
            return None
        host, port = self.cluster_addresses[0]
        return f"ws://{'[' + host + ']' if ':' in host else host}:{port}/ws"

    def _candidates(self, endpoints: Sequence[DatagramEndpoint]) -> tuple[tuple[str, int], ...]:
        result = []
        for endpoint in endpoints:
            host, port = endpoint.local_address
            result += [(a, port) for a in announced_addresses(self.config, HostPort(host, port))]
        return tuple(result)

    def _ice_tcp_counters(self) -> dict[str, int]:
        summed = attrs.asdict(TcpCounters())
        for listener in self.tcp_listeners:
            for name, value in attrs.asdict(listener.counters).items():
                summed[name] += value
        return summed

    async def _serve_ice_tcp(self, nursery: trio.Nursery, endpoints: Sequence[DatagramEndpoint]) -> None:
        """A TCP listener beside each UDP media socket (its port number unless configured; if that
        is taken for TCP, any free one), and the passive candidates that announce them."""
        config = self.config
        candidates: list[tuple[str, int]] = []
        for endpoint in endpoints:
            host, udp_port = endpoint.local_address
            port = udp_port if config.media_tcp_port is None else config.media_tcp_port
            listener = IceTcpListener(
                self.mux,
                max_connections=config.tcp_max_connections,
                max_per_address=config.tcp_max_per_address,
                handshake_timeout=config.dtls_handshake_timeout,
                idle_timeout=config.liveness_timeout,
            )
            try:
                bound = await nursery.start(listener.serve, host, port)
            except OSError as exc:
                if config.media_tcp_port is not None:  # asked for: main says what to change
                    raise OSError(exc.errno, f"ICE-TCP port {port} on {host}: {exc.strerror}") from None
                log.info("event=ice_tcp_port_taken port=%d action=any_free_port", port)
                bound = await nursery.start(listener.serve, host, 0)
            self.tcp_listeners.append(listener)
            tcp_port = bound[0][1]
            candidates += [(a, tcp_port) for a in announced_addresses(config, HostPort(host, tcp_port))]
        self.tcp_candidates = tuple(candidates)

    @property
    def media_addresses(self) -> list[tuple[str, int]]:
        return list(self.candidates)

    def origin_allowed(self, headers: list[tuple[bytes, bytes]], host: str) -> bool:
        """Browsers send Origin; other clients (aiortc, servers) do not and are not limited here.
        Allowed: the configured list; else any origin in open mode, the same host otherwise."""
        fields = {name.lower(): value.decode("latin-1") for name, value in headers}
        origin = fields.get(b"origin")
        if origin is None:
            return True
        if self.config.allowed_origins:
            return origin in self.config.allowed_origins
        if self.verifier.open_mode:
            return True
        origin_host = urllib.parse.urlsplit(origin).hostname
        return origin_host is not None and origin_host == urllib.parse.urlsplit(f"//{host}").hostname

    async def _handle_request(self, request: WebSocketRequest) -> None:
        if request.path.split("?")[0] != "/ws":
            await request.reject(404, body=b"the signaling WebSocket is at /ws\n")
            return
        # wsproto keeps the Host header apart from the others (trio-websocket exposes only those).
        if not self.origin_allowed(request.headers, request._event.host):
            self.limits.refused["origin"] += 1
            await request.reject(403, body=b"this Origin may not open the signaling WebSocket\n")
            return
        ws = await request.accept()
        await self.handle_connection(ws)

    async def _handle_relay_request(self, request: WebSocketRequest) -> None:
        if request.path.split("?")[0] != "/ws":
            await request.reject(404, body=b"the cluster WebSocket is at /ws\n")
            return
        ws = await request.accept()
        await self.handle_connection(ws, relay=True)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one WebSocket over any byte stream (tests use `trio.testing.memory_stream_pair`)."""
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream, max_message_size=self.config.max_message_size)
            try:
                await self._handle_request(request)
            finally:
                with trio.move_on_after(1):
                    await request._connection.aclose()
            nursery.cancel_scope.cancel()

    async def handle_connection(self, ws: WebSocketConnection, *, relay: bool = False) -> None:
        remote = ws.remote
        name, address = (remote, remote) if isinstance(remote, str) else (
            f"{remote.address}:{remote.port}", str(remote.address)
        )
        connection = SignalingSocket(self, ws, name, address, relay=relay)
        self.connections.add(connection)
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            if not self.connections:
                self._idle.set()

    async def shutdown(self) -> None:
        """Every session gets `stream.close` (server_shutdown), sockets close, then everything stops."""
        self.shutting_down = True
        log.info("event=shutdown connections=%d", len(self.connections))
        if self.cluster is not None:
            with trio.move_on_after(self.config.shutdown_grace):
                await self.cluster.close()
        self._idle = trio.Event()
        if self.connections:
            for connection in list(self.connections):
                connection.shut_down()
            with trio.move_on_after(self.config.shutdown_grace):
                await self._idle.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
