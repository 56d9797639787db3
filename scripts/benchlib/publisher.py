"""The publisher process: one real leg that replays the pre-encoded stream in real time.

Every packet carries abs-send-time, stamped just before it is protected and sent. Video goes through a
pacer, as a browser's does (default 2.5x the media rate), audio is sent when due; a keyframe request
(PLI or FIR) makes the next frame the next keyframe of the loop, as an encoder answering it would.
"""

from __future__ import annotations

import collections
import contextlib
import os
import struct
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_sfu.transport.certificate import Certificate
from trio_sfu.wire.rtcp import (
    Fir,
    Nack,
    Pli,
    Remb,
    RtcpError,
    Sdes,
    SenderReport,
    ntp_timestamp,
    parse_compound,
)
from trio_sfu.wire.rtcp import serialize_compound as rtcp_compound

from .media import AUDIO_PTIME, Media
from .proto import ABS_SEND_TIME_ID, OPUS_PT, VP8_PT, Leg, LegTransport, abs_send_time, open_leg
from .sendlog import KINDS, SendLog

_RTP = struct.Struct("!BBHII")
KEYFRAME_MIN_INTERVAL = 0.3
"""Keyframe requests this soon after a keyframe are answered only when the interval is over: a server
that forwards every new player's PLI (Janus does) would otherwise make the encoder send nothing but
keyframes, and dropping them would leave a player waiting for the next scheduled one."""
_EXT_HEADER = struct.pack("!HH", 0xBEDE, 1) + bytes([(ABS_SEND_TIME_ID << 4) | 2])


@attrs.define
class PublisherConfig:
    url: str
    media_path: str
    stream: str = "bench"
    token: str = ""
    pacing: float = 2.5  # pacer rate as a multiple of the video bitrate; 0 sends each frame at once
    send_log: SendLog | None = None


class Sender:
    def __init__(
        self, media: Media, transport: LegTransport, pacing: float, send_log: SendLog | None = None
    ) -> None:
        self.media = media
        self.send_log = send_log
        self.transport = transport
        self.pacing_bps = pacing * media.bitrate if pacing > 0 else 0.0
        rand = struct.unpack("!HHIIH", os.urandom(14))
        self.seq = {"audio": rand[0], "video": rand[1]}
        self.ts_base = {"audio": rand[2], "video": rand[3]}
        self.picture_id = rand[4] & 0x7FFF
        self.ssrc = {"audio": transport.local.audio_ssrc, "video": transport.local.video_ssrc}
        self.frame = 0  # index into the loop
        self.frames_sent = 0
        self.audio_sent = 0
        self.keyframe_requested = False
        self.keyframe_deferred = False
        self.last_keyframe_at = -1e9
        self.queued = 0
        self.counters: collections.Counter[str] = collections.Counter()
        self.late_max = 0.0
        self.started_at = 0.0

    def _packet(self, kind: str, marker: bool, timestamp: int, payload: bytes) -> None:
        pt = VP8_PT if kind == "video" else OPUS_PT
        seq = self.seq[kind]
        self.seq[kind] = (seq + 1) & 0xFFFF
        header = _RTP.pack(0x90, (0x80 if marker else 0) | pt, seq, timestamp, self.ssrc[kind])
        now = time.monotonic()
        ast = abs_send_time(now).to_bytes(3, "big")
        srtp = self.transport.srtp
        assert srtp is not None
        protected = srtp.protect_rtp(header + _EXT_HEADER + ast + payload)
        if self.send_log is not None:
            self.send_log.record(KINDS[kind], seq, payload, now)
        self.transport.send(protected)
        self.counters["packets"] += 1
        self.counters[f"{kind}_packets"] += 1
        self.counters["bytes"] += len(protected)

    def send_audio(self) -> None:
        payload = self.media.audio[self.audio_sent % len(self.media.audio)]
        timestamp = (self.ts_base["audio"] + 960 * self.audio_sent) & 0xFFFFFFFF
        self._packet("audio", self.audio_sent == 0, timestamp, payload)
        self.audio_sent += 1

    def next_frame(self) -> list[tuple[bool, int, bytes]]:
        """The next frame's packets (marker, timestamp, payload), its picture id renumbered."""
        video = self.media.video
        if self.keyframe_deferred and trio.current_time() >= self.last_keyframe_at + KEYFRAME_MIN_INTERVAL:
            self.keyframe_deferred = False
            self.keyframe_requested = True
        if self.keyframe_requested:
            self.keyframe_requested = False
            if not video[self.frame].keyframe:
                self.counters["keyframe_jumps"] += 1
                while not video[self.frame].keyframe:
                    self.frame = (self.frame + 1) % len(video)
        frame = video[self.frame]
        self.frame = (self.frame + 1) % len(video)
        if frame.keyframe:
            self.counters["keyframes"] += 1
            self.last_keyframe_at = trio.current_time()
            self.keyframe_deferred = False
        timestamp = (self.ts_base["video"] + 3000 * self.frames_sent) & 0xFFFFFFFF
        self.frames_sent += 1
        pid = bytes((0x80 | (self.picture_id >> 8), self.picture_id & 0xFF))
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        last = len(frame.payloads) - 1
        return [(i == last, timestamp, p[:2] + pid + p[4:]) for i, p in enumerate(frame.payloads)]

    def sender_reports(self) -> bytes:
        now = trio.current_time()
        elapsed = now - self.started_at
        wall = ntp_timestamp(time.time())
        reports = [
            SenderReport(
                ssrc=self.ssrc[kind],
                ntp_timestamp=wall,
                rtp_timestamp=(self.ts_base[kind] + int(elapsed * rate)) & 0xFFFFFFFF,
                packet_count=self.counters[f"{kind}_packets"] & 0xFFFFFFFF,
                octet_count=0,
            )
            for kind, rate in (("audio", 48000), ("video", 90000))
        ]
        cname = self.transport.local.cname.encode()
        sdes = Sdes(chunks=((self.ssrc["audio"], ((1, cname),)),))
        return rtcp_compound([*reports, sdes])

    def on_rtcp(self, packet: bytes, now: float) -> None:
        try:
            items = parse_compound(packet)
        except RtcpError:
            self.counters["rtcp_malformed"] += 1
            return
        for item in items:
            if isinstance(item, Pli | Fir):
                self.counters["pli" if isinstance(item, Pli) else "fir"] += 1
                if now - self.last_keyframe_at < KEYFRAME_MIN_INTERVAL:
                    self.counters["keyframe_requests_deferred"] += 1
                    self.keyframe_deferred = True
                else:
                    self.keyframe_requested = True
            elif isinstance(item, Nack):
                self.counters["nacked_packets"] += len(item.lost)
            elif isinstance(item, Remb):
                self.counters["remb_bps"] = item.bitrate

    async def run(self) -> None:
        """Audio every 20 ms, a frame every 1/30 s into the pacer; sleep until the next thing is due."""
        self.started_at = start = trio.current_time()
        next_audio = next_video = next_report = start
        pace_at = start
        queue: collections.deque[tuple[bool, int, bytes]] = collections.deque()
        frame_time = 1 / self.media.fps
        while True:
            now = trio.current_time()
            due = min(next_audio, next_video)
            if due <= now:
                self.late_max = max(self.late_max, now - due)
            while next_audio <= now:
                self.send_audio()
                next_audio += AUDIO_PTIME
            while next_video <= now:
                if not queue:
                    pace_at = max(pace_at, now)
                queue.extend(self.next_frame())
                next_video += frame_time
            while queue and pace_at <= now:
                marker, timestamp, payload = queue.popleft()
                self._packet("video", marker, timestamp, payload)
                if self.pacing_bps:
                    pace_at += 8 * (len(payload) + 48) / self.pacing_bps
            if now >= next_report:
                self.transport.send(self.transport.srtp.protect_rtcp(self.sender_reports()))  # type: ignore[union-attr]
                next_report += 1.0
            self.queued = len(queue)
            self.counters["queued_max"] = max(self.counters["queued_max"], self.queued)
            wake = min(next_audio, next_video, next_report)
            if queue:
                wake = min(wake, pace_at)
            await trio.sleep_until(wake)


async def _read(transport: LegTransport) -> None:
    sock = transport.sock
    while True:
        await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            except OSError:
                transport.counters["recv_error"] += 1
                break
            if data:
                transport.on_control(data, trio.current_time())


async def _control(conn: Connection, sender: Sender, leg: Leg, cancel: trio.CancelScope) -> None:
    while True:
        await trio.lowlevel.wait_readable(conn.fileno())
        while conn.poll():
            message = conn.recv()
            if message["cmd"] == "snapshot":
                conn.send(snapshot(sender, leg))
            elif message["cmd"] == "stop":
                cancel.cancel()
                return


def snapshot(sender: Sender, leg: Leg) -> dict[str, Any]:
    return {
        "event": "snapshot",
        "at": time.monotonic(),
        **dict(sender.counters),
        "frames": sender.frames_sent,
        "queued": sender.queued,
        "late_max_ms": 1000 * sender.late_max,
        "transport": dict(leg.transport.counters),
        "closed_by_server": leg.signaling.closed_by_server,
        "srtp": dict(leg.transport.srtp.counters) if leg.transport.srtp else {},
    }


async def publisher_main(conn: Connection, config: PublisherConfig) -> None:
    media = Media.load(Path(config.media_path))
    certificate = Certificate.generate("bench-publisher")
    async with trio.open_nursery() as nursery:
        readers: list[LegTransport] = []

        def start_reader(transport: LegTransport) -> None:
            readers.append(transport)
            nursery.start_soon(_read, transport)

        try:
            async with open_leg(
                config.url, publish=True, certificate=certificate, stream=config.stream,
                token=config.token, on_transport=start_reader,
            ) as leg:
                sender = Sender(media, leg.transport, config.pacing, config.send_log)
                leg.transport.rtcp_handler = sender.on_rtcp
                conn.send({"event": "ready", "setup_s": leg.connected_at - leg.offer_sent_at})
                async with trio.open_nursery() as inner:
                    inner.start_soon(sender.run)
                    inner.start_soon(_control, conn, sender, leg, inner.cancel_scope)
        except Exception as exc:  # the orchestrator reports it and stops the run
            conn.send({"event": "failed", "error": describe(exc)})
        nursery.cancel_scope.cancel()


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def run_publisher(conn: Connection, config: PublisherConfig) -> None:
    """multiprocessing entry point."""
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(publisher_main, conn, config)
