"""FFmpeg's WHIP muxer (inside PyAV) as a publisher, run as a script in a process of its own.

`python -m tests.peers.ffmpeg_whip URL [--authorization TOKEN] ...` publishes libx264 video of
tests/peers/aiortc_peers.counter_image frames and a libopus 440 Hz tone in real time to the WHIP URL
(the server's own `POST /whip/APP/STREAM`). It runs in its own process because PyAV's `mux` holds the
GIL while the muxer blocks on HTTP, ICE and DTLS, which would freeze a trio loop in the same process
(the server). It reports JSON lines on stdout and stops when its stdin closes (the muxer then sends
its DELETE).
"""

from __future__ import annotations

import argparse
import fractions
import json
import logging
import sys
import threading
import time
from typing import Any

# ---- the publisher (a separate process) ----

WIDTH, HEIGHT, FPS = 320, 240, 25
AUDIO_RATE, AUDIO_FRAME = 48000, 960  # FFmpeg's WHIP muxer takes stereo Opus at 48 kHz only
TONE_HZ = 440.0


def _emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def publish(
    url: str, options: dict[str, str], audio: bool, stop: threading.Event, max_seconds: float
) -> None:
    """Encode and mux counter frames (and tone) in real time until `stop` or `max_seconds`."""
    import av
    import numpy as np

    from .aiortc_peers import counter_image

    started = time.monotonic()
    with av.open(url, "w", format="whip", options=options) as container:
        video = container.add_stream(
            "libx264", rate=FPS,
            # Baseline without B-frames (the muxer refuses B-frames), zerolatency, a keyframe every
            # second so a player that joins late soon has a picture.
            options={
                "preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "g": str(FPS), "bf": "0"
            },
        )
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = container.add_stream("libopus", rate=AUDIO_RATE, layout="stereo") if audio else None
        if sound is not None:
            sound.bit_rate = 64000
        frames = samples = 0
        live_at = 0.0
        while not stop.is_set():
            picture = av.VideoFrame.from_ndarray(counter_image(frames % 256), format="rgb24")
            picture.pts, picture.time_base = frames, fractions.Fraction(1, FPS)
            for packet in video.encode(picture):
                container.mux(packet)  # the first one blocks for WHIP POST, ICE and DTLS
                if not live_at:
                    live_at = time.monotonic()
                    _emit(event="live", setup_ms=round((live_at - started) * 1000))
            frames += 1
            while sound is not None and samples < frames * AUDIO_RATE // FPS:
                t = (np.arange(AUDIO_FRAME) + samples) / AUDIO_RATE
                wave = (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype(np.int16)
                stereo = np.repeat(wave, 2).reshape(1, -1)  # packed s16: left, right, left, ...
                chunk = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
                chunk.sample_rate, chunk.pts = AUDIO_RATE, samples
                chunk.time_base = fractions.Fraction(1, AUDIO_RATE)
                samples += AUDIO_FRAME
                for packet in sound.encode(chunk):
                    container.mux(packet)
            if time.monotonic() - (live_at or started) > max_seconds:
                break
            wait = (live_at or time.monotonic()) + frames / FPS - time.monotonic()
            if wait > 0:
                stop.wait(wait)
        for packet in video.encode(None):
            container.mux(packet)
        _emit(event="stopping", video_frames=frames, audio_samples=samples)
    _emit(event="closed")  # the container is closed: the muxer has sent its DELETE


def main() -> None:
    parser = argparse.ArgumentParser(description="Publish counter video (and a tone) over WHIP with FFmpeg.")
    parser.add_argument("url")
    parser.add_argument("--cert-file", help="DTLS certificate (PEM); default: FFmpeg generates one")
    parser.add_argument("--key-file", help="its private key (PEM)")
    parser.add_argument("--authorization", help="the bearer token (the muxer's `authorization` option)")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--verbose", action="store_true", help="FFmpeg's verbose log on stderr")
    args = parser.parse_args()
    import av

    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    # With logging on, PyAV puts FFmpeg's last error line in its exceptions ("DTLS session failed").
    av.logging.set_level(av.logging.VERBOSE if args.verbose else av.logging.ERROR)
    options = {"handshake_timeout": "5000"}
    if args.cert_file:
        options |= {"cert_file": args.cert_file, "key_file": args.key_file}
    if args.authorization:
        options["authorization"] = args.authorization
    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        publish(args.url, options, not args.no_audio, stop, args.max_seconds)
    except Exception as exc:
        _emit(event="error", error=f"{type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
