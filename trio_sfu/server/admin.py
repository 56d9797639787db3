"""The operator API on the HTTP port: what runs, with figures, and a way to end a session.

Off unless `admin_token` is configured; then every request needs `Authorization: Bearer <admin_token>`
(compared in constant time). JSON in and out:

- `GET /admin/stats`: the server's figures (what /metrics reads, as one object);
- `GET /admin/streams`: each published stream, its publisher and its players;
- `GET /admin/sessions`: every session (WebSocket, WHIP, WHEP) with its figures: direction, remote
  address, since when, codecs, packets and bytes, bitrate over its life, loss (publishers: packets
  lost on the way in; players: what their receiver reports say), and for players the layer played,
  the round-trip time and the bandwidth estimate;
- `POST /admin/sessions/{id}/kick`: ends it; its client gets `stream.close` with reason `kicked` (a
  kicked publisher's players hear `publisher_gone`);
- `POST /admin/streams/{app}/{stream}/recording`: records the stream into `recording_dir` (201, the
  file's path); `DELETE` on it stops and answers once the file is written (200, its figures);
  `GET /admin/recordings` lists the recordings running.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

import trio

from trio_sfu.server.recording import Recording, RecordingError
from trio_sfu.server.session import Session
from trio_sfu.signaling.messages import CloseReason

if TYPE_CHECKING:
    from trio_sfu.server.server import Server


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminApi:
    def __init__(self, server: Server) -> None:
        self.server = server

    async def handle(self, method: str, parts: list[str], authorization: str | None) -> tuple[int, Any]:
        """(status, JSON value) for a request to /admin/...; AdminError for a refusal."""
        token = self.server.config.admin_token
        if not token:
            raise AdminError(404, "the operator API is off: set admin_token in the configuration")
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise AdminError(401, "the operator API needs Authorization: Bearer <admin_token>")
        route = parts[1:]
        if method == "GET" and route == ["stats"]:
            return 200, self.stats()
        if method == "GET" and route == ["streams"]:
            return 200, self.streams()
        if method == "GET" and route == ["sessions"]:
            return 200, [self.describe(session) for session in self.sessions()]
        if method == "GET" and route == ["recordings"]:
            return 200, [self.describe_recording(r) for r in self.server.recordings.active.values()]
        if len(route) == 3 and route[0] == "sessions" and route[2] == "kick":
            if method != "POST":
                raise AdminError(405, "kick with POST")
            return 200, self.kick(route[1])
        if len(route) == 4 and route[0] == "streams" and route[3] == "recording":
            key = (route[1], route[2])
            try:
                if method == "POST":
                    return 201, self.start_recording(key)
                if method == "DELETE":
                    return 200, self.describe_recording(await self.server.recordings.stop(key))
            except RecordingError as exc:
                raise AdminError(exc.status, exc.message) from None
            raise AdminError(405, "start a recording with POST, stop it with DELETE")
        raise AdminError(404, "operator API: GET /admin/stats, /admin/streams, /admin/sessions, "
                              "/admin/recordings; POST /admin/sessions/{id}/kick; POST or DELETE "
                              "/admin/streams/{app}/{stream}/recording")

    # ---- what runs ----

    def sessions(self) -> list[Session]:
        server = self.server
        found = [s for connection in list(server.connections) for s in list(connection.sessions.values())]
        found += [resource.session for resource in list(server.http.whip.resources.values())]
        return found

    def stats(self) -> dict[str, Any]:
        snap = self.server.snapshot()
        totals = snap.totals
        return {
            "publishers": snap.publishers,
            "players": snap.players,
            "streams": snap.streams_published,
            "connections": snap.connections,
            "shutting_down": snap.shutting_down,
            "rtp_packets": {"in": totals.rtp_packets_in, "out": totals.rtp_packets_out},
            "rtp_bytes": {"in": totals.rtp_bytes_in, "out": totals.rtp_bytes_out},
            "keyframe_requests": totals.keyframe_requests,
            "dtls_handshakes": totals.dtls_handshakes,
            "dtls_failures": totals.dtls_failures,
            "keyframe_cache_bytes": snap.keyframe_cache_bytes,
            "relayed_streams": snap.relayed_in,
            "worker": self.server.config.worker_index,
        }

    def streams(self) -> list[dict[str, Any]]:
        recordings = self.server.recordings.active
        out = []
        for publication in self.server.router.publications():
            publisher = publication.publisher
            players = [p for p in publication.players if isinstance(p, Session)]
            out.append({
                "app": publication.key[0],
                "stream": publication.key[1],
                "publisher": publisher.ident if isinstance(publisher, Session) else None,
                "relayed": not isinstance(publisher, Session),
                "muted": dict(publication.muted),
                "tracks": [
                    {"kind": track.kind, "codec": track.codec.name, "layers": list(track.rids)}
                    for track in publication.negotiated_tracks
                ],
                "players": [player.ident for player in players],
                "recording": str(recording.path) if (recording := recordings.get(publication.key)) else None,
            })
        return out

    def describe(self, session: Session) -> dict[str, Any]:
        now = trio.current_time()
        seconds = max(now - session.started_at, 1e-9)
        figures: dict[str, Any] = {
            "id": session.ident,
            "app": session.header.app,
            "stream": session.header.stream,
            "uid": session.header.uid,
            "direction": session.direction,
            "remote": session.remote,
            "seconds": round(seconds, 3),
            "codecs": {track.kind: track.codec.name for track in session.negotiated.tracks},
            "connected": session.transport.connected.is_set(),
            "muted": dict(session.muted),
        }
        if session.publish:
            media = session.publisher_media
            producers = media.producers if media is not None else []
            received = sum(p.octets for p in producers)
            figures |= {
                "packets_in": sum(p.packets for p in producers),
                "packets_lost_in": sum(p.stats.lost for p in producers),
                "bytes_in": received,
                "bitrate_in_bps": round(received * 8 / seconds),
                "layers": {str(p.rid): round(p.byte_rate * 8) for p in producers if p.rid is not None},
            }
            return figures
        sent = sum(consumer.rewriter.octets for consumer, _ in session.consumers)
        handler = session.transport.handler
        round_trip = getattr(getattr(handler, "round_trip", None), "seconds", None)
        figures |= {
            "packets_out": sum(consumer.rewriter.packets for consumer, _ in session.consumers),
            "bytes_out": sent,
            "bitrate_out_bps": round(sent * 8 / seconds),
            "layer": next((str(c.producer.rid) for c, _ in session.consumers if c.producer.rid), None),
            "rtt_ms": round(round_trip * 1000, 1) if round_trip is not None else None,
            "estimate_bps": getattr(handler, "estimate_bps", None),
            "nack_answered": sum(c.counters["nack_answered"] for c, _ in session.consumers),
        }
        reported = getattr(handler, "reported_loss", None) or {}
        if reported:  # what the player's receiver reports say: the latest share lost, and in all
            figures["loss_reported"] = round(max(fraction for fraction, _ in reported.values()), 4)
            figures["packets_lost_reported"] = sum(lost for _, lost in reported.values())
        return figures

    def start_recording(self, key: tuple[str, str]) -> dict[str, Any]:
        publication = self.server.router.lookup(key)
        if publication is None:
            raise AdminError(404, f"stream {key[1]!r} of app {key[0]!r} is not being published")
        return self.describe_recording(self.server.recordings.start(publication, started_by="operator"))

    @staticmethod
    def describe_recording(recording: Recording) -> dict[str, Any]:
        """What a recording is; once its file is written (after a stop), its figures too."""
        out: dict[str, Any] = {
            "app": recording.key[0],
            "stream": recording.key[1],
            "path": str(recording.path),
            "started_by": recording.started_by,
            "since": recording.started_at,
            "dropped_packets": recording.dropped_packets,
        }
        if recording.error is not None:
            out["error"] = recording.error
        if recording.summary is not None:
            summary = recording.summary
            out.update(seconds=round(summary.seconds, 3), video_frames=summary.video_frames,
                       audio_frames=summary.audio_frames, bytes=summary.bytes)
        return out

    def kick(self, ident: str) -> dict[str, Any]:
        session = next((s for s in self.sessions() if s.ident == ident), None)
        if session is None:
            raise AdminError(404, f"no session {ident!r} (GET /admin/sessions lists them)")
        session.end(CloseReason.KICKED)
        return {"kicked": ident}
