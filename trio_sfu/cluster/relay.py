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
import time
from typing import Any

import trio
import trio_websocket

from trio_sfu.cluster.client_driver import ClientDriver
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
from trio_sfu.transport.client_peer import ClientEvent, ClientPeer
from trio_sfu.transport.ice import ice_credential
from trio_sfu.transport.peer import Connected
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


class RelayLeg:
    """One WebRTC leg from the origin: its own WebSocket session, UDP socket, client peer and media
    (PublisherMedia: the origin is this leg's publisher). A simulcast stream takes a leg per layer."""

    def __init__(self, relay: Relay, *, layer: str | None, kinds: tuple[str, ...]) -> None:
        self.relay = relay
        self.layer = layer  # the rid asked for (None: the origin's best, and the audio)
        self.kinds = kinds
        self.totals: Totals = relay.server.totals
        self.endpoint: UdpEndpoint | None = None
        self.driver: ClientDriver | None = None
        self.media: PublisherMedia | None = None
        self.rtp_packets = 0

    def send_rtcp(self, packet: bytes) -> bool | None:
        """PublisherMedia's RtcpSender: reports, PLI and NACK to the origin."""
        return self.driver.send_rtcp(packet) if self.driver is not None else None

    @property
    def srtp_failures(self) -> int:
        return self.driver.srtp_failures if self.driver is not None else 0

    async def open(self, nursery: trio.Nursery, *, layer_rid: str | None = None) -> dict[str, Any]:
        """Connect, play, wait for DTLS; the origin's reply data. `layer_rid`: the rid this leg's
        video producer goes by here."""
        relay = self.relay
        app, stream = relay.key
        ws = await trio_websocket.connect_websocket_url(nursery, relay.origin, message_queue_size=64)
        relay.sockets.append(ws)
        client = SignalingClient(ws, app, RELAY_UID, auto_ack=True)
        client.on_server_request = relay.on_origin_request
        nursery.start_soon(relay.pump, client)
        token = mint_token(relay.secret, app, uid=RELAY_UID, play=True, ttl=TOKEN_TTL, now=time.time())
        reply = await client.connect(token)
        if reply.get("err") != 0:
            raise RelayFailed(f"the origin refused the relay's stream.connect: {reply.get('err_msg')}")
        endpoint = self.endpoint = UdpEndpoint.bind(HostPort(relay.host, 0))
        local = RelayLocal(
            ice_ufrag=ice_credential(8),
            ice_pwd=ice_credential(24),
            fingerprint=relay.server.certificate.fingerprint("sha-256"),
            address=endpoint.local_address,
        )
        data: dict[str, Any] = {"publish": False, "sdp": relay_offer(local, self.kinds)}
        if self.layer is not None:
            data["layer"] = self.layer
        reply = await client.request("stream.offer", stream, data)
        if reply.get("err") != 0:
            raise RelayFailed(f"the origin refused to play {stream!r}: {reply.get('err_msg')}")
        try:
            answer = read_answer(reply["data"]["sdp"], family_v6=":" in relay.host)
        except (SdpError, KeyError, TypeError) as exc:
            raise RelayFailed(f"the origin's answer is unusable: {exc}") from None
        description = answer.description
        peer = ClientPeer(
            local_ufrag=local.ice_ufrag,
            local_pwd=local.ice_pwd,
            remote_ufrag=description.ice_ufrag,
            remote_pwd=description.ice_pwd,
            remote_fingerprints=description.fingerprints,
            certificate=relay.server.certificate,
            remote_address=answer.address,
            now=trio.current_time(),
            consent_interval=CONSENT_INTERVAL,
            consent_timeout=CONSENT_TIMEOUT,
        )
        media = self.media = PublisherMedia(
            self, answer.negotiated, ssrc=relay.server.new_ssrc(), max_bitrate=RELAY_BITRATE,
            layer_rid=layer_rid,
        )

        def on_rtp(packet: bytes, now: float) -> None:
            self.rtp_packets += 1
            media.on_rtp(packet, now)

        def on_event(event: ClientEvent) -> None:
            if not isinstance(event, Connected):
                relay.end(CloseReason.PUBLISHER_GONE, f"the transport to the origin ended: {event!r}")

        driver = self.driver = ClientDriver(
            peer, endpoint, on_rtp=on_rtp, on_rtcp=media.on_rtcp, on_event=on_event, tick=media.tick,
            wall_clock=time.time,
        )
        await nursery.start(driver.run)
        with trio.CancelScope() as waiting:
            relay.waiting.append(waiting)  # the relay's end gives up the wait
            if not relay.ended.is_set():
                await driver.connected.wait()
        if relay.ended.is_set():
            raise RelayFailed("the origin's transport failed before media flowed")
        return dict(reply["data"])

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()


class Relay:
    """One stream played from `origin` and published in `server`'s router until it ends.

    The first leg asks for the audio and the origin's best video layer; the origin's reply lists the
    stream's simulcast layers (lowest first), and each other layer comes on a leg of its own, pinned
    to it at the origin. Here the legs' video producers are one track's layers again (named by their
    rids), so local players are adapted between them as they would be at the origin.
    """

    def __init__(self, server: Server, key: StreamKey, origin: str, secret: str, host: str) -> None:
        self.server = server
        self.key = key
        self.origin = origin
        self.secret = secret
        self.host = host
        self.legs: list[RelayLeg] = []
        self.sockets: list[trio_websocket.WebSocketConnection] = []
        self.publication: Publication | None = None
        self.ended = trio.Event()
        self.waiting: list[trio.CancelScope] = []  # legs waiting for DTLS: given up when the relay ends
        self.reason = CloseReason.PUBLISHER_GONE
        self.started = False  # media flowed and the publication was local

    @property
    def counters(self) -> dict[str, int]:
        return {
            "rtp": sum(leg.rtp_packets for leg in self.legs),
            "srtp_failures": sum(leg.srtp_failures for leg in self.legs),
        }

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
            for leg in self.legs:
                leg.close()

    async def _serve(self, nursery: trio.Nursery, task_status: trio.TaskStatus[None]) -> None:
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                first = RelayLeg(self, layer=None, kinds=("audio", "video"))
                self.legs.append(first)
                reply = await first.open(nursery)
                rids = [str(rid) for rid in reply.get("layers") or []]
                carried = reply.get("layer")
                if len(rids) > 1 and carried in rids:
                    assert first.media is not None
                    for producer in first.media.producers:
                        if producer.kind == "video":
                            producer.rename(str(carried))  # the origin pinned the first leg to it
                    for rid in (rid for rid in rids if rid != carried):
                        leg = RelayLeg(self, layer=rid, kinds=("video",))
                        self.legs.append(leg)
                        await leg.open(nursery, layer_rid=rid)
            self._publish(rids)
            self.started = True
            task_status.started()
            await self.ended.wait()
        finally:
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                for ws in self.sockets:
                    await ws.aclose()
            nursery.cancel_scope.cancel()

    def _publish(self, rids: list[str]) -> None:
        """The legs' producers as one publication: a simulcast stream's video layers share a list."""
        producers = [p for leg in self.legs if leg.media is not None for p in leg.media.producers]
        video = {str(p.rid): p for p in producers if p.kind == "video" and p.rid is not None}
        if len(rids) > 1 and set(rids) <= set(video):
            layers = [video[rid] for rid in rids]
            for layer in layers:
                layer.layers = layers
            others = [p for p in producers if p not in layers]
            producers = [*others, *layers]
        self.publication = self.server.router.publish(self.key, self, producers)
        log.info("event=relay_started app=%s stream=%s origin=%s legs=%d layers=%s",
                 self.key[0], self.key[1], self.origin, len(self.legs), ",".join(rids) or "-")

    async def pump(self, client: SignalingClient) -> None:
        await client.pump()
        self.end(CloseReason.PUBLISHER_GONE, "the origin's WebSocket closed")

    def end(self, reason: CloseReason, why: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            log.info("event=relay_ended app=%s stream=%s reason=%s why=%r",
                     self.key[0], self.key[1], reason.value, why)
            self.ended.set()
            for scope in self.waiting:
                scope.cancel()  # a start still waiting gives up

    def _end_publication(self) -> None:
        publication, self.publication = self.publication, None
        if publication is not None:
            self.server.router.unpublish(publication)
            publication.end(self.reason)

    # ---- the origin's requests (on every leg's WebSocket: each is handled once) ----

    def on_origin_request(self, message: dict[str, Any]) -> None:
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
        while (starting := self._starting.get(key)) is not None:
            await starting.wait()  # another player of this stream is starting its relay: join it
        if self.server.router.lookup(key) is not None:
            return
        # Claimed before the first await: a second player arriving meanwhile waits for this start.
        started = self._starting[key] = trio.Event()
        try:
            try:
                origin = await self.directory.locate(key)
            except DirectoryUnavailable as exc:
                raise SignalingError(
                    ErrorCode.UNAVAILABLE, f"the cluster directory is unavailable ({exc}); try again shortly"
                ) from None
            if origin is None or origin == self.origin:
                return
            assert self._nursery is not None
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
            if self._starting.get(key) is started:
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
