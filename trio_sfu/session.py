"""A session: one (stream, direction) on one WebSocket, and the nursery that holds all of its tasks.

Everything a session runs lives in its own nursery under the connection's, so ending a session —
for any reason — is one cancel, and its `finally` is the single place that unregisters it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from .messages import CloseReason, Header
from .negotiation import Negotiated
from .router import Publication, Router, Track
from .transport import Transport

log = logging.getLogger(__name__)

KINDS = ("audio", "video")


class Session:
    FANOUT_QUEUE = 128

    def __init__(
        self,
        *,
        header: Header,
        publish: bool,
        negotiated: Negotiated,
        transport: Transport,
        router: Router,
        notify: Callable[[Session, str, dict[str, Any]], None],
    ) -> None:
        self.header = header
        self.publish = publish
        self.negotiated = negotiated
        self.transport = transport
        self.router = router
        self._notify = notify
        self.muted = {kind: False for kind in KINDS}
        self.publication: Publication | None = None
        self._played: list[tuple[Track, trio.MemoryReceiveChannel[Any]]] = []
        self.end_reason: CloseReason | None = None
        self.closed_by_client = False
        self._scope = trio.CancelScope()
        self.done = trio.Event()

    @property
    def key(self) -> tuple[str, str]:
        return (self.header.app, self.header.stream)

    @property
    def direction(self) -> str:
        return "publish" if self.publish else "play"

    def __repr__(self) -> str:
        return f"<Session {self.header.app}/{self.header.stream} {self.direction}>"

    def attach(self, publication: Publication | None = None) -> None:
        """Join the router: become the publication, or subscribe to `publication`'s tracks.

        Done synchronously before the answer is sent, so a second offer for the same stream sees it.
        """
        if self.publish:
            self.publication = self.router.publish(
                self.key, self, list(self.negotiated.tracks)
            )
        else:
            assert publication is not None
            self.publication = publication
            self._played = [
                (track, track.subscribe(self, self.FANOUT_QUEUE))
                for track in publication.tracks_for(list(self.negotiated.tracks))
            ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.transport.run, name=f"{self!r}.transport")
                    for track, packets in self._played:
                        nursery.start_soon(self._forward, track, packets, name=f"{self!r}.forward")
                    task_status.started()
        finally:
            self._detach()
            self.done.set()

    async def _forward(self, track: Track, packets: trio.MemoryReceiveChannel[Any]) -> None:
        """Drain one track's fan-out channel; its end means the publisher left."""
        async with packets:
            async for _packet in packets:
                pass  # the media layer rewrites, protects and sends here
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
            for track, _ in self._played:
                track.unsubscribe(self)

    def _reason_for_players(self) -> CloseReason:
        if self.closed_by_client:
            return CloseReason.PUBLISHER_CLOSED
        if self.end_reason is CloseReason.SERVER_SHUTDOWN:
            return CloseReason.SERVER_SHUTDOWN
        return CloseReason.PUBLISHER_GONE

    def end(self, reason: CloseReason) -> None:
        """The server ends this session and tells its client why (PROTOCOL.md decision 5)."""
        if self._scope.cancel_called or self.done.is_set():
            return
        self.end_reason = reason
        self._scope.cancel()
        self._notify(self, "stream.close", {"reason": reason.value})

    async def close_by_client(self) -> None:
        self.closed_by_client = True
        self._scope.cancel()
        await self.done.wait()

    def set_muted(self, *, audio: bool | None, video: bool | None) -> bool:
        """Apply a mute request; True if anything changed."""
        changed = False
        for kind, value in (("audio", audio), ("video", video)):
            if value is not None and self.muted[kind] != value:
                self.muted[kind] = value
                changed = True
        if self.publish and self.publication is not None:
            self.publication.muted = dict(self.muted)
        return changed

    def notify_publisher_mute(self, flags: dict[str, bool]) -> None:
        """Tell this player's client that the publisher muted or unmuted (decision 4)."""
        self._notify(self, "stream.mute", flags)

    def mute_flags(self) -> dict[str, bool]:
        return {"video": self.muted["video"], "audio": self.muted["audio"]}
