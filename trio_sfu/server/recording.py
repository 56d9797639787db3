"""Recording a published stream to a file, without transcoding, off the packet path.

A recording taps its stream's producers: each packet is put on a bounded channel (full: dropped and
counted, never waited for), and the recording's own task reorders, asks the publisher for what was lost
(NACK), assembles whole frames (trio_sfu.media.depacketizer) and hands them in batches to a worker
thread that muxes them (trio_sfu.server.recording_file). So a slow disk costs the recording frames,
never the players.

The file starts at a video keyframe (asked for when the recording starts). Audio and video are placed
on one timeline by the publisher's sender reports (RTP timestamp -> its NTP clock), waited for up to
START_WAIT; a track without them is placed by arrival time. A simulcast track records its best layer
as of the start. Started by a config rule (`record`: an app/stream pattern and a directory) when a
stream is published, or by the operator API; stopped by the operator, or when the publisher goes.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from trio_sfu.media.depacketizer import RECORDABLE, Frame, FrameAssembler
from trio_sfu.media.simulcast import ranked
from trio_sfu.server.recording_file import (
    AUDIO_CLOCK,
    VIDEO_CLOCK,
    FileSummary,
    RecordingFile,
    Sample,
    container_for,
)
from trio_sfu.wire.rtp import RtpHeader

if TYPE_CHECKING:
    from trio_sfu.media.producer import Producer
    from trio_sfu.media.router import Publication

log = logging.getLogger(__name__)

StreamKey = tuple[str, str]
_Tapped = tuple[int, bytes, RtpHeader, float]  # which tap, the packet, its header, when it came
QUEUE_PACKETS = 4096  # packets waiting for a recording's task (~10 s of a 2.5 Mbit/s stream)
TICK = 0.05  # seconds between a recording's passes over its tracks (NACKs, frames out)
BATCH_SECONDS = 0.5  # frames are handed to the writer thread this often
START_WAIT = 2.0  # seconds to wait for every track's sender report before placing tracks by arrival
MAX_PENDING_SAMPLES = 3000  # frames waiting for the writer thread; beyond, dropped and counted
MAX_EARLY_FRAMES = 250  # audio frames (5 s) kept while the first video keyframe is awaited
MAX_HELD_FRAMES = 1000  # frames kept while sender reports are awaited (START_WAIT)
LAYER_CHOICE_AFTER = 1.0  # seconds of a simulcast track's packets before its best layer is chosen
STOP_TIMEOUT = 10.0  # seconds an operator's stop waits for the file to be written


class RecordingError(Exception):
    """A recording that cannot start or stop: the message says why (and what to do)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_rule(rule: str) -> tuple[str, Path]:
    """`app/stream-pattern=directory` (fnmatch patterns: `live/*`, `*/cam?`; checked by Config)."""
    pattern, _, directory = rule.partition("=")
    return pattern, Path(directory)


@attrs.define
class _Track:
    kind: str
    layers: list[Producer]  # a simulcast track's layers (else the one producer)
    clock_rate: int
    producer: Producer | None = None  # the one recorded (chosen when the recording is ready)
    assembler: FrameAssembler | None = None
    # The first frame written: its unwrapped RTP timestamp and its time on the common clock.
    anchor: tuple[int, float] | None = None


class Recording:
    """One stream being written to one file."""

    def __init__(self, publication: Publication, path: Path, *, started_by: str) -> None:
        self.key: StreamKey = publication.key
        self.path = path
        self.started_by = started_by
        self.started_at = time.time()
        self.tracks: list[_Track] = []
        for kind in ("video", "audio"):
            primary = next((p for p in publication.producers if p.kind == kind and p.primary), None)
            if primary is None:
                continue
            codec = primary.negotiated.codec.name.lower()
            if codec not in RECORDABLE:
                raise RecordingError(
                    422, f"cannot record {codec} {kind}: recordable codecs are {', '.join(RECORDABLE)}"
                )
            self.tracks.append(_Track(kind, list(primary.layers), primary.clock_rate))
        if not self.tracks:
            raise RecordingError(422, "the stream has no track to record")
        video = next((t for t in self.tracks if t.kind == "video"), None)
        self.video_codec = video.layers[0].negotiated.codec.name.lower() if video else None
        audio = any(t.kind == "audio" for t in self.tracks)
        self.file = RecordingFile(path, video_codec=self.video_codec, audio=audio)
        self._send, self._receive = trio.open_memory_channel[_Tapped](QUEUE_PACKETS)
        self._taps: list[tuple[Producer, _Tap]] = []
        self._stop = trio.Event()
        self.finished = trio.Event()  # the file is written (summary set)
        self.dropped_packets = 0  # the channel was full
        self.dropped_samples = 0  # the writer thread fell behind
        self.summary: FileSummary | None = None
        self.error: str | None = None  # why the recording ended early (a muxer or disk error)
        # Frames released but not yet placed: all of them until the tracks' sender reports are in,
        # then audio that came before the first video keyframe was placed.
        self._held: list[tuple[_Track, Producer, Frame, float]] = []
        self._early: list[tuple[_Track, Producer, Frame, float]] = []
        self._first_packet_at: float | None = None
        self._start: float | None = None  # the recording's zero on the common clock
        self._offset: float | None = None  # publisher NTP seconds minus our clock, from a sender report

    # ---- the packet path (synchronous, called by producers) ----

    def tap(self, index: int, packet: bytes, header: RtpHeader, now: float) -> None:
        try:
            self._send.send_nowait((index, packet, header, now))
        except trio.WouldBlock:
            self.dropped_packets += 1

    # ---- the recording's task ----

    def stop(self) -> None:
        self._stop.set()

    async def run(self, on_finished: Callable[[Recording], None]) -> None:
        """Record until stopped (or the publisher goes); a muxer or disk error ends this recording
        only (logged, and said in its summary)."""
        layer_of: list[tuple[_Track, Producer]] = []
        for track in self.tracks:
            for producer in track.layers:
                tap = _Tap(self, len(layer_of))
                producer.taps.append(tap)
                self._taps.append((producer, tap))
                layer_of.append((track, producer))
        pending: list[Sample] = []
        try:
            await self._record(layer_of, pending)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("event=recording_failed app=%s stream=%s error=%r", *self.key, self.error)
        finally:
            for producer, tap in self._taps:
                if tap in producer.taps:
                    producer.taps.remove(tap)
            with trio.CancelScope(shield=True):
                try:
                    pending += self._frames(trio.current_time(), flush=True)
                    await trio.to_thread.run_sync(self.file.write, pending)
                except Exception as exc:
                    self.error = self.error or f"{type(exc).__name__}: {exc}"
                self.summary = await trio.to_thread.run_sync(self.file.close)
            on_finished(self)
            self.finished.set()

    async def _record(self, layer_of: list[tuple[_Track, Producer]], pending: list[Sample]) -> None:
        next_batch = trio.current_time() + BATCH_SECONDS
        while not self._stop.is_set():
            with trio.move_on_after(TICK):
                async for item in self._receive:
                    self._take(layer_of, *item)
                    if self._stop.is_set():
                        break
            now = trio.current_time()
            pending += self._frames(now)
            if len(pending) > MAX_PENDING_SAMPLES:
                self.dropped_samples += len(pending) - MAX_PENDING_SAMPLES
                del pending[:-MAX_PENDING_SAMPLES]
            if now >= next_batch and pending:
                batch = pending[:]
                pending.clear()
                await trio.to_thread.run_sync(self.file.write, batch)
                next_batch = now + BATCH_SECONDS

    def _take(self, layer_of: list[tuple[_Track, Producer]], index: int, packet: bytes,
              header: RtpHeader, now: float) -> None:
        track, producer = layer_of[index]
        if self._first_packet_at is None:
            self._first_packet_at = now
        if track.producer is None:
            # A simulcast track's best layer is known once its layers have sent for a while.
            if len(track.layers) > 1 and now - self._first_packet_at < LAYER_CHOICE_AFTER:
                return
            self._choose(track, now)
        if producer is track.producer and track.assembler is not None:
            track.assembler.push(packet, header, now)

    def _ready(self, now: float) -> bool:
        """Every track that sends has a sender report (or START_WAIT has passed): frames can be placed
        on one timeline. Until then they are held."""
        if self._first_packet_at is None:
            return False
        clocks = all(t.producer.clock is not None for t in self.tracks if t.producer is not None)
        return clocks or now - self._first_packet_at >= START_WAIT

    def _choose(self, track: _Track, now: float) -> None:
        sending = [layer for layer in track.layers if now - layer.last_received_at < 1.0] or track.layers
        track.producer = ranked(sending)[-1]
        track.assembler = FrameAssembler(track.producer.negotiated.codec.name)
        if track.kind == "video":
            track.producer.request_keyframe(now)

    def _frames(self, now: float, *, flush: bool = False) -> list[Sample]:
        held = self._held
        for track in self.tracks:
            producer, assembler = track.producer, track.assembler
            if producer is None or assembler is None:
                continue
            missing = assembler.missing(now)
            if missing and not flush:
                producer.publisher.send_nack(producer, missing)
            held.extend((track, producer, frame, now) for frame in assembler.release(now, flush=flush))
        if len(held) > MAX_HELD_FRAMES:
            self.dropped_samples += len(held) - MAX_HELD_FRAMES
            del held[:-MAX_HELD_FRAMES]
        samples: list[Sample] = []
        if not (flush or self._ready(now)):
            return samples
        self._held = []
        for entry in held:
            self._add_sample(samples, *entry)
        if self._start is not None and self._early:
            early, self._early = self._early, []
            for entry in early:
                self._add_sample(samples, *entry)
        return samples

    def _add_sample(self, samples: list[Sample], track: _Track, producer: Producer, frame: Frame,
                    now: float) -> None:
        at = self._place(track, producer, frame.timestamp, now)
        if at is None:  # audio released before the first video keyframe: placed once it is
            if len(self._early) < MAX_EARLY_FRAMES:
                self._early.append((track, producer, frame, now))
            return
        clock = VIDEO_CLOCK if track.kind == "video" else AUDIO_CLOCK
        samples.append(Sample(track.kind, round(at * clock), frame.data, frame.keyframe))

    def _place(self, track: _Track, producer: Producer, timestamp: int, now: float) -> float | None:
        """Seconds from the recording's start of the frame at RTP `timestamp` (None: before it)."""
        if track.anchor is None:
            track.anchor = (timestamp, self._common_time(producer, timestamp, now))
        first_timestamp, first_at = track.anchor
        at = first_at + (timestamp - first_timestamp) / track.clock_rate
        if self._start is None:
            if track.kind != "video" and any(t.kind == "video" for t in self.tracks):
                return None  # the file starts at the first video keyframe (the assembler's first frame)
            self._start = at
        return at - self._start  # negative: before the start (the file skips it)

    def _common_time(self, producer: Producer, timestamp: int, now: float) -> float:
        """Where `timestamp` falls on the publisher's NTP clock (by its sender report), or, without
        one, its arrival (`now`) moved onto that clock if any track has a report."""
        clock = producer.clock
        if clock is not None:
            ntp = clock.ntp / 2**32
            delta = ((timestamp - clock.rtp + 2**31) % 2**32) - 2**31
            at = ntp + delta / producer.clock_rate
            if self._offset is None:
                self._offset = ntp - clock.received_at
            return at
        if self._offset is None:
            for track in self.tracks:
                for layer in track.layers:
                    if layer.clock is not None:
                        self._offset = layer.clock.ntp / 2**32 - layer.clock.received_at
        return now + (self._offset or 0.0)


class _Tap:
    """What a producer calls for each packet (and at its end): as cheap as a channel's send."""

    __slots__ = ("index", "recording")

    def __init__(self, recording: Recording, index: int) -> None:
        self.recording = recording
        self.index = index

    def receive(self, packet: bytes, header: RtpHeader, now: float) -> None:
        self.recording.tap(self.index, packet, header, now)

    def end(self) -> None:
        self.recording.stop()


class Recordings:
    """The server's recordings: started by rules at publish and by the operator; one per stream."""

    def __init__(self, rules: list[str], directory: Path, emit: Callable[..., None]) -> None:
        self.rules = [parse_rule(rule) for rule in rules]
        self.directory = directory
        self._emit = emit
        self.active: dict[StreamKey, Recording] = {}
        self.finished = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def directory_for(self, key: StreamKey) -> Path | None:
        name = f"{key[0]}/{key[1]}"
        matches = (directory for pattern, directory in self.rules if fnmatch.fnmatchcase(name, pattern))
        return next(matches, None)

    def on_publish(self, publication: Publication) -> None:
        """A stream is published: record it if a rule says so (a failure is logged, never raised)."""
        directory = self.directory_for(publication.key)
        if directory is None:
            return
        try:
            self.start(publication, directory, started_by="rule")
        except RecordingError as exc:
            log.warning("event=recording_refused app=%s stream=%s why=%r", *publication.key, exc.message)

    def start(self, publication: Publication, directory: Path | None = None, *, started_by: str) -> Recording:
        key = publication.key
        if key in self.active:
            raise RecordingError(409, f"stream {key[1]!r} is being recorded: {self.active[key].path}")
        if self._nursery is None:
            raise RecordingError(503, "recordings are not running (the server is starting or stopping)")
        video = next((p for p in publication.producers if p.kind == "video" and p.primary), None)
        _, suffix = container_for(video.negotiated.codec.name if video else None)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = (directory or self.directory) / f"{_safe(key[0])}-{_safe(key[1])}-{stamp}{suffix}"
        recording = Recording(publication, path, started_by=started_by)
        self.active[key] = recording
        self._nursery.start_soon(recording.run, self._finished)
        log.info("event=recording_started app=%s stream=%s path=%s by=%s", *key, path, started_by)
        return recording

    async def stop(self, key: StreamKey) -> Recording:
        """Stop recording `key`; returns once its file is written (or STOP_TIMEOUT passed)."""
        recording = self.active.get(key)
        if recording is None:
            raise RecordingError(404, f"stream {key[1]!r} is not being recorded")
        recording.stop()
        with trio.move_on_after(STOP_TIMEOUT):
            await recording.finished.wait()
        return recording

    def _finished(self, recording: Recording) -> None:
        self.active.pop(recording.key, None)
        self.finished += 1
        summary = recording.summary
        assert summary is not None
        log.info(
            "event=recording_finished app=%s stream=%s path=%s seconds=%.1f video_frames=%d audio_frames=%d "
            "bytes=%d dropped_packets=%d dropped_frames=%d",
            *recording.key, summary.path, summary.seconds, summary.video_frames, summary.audio_frames,
            summary.bytes, recording.dropped_packets, recording.dropped_samples,
        )  # fmt: skip
        self._emit(
            "recording_finished", app=recording.key[0], stream=recording.key[1], path=summary.path,
            seconds=round(summary.seconds, 3), video_frames=summary.video_frames,
            audio_frames=summary.audio_frames, bytes=summary.bytes, started_by=recording.started_by,
        )  # fmt: skip


def _safe(name: str) -> str:
    """A stream name as a file name: letters, digits, `-` and `_` kept, the rest `_`."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64] or "_"
