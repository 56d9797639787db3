"""Relays: a stream held by another worker (or node), played from there once and fanned out here.

A player asks this worker for a stream it does not hold. The directory names the origin; the relay
plays the stream from it as any client would — the seed protocol on the origin's cluster listener
with a token signed by the cluster secret, ICE, DTLS and SRTP with the sans-IO client peer — and
publishes what it receives in this worker's router, so local players attach to it like to a local
publisher. One relay per stream per worker, however many players: the origin forwards one copy.

Feedback flows back on the same leg: local players' keyframe requests and the NACKs the cache cannot
answer become the relay's PLI and NACK (PublisherMedia does that for any publisher), the origin
answers them (or asks its publisher). The origin's `stream.mute` and `stream.close` arrive on the
relay's WebSocket and go to the local players; a relay whose origin vanishes (its process killed, its
WebSocket or DTLS gone, consent lost) ends its publication with `publisher_gone`. A relay without local
players for RELAY_LINGER ends itself.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio
import trio_websocket

from trio_sfu.cluster.directory import Directory, DirectoryUnavailable, StreamKey
from trio_sfu.cluster.relay_offer import RelayLocal, read_answer, relay_offer
from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.config import HostPort
from trio_sfu.media.publisher import PublisherMedia
from trio_sfu.media.router import Publication
from trio_sfu.media.totals import Totals
from trio_sfu.server.server import Server
from trio_sfu.server.session import Session
from trio_sfu.server.udp import UdpEndpoint
from trio_sfu.signaling.auth import mint_token
from trio_sfu.signaling.messages import CloseReason, ErrorCode, SignalingError
from trio_sfu.transport.client_peer import ClientPeer
from trio_sfu.transport.ice import ice_credential
from trio_sfu.transport.peer import Connected
from trio_sfu.wire.rtp import is_rtcp
from trio_sfu.wire.sdp import SdpError

log = logging.getLogger(__name__)

RELAY_UID = "trio_sfu-relay"
CONNECT_TIMEOUT = 5.0  # seconds from the origin's URL to media flowing, before the player gets 503
RELAY_LINGER = 5.0  # seconds a relay without players stays up (a player that reloads finds it)
RELAY_BITRATE = 100_000_000  # the REMB a relay sends: a link between servers, not a viewer's
# Consent (RFC 7675) to the origin, checked more often than a browser does: an origin host that
# vanishes without a word (no TCP reset) ends its relays, and their players hear publisher_gone,
# within 10 s.
CONSENT_INTERVAL = 2.0
CONSENT_TIMEOUT = 8.0
TOKEN_TTL = 300.0


class RelayFailed(Exception):
    """The origin could not be played (refused, unreachable, or its answer unusable)."""


class Relay:
    """One stream played from `origin` and published in `server`'s router until it ends."""

    def __init__(self, server: Server, key: StreamKey, origin: str, secret: str, host: str) -> None:
        self.server = server
        self.key = key
        self.origin = origin
        self._secret = secret
        self._host = host
        self.totals: Totals = server.totals
        self.publication: Publication | None = None
        self._peer: ClientPeer | None = None
        self._endpoint: UdpEndpoint | None = None
        self._media: PublisherMedia | None = None
        self._connected = trio.Event()
        self._ended = trio.Event()
        self._wake = trio.Event()
        self.reason = CloseReason.PUBLISHER_GONE
        self.started = False  # media flowed and the publication was local
        self.counters: dict[str, int] = {"rtp": 0, "srtp_failures": 0}

    # ---- what PublisherMedia needs of a transport (RtcpSender) ----

    def send_rtcp(self, packet: bytes) -> bool | None:
        peer, endpoint = self._peer, self._endpoint
        if peer is None or endpoint is None or peer.srtp is None:
            return None
        return endpoint.send(peer.srtp.protect_rtcp(packet), peer.remote_address)

    # ---- life ----

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Play the stream from its origin; started() once media flows and the publication is local.
        Raises RelayFailed before that; after it, ends quietly (logging why)."""
        try:
            async with trio.open_nursery() as nursery:
                await self._serve(nursery, task_status)
        except* RelayFailed as group:
            raise group.exceptions[0] from None
        except* Exception as group:  # unreachable, refused, garbage: whatever it was, this relay ends
            raise RelayFailed(f"cannot play from the origin {self.origin}: {group.exceptions[0]!r}") from None
        finally:
            self._end_publication()
            if self._endpoint is not None:
                self._endpoint.close()

    async def _serve(self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]) -> None:
        with trio.fail_after(CONNECT_TIMEOUT):
            ws = await trio_websocket.connect_websocket_url(nursery, self.origin, message_queue_size=64)
        try:
            client = SignalingClient(ws, self.key[0], RELAY_UID, auto_ack=True)
            client.on_server_request = self._on_origin_request
            nursery.start_soon(self._pump, client)
            with trio.fail_after(CONNECT_TIMEOUT):
                await self._start(client, nursery)
            self.started = True
            task_status.started()
            await self._ended.wait()
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await ws.aclose()
            nursery.cancel_scope.cancel()

    async def _start(self, client: SignalingClient, nursery: trio.Nursery) -> None:
        stream = self.key[1]
        token = mint_token(
            self._secret, self.key[0], uid=RELAY_UID, play=True, ttl=TOKEN_TTL, now=time.time()
        )
        reply = await client.connect(token)
        if reply.get("err") != 0:
            raise RelayFailed(f"the origin refused the relay's stream.connect: {reply.get('err_msg')}")
        endpoint = self._endpoint = UdpEndpoint.bind(HostPort(self._host, 0))
        local = RelayLocal(
            ice_ufrag=ice_credential(8),
            ice_pwd=ice_credential(24),
            fingerprint=self.server.certificate.fingerprint("sha-256"),
            address=endpoint.local_address,
        )
        reply = await client.offer(stream, relay_offer(local), publish=False)
        if reply.get("err") != 0:
            raise RelayFailed(f"the origin refused to play {stream!r}: {reply.get('err_msg')}")
        try:
            answer = read_answer(reply["data"]["sdp"], family_v6=":" in self._host)
        except (SdpError, KeyError, TypeError) as exc:
            raise RelayFailed(f"the origin's answer is unusable: {exc}") from None
        description = answer.description
        self._peer = ClientPeer(
            local_ufrag=local.ice_ufrag,
            local_pwd=local.ice_pwd,
            remote_ufrag=description.ice_ufrag,
            remote_pwd=description.ice_pwd,
            remote_fingerprints=description.fingerprints,
            certificate=self.server.certificate,
            remote_address=answer.address,
            now=trio.current_time(),
            consent_interval=CONSENT_INTERVAL,
            consent_timeout=CONSENT_TIMEOUT,
        )
        self._media = PublisherMedia(
            self, answer.negotiated, ssrc=self.server.new_ssrc(), max_bitrate=RELAY_BITRATE
        )
        nursery.start_soon(self._read, endpoint)
        nursery.start_soon(self._timers)
        await self._connected.wait()
        if self._ended.is_set():
            raise RelayFailed("the origin's transport failed before media flowed")
        self.publication = self.server.router.publish(self.key, self, self._media.producers)
        nursery.start_soon(self._linger)
        log.info("event=relay_started app=%s stream=%s origin=%s", self.key[0], self.key[1], self.origin)

    async def _pump(self, client: SignalingClient) -> None:
        await client.pump()
        self.end(CloseReason.PUBLISHER_GONE, "the origin's WebSocket closed")

    def end(self, reason: CloseReason, why: str) -> None:
        if not self._ended.is_set():
            self.reason = reason
            log.info("event=relay_ended app=%s stream=%s reason=%s why=%r",
                     self.key[0], self.key[1], reason.value, why)
            self._ended.set()
            self._connected.set()  # a start still waiting gives up

    def _end_publication(self) -> None:
        publication, self.publication = self.publication, None
        if publication is not None:
            self.server.router.unpublish(publication)
            publication.end(self.reason)

    # ---- the origin's requests ----

    def _on_origin_request(self, message: dict[str, Any]) -> None:
        method, data = message.get("method"), message.get("data")
        if not isinstance(data, dict):
            data = {}
        if method == "stream.close":
            closed = data.get("reason") == CloseReason.PUBLISHER_CLOSED.value
            reason = CloseReason.PUBLISHER_CLOSED if closed else CloseReason.PUBLISHER_GONE
            self.end(reason, f"the origin sent stream.close {data.get('reason')!r}")
        elif method == "stream.mute":
            self._apply_mute(data)

    def _apply_mute(self, data: dict[str, Any]) -> None:
        """The publisher muted or unmuted at the origin: the same here, as a local publisher's would."""
        publication = self.publication
        if publication is None:
            return
        flags = {kind: bool(data.get(kind, publication.muted[kind])) for kind in ("audio", "video")}
        if flags == publication.muted:
            return
        publication.muted = flags
        now = trio.current_time()
        for producer in publication.producers:
            for consumer in producer.consumers:
                consumer.update_mute(flags[producer.kind], now)
        for player in publication.players:
            if isinstance(player, Session):
                player.notify_publisher_mute({"video": flags["video"], "audio": flags["audio"]})

    # ---- media ----

    async def _read(self, endpoint: UdpEndpoint) -> None:
        peer = self._peer
        assert peer is not None
        while True:
            data, source = await endpoint.receive()
            now = trio.current_time()
            if data and 128 <= data[0] <= 191:
                self._on_media(data, now)
                continue
            peer.receive(data, source, now)
            self._flush()
            self._wake.set()

    def _on_media(self, data: bytes, now: float) -> None:
        peer, media = self._peer, self._media
        if peer is None or media is None or peer.srtp is None:
            return
        if is_rtcp(data):
            plain = peer.srtp.unprotect_rtcp(data)
            if plain is not None:
                media.on_rtcp(plain, now)
        else:
            plain = peer.srtp.unprotect_rtp(data)
            if plain is not None:
                self.counters["rtp"] += 1
                media.on_rtp(plain, now)
        if plain is None:
            self.counters["srtp_failures"] += 1

    def _flush(self) -> None:
        peer, endpoint = self._peer, self._endpoint
        if peer is None or endpoint is None:
            return
        while (event := peer.next_event()) is not None:
            if isinstance(event, Connected):
                self._connected.set()
            else:
                self.end(CloseReason.PUBLISHER_GONE, f"the transport to the origin ended: {event!r}")
        for data, address in peer.datagrams_to_send():
            endpoint.send(data, address)

    async def _timers(self) -> None:
        peer, media = self._peer, self._media
        assert peer is not None and media is not None
        while True:
            now = trio.current_time()
            timer = peer.get_timer()
            if timer is not None and now >= timer:
                peer.handle_timer(now)
            self._flush()
            wake = media.tick(now, time.time()) if self._connected.is_set() else math.inf
            timer = peer.get_timer()
            deadline = min(wake, math.inf if timer is None else timer, now + 1.0)
            self._wake = trio.Event()
            with trio.move_on_at(deadline):
                await self._wake.wait()

    async def _linger(self) -> None:
        idle_since: float | None = None
        while True:
            await trio.sleep(0.5)
            publication = self.publication
            if publication is None:
                return
            if publication.players:
                idle_since = None
            elif idle_since is None:
                idle_since = trio.current_time()
            elif trio.current_time() - idle_since >= RELAY_LINGER:
                self.end(CloseReason.PUBLISHER_GONE, "no players left")
                return


class Relays:
    """A worker's relays: at most one per stream, started by the first player that needs it."""

    def __init__(self, server: Server, directory: Directory, *, secret: str, origin: str, host: str) -> None:
        self.server = server
        self.directory = directory
        self.secret = secret
        self.origin = origin  # this worker's own cluster URL (what it claims its streams with)
        self.host = host  # the address relays bind their UDP sockets to
        self.relays: dict[StreamKey, Relay] = {}
        self._starting: dict[StreamKey, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self.counters: dict[str, int] = {"started": 0, "failed": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def ensure(self, key: StreamKey) -> None:
        """Make `key` playable here if another worker holds it. Nothing to do when it is local or
        published nowhere (the offer then gets its 404). Raises SignalingError 503 when the
        directory or the origin fails."""
        while key in self._starting:
            await self._starting[key].wait()
        if self.server.router.lookup(key) is not None:
            return
        try:
            origin = await self.directory.locate(key)
        except DirectoryUnavailable as exc:
            raise SignalingError(
                ErrorCode.UNAVAILABLE, f"the cluster directory is unavailable ({exc}); try again shortly"
            ) from None
        if origin is None or origin == self.origin:
            return
        assert self._nursery is not None
        started = self._starting[key] = trio.Event()
        relay = Relay(self.server, key, origin, self.secret, self.host)
        try:
            await self._nursery.start(self._run, relay)
            self.counters["started"] += 1
        except RelayFailed as exc:
            self.counters["failed"] += 1
            log.warning("event=relay_failed app=%s stream=%s origin=%s error=%r", *key, origin, str(exc))
            raise SignalingError(
                ErrorCode.UNAVAILABLE,
                f"stream {key[1]!r} is published on another worker that could not be reached; try again",
            ) from None
        finally:
            del self._starting[key]
            started.set()

    async def _run(
        self, relay: Relay, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.relays[relay.key] = relay
        try:
            await relay.run(task_status=task_status)
        except RelayFailed as exc:
            if not relay.started:
                raise  # to `ensure`, which answers the player 503
            # After the start: one relay's failure must not take the worker down.
            log.warning("event=relay_failed app=%s stream=%s error=%r", *relay.key, str(exc))
        finally:
            if self.relays.get(relay.key) is relay:
                del self.relays[relay.key]
