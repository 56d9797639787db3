"""The publisher process: one real leg that replays the pre-encoded stream in real time.

Every packet carries abs-send-time, stamped just before it is protected and sent. Video goes through a
pacer, as a browser's does (default 2.5x the media rate), audio is sent when due; a keyframe request
(PLI or FIR) makes the next frame the next keyframe of the loop, as an encoder answering it would.

With simulcast (`PublisherConfig.simulcast`) the video goes as Chromium's three layers q, h and f, each
on its own random SSRC with its own sequence numbers and picture ids, all with the same RTP timestamps:
f is the pre-encoded stream, h and q the same frames with every packet's payload cut to about 1/3 and
1/8 of its length (the VP8 frame header kept, its picture size halved and quartered on keyframes, so
that the server still finds keyframes and ranks the layers by size; players do not decode). The
offer has no a=ssrc lines for them: every video packet names its layer in the rid header extension
(with mid and abs-send-time; Chromium stops once a receiver report names the SSRC). The VP8 payload
descriptor of every layer marks L1T3 temporal layers as Chromium's does: TIDs 0, 2, 1, 2 from each
keyframe on, TL0PICIDX, and the layer-sync bit on the first TID 2 and TID 1 frames after each TID 0
frame. A keyframe request names an SSRC: that layer's next frame is its next keyframe (the others go
on; each layer keeps its own place in the loop). The pacer's rate covers the three layers.
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

from .media import AUDIO_PTIME, Media, VideoFrame
from .proto import (
    ABS_SEND_TIME_ID,
    MID_ID,
    OPUS_PT,
    RID_ID,
    SIMULCAST_RIDS,
    VP8_PT,
    Leg,
    LegTransport,
    abs_send_time,
    open_leg,
)
from .sendlog import KINDS, SIMULCAST_DESCRIPTOR, SendLog

_RTP = struct.Struct("!BBHII")
KEYFRAME_MIN_INTERVAL = 0.3
"""Keyframe requests this soon after a keyframe are answered only when the interval is over: a server
that forwards every new player's PLI (Janus does) would otherwise make the encoder send nothing but
keyframes, and dropping them would leave a player waiting for the next scheduled one."""
_EXT_HEADER = struct.pack("!HH", 0xBEDE, 1) + bytes([(ABS_SEND_TIME_ID << 4) | 2])
VIDEO_MID = "1"  # the video section's mid in our offer
# Simulcast: each layer's payloads cut to 1/divisor of their length, its picture 1/scale as wide and
# high (Chromium's q, h and f are 1/4, 1/2 and the whole picture); the top layer is the media file's.
LAYER_CUTS = {"q": (8, 4), "h": (3, 2), "f": (1, 1)}
KEEP_FRAME_HEADER = 10  # VP8 frame tag (3), start code (3), width and height (4): kept in every cut
TEMPORAL_PATTERN = (0, 2, 1, 2)  # L1T3 TIDs, frame by frame, from a keyframe on (libwebrtc's order)
LAYER_SYNC = (False, True, True, False)  # Y: the first TID 2 and TID 1 frames after a TID 0 frame


@attrs.define
class PublisherConfig:
    url: str
    media_path: str
    stream: str = "bench"
    token: str = ""
    pacing: float = 2.5  # pacer rate as a multiple of the video bitrate; 0 sends each frame at once
    send_log: SendLog | None = None
    simulcast: bool = False  # the video as three simulcast layers (see the module's docstring)


@attrs.define(eq=False)
class VideoLayer:
    """One video RTP stream: the whole video, or one simulcast layer of it."""

    rid: str | None  # None: no simulcast
    ssrc: int
    frames: tuple[VideoFrame, ...]  # the loop, as this layer sends it (descriptors as in the media file)
    extension: tuple[bytes, bytes]  # the header extension block before and after abs-send-time's value
    log_kind: int  # its kind in the send log
    seq: int
    picture_id: int
    temporal: bool = False  # rewrite descriptors with L1T3 temporal layers (simulcast)
    tl0: int = 0  # TL0PICIDX
    pattern: int = 0  # place in TEMPORAL_PATTERN of the next frame
    frame: int = 0  # index into the loop
    packets: int = 0
    keyframe_requested: bool = False
    keyframe_deferred: bool = False
    last_keyframe_at: float = -1e9


def cut_frames(video: tuple[VideoFrame, ...], divisor: int, scale: int) -> tuple[VideoFrame, ...]:
    """The frames of a lower simulcast layer: every payload (aiortc's 4-byte descriptor, then VP8) cut to
    about 1/divisor of its VP8 bytes, never below the frame header; a keyframe's picture size (14 bits
    each, the top two are the scaling mode) divided by `scale`."""
    if divisor == 1 and scale == 1:
        return video
    out = []
    for frame in video:
        payloads = []
        for payload in frame.payloads:
            data = payload[4:]
            keep = bytearray(data[: max(KEEP_FRAME_HEADER, len(data) // divisor)])
            if frame.keyframe and payload[0] & 0x10 and keep[3:6] == b"\x9d\x01\x2a":
                for at in (6, 8):
                    value = int.from_bytes(keep[at : at + 2], "little")
                    size = max(1, (value & 0x3FFF) // scale)
                    keep[at : at + 2] = ((value & 0xC000) | size).to_bytes(2, "little")
            payloads.append(payload[:4] + bytes(keep))
        out.append(VideoFrame(frame.keyframe, tuple(payloads)))
    return tuple(out)


def simulcast_summary(media: Media, rids: tuple[str, ...] = SIMULCAST_RIDS) -> str:
    """What the simulcast layers send (payload bit rates and packets a second), e.g. for a log line."""
    parts = []
    for rid in rids:
        frames = cut_frames(media.video, *LAYER_CUTS.get(rid, (1, 1)))
        size = sum(len(p) + SIMULCAST_DESCRIPTOR - 4 for frame in frames for p in frame.payloads)
        packets = sum(len(frame.payloads) for frame in frames)
        parts.append(f"{rid} {8 * size / media.seconds / 1e3:.0f} kbit/s {packets / media.seconds:.0f} pkt/s")
    return "; ".join(parts) + " (VP8 L1T3, TIDs 0 2 1 2)"


def _extension(rid: str | None) -> tuple[bytes, bytes]:
    """The RFC 8285 one-byte header extension block around abs-send-time's 3 bytes: abs-send-time only,
    or (simulcast) abs-send-time, mid and rid, padded to whole words."""
    if rid is None:
        return _EXT_HEADER, b""
    elements = bytes([(MID_ID << 4) | (len(VIDEO_MID) - 1)]) + VIDEO_MID.encode()
    elements += bytes([(RID_ID << 4) | (len(rid) - 1)]) + rid.encode()
    elements += bytes(-(4 + len(elements)) % 4)
    words = (4 + len(elements)) // 4
    return struct.pack("!HH", 0xBEDE, words) + bytes([(ABS_SEND_TIME_ID << 4) | 2]), elements


def _random_ssrcs(count: int, taken: set[int]) -> list[int]:
    ssrcs: list[int] = []
    while len(ssrcs) < count:
        ssrc = int.from_bytes(os.urandom(4), "big")
        if ssrc and ssrc not in taken and ssrc not in ssrcs:
            ssrcs.append(ssrc)
    return ssrcs


class Sender:
    def __init__(
        self,
        media: Media,
        transport: LegTransport,
        pacing: float,
        send_log: SendLog | None = None,
        rids: tuple[str, ...] = (),
    ) -> None:
        self.media = media
        self.send_log = send_log
        self.transport = transport
        rand = struct.unpack("!HHIIH", os.urandom(14))
        self.seq = {"audio": rand[0]}
        self.ts_base = {"audio": rand[2], "video": rand[3]}
        self.ssrc = {"audio": transport.local.audio_ssrc}
        self.rids = rids
        if not rids:
            self.layers = [
                VideoLayer(None, transport.local.video_ssrc, media.video, _extension(None), KINDS["video"],
                           rand[1], rand[4] & 0x7FFF)
            ]
        else:
            ssrcs = _random_ssrcs(len(rids), {transport.local.audio_ssrc})
            self.layers = []
            for rid, ssrc in zip(rids, ssrcs, strict=True):
                divisor, scale = LAYER_CUTS.get(rid, (1, 1))
                seq, picture_id, tl0 = struct.unpack("!HHB", os.urandom(5))
                self.layers.append(VideoLayer(
                    rid, ssrc, cut_frames(media.video, divisor, scale), _extension(rid),
                    # The top layer (the last) is the send log's "video"; the others follow it.
                    KINDS["video"] + len(rids) - 1 - len(self.layers),
                    seq, picture_id & 0x7FFF, temporal=True, tl0=tl0,
                ))
        # The pacer follows what all the layers send (descriptors as sent: simulcast adds two bytes).
        extra = SIMULCAST_DESCRIPTOR - 4 if rids else 0
        sent = sum(len(p) + extra for layer in self.layers for f in layer.frames for p in f.payloads)
        own = sum(len(p) for f in media.video for p in f.payloads)
        self.pacing_bps = pacing * media.bitrate * sent / own if pacing > 0 else 0.0
        self.frames_sent = 0
        self.audio_sent = 0
        self.queued = 0
        self.counters: collections.Counter[str] = collections.Counter()
        self.late_max = 0.0
        self.started_at = 0.0

    def _send(
        self, kind: str, marker: bool, timestamp: int, payload: bytes, layer: VideoLayer | None = None
    ) -> None:
        if layer is None:  # audio
            pt, seq, ssrc, log_kind = OPUS_PT, self.seq[kind], self.ssrc[kind], KINDS[kind]
            before, after = _EXT_HEADER, b""
            self.seq[kind] = (seq + 1) & 0xFFFF
        else:
            pt, seq, ssrc, log_kind = VP8_PT, layer.seq, layer.ssrc, layer.log_kind
            before, after = layer.extension
            layer.seq = (seq + 1) & 0xFFFF
            layer.packets += 1
        header = _RTP.pack(0x90, (0x80 if marker else 0) | pt, seq, timestamp, ssrc)
        now = time.monotonic()
        ast = abs_send_time(now).to_bytes(3, "big")
        srtp = self.transport.srtp
        assert srtp is not None
        protected = srtp.protect_rtp(header + before + ast + after + payload)
        if self.send_log is not None:
            self.send_log.record(log_kind, seq, payload, now)
        self.transport.send(protected)
        self.counters["packets"] += 1
        self.counters[f"{kind}_packets"] += 1
        if layer is not None and layer.rid is not None:
            self.counters[f"video_packets_{layer.rid}"] += 1
        self.counters["bytes"] += len(protected)

    def send_audio(self) -> None:
        payload = self.media.audio[self.audio_sent % len(self.media.audio)]
        timestamp = (self.ts_base["audio"] + 960 * self.audio_sent) & 0xFFFFFFFF
        self._send("audio", self.audio_sent == 0, timestamp, payload)
        self.audio_sent += 1

    def next_frame(self) -> list[tuple[VideoLayer, bool, int, bytes]]:
        """The next frame's packets (layer, marker, timestamp, payload) of every layer, lowest first."""
        timestamp = (self.ts_base["video"] + 3000 * self.frames_sent) & 0xFFFFFFFF
        self.frames_sent += 1
        now = trio.current_time()
        packets = []
        for layer in self.layers:
            last = None
            for payload in self._layer_frame(layer, now):
                if last is not None:
                    packets.append((layer, False, timestamp, last))
                last = payload
            if last is not None:
                packets.append((layer, True, timestamp, last))
        return packets

    def _layer_frame(self, layer: VideoLayer, now: float) -> list[bytes]:
        """One layer's next frame: its payloads, picture id (and temporal layer) renumbered."""
        video = layer.frames
        if layer.keyframe_deferred and now >= layer.last_keyframe_at + KEYFRAME_MIN_INTERVAL:
            layer.keyframe_deferred = False
            layer.keyframe_requested = True
        if layer.keyframe_requested:
            layer.keyframe_requested = False
            if not video[layer.frame].keyframe:
                self._count("keyframe_jumps", layer)
                while not video[layer.frame].keyframe:
                    layer.frame = (layer.frame + 1) % len(video)
        frame = video[layer.frame]
        layer.frame = (layer.frame + 1) % len(video)
        if frame.keyframe:
            self._count("keyframes", layer)
            layer.last_keyframe_at = now
            layer.keyframe_deferred = False
        picture_id = layer.picture_id
        layer.picture_id = (picture_id + 1) & 0x7FFF
        pid = bytes((0x80 | (picture_id >> 8), picture_id & 0xFF))
        if not layer.temporal:
            return [p[:2] + pid + p[4:] for p in frame.payloads]
        if frame.keyframe:
            layer.pattern = 0
        tid, sync = TEMPORAL_PATTERN[layer.pattern], LAYER_SYNC[layer.pattern]
        layer.pattern = (layer.pattern + 1) % len(TEMPORAL_PATTERN)
        if tid == 0:
            layer.tl0 = (layer.tl0 + 1) & 0xFF
        # X; then I, L and T; the 15-bit picture id, TL0PICIDX, and TID with Y (RFC 7741 section 4.2).
        extension = b"\xe0" + pid + bytes((layer.tl0, (tid << 6) | (0x20 if sync else 0)))
        return [bytes((0x80 | (p[0] & 0x17),)) + extension + p[4:] for p in frame.payloads]

    def _count(self, name: str, layer: VideoLayer) -> None:
        self.counters[name] += 1
        if layer.rid is not None:
            self.counters[f"{name}_{layer.rid}"] += 1

    def sender_reports(self) -> bytes:
        now = trio.current_time()
        elapsed = now - self.started_at
        wall = ntp_timestamp(time.time())
        streams = [("audio", self.ssrc["audio"], 48000, self.counters["audio_packets"])]
        streams += [("video", layer.ssrc, 90000, layer.packets) for layer in self.layers]
        reports = [
            SenderReport(
                ssrc=ssrc,
                ntp_timestamp=wall,
                rtp_timestamp=(self.ts_base[kind] + int(elapsed * rate)) & 0xFFFFFFFF,
                packet_count=packets & 0xFFFFFFFF,
                octet_count=0,
            )
            for kind, ssrc, rate, packets in streams
        ]
        cname = self.transport.local.cname.encode()
        named = [self.ssrc["audio"]] + ([layer.ssrc for layer in self.layers] if self.rids else [])
        sdes = Sdes(chunks=tuple((ssrc, ((1, cname),)) for ssrc in named))
        return rtcp_compound([*reports, sdes])

    def _layers_named(self, ssrc: int) -> list[VideoLayer]:
        """The layers a keyframe request for `ssrc` is for (without simulcast: the video, whatever it
        names; an SSRC that is none of the layers': all of them)."""
        if not self.rids:
            return self.layers
        named = [layer for layer in self.layers if layer.ssrc == ssrc]
        if not named:
            self.counters["keyframe_requests_unknown_ssrc"] += 1
        return named or self.layers

    def on_rtcp(self, packet: bytes, now: float) -> None:
        try:
            items = parse_compound(packet)
        except RtcpError:
            self.counters["rtcp_malformed"] += 1
            return
        for item in items:
            if isinstance(item, Pli | Fir):
                self.counters["pli" if isinstance(item, Pli) else "fir"] += 1
                ssrcs = [item.media_ssrc] if isinstance(item, Pli) else [ssrc for ssrc, _ in item.entries]
                for layer in {id(layer): layer for s in ssrcs for layer in self._layers_named(s)}.values():
                    if now - layer.last_keyframe_at < KEYFRAME_MIN_INTERVAL:
                        self._count("keyframe_requests_deferred", layer)
                        layer.keyframe_deferred = True
                    else:
                        layer.keyframe_requested = True
            elif isinstance(item, Nack):
                self.counters["nacked_packets"] += len(item.lost)
            elif isinstance(item, Remb):
                self.counters["remb_bps"] = item.bitrate

    async def run(self) -> None:
        """Audio every 20 ms, a frame every 1/30 s into the pacer; sleep until the next thing is due."""
        self.started_at = start = trio.current_time()
        next_audio = next_video = next_report = start
        pace_at = start
        queue: collections.deque[tuple[VideoLayer, bool, int, bytes]] = collections.deque()
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
                layer, marker, timestamp, payload = queue.popleft()
                self._send("video", marker, timestamp, payload, layer)
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
    layers = {"simulcast_layers": list(sender.rids)} if sender.rids else {}
    return {
        "event": "snapshot",
        **layers,
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
    rids = SIMULCAST_RIDS if config.simulcast else ()
    certificate = Certificate.generate("bench-publisher")
    async with trio.open_nursery() as nursery:
        readers: list[LegTransport] = []

        def start_reader(transport: LegTransport) -> None:
            readers.append(transport)
            nursery.start_soon(_read, transport)

        try:
            async with open_leg(
                config.url, publish=True, certificate=certificate, stream=config.stream,
                token=config.token, on_transport=start_reader, rids=rids,
            ) as leg:
                sender = Sender(media, leg.transport, config.pacing, config.send_log, rids)
                leg.transport.rtcp_handler = sender.on_rtcp
                conn.send({
                    "event": "ready", "setup_s": leg.connected_at - leg.offer_sent_at,
                    "media_port": leg.transport.answer.address[1],  # the server's (worker's) port
                })
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
