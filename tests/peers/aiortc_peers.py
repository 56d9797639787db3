"""aiortc peers for end-to-end tests: a real WebRTC stack that nobody here wrote.

aiortc is asyncio; it runs on its own event loop in a daemon thread, and trio tests call into it
with `AsyncioThread.call`. The publisher sends video whose pixels encode a frame counter (ten
vertical bars: white, eight bits, black) and a 440 Hz tone, so players can check what they decode.
"""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aioice.ice
import numpy as np
import trio
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import VideoStreamTrack
from av import AudioFrame, VideoFrame

T = TypeVar("T")

WIDTH, HEIGHT = 320, 240
BARS = 10
TONE_HZ = 440.0
AUDIO_RATE = 48000


def _loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


# aiortc gathers candidates from aioice, which skips loopback: on this machine only loopback may be used.
aioice.ice.get_host_addresses = _loopback_only


class AsyncioThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    async def call(
        self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float = 30
    ) -> T:
        future = asyncio.run_coroutine_threadsafe(function(*args), self.loop)
        return await trio.to_thread.run_sync(lambda: future.result(timeout), abandon_on_cancel=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def counter_image(counter: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    width = WIDTH // BARS
    values = [1] + [(counter >> bit) & 1 for bit in range(8)] + [0]
    for index, value in enumerate(values):
        if value:
            image[:, index * width : (index + 1) * width] = 255
    return image


def read_counter(image: np.ndarray) -> int | None:
    """The counter a decoded frame shows, or None when its framing bars are wrong (corrupt frame)."""
    height, width = image.shape[:2]
    bar = width // BARS
    levels = []
    for index in range(BARS):
        patch = image[height // 4 : 3 * height // 4, index * bar + bar // 4 : (index + 1) * bar - bar // 4]
        level = float(patch.mean())
        if 60 < level < 195:
            return None
        levels.append(level > 127)
    if not levels[0] or levels[-1]:
        return None
    return sum(1 << bit for bit in range(8) if levels[1 + bit])


class CounterVideoTrack(VideoStreamTrack):
    def __init__(self) -> None:
        super().__init__()
        self.counter = 0
        self.sent: list[tuple[float, int]] = []

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(counter_image(self.counter % 256), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        self.sent.append((time.monotonic(), self.counter % 256))
        self.counter += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        samples = AUDIO_RATE // 50
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._samples / AUDIO_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(samples) + self._samples) / AUDIO_RATE
        wave = (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype(np.int16)
        frame = AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._samples += samples
        return frame


def _prefer(pc: RTCPeerConnection, kind: str, mime: str | None) -> None:
    if mime is None:
        return
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() == mime.lower()]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == kind:
            transceiver.setCodecPreferences(codecs)


class Publisher:
    def __init__(self, video_codec: str | None = "video/VP8", audio: bool = True, video: bool = True) -> None:
        self.video_codec = video_codec
        self.with_audio = audio
        self.with_video = video
        self.pc: RTCPeerConnection | None = None
        self.offered_at = 0.0
        self.answered_at = 0.0  # when the server's answer reached the client (time.monotonic)
        self.video = CounterVideoTrack()
        self.audio = ToneAudioTrack()

    async def offer(self) -> str:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if self.with_video:
            self.pc.addTransceiver(self.video, direction="sendonly")
            _prefer(self.pc, "video", self.video_codec)
        if self.with_audio:
            self.pc.addTransceiver(self.audio, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        assert self.pc is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()


class Player:
    """Receives, decodes and checks: video counters and audio tone as they arrive."""

    def __init__(self, video: bool = True, audio: bool = True, video_codec: str | None = None) -> None:
        self.with_video, self.with_audio = video, audio
        self.video_codec = video_codec
        self.pc: RTCPeerConnection | None = None
        self.offered_at = 0.0
        self.answered_at = 0.0  # when the server's answer reached the client (time.monotonic)
        self.frames: list[tuple[float, int | None, int, int]] = []  # (time, counter, width, height)
        self.audio_frames = 0
        self.audio_samples: list[np.ndarray] = []
        self.codecs: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def offer(self) -> str:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if self.with_video:
            self.pc.addTransceiver("video", direction="recvonly")
            _prefer(self.pc, "video", self.video_codec)
        if self.with_audio:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        assert self.pc is not None
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        for transceiver in self.pc.getTransceivers():
            codecs = [c for c in transceiver._codecs if not c.mimeType.endswith("/rtx")]
            if codecs:
                self.codecs[transceiver.kind] = codecs[0].mimeType

    async def _consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    image = frame.to_ndarray(format="rgb24")
                    self.frames.append((time.monotonic(), read_counter(image), frame.width, frame.height))
                else:
                    self.audio_frames += 1
                    if len(self.audio_samples) < 500:
                        self.audio_samples.append(frame.to_ndarray().reshape(-1))
        except Exception:
            return

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()

    def dominant_frequency(self) -> float:
        """Peak of the spectrum of the decoded audio (stereo interleaved s16 at 48 kHz)."""
        samples = np.concatenate(self.audio_samples[-100:]).astype(np.float64)
        samples = samples[0::2]  # left channel
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
        frequencies = np.fft.rfftfreq(len(samples), 1 / AUDIO_RATE)
        return float(frequencies[int(np.argmax(spectrum[1:])) + 1])


# ---- publishers whose keyframes the test controls and counts ----


def vp8_payload_is_keyframe(payload: bytes) -> bool:
    """An RTP VP8 payload that starts a keyframe (RFC 7741: S set, partition 0, P bit of the frame tag
    clear)."""
    from aiortc.codecs.vpx import VpxPayloadDescriptor

    descriptor, rest = VpxPayloadDescriptor.parse(payload)
    return descriptor.partition_start == 1 and descriptor.partition_id == 0 and bool(rest) and not rest[0] & 1


class ScheduledKeyframeEncoder:
    """aiortc's VP8 encoder with keyframes on a schedule: the first frame, then one every `interval`
    seconds (None: none but the first and those asked for), each recorded as (time, frame counter).

    The bitrate stays at aiortc's default: a REMB changing it makes aiortc rebuild the codec, which
    starts with a keyframe nobody scheduled (REMB values are recorded, not applied). A keyframe asked
    for by the sender (`force_keyframe`: a PLI or FIR it answers) is counted in `requested_keyframes`;
    KeyframePublisher decides whether requests get that far. `encode` runs on aiortc's executor thread.
    """

    def __init__(self, interval: float | None, frame_counter: Callable[[], int]) -> None:
        from aiortc.codecs.vpx import DEFAULT_BITRATE, Vp8Encoder

        self._encoder = Vp8Encoder()
        self._frame_counter = frame_counter
        self.interval = interval
        self.bitrate = DEFAULT_BITRATE
        self.next_keyframe: float | None = None
        self.keyframes: list[tuple[float, int]] = []
        self.requested_keyframes = 0  # frames encoded as keyframes because a PLI or FIR asked
        self.remb_bitrates: list[int] = []  # what REMB asked for (ignored)

    @property
    def target_bitrate(self) -> int:
        return self.bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self.remb_bitrates.append(bitrate)

    def encode(self, frame: VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        now = time.monotonic()
        scheduled = self.next_keyframe is not None and now >= self.next_keyframe
        payloads, timestamp = self._encoder.encode(frame, force_keyframe or scheduled)
        if payloads and vp8_payload_is_keyframe(payloads[0]):
            self.keyframes.append((now, self._frame_counter()))
            self.requested_keyframes += force_keyframe
            if self.interval is not None:
                if self.next_keyframe is None:
                    self.next_keyframe = now + self.interval
                elif scheduled:
                    self.next_keyframe += self.interval
        return payloads, timestamp

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        return self._encoder.pack(packet)


class KeyframePublisher(Publisher):
    """A VP8 publisher whose keyframes are scheduled and counted: one every `keyframe_interval` s, and
    one per PLI or FIR only when `answers_requests` (OBS and FFmpeg ignore them). `keyframe_requests`
    holds when each PLI or FIR reached it, answered or not.

    Private aiortc API: RTCRtpSender creates its encoder (`__encoder`, name-mangled) at the first frame
    unless one is set, and its RTCP handler calls `_send_keyframe()` for every PLI and FIR.
    """

    def __init__(
        self, keyframe_interval: float | None = 10.0, answers_requests: bool = False, audio: bool = True
    ) -> None:
        super().__init__(video_codec="video/VP8", audio=audio)
        self.answers_requests = answers_requests
        self.encoder = ScheduledKeyframeEncoder(keyframe_interval, lambda: self.video.counter - 1)
        self.keyframe_requests: list[float] = []

    async def offer(self) -> str:
        sdp = await super().offer()
        assert self.pc is not None
        (sender,) = [s for s in self.pc.getSenders() if s.kind == "video"]
        sender._RTCRtpSender__encoder = self.encoder  # type: ignore[attr-defined]
        answer_request = sender._send_keyframe

        def on_keyframe_request() -> None:
            self.keyframe_requests.append(time.monotonic())
            if self.answers_requests:
                answer_request()

        sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]
        return sdp

    @property
    def keyframes(self) -> list[tuple[float, int]]:
        """(time, frame counter) of every keyframe encoded."""
        return self.encoder.keyframes


class TimedPlayer(Player):
    """A player that also notes when its DTLS transport connected, when its first video RTP packet came,
    and how many SRTP datagrams came before DTLS connected (aiortc drops those: it has no keys yet).
    Private aiortc API: RTCDtlsTransport emits "statechange" and reads datagrams with its ICE
    transport's `_recv`; the RTP router calls the receiver's `_handle_rtp_packet`; the receiver sends
    PLIs with `_send_rtcp_pli` (all wrapped here)."""

    def __init__(self, video: bool = True, audio: bool = True) -> None:
        super().__init__(video=video, audio=audio)
        self.connected_at: float | None = None
        self.first_video_rtp_at: float | None = None
        self.video_rtp_packets = 0
        self.plis_sent = 0
        self.srtp_before_dtls = 0  # SRTP or SRTCP datagrams that came before DTLS connected: dropped
        self._video_receiver: Any = None

    async def offer(self) -> str:
        sdp = await super().offer()
        assert self.pc is not None
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.kind == "video")
        dtls = receiver.transport

        @dtls.on("statechange")
        def on_state() -> None:
            if dtls.state == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()

        ice = dtls.transport
        receive = ice._recv

        async def on_datagram() -> bytes:
            data: bytes = await receive()
            if data and 127 < data[0] < 192 and dtls.state != "connected":
                self.srtp_before_dtls += 1  # aiortc has no SRTP keys yet: it drops it
            return data

        ice._recv = on_datagram
        handle = receiver._handle_rtp_packet
        send_pli = receiver._send_rtcp_pli

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            if self.first_video_rtp_at is None:
                self.first_video_rtp_at = time.monotonic()
            self.video_rtp_packets += 1
            await handle(packet, arrival_time_ms)

        async def on_pli(media_ssrc: int) -> None:
            self.plis_sent += 1
            await send_pli(media_ssrc)

        receiver._handle_rtp_packet = on_rtp  # type: ignore[method-assign]
        receiver._send_rtcp_pli = on_pli  # type: ignore[method-assign]
        self._video_receiver = receiver
        return sdp

    async def send_pli(self, media_ssrc: int) -> None:
        """Ask the server for a keyframe of the video it sends with `media_ssrc`, as a decoder would."""
        await self._video_receiver._send_rtcp_pli(media_ssrc)
