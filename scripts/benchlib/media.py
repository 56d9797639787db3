"""The publisher's pre-encoded media: VP8 video and Opus audio RTP payloads, made once, cached on disk.

Encoding live would put the encoder's CPU into the measurement (and make it vary with load), so the
stream is encoded once — a moving synthetic pattern that makes VP8 spend its whole bit budget — and
replayed in real time. The file is a small binary container: a magic line, a JSON index, then the
payloads back to back.

Video payloads carry aiortc's VP8 payload descriptor (X=1, I=1, M=1: a 15-bit picture id in payload
bytes 2-3), so the sender can renumber pictures when it loops or jumps to a keyframe.
"""

from __future__ import annotations

import fractions
import json
import struct
from pathlib import Path

import attrs

MAGIC = b"TRIO_SFU_BENCH_MEDIA 1\n"
FPS = 30
AUDIO_PTIME = 0.020
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "media" / "bench_vp8_opus.bin"


@attrs.frozen
class VideoFrame:
    keyframe: bool
    payloads: tuple[bytes, ...]


@attrs.frozen
class Media:
    width: int
    height: int
    fps: int
    bitrate: int  # the encoder's target, bits/s
    video: tuple[VideoFrame, ...]
    audio: tuple[bytes, ...]  # one Opus packet per 20 ms

    @property
    def seconds(self) -> float:
        return len(self.video) / self.fps

    @property
    def keyframe_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, frame in enumerate(self.video) if frame.keyframe)

    def video_bitrate(self) -> float:
        """Payload bits per second (RTP/SRTP headers come on top)."""
        size = sum(len(p) for frame in self.video for p in frame.payloads)
        return 8 * size / self.seconds

    def packets_per_second(self) -> float:
        video = sum(len(frame.payloads) for frame in self.video) / self.seconds
        return video + 1 / AUDIO_PTIME

    def summary(self) -> str:
        return (
            f"{self.width}x{self.height} VP8 {self.fps} fps {self.video_bitrate() / 1e6:.2f} Mbit/s, "
            f"{len(self.keyframe_indexes)} keyframes in a {self.seconds:.0f} s loop; Opus 20 ms; "
            f"{self.packets_per_second():.0f} packets/s"
        )

    def dump(self, path: Path) -> None:
        blobs: list[bytes] = []
        index: dict[str, object] = {
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "bitrate": self.bitrate,
            "video": [],
            "audio": [],
        }
        for frame in self.video:
            index["video"].append([frame.keyframe, [len(p) for p in frame.payloads]])  # type: ignore[attr-defined]
            blobs.extend(frame.payloads)
        for packet in self.audio:
            index["audio"].append(len(packet))  # type: ignore[attr-defined]
            blobs.append(packet)
        header = json.dumps(index, separators=(",", ":")).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(MAGIC + struct.pack("!I", len(header)) + header + b"".join(blobs))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Media:
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise ValueError(f"{path} is not a bench media file")
        pos = len(MAGIC)
        (length,) = struct.unpack_from("!I", data, pos)
        pos += 4
        index = json.loads(data[pos : pos + length])
        pos += length
        video = []
        for keyframe, sizes in index["video"]:
            payloads = []
            for size in sizes:
                payloads.append(data[pos : pos + size])
                pos += size
            video.append(VideoFrame(bool(keyframe), tuple(payloads)))
        audio = []
        for size in index["audio"]:
            audio.append(data[pos : pos + size])
            pos += size
        if pos != len(data):
            raise ValueError(f"{path}: {len(data) - pos} trailing bytes")
        return cls(
            index["width"], index["height"], index["fps"], index["bitrate"], tuple(video), tuple(audio)
        )


MAX_PAYLOAD = 1100
"""VP8 payload size limit (descriptor included): ~233 packets/s at 1.5 Mbit/s with Opus, as a browser."""


def packetize(bitstream: bytes, max_payload: int = MAX_PAYLOAD) -> tuple[bytes, ...]:
    """RFC 7741 payloads with aiortc's descriptor layout: X=1, I=1, M=1 (picture id set when sent)."""
    chunk = max_payload - 4
    payloads = []
    for pos in range(0, len(bitstream), chunk):
        start = 0x10 if pos == 0 else 0x00
        payloads.append(bytes((0x80 | start, 0x80, 0x80, 0x00)) + bitstream[pos : pos + chunk])
    return tuple(payloads)


def generate(
    seconds: float = 6.0,
    *,
    width: int = 640,
    height: int = 480,
    bitrate: int = 1_500_000,
    keyframe_interval: float = 2.0,
    opus_bitrate: int = 48_000,
) -> Media:
    """Encode `seconds` of a moving pattern with aiortc's encoders (libvpx realtime CBR, libopus).

    The first `keyframe_interval` seconds are encoded and dropped: libvpx's rate control starts with
    an oversized keyframe. The loop then starts on a keyframe, so replaying it wraps cleanly.
    """
    import av
    import numpy as np
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.codecs.vpx import Vp8Encoder

    rng = np.random.default_rng(7)
    gop = max(1, round(keyframe_interval * FPS))
    frames = round(seconds * FPS) + gop
    # A detailed texture that scrolls and a few moving blocks: VP8 cannot predict it for free.
    texture = rng.integers(0, 256, size=(height * 2, width * 2), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, axis=1)) // 2).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    encoder = Vp8Encoder()
    encoder.target_bitrate = bitrate
    video: list[VideoFrame] = []
    for i in range(frames):
        dx, dy = (7 * i) % width, (3 * i) % height
        luma = texture[dy : dy + height, dx : dx + width].astype(np.int32) // 2
        luma += (64 + 63 * np.sin((xx + 9 * i) / 23.0) * np.cos((yy - 5 * i) / 31.0)).astype(np.int32)
        for k in range(4):
            x0 = int((width - 80) * (0.5 + 0.5 * np.sin(i / (11.0 + 4 * k) + k)))
            y0 = int((height - 80) * (0.5 + 0.5 * np.cos(i / (13.0 + 3 * k) + 2 * k)))
            luma[y0 : y0 + 80, x0 : x0 + 80] = (40 * k + 5 * i) % 256
        yuv = np.empty((height * 3 // 2, width), dtype=np.uint8)
        yuv[:height] = np.clip(luma, 0, 255)
        chroma = ((xx[::2, ::2] + 4 * i) % 256).astype(np.uint8)
        yuv[height : height + height // 4] = chroma.reshape(height // 4, width)
        yuv[height + height // 4 :] = np.flipud(chroma).reshape(height // 4, width)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = i * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=(i % gop == 0))
        if i < gop:
            continue
        bitstream = b"".join(p[4:] for p in payloads)  # aiortc's descriptor is 4 bytes
        # The VP8 payload header's P bit is 0 on a keyframe (RFC 7741 section 4.3).
        video.append(VideoFrame(keyframe=not bitstream[0] & 0x01, payloads=packetize(bitstream)))

    opus = OpusEncoder()
    opus.codec.bit_rate = opus_bitrate
    audio: list[bytes] = []
    samples = 960
    t = np.arange(samples) / 48000.0
    n = 0
    while len(audio) < round(seconds / AUDIO_PTIME):
        tone = 220.0 * (1 + (n // 25) % 4)
        wave = 0.3 * np.sin(2 * np.pi * tone * (t + n * samples / 48000.0))
        wave += 0.05 * rng.standard_normal(samples)
        pcm = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
        stereo = np.repeat(pcm, 2).reshape(1, -1)
        aframe = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        aframe.sample_rate = 48000
        aframe.pts = n * samples
        aframe.time_base = fractions.Fraction(1, 48000)
        packets, _ = opus.encode(aframe)
        audio.extend(packets)
        n += 1
    audio = audio[: round(seconds / AUDIO_PTIME)]
    return Media(width, height, FPS, bitrate, tuple(video), tuple(audio))


def load_or_generate(path: Path | None = None, *, regenerate: bool = False) -> Media:
    path = path or DEFAULT_PATH
    if path.exists() and not regenerate:
        return Media.load(path)
    media = generate()
    media.dump(path)
    return media
