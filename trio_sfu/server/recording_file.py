"""One recording's file: coded frames muxed as they came, with PyAV (FFmpeg's muxers), no transcoding.

WebM for VP8 and Opus, Matroska for H264 (with or without Opus). Runs in a worker thread (muxing and
disk writes block), fed in batches by the recording's task. The video stream's picture size is read
by decoding the first keyframe (a muxer wants it; nothing else is decoded).
"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import attrs
import av

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
# RFC 7845 section 5.1: the identification header Matroska keeps as the Opus track's CodecPrivate (two
# channels, as WebRTC's opus/48000/2; 312 samples of pre-skip, libopus's usual).
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, AUDIO_CLOCK, 0, 0)


def container_for(video_codec: str | None) -> tuple[str, str]:
    """(FFmpeg format, file suffix) for a stream whose video is `video_codec` (None: audio only)."""
    if video_codec is not None and video_codec.lower() == "h264":
        return "matroska", ".mkv"
    return "webm", ".webm"


@attrs.define
class Sample:
    """A frame ready to write: which stream, when (in its clock's units from the recording's start)."""

    kind: str  # "audio" or "video"
    pts: int
    data: bytes
    keyframe: bool


@attrs.define
class FileSummary:
    path: str
    seconds: float
    video_frames: int
    audio_frames: int
    bytes: int


class RecordingFile:
    def __init__(self, path: Path, *, video_codec: str | None, audio: bool) -> None:
        self.path = path
        self.video_codec = video_codec.lower() if video_codec else None
        self.audio = audio
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self.video_frames = 0
        self.audio_frames = 0
        self._last_pts = {"audio": -1, "video": -1}
        self._end = {"audio": 0.0, "video": 0.0}

    def write(self, samples: list[Sample]) -> None:
        """Mux `samples` (the file opens at the first video keyframe, or audio frame if no video)."""
        if self._container is None:
            if self.video_codec is None:
                first = samples[0] if samples else None
            else:
                first = next((s for s in samples if s.kind == "video" and s.keyframe), None)
            if first is None:
                return
            self._open(first)
        for sample in samples:
            self._mux(sample)

    def _open(self, first: Sample) -> None:
        fmt, _ = container_for(self.video_codec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), "w", format=fmt)
        if self.video_codec is not None:
            width, height = _picture_size(self.video_codec, first.data)
            video = container.add_stream(_encoder_name(self.video_codec), rate=30)
            assert isinstance(video, av.VideoStream)
            video.width, video.height = width, height
            video.time_base = Fraction(1, VIDEO_CLOCK)
            self._video = video
        if self.audio:
            audio = container.add_stream("libopus", rate=AUDIO_CLOCK)
            assert isinstance(audio, av.AudioStream)
            audio.time_base = Fraction(1, AUDIO_CLOCK)
            audio.codec_context.extradata = OPUS_HEAD
            self._audio = audio
        self._container = container

    def _mux(self, sample: Sample) -> None:
        assert self._container is not None
        stream = self._video if sample.kind == "video" else self._audio
        if stream is None:
            return
        if sample.pts < 0:
            return  # before the recording's start
        pts = max(sample.pts, self._last_pts[sample.kind] + 1)  # strictly increasing, as muxers want
        self._last_pts[sample.kind] = pts
        clock = VIDEO_CLOCK if sample.kind == "video" else AUDIO_CLOCK
        packet = av.Packet(sample.data)
        packet.stream = stream
        packet.pts = packet.dts = pts
        packet.time_base = Fraction(1, clock)
        packet.is_keyframe = sample.keyframe
        self._container.mux(packet)
        self._end[sample.kind] = pts / clock
        if sample.kind == "video":
            self.video_frames += 1
        else:
            self.audio_frames += 1

    def close(self) -> FileSummary:
        if self._container is not None:
            self._container.close()
            self._container = None
        size = self.path.stat().st_size if self.path.exists() else 0
        seconds = max(self._end.values())
        return FileSummary(str(self.path), seconds, self.video_frames, self.audio_frames, size)


def _encoder_name(codec: str) -> str:
    """An FFmpeg codec with that id (only its id and parameters matter: nothing is encoded)."""
    return {"vp8": "libvpx", "h264": "h264"}[codec]


def _picture_size(codec: str, keyframe: bytes) -> tuple[int, int]:
    decoder = av.VideoCodecContext.create(codec, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    try:
        for frame in decoder.decode(av.Packet(keyframe)):
            return frame.width, frame.height
        for frame in decoder.decode(None):
            return frame.width, frame.height
    except av.FFmpegError:
        pass
    return 640, 480  # undecodable: a size the muxer accepts; players read the real one from the stream
