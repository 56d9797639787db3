"""Which streams are published: (app, stream) to the publisher's producers.

A publisher leaving ends its `Publication`, which closes every consumer's backlog channel; each
player's forwarding task sees its channel end and ends the player's session. So no bookkeeping outside
the channels has to be kept in step.
"""

from __future__ import annotations

import attrs

from trio_sfu.media.negotiation import NegotiatedTrack
from trio_sfu.media.producer import Producer
from trio_sfu.signaling.messages import CloseReason, ErrorCode, SignalingError

StreamKey = tuple[str, str]  # (app, stream)


@attrs.define(eq=False)
class Publication:
    key: StreamKey
    publisher: object
    producers: list[Producer]  # every RTP stream: each layer of a simulcast track is one
    muted: dict[str, bool] = attrs.field(factory=lambda: {"audio": False, "video": False})
    end_reason: CloseReason | None = None

    @property
    def negotiated_tracks(self) -> list[NegotiatedTrack]:
        return [producer.negotiated for producer in self.producers if producer.primary]

    def producers_for(self, played: list[NegotiatedTrack]) -> list[Producer]:
        """The producer behind each played track: the n-th of a kind plays the n-th of that kind
        (for a simulcast track, its first layer: the player's consumer picks the layer it plays)."""
        by_kind: dict[str, list[Producer]] = {}
        for producer in self.producers:
            if producer.primary:
                by_kind.setdefault(producer.kind, []).append(producer)
        taken: dict[str, int] = {}
        result = []
        for track in played:
            index = taken.get(track.kind, 0)
            taken[track.kind] = index + 1
            result.append(by_kind[track.kind][index])
        return result

    @property
    def players(self) -> set[object]:
        return {consumer.owner for producer in self.producers for consumer in producer.consumers}

    def end(self, reason: CloseReason) -> None:
        """Close every consumer's channel: each player's forwarding tasks see the stream end."""
        self.end_reason = reason
        for producer in self.producers:
            producer.end()


class Router:
    def __init__(self) -> None:
        self._publications: dict[StreamKey, Publication] = {}

    def __len__(self) -> int:
        return len(self._publications)

    def publications(self) -> list[Publication]:
        return list(self._publications.values())

    def lookup(self, key: StreamKey) -> Publication | None:
        return self._publications.get(key)

    def check_free(self, key: StreamKey) -> None:
        if key in self._publications:
            raise SignalingError(
                ErrorCode.CONFLICT, f"stream {key[1]!r} is already published in app {key[0]!r}"
            )

    def publish(self, key: StreamKey, publisher: object, producers: list[Producer]) -> Publication:
        self.check_free(key)
        publication = Publication(key, publisher, producers)
        self._publications[key] = publication
        return publication

    def unpublish(self, publication: Publication) -> None:
        if self._publications.get(publication.key) is publication:
            del self._publications[publication.key]
