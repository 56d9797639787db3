"""Recording end to end: real publishers, the server writes the file, PyAV opens and decodes it.

The issue's bar, for a Chromium VP8 + Opus publish recorded through the operator API and for FFmpeg's
H264 + Opus WHIP publish recorded by a config rule: a 10 s recording opens with PyAV, lasts 10 +- 0.5 s,
at least 90 % of the video frames the publisher sent in that time decode, the first frame is a
keyframe, and audio and video start within 100 ms of each other. Also: the `recording_finished`
webhook (one, signed, with the file's figures), and the operator API's refusals (an aiortc publisher).

Chromium and FFmpeg tests run only in a private network namespace (scripts/test) and are skipped without
those peers, like tests/e2e/test_browser.py and tests/e2e/test_ffmpeg_whip.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest
import trio

from trio_sfu.server.server import Server
from trio_sfu.server.webhooks import sign

from ..peers.aiortc_peers import AsyncioThread, Publisher, read_counter
from ..peers.browser_peers import Browser, DemoPage, aiortc_session, serving, wait_until
from ..peers.browser_peers import skip_reason as browser_skip_reason
from ..peers.ffmpeg_whip import FPS
from ..server.test_http import fetch
from ..server.test_webhooks import Receiver
from .test_ffmpeg_whip import SECRET as TOKEN_SECRET
from .test_ffmpeg_whip import ffmpeg_publisher, p256_certificate, publish_token, whip_url
from .test_ffmpeg_whip import skip_reason as ffmpeg_skip_reason

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ADMIN = "an-admin-token-for-the-recording-tests"
WEBHOOK_SECRET = "a-webhook-secret-for-the-recording-tests"
RECORD_SECONDS = 10.0
DURATION_TOLERANCE = 0.5  # seconds
MIN_DECODED = 0.9  # of the video frames sent while recording
MAX_AV_OFFSET = 0.1  # seconds between the first audio and the first video in the file


# --------------------------------------------------------------------------- the operator API, webhooks


async def operator(server: Server, method: str, path: str, token: str | None = ADMIN) -> tuple[int, Any]:
    """One operator API request over the server's real HTTP listener: (status, JSON body)."""
    host, port = server.http_addresses[0]
    headers = [("content-length", "0")]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}"))
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            reply = await fetch(stream, method, path, headers)
    return reply.status, reply.json()


def recording_path(app: str = "live", stream: str = "cam") -> str:
    return f"/admin/streams/{app}/{stream}/recording"


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Receiver]:
    """tests/server/test_webhooks.py's receiver (keeps every POST with its signature) on loopback."""
    receiver = Receiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        yield receiver
        nursery.cancel_scope.cancel()


def webhook_settings(receiver: Receiver) -> dict[str, Any]:
    return {"webhook_urls": (f"http://127.0.0.1:{receiver.port}/hooks",), "webhook_secret": WEBHOOK_SECRET}


def finished_events(receiver: Receiver) -> list[tuple[dict[str, Any], str]]:
    return [(post, signature) for post, signature in receiver.posts if post["event"] == "recording_finished"]


async def wait_finished(server: Server, receiver: Receiver, stream: str = "cam") -> dict[str, Any]:
    """Wait until the recording of `stream` is no longer running (GET /admin/recordings) and its
    `recording_finished` webhook came; check it came once, signed. Returns the event."""

    async def running() -> list[Any]:
        status, recordings = await operator(server, "GET", "/admin/recordings")
        assert status == 200, recordings
        return [r for r in recordings if r["stream"] == stream]

    await wait_until(running, lambda found: not found, 15, "the recording to finish (GET /admin/recordings)")

    async def finished() -> list[tuple[dict[str, Any], str]]:
        return finished_events(receiver)

    await wait_until(finished, bool, 10, "the recording_finished webhook")
    await trio.sleep(0.5)  # a second event would come by now
    events = finished_events(receiver)
    assert len(events) == 1, events
    event, signature = events[0]
    # The receiver keeps the parsed body; the server's body is json.dumps of the same object.
    assert signature == sign(WEBHOOK_SECRET, json.dumps(event).encode()), (event, signature)
    return event


# --------------------------------------------------------------------------- what the file holds


@dataclass
class Recorded:
    """What PyAV finds in a recording: container, streams, demuxed packets, decoded frames."""

    path: Path
    format: str
    duration: float  # the container's, seconds
    video_codec: str
    audio_codec: str | None
    size: tuple[int, int] = (0, 0)
    video_packets: int = 0
    video_frames: int = 0  # decoded
    video_errors: int = 0  # packets the decoder refused
    first_packet_keyframe: bool = False
    first_frame_keyframe: bool = False
    video_start: float | None = None  # the first video packet's time, seconds
    first_video_frame: float | None = None  # the first decoded picture's time
    audio_packets: int = 0
    audio_frames: int = 0
    audio_start: float | None = None
    first_audio_frame: float | None = None
    counters: list[int | None] = field(default_factory=list)  # the FFmpeg publisher's frame counters

    @property
    def av_offset(self) -> float:
        """Audio's first packet minus video's (seconds); inf without one of them."""
        if self.video_start is None or self.audio_start is None:
            return float("inf")
        return self.audio_start - self.video_start

    @property
    def decoded_av_offset(self) -> float:
        if self.first_video_frame is None or self.first_audio_frame is None:
            return float("inf")
        return self.first_audio_frame - self.first_video_frame


def analyse(path: Path, *, read_counters: bool = False) -> Recorded:
    """Open `path` with PyAV, demux and decode every packet (blocking: run it in a thread)."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        recorded = Recorded(
            path=path,
            format=container.format.name,
            duration=(container.duration or 0) / av.time_base,
            video_codec=video.codec_context.name,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )
        streams = [video] if audio is None else [video, audio]
        for packet in container.demux(streams):
            is_video = packet.stream.type == "video"
            if packet.pts is not None and packet.size:
                assert packet.time_base is not None
                at = float(packet.pts * packet.time_base)
                if is_video:
                    if recorded.video_packets == 0:
                        recorded.first_packet_keyframe = packet.is_keyframe
                        recorded.video_start = at
                    recorded.video_packets += 1
                else:
                    if recorded.audio_packets == 0:
                        recorded.audio_start = at
                    recorded.audio_packets += 1
            try:
                frames = packet.decode()  # an empty packet at the end flushes the decoder
            except av.FFmpegError:
                if is_video:
                    recorded.video_errors += 1
                continue
            for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    if recorded.video_frames == 0:
                        recorded.first_frame_keyframe = bool(frame.key_frame)
                        recorded.first_video_frame = frame.time
                        recorded.size = (frame.width, frame.height)
                    recorded.video_frames += 1
                    if read_counters:
                        recorded.counters.append(read_counter(frame.to_ndarray(format="rgb24")))
                elif isinstance(frame, av.AudioFrame):
                    if recorded.audio_frames == 0:
                        recorded.first_audio_frame = frame.time
                    recorded.audio_frames += 1
    return recorded


def check(recorded: Recorded, *, sent: int, label: str) -> None:
    """The issue's bar for a 10 s recording; prints the figures first (they are the point on failure)."""
    print(
        f"\n{label}: {recorded.path.name} ({recorded.format}, {recorded.video_codec} "
        f"{recorded.size[0]}x{recorded.size[1]} + {recorded.audio_codec}, "
        f"{recorded.path.stat().st_size} bytes)\n"
        f"  duration {recorded.duration:.3f} s (bar {RECORD_SECONDS} +- {DURATION_TOLERANCE})\n"
        f"  video: {sent} frames sent while recording, {recorded.video_packets} in the file, "
        f"{recorded.video_frames} decoded ({recorded.video_frames / max(sent, 1):.1%} of sent), "
        f"{recorded.video_errors} refused by the decoder; first packet keyframe "
        f"{recorded.first_packet_keyframe}, first picture keyframe {recorded.first_frame_keyframe}\n"
        f"  audio: {recorded.audio_packets} packets, {recorded.audio_frames} frames decoded\n"
        f"  starts: video {recorded.video_start} s, audio {recorded.audio_start} s -> A/V offset "
        f"{recorded.av_offset * 1000:+.1f} ms (first decoded: video {recorded.first_video_frame} s, audio "
        f"{recorded.first_audio_frame} s -> {recorded.decoded_av_offset * 1000:+.1f} ms)"
    )
    assert abs(recorded.duration - RECORD_SECONDS) <= DURATION_TOLERANCE, recorded
    assert recorded.video_frames >= MIN_DECODED * sent, (recorded.video_frames, sent)
    assert recorded.first_packet_keyframe and recorded.first_frame_keyframe, recorded
    assert recorded.audio_frames > 0, recorded
    assert abs(recorded.av_offset) <= MAX_AV_OFFSET, recorded
    assert abs(recorded.decoded_av_offset) <= MAX_AV_OFFSET, recorded


def check_event(event: dict[str, Any], recorded: Recorded, *, started_by: str) -> None:
    """The webhook's figures are the file's."""
    assert event["app"] == "live" and event["stream"] == "cam", event
    assert event["started_by"] == started_by, event
    assert Path(event["path"]) == recorded.path, (event, recorded.path)
    assert event["video_frames"] == recorded.video_packets, (event, recorded)
    assert event["audio_frames"] == recorded.audio_packets, (event, recorded)
    assert event["bytes"] == recorded.path.stat().st_size, event
    assert abs(event["seconds"] - recorded.duration) <= DURATION_TOLERANCE, (event, recorded.duration)


def recording_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=recording" in r.getMessage()]


# --------------------------------------------------------------------------- Chromium, operator API


needs_chromium = pytest.mark.skipif(browser_skip_reason() is not None, reason=browser_skip_reason() or "")


async def frames_sent(page: DemoPage, index: int) -> int:
    """The publisher's video outbound-rtp framesSent (framesEncoded where the browser has none)."""
    raw = await page.raw_stats(index)
    outbound = [s for s in raw.values() if s.get("type") == "outbound-rtp" and s.get("kind") == "video"]
    return sum(int(s.get("framesSent", s.get("framesEncoded")) or 0) for s in outbound)


@needs_chromium
async def test_operator_records_chromium_vp8_opus(
    chromium: Browser, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_sfu.server.recording")
    async with (
        webhook_receiver() as receiver,
        serving(admin_token=ADMIN, recording_dir=tmp_path, **webhook_settings(receiver)) as (server, url),
    ):
        page = await chromium.open(await chromium.new_context(), url)
        await page.fill(codec="video/VP8")
        pub = await page.start("publish")
        await page.wait_state(pub, "live")
        await wait_until(lambda: frames_sent(page, pub), lambda n: n >= 40, 20, "40 frames sent")
        # Wait for both tracks' sender reports (Chromium sends audio's every ~5 s), so the recording
        # starts at once rather than after its START_WAIT; go on without them after 10 s.
        publication = server.router.lookup(("live", "cam"))
        assert publication is not None
        with trio.move_on_after(10):
            while not all(p.clock is not None for p in publication.producers):
                await trio.sleep(0.1)
        reports = {p.kind: p.clock is not None for p in publication.producers}

        before = await frames_sent(page, pub)
        status, started = await operator(server, "POST", recording_path())
        started_at = trio.current_time()
        assert status == 201, started
        path = Path(started["path"])
        assert path.parent == tmp_path and path.suffix == ".webm", started
        assert started["started_by"] == "operator"
        status, running = await operator(server, "GET", "/admin/recordings")
        assert status == 200 and [r["path"] for r in running] == [str(path)], running

        await trio.sleep_until(started_at + RECORD_SECONDS)
        status, stopped = await operator(server, "DELETE", recording_path())
        # Read after DELETE's reply: the frames counted include all those recorded (and a frame or
        # two sent while DELETE was answered: the 90 % bar errs against the server).
        after = await frames_sent(page, pub)
        assert status == 200 and stopped["path"] == str(path), stopped
        # A DELETE's reply has the file's figures only if the file was written by then; the recording
        # is over when GET /admin/recordings no longer lists it (and its webhook came): wait for that.
        figures_in_reply = "video_frames" in stopped
        if figures_in_reply:
            assert path.stat().st_size == stopped["bytes"], stopped  # the file was finished
        event = await wait_finished(server, receiver)
        recorded = await trio.to_thread.run_sync(analyse, path)
        print(f"\nsender reports before the start: {reports}; DELETE's reply had the file's figures: "
              f"{figures_in_reply}; {RECORD_SECONDS} s between POST and DELETE; frames sent {before} -> "
              f"{after}\nserver log: {recording_log(caplog)}\nwebhook: {event}")
        check(recorded, sent=after - before, label="Chromium VP8 + Opus (operator API)")
        codecs = (recorded.format, recorded.video_codec, recorded.audio_codec)
        assert codecs == ("matroska,webm", "vp8", "opus"), codecs
        check_event(event, recorded, started_by="operator")
        if figures_in_reply:
            assert stopped["video_frames"] == event["video_frames"], (stopped, event)
        # The publisher goes on after the recording.
        assert await page.state(pub) == "live"
        errors = [line for line in page.console if line.startswith(("error", "pageerror"))]
        assert not errors, errors


# --------------------------------------------------------------------------- FFmpeg WHIP, a record rule


needs_ffmpeg = pytest.mark.skipif(ffmpeg_skip_reason() is not None, reason=ffmpeg_skip_reason() or "")


@needs_ffmpeg
async def test_rule_records_ffmpeg_h264_opus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_sfu.server.recording")
    folder = tmp_path / "recordings"
    cert_file, key_file = p256_certificate(tmp_path)
    settings: dict[str, Any] = {
        "token_secret": TOKEN_SECRET, "admin_token": ADMIN, "record": (f"live/*={folder}",)
    }
    async with (
        webhook_receiver() as receiver,
        serving(**settings, **webhook_settings(receiver)) as (server, _),
    ):
        args = ("--cert-file", str(cert_file), "--key-file", str(key_file),
                "--authorization", publish_token(), "--max-seconds", "60")
        async with ffmpeg_publisher(whip_url(server), *args) as publisher:
            live = await publisher.next_event()
            assert live["event"] == "live", live
            # FFmpeg says `live` once its first frame (a keyframe) is sent, then sends in real time:
            # ten seconds from now it has sent ten seconds of frames, all recorded from the publish on.
            live_at = trio.current_time()
            status, running = await operator(server, "GET", "/admin/recordings")
            assert status == 200 and len(running) == 1 and running[0]["started_by"] == "rule", running
            path = Path(running[0]["path"])
            assert path.parent == folder and path.suffix == ".mkv", running
            with trio.fail_after(RECORD_SECONDS):  # with the recording's first batch of frames
                while not path.exists():
                    await trio.sleep(0.02)
            appeared = trio.current_time()
            await trio.sleep_until(live_at + RECORD_SECONDS)
            events = await publisher.stop()  # the muxer's DELETE ends the stream, and the recording
        stopping = next(e for e in events if e["event"] == "stopping")
        event = await wait_finished(server, receiver)
        assert server.router.lookup(("live", "cam")) is None
    recorded = await trio.to_thread.run_sync(lambda: analyse(path, read_counters=True))
    # Fair frame count: FFmpeg numbers its frames (the counter in the picture) and reports how many it
    # sent in all. A recording may start after the first frame (it starts at a keyframe, and FFmpeg
    # sends one a second; the server's keyframe request is not what makes it), so the frames sent while
    # recording are those from the first recorded one (its counter: the recording starts within the
    # first 256 frames, asserted below, so it has not wrapped) to the last one FFmpeg sent. The
    # duration bar still holds the recording to the ten seconds published.
    first = recorded.counters[0] if recorded.counters else None
    assert first is not None, recorded.counters[:5]
    sent = stopping["video_frames"] - first
    unreadable = sum(1 for c in recorded.counters if c is None)
    print(f"\nFFmpeg live after {live['setup_ms']} ms; file created {appeared - live_at:.2f} s after live; "
          f"FFmpeg sent {stopping['video_frames']} frames in all, the file starts at its frame {first} "
          f"({first / FPS:.2f} s in); {unreadable} decoded pictures without a readable counter\n"
          f"server log: {recording_log(caplog)}\nwebhook: {event}")
    assert first < 256 and appeared - live_at < RECORD_SECONDS
    check(recorded, sent=sent, label="FFmpeg H264 + Opus (record rule)")
    # Exactly: FFmpeg sends in real time, so the file lasts as long as the frames it sent from the
    # first recorded one on (the muxer's duration is the last frame's time plus its own).
    print(f"  FFmpeg's frames {first}..{stopping['video_frames'] - 1} span {sent / FPS:.3f} s")
    assert abs(recorded.duration - sent / FPS) <= 2 / FPS, (recorded.duration, sent)
    codecs = (recorded.format, recorded.video_codec, recorded.audio_codec)
    assert codecs == ("matroska,webm", "h264", "opus"), codecs
    check_event(event, recorded, started_by="rule")
    assert unreadable == 0, recorded.counters
    # The pictures are FFmpeg's, in order: each counter one more than the last, but for frames lost.
    steps = [(b - a) % 256 for a, b in zip(recorded.counters, recorded.counters[1:], strict=False)
             if a is not None and b is not None]
    assert all(0 < step < 32 for step in steps), steps


# --------------------------------------------------------------------------- refusals


async def test_operator_recording_refusals(aio: AsyncioThread, tmp_path: Path) -> None:
    """404 for a stream not published and for a DELETE with nothing recording, 409 for a second
    start, 401 without the admin token; an aiortc publisher is the stream."""
    async with serving(admin_token=ADMIN, recording_dir=tmp_path) as (server, _):
        for app, stream in (("live", "nothing"), ("other", "cam")):
            status, reply = await operator(server, "POST", recording_path(app, stream))
            assert status == 404 and "not being published" in reply["error"], reply
        status, reply = await operator(server, "DELETE", recording_path())
        assert status == 404, reply

        publisher = Publisher()
        async with aiortc_session(server, aio, publisher, "aiortc-pub"):
            publication = server.router.lookup(("live", "cam"))
            assert publication is not None

            async def received() -> int:
                return sum(p.packets for p in publication.producers)

            await wait_until(received, lambda n: n > 50, 15, "media from the aiortc publisher")
            for token in (None, "wrong"):
                for method in ("POST", "DELETE"):
                    status, reply = await operator(server, method, recording_path(), token=token)
                    assert status == 401 and "admin_token" in reply["error"], (method, token, reply)
                status, reply = await operator(server, "GET", "/admin/recordings", token=token)
                assert status == 401, reply
            assert not server.recordings.active  # refused requests started nothing

            status, started = await operator(server, "POST", recording_path())
            assert status == 201 and started["started_by"] == "operator", started
            status, reply = await operator(server, "POST", recording_path())
            assert status == 409 and started["path"] in reply["error"], reply
            status, running = await operator(server, "GET", "/admin/recordings")
            assert status == 200 and [r["path"] for r in running] == [started["path"]], running
            status, streams = await operator(server, "GET", "/admin/streams")
            assert status == 200 and [s["recording"] for s in streams] == [started["path"]], streams
            status, reply = await operator(server, "GET", recording_path())
            assert status == 405, reply

            await trio.sleep(2)
            status, stopped = await operator(server, "DELETE", recording_path())
            assert status == 200 and stopped["path"] == started["path"], stopped
            await wait_until(lambda: operator(server, "GET", "/admin/recordings"),
                             lambda reply: reply == (200, []), 10, "the recording to finish")
            status, reply = await operator(server, "DELETE", recording_path())
            assert status == 404 and "not being recorded" in reply["error"], reply
            assert Path(started["path"]).stat().st_size > 0
            status, streams = await operator(server, "GET", "/admin/streams")
            assert status == 200 and [s["recording"] for s in streams] == [None], streams
            assert server.router.lookup(("live", "cam")) is publication  # the publisher goes on
