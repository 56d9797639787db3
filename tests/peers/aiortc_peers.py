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
