"""A minimal WHIP endpoint (RFC 9725) in front of the server's signaling WebSocket, for tests.

The server speaks only its own WebSocket protocol, yet WHIP clients (FFmpeg's muxer) POST an SDP offer
over HTTP. This front translates: `POST /whip/APP/STREAM` with `Content-Type: application/sdp` opens
a WebSocket to the server, sends `stream.connect` and `stream.offer` (publish), and answers
`201 Created` with the answer SDP and a `Location`; `DELETE` on that location sends `stream.close` and
drops the WebSocket. The WebSocket stays open in between because the server ends a WebSocket's sessions
when it drops. HTTP/1.1 by h11 over trio, one request per connection (FFmpeg reads the answer to EOF).
Every offer and answer is kept, so tests can look at what the client sent.

Run as a script (`python -m tests.peers.whip_front URL ...`), this module is the publisher: FFmpeg's WHIP
muxer inside PyAV, sending libx264 video of tests/aiortc_peers.counter_image frames and a libopus
440 Hz tone in real time. It runs in its own process because PyAV's `mux` holds the GIL while the
muxer blocks on HTTP, ICE and DTLS, which would freeze a trio loop in the same process (this front,
the server). It reports JSON lines on stdout and stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import fractions
import http
import itertools
import json
import logging
import sys
import threading
import time
from typing import Any

import attrs
import h11
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from ..conftest import Client

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
SDP = "application/sdp"


@attrs.define
class WhipSession:
    """One published resource: the signaling client that holds the session open until DELETE."""

    app: str
    stream: str
    offer: str
    answer: str = ""
    client: Client | None = None
    deleted: trio.Event = attrs.Factory(trio.Event)
    closed_reply: dict[str, Any] | None = None
    server_requests: list[dict[str, Any]] = attrs.Factory(list)  # e.g. stream.close transport_failed


class WhipFront:
    """Serves WHIP on 127.0.0.1 and forwards each publish to the server at `signal_url` (ws://...)."""

    def __init__(self, signal_url: str, token: str = "") -> None:
        self.signal_url = signal_url
        self.token = token
        self.sessions: dict[str, WhipSession] = {}
        self.offers: list[str] = []
        self.errors: list[str] = []
        self.port = 0
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port; started() with it. Cancel to stop (drops every session)."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    def url(self, app: str = "live", stream: str = "cam") -> str:
        return f"http://127.0.0.1:{self.port}/whip/{app}/{stream}"

    # ---- HTTP ----

    async def _handle(self, stream: trio.abc.Stream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            with trio.fail_after(10):
                request, body = await _read_request(connection, stream)
            status, headers, payload = await self._respond(request, body)
            reason = http.HTTPStatus(status).phrase.encode()
            headers = [*headers, ("content-length", str(len(payload))), ("connection", "close")]
            data = connection.send(h11.Response(status_code=status, headers=headers, reason=reason))
            data += connection.send(h11.Data(data=payload)) + connection.send(h11.EndOfMessage())
            await stream.send_all(data)
        except (h11.ProtocolError, trio.BrokenResourceError, trio.TooSlowError, EOFError) as exc:
            self.errors.append(f"http: {exc!r}")
        finally:
            await trio.aclose_forcefully(stream)

    async def _respond(self, request: h11.Request, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        parts = path.strip("/").split("/")
        if request.method == b"POST" and len(parts) == 3 and parts[0] == "whip":
            content_type = dict(request.headers).get(b"content-type", b"").decode().split(";")[0].strip()
            if content_type.lower() != SDP:
                return 415, [("content-type", "text/plain")], b"expected application/sdp\n"
            return await self._publish(parts[1], parts[2], body.decode("utf-8", "replace"))
        if request.method == b"DELETE" and len(parts) == 3 and parts[:2] == ["whip", "resource"]:
            session = self.sessions.get(parts[2])
            if session is None or session.deleted.is_set():
                return 404, [("content-type", "text/plain")], b"no such resource\n"
            session.deleted.set()
            return 200, [], b""
        return 404, [("content-type", "text/plain")], f"not found: {request.method!r} {path}\n".encode()

    # ---- signaling ----

    async def _publish(self, app: str, stream: str, offer: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """Hand the offer to the server over a WebSocket kept open by a task of the front's nursery."""
        assert self._nursery is not None
        self.offers.append(offer)
        session = WhipSession(app, stream, offer)
        result = await self._nursery.start(self._hold, session)
        if result["err"] != 0:
            status = result["err"] if 400 <= result["err"] < 600 else 500
            text = f"{result['err']} {result['err_msg']}\n"
            self.errors.append(f"stream.offer: {result}")
            return status, [("content-type", "text/plain")], text.encode()
        resource = str(next(self._ids))
        self.sessions[resource] = session
        session.answer = result["data"]["sdp"]
        headers = [("content-type", SDP), ("location", f"/whip/resource/{resource}")]
        return 201, headers, session.answer.encode()

    async def _hold(self, session: WhipSession, *, task_status: trio.TaskStatus[dict[str, Any]]) -> None:
        """Connect and offer; report the ack; keep the WebSocket until DELETE, then stream.close."""
        async with open_websocket_url(self.signal_url) as ws, trio.open_nursery() as nursery:
            client = Client(ws, app=session.app, uid="whip")
            session.client = client
            nursery.start_soon(client.pump)
            connected = await client.connect(self.token)
            if connected["err"] != 0:
                task_status.started(connected)
                return
            reply = await client.offer(session.stream, session.offer, publish=True)
            task_status.started(reply)
            if reply["err"] != 0:
                return
            nursery.start_soon(self._acknowledge, session, client)
            await session.deleted.wait()
            try:
                session.closed_reply = await client.request("stream.close", session.stream)
            except (ConnectionClosed, trio.EndOfChannel) as exc:
                self.errors.append(f"stream.close: {exc!r}")
            nursery.cancel_scope.cancel()

    async def _acknowledge(self, session: WhipSession, client: Client) -> None:
        """Ack what the server asks (stream.close when the transport fails), as a client must."""
        async for request in client.server_requests:
            session.server_requests.append(request)
            with contextlib.suppress(ConnectionClosed):
                await client.ack(request)


async def _read_request(connection: h11.Connection, stream: trio.abc.Stream) -> tuple[h11.Request, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(16384)))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("body too large", error_status_hint=413)
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return request, bytes(body)
        else:
            raise EOFError(f"connection ended before a request: {event!r}")


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
