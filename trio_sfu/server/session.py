"""A session: one (stream, direction) on one WebSocket, and the nursery that holds all of its tasks.

Everything a session runs lives in its own nursery under the connection's, so ending a session —
for any reason — is one cancel, and its `finally` is the single place that unregisters it.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trio_sfu.media.consumer import Consumer
from trio_sfu.media.negotiation import Negotiated
from trio_sfu.media.player import PlayerMedia
from trio_sfu.media.producer import Producer
from trio_sfu.media.publisher import PublisherMedia
from trio_sfu.media.router import Publication, Router
from trio_sfu.media.simulcast import active_layers, start_layer
from trio_sfu.server.transport_driver import TransportDriver, TransportEnded
from trio_sfu.signaling.messages import CloseReason, ErrorCode, Header, SignalingError
from trio_sfu.transport.peer import Failure, PeerClosed

log = logging.getLogger(__name__)

KINDS = ("audio", "video")


class EndedBy(enum.Enum):
    CLIENT = "client"  # stream.close from its own client
    SERVER = "server"  # the server ended it and told the client why (a stream.close request)
    CONNECTION = "connection"  # its WebSocket went away: nobody is left to tell
    PEER = "peer"  # the client's media stack closed DTLS (close_notify): it left on purpose


@attrs.frozen
class Ending:
    """How a session ended: decided once, by whoever ended it first."""

    by: EndedBy
    reason: CloseReason | None = None  # what the client was told (SERVER only)

    @property
    def label(self) -> str:
        """For logs: the reason the client was given, or who closed it."""
        if self.by is EndedBy.PEER:
            return "peer_closed_dtls"
        if self.reason is not None:
            return self.reason.value
        return "client_closed" if self.by is EndedBy.CLIENT else "connection_closed"


class ChannelBacklog:
    """A consumer's backlog on a Trio memory channel, drained by the player's forwarding task."""

    __slots__ = ("_send",)

    def __init__(self, send: trio.MemorySendChannel[bytes]) -> None:
        self._send = send

    def offer(self, packet: bytes) -> bool | None:
        try:
            self._send.send_nowait(packet)
        except trio.WouldBlock:
            return False
        except trio.ClosedResourceError:
            return None
        return True

    def close(self) -> None:
        self._send.close()


class LazyBacklog:
    """A consumer's backlog whose channel, and the task draining it, are made the first time the
    player's socket refuses a packet: most players never fill their socket buffer, and each channel and
    task costs a few KB a track (issue 16's memory per session)."""

    __slots__ = ("_channel", "_closed", "_on_closed", "_start_drain")

    def __init__(
        self,
        start_drain: Callable[[LazyBacklog, trio.MemoryReceiveChannel[bytes]], bool],
        on_closed: Callable[[], None],
    ) -> None:
        self._start_drain = start_drain  # False: the session cannot start it (not running, or ending)
        self._on_closed = on_closed  # the producer ended and no task is there to see it
        self._channel: ChannelBacklog | None = None
        self._closed = False

    def offer(self, packet: bytes) -> bool | None:
        if self._closed:
            return None
        channel = self._channel
        if channel is None:
            send, receive = trio.open_memory_channel[bytes](Session.BACKLOG)
            if not self._start_drain(self, receive):
                return None
            channel = self._channel = ChannelBacklog(send)
        return channel.offer(packet)

    def close(self) -> None:
        """The producer is gone: the drain task, if any, sends what is queued and then ends the session."""
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            self._channel.close()
        else:
            self._on_closed()


class Session:
    BACKLOG = 128  # packets queued per consumer while the player's socket would block

    def __init__(
        self,
        *,
        header: Header,
        publish: bool,
        negotiated: Negotiated,
        transport: TransportDriver,
        router: Router,
        notify: Callable[[Session, str, dict[str, Any]], None],
        ssrc: int,
        max_bitrate: int,
        max_layer: int | None = None,
        adaptation: bool = True,
        relay_layer: str | None = None,
    ) -> None:
        self.header = header
        self.publish = publish
        self.ident = secrets.token_urlsafe(9)  # the operator API's name for it
        self.started_at = trio.current_time()
        self.remote = ""  # the client's address, for the operator API (set by whoever runs it)
        self.negotiated = negotiated
        self.transport = transport
        self.router = router
        self._notify = notify
        self._ssrc = ssrc
        self._max_bitrate = max_bitrate
        self._max_layer = max_layer  # a player's cap on simulcast layers (0: the lowest)
        self._adaptation = adaptation  # False: a player keeps the best layer, whatever its link
        # A relay's leg: pinned to this simulcast layer ("": the best one when it starts), never moved.
        self._relay_layer = relay_layer
        self.muted = {kind: False for kind in KINDS}
        self.publication: Publication | None = None
        self.publisher_media: PublisherMedia | None = None
        self.consumers: list[tuple[Consumer, LazyBacklog]] = []
        self._nursery: trio.Nursery | None = None
        self.ending: Ending | None = None  # set once, by whoever ends the session first
        self._scope = trio.CancelScope()
        self.done = trio.Event()  # set when its tasks are gone and it has left the router
        transport.on_ended = self._transport_ended

    def _relay_leg_layer(self, producer: Producer) -> Producer | None:
        """The layer a relay's leg asked for (SignalingError 404 if the stream has no such layer)."""
        if not self._relay_layer or len(producer.layers) < 2:
            return None
        for layer in producer.layers:
            if layer.rid == self._relay_layer:
                return layer
        rids = ", ".join(str(layer.rid) for layer in producer.layers)
        message = f"no layer {self._relay_layer!r} in this stream (it has {rids})"
        raise SignalingError(ErrorCode.NOT_FOUND, message)

    def video_rid(self) -> str | None:
        """The simulcast layer this player's video starts on (None: no simulcast)."""
        video = next((c for c, _ in self.consumers if len(c.producer.layers) > 1), None)
        return None if video is None else video.producer.rid

    def layer_rids(self) -> list[str]:
        """The rids of the video layers this player's stream has, lowest first (empty: no simulcast)."""
        now = trio.current_time()
        for consumer, _ in self.consumers:
            if len(consumer.producer.layers) > 1:
                ranked = active_layers(consumer.producer.layers, now)
                rest = [layer for layer in consumer.producer.layers if layer not in ranked]
                return [str(layer.rid) for layer in rest + ranked]
        return []

    @property
    def key(self) -> tuple[str, str]:
        return (self.header.app, self.header.stream)

    @property
    def direction(self) -> str:
        return "publish" if self.publish else "play"

    def __repr__(self) -> str:
        return f"<Session {self.header.app}/{self.header.stream} {self.direction}>"

    def attach(self, publication: Publication | None = None) -> None:
        """Join the router: become the publication, or consume `publication`'s producers.

        Done synchronously before the answer is sent, so a second offer for the same stream sees it.
        """
        if self.publish:
            media = PublisherMedia(
                self.transport, self.negotiated, ssrc=self._ssrc, max_bitrate=self._max_bitrate
            )
            self.publisher_media = media
            self.transport.handler = media
            self.publication = self.router.publish(self.key, self, media.producers)
            return
        assert publication is not None
        self.publication = publication
        played = list(self.negotiated.tracks)
        now = trio.current_time()
        # A simulcast track: start on the best layer sending now (its keyframe is asked for at once).
        starts = [
            self._relay_leg_layer(producer) or start_layer(producer.layers, now, max_rank=self._max_layer)
            for producer in publication.producers_for(played)
        ]
        for track, producer in zip(played, starts, strict=True):
            backlog = LazyBacklog(self._start_drain, self._producer_ended)
            consumer = Consumer(self, producer, track, self.transport, backlog)
            consumer.update_mute(publication.muted[track.kind], now)
            producer.add_player(consumer)
            self.consumers.append((consumer, backlog))
        cname = next((t.cname for t in played if t.cname), "trio_sfu")
        player = PlayerMedia([c for c, _ in self.consumers], cname=cname, send_rtcp=self.transport.send_rtcp)
        player.max_rank = self._max_layer
        player.layers.adaptive = self._adaptation
        if self._relay_layer is not None:
            player.layers.pinned = True  # a relay leg carries one layer, whatever happens
        self.transport.handler = player

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.transport.run, name=f"{self!r}.transport")
                    self._nursery = nursery
                    task_status.started()
        finally:
            self._nursery = None
            self._detach()
            self.done.set()

    def _start_drain(self, backlog: LazyBacklog, receive: trio.MemoryReceiveChannel[bytes]) -> bool:
        """A consumer's socket refused a packet for the first time: start the task that drains its
        backlog (False while the session is not running)."""
        nursery = self._nursery
        consumer = next((c for c, b in self.consumers if b is backlog), None)
        if nursery is None or consumer is None or self.ending is not None:
            return False
        nursery.start_soon(self._forward, consumer, receive, name=f"{self!r}.forward")
        return True

    async def _forward(self, consumer: Consumer, backlog: trio.MemoryReceiveChannel[bytes]) -> None:
        """Own one consumer's backlog: send what queued while the socket was full; end with the producer."""
        async with backlog:
            async for packet in backlog:
                while self.transport.send_rtp(packet) is False:
                    await self.transport.wait_writable()
                consumer.backlogged -= 1
        self._producer_ended()

    def _producer_ended(self) -> None:
        publication = self.publication
        reason = publication.end_reason if publication else None
        self.end(reason or CloseReason.PUBLISHER_GONE)

    def _detach(self) -> None:
        publication = self.publication
        if publication is None:
            return
        if self.publish:
            self.router.unpublish(publication)
            publication.end(self._reason_for_players())
        else:
            for consumer, _ in self.consumers:
                consumer.producer.remove_player(consumer)

    def _reason_for_players(self) -> CloseReason:
        ending = self.ending
        if ending is not None and ending.by in (EndedBy.CLIENT, EndedBy.PEER):
            return CloseReason.PUBLISHER_CLOSED
        if ending is not None and ending.reason is CloseReason.SERVER_SHUTDOWN:
            return CloseReason.SERVER_SHUTDOWN
        return CloseReason.PUBLISHER_GONE

    def _transport_ended(self, event: TransportEnded) -> None:
        if isinstance(event, PeerClosed):
            # Like stream.close, but from the media stack (FFmpeg's WHIP client does it before its
            # DELETE): players hear publisher_closed; the client, if still listening, transport_failed.
            log.info(
                "event=session_transport_ended app=%s stream=%s direction=%s reason=peer_closed_dtls",
                self.header.app,
                self.header.stream,
                self.direction,
            )
            if self._ending(Ending(EndedBy.PEER, CloseReason.TRANSPORT_FAILED)):
                self._notify(self, "stream.close", {"reason": CloseReason.TRANSPORT_FAILED.value})
            return
        expired = event.failure is Failure.CONSENT_EXPIRED
        reason = CloseReason.TIMEOUT if expired else CloseReason.TRANSPORT_FAILED
        log.info(
            "event=session_transport_ended app=%s stream=%s direction=%s reason=%s detail=%r",
            self.header.app,
            self.header.stream,
            self.direction,
            reason.value,
            event.detail,
        )
        self.end(reason)

    def _ending(self, ending: Ending) -> bool:
        """Record how the session ends and cancel it; False if it was already ending."""
        if self.ending is not None or self.done.is_set():
            return False
        self.ending = ending
        self._scope.cancel()
        return True

    def end(self, reason: CloseReason) -> None:
        """The server ends this session and tells its client why (PROTOCOL.md decision 5)."""
        if self._ending(Ending(EndedBy.SERVER, reason)):
            self._notify(self, "stream.close", {"reason": reason.value})

    async def close_by_client(self) -> None:
        self._ending(Ending(EndedBy.CLIENT))
        await self.done.wait()

    def connection_gone(self) -> None:
        """Its WebSocket went away (the connection's nursery is cancelling it anyway)."""
        self._ending(Ending(EndedBy.CONNECTION))

    def set_muted(self, *, audio: bool | None, video: bool | None) -> bool:
        """Apply a mute request to forwarding; True if anything changed."""
        changed = False
        for kind, value in (("audio", audio), ("video", video)):
            if value is not None and self.muted[kind] != value:
                self.muted[kind] = value
                changed = True
        if not changed or self.publication is None:
            return changed
        now = trio.current_time()
        if self.publish:
            self.publication.muted = dict(self.muted)
            for producer in self.publication.producers:
                for consumer in producer.consumers:
                    consumer.update_mute(self.muted[producer.kind], now)
        else:
            for consumer, _ in self.consumers:
                consumer.muted_by_player = self.muted[consumer.kind]
                consumer.update_mute(self.publication.muted[consumer.kind], now)
        return changed

    def notify_publisher_mute(self, flags: dict[str, bool]) -> None:
        """Tell this player's client that the publisher muted or unmuted (decision 4)."""
        self._notify(self, "stream.mute", flags)

    def mute_flags(self) -> dict[str, bool]:
        return {"video": self.muted["video"], "audio": self.muted["audio"]}
