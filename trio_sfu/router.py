"""Which streams are published, and the fan-out from each published track to its players.

A `Publication` is one publisher's set of tracks under (app, stream). Each `Track` holds one bounded
channel per player; closing those channels is how a publisher leaving reaches every player's
forwarding task, so no bookkeeping outside the channels has to be kept in step.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from .messages import CloseReason, ErrorCode, SignalingError
from .negotiation import NegotiatedTrack

StreamKey = tuple[str, str]  # (app, stream)


@attrs.define(eq=False)
class Track:
    """One published track and the channels of the players that receive it."""

    negotiated: NegotiatedTrack
    consumers: dict[object, trio.MemorySendChannel[Any]] = attrs.field(factory=dict)

    def subscribe(self, player: object, queue: int) -> trio.MemoryReceiveChannel[Any]:
        send, receive = trio.open_memory_channel[Any](queue)
        self.consumers[player] = send
        return receive

    def unsubscribe(self, player: object) -> None:
        channel = self.consumers.pop(player, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for channel in self.consumers.values():
            channel.close()
        self.consumers.clear()


@attrs.define(eq=False)
class Publication:
    key: StreamKey
    publisher: object
    tracks: list[Track]
    muted: dict[str, bool] = attrs.field(factory=lambda: {"audio": False, "video": False})
    end_reason: CloseReason | None = None

    @property
    def negotiated_tracks(self) -> list[NegotiatedTrack]:
        return [track.negotiated for track in self.tracks]

    def tracks_for(self, played: list[NegotiatedTrack]) -> list[Track]:
        """The published track behind each played one: the n-th of a kind maps to the n-th."""
        by_kind: dict[str, list[Track]] = {}
        for track in self.tracks:
            by_kind.setdefault(track.negotiated.kind, []).append(track)
        taken: dict[str, int] = {}
        result = []
        for negotiated in played:
            index = taken.get(negotiated.kind, 0)
            taken[negotiated.kind] = index + 1
            result.append(by_kind[negotiated.kind][index])
        return result

    @property
    def players(self) -> set[object]:
        return {player for track in self.tracks for player in track.consumers}

    def end(self, reason: CloseReason) -> None:
        """Close every fan-out channel: each player's forwarding tasks see the end of the stream."""
        self.end_reason = reason
        for track in self.tracks:
            track.close()


class Router:
    def __init__(self) -> None:
        self._publications: dict[StreamKey, Publication] = {}

    def __len__(self) -> int:
        return len(self._publications)

    def lookup(self, key: StreamKey) -> Publication | None:
        return self._publications.get(key)

    def check_free(self, key: StreamKey) -> None:
        if key in self._publications:
            raise SignalingError(
                ErrorCode.CONFLICT, f"stream {key[1]!r} is already published in app {key[0]!r}"
            )

    def publish(
        self, key: StreamKey, publisher: object, tracks: list[NegotiatedTrack]
    ) -> Publication:
        self.check_free(key)
        publication = Publication(key, publisher, [Track(t) for t in tracks])
        self._publications[key] = publication
        return publication

    def unpublish(self, publication: Publication) -> None:
        if self._publications.get(publication.key) is publication:
            del self._publications[publication.key]
