"""FFmpeg's WHIP muxer (FFmpeg 8 inside PyAV) as a real publisher; aiortc plays and decodes what it sent.

FFmpeg is a WebRTC client nobody here wrote, with quirks of its own (DESIGN.md, "Facts about real
peers"): it offers `a=setup:passive`, so the server must be the DTLS client; H264 PT 106 with RTX 105
and `ssrc-group:FID`, Opus 111 (stereo 48 kHz only), `a=ssrc` lines and no candidates; it sends STUN to
the first host candidate of the answer. It publishes to the server's own WHIP endpoint (`POST
/whip/live/cam` on the HTTP port, with a bearer token: the server runs with a token secret here), in
its own process (`python -m tests.peers.ffmpeg_whip`): PyAV's `mux` holds the GIL while the muxer blocks
on the handshake.

PyAV's FFmpeg is built with GnuTLS, whose self-generated DTLS certificate is ECDSA on P-224. The
server's OpenSSL (4.0, from `cryptography`) has no P-224 group at all, so it refuses that certificate
("DTLS error: wrong curve", alert 47 illegal_parameter) and FFmpeg gives up ("DTLS session failed").
FFmpeg publishes only with a P-256 certificate passed as the muxer's `cert_file`/`key_file`.

The fixture tests/fixtures/sdp/ffmpeg_whip_offer.sdp is an offer the muxer really POSTed (PyAV 18.1).
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from trio_sfu.media.negotiation import TransportParameters, answer_publish
from trio_sfu.server.server import Server
from trio_sfu.signaling.auth import mint_token
from trio_sfu.transport.certificate import Certificate
from trio_sfu.wire.sdp import parse_offer

from ..conftest import Client, fixture_sdp, outside_private_namespace
from ..peers.aiortc_peers import TONE_HZ, AsyncioThread, Player
from ..peers.browser_peers import (
    READ_BARS,
    Browser,
    counter_from_levels,
    frames,
    inbound_video,
    packets,
    serving,
    wait_until,
)
from ..peers.ffmpeg_whip import FPS, HEIGHT, WIDTH
from ..support.aiortc_sessions import wait_for

ROOT = Path(__file__).parents[2]


@functools.cache
def skip_reason() -> str | None:
    """Why the FFmpeg publisher cannot run here, or None."""
    try:
        import av
    except ImportError:
        return "PyAV is missing: pip install 'av>=18' (its wheels carry FFmpeg 8 with the WHIP muxer)"
    if "whip" not in av.formats_available:
        return f"PyAV {av.__version__}'s FFmpeg has no WHIP muxer: pip install 'av>=18'"
    missing = [codec for codec in ("libx264", "libopus") if codec not in av.codecs_available]
    if missing:
        return f"PyAV's FFmpeg lacks {', '.join(missing)}: install PyAV's PyPI wheel (pip install 'av>=18')"
    outside = outside_private_namespace("FFmpeg", "tests/e2e/test_ffmpeg_whip.py")
    if outside is not None:
        return outside
    return None


needs_ffmpeg = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# --------------------------------------------------------------------------- the captured offer


def test_captured_offer_is_answered_active() -> None:
    """The muxer's offer says a=setup:passive: the answer must make the server the DTLS client, and
    accept both sections with the muxer's payload types (Opus 111, H264 106 with RTX 105)."""
    offer = parse_offer(fixture_sdp("ffmpeg_whip_offer"))
    assert {section.setup for section in offer.media} == {"passive"}
    local = TransportParameters(
        "sfu1", "sfupasswordsfupassword", ":".join(["AB"] * 32), (("127.0.0.1", 40000),)
    )
    negotiated = answer_publish(offer, local)
    lines = negotiated.answer.splitlines()
    setups = [line for line in lines if line.startswith("a=setup:")]
    assert setups and set(setups) == {"a=setup:active"}, setups
    assert "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host" in lines
    tracks = {track.kind: track for track in negotiated.tracks}
    assert (tracks["audio"].codec.name.lower(), tracks["audio"].codec.payload_type) == ("opus", 111)
    video = tracks["video"]
    assert (video.codec.name, video.codec.payload_type, video.rtx_payload_type) == ("H264", 106, 105)
    assert video.ssrc is not None and video.rtx_ssrc == video.ssrc + 1


# --------------------------------------------------------------------------- end to end


def p256_certificate(folder: Path) -> tuple[Path, Path]:
    """The server's own kind of certificate (ECDSA P-256) as PEM files for the muxer's options."""
    certificate = Certificate.generate("ffmpeg-whip-test")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.certificate_pem)
    key_file.write_bytes(certificate.private_key_pem)
    return cert_file, key_file


class FfmpegPublisher:
    """The WHIP muxer in a child process (tests/peers/ffmpeg_whip.py as a script); JSON lines on stdout."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    async def next_event(self, timeout: float = 15) -> dict[str, Any]:
        assert self.process.stdout is not None
        with trio.fail_after(timeout):
            while b"\n" not in self._buffer:
                data = await self.process.stdout.receive_some(4096)
                if not data:
                    code = self.process.returncode
                    raise EOFError(f"the publisher ended (exit {code}); events {self.events}")
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def stop(self) -> list[dict[str, Any]]:
        """Close its stdin: it flushes, closes the container (the muxer sends DELETE) and exits."""
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        try:
            while True:
                await self.next_event()
        except EOFError:
            pass
        with trio.fail_after(10):
            await self.process.wait()
        return self.events


@asynccontextmanager
async def ffmpeg_publisher(
    url: str, *args: str, stderr: Any = subprocess.DEVNULL
) -> AsyncIterator[FfmpegPublisher]:
    command = [sys.executable, "-m", "tests.peers.ffmpeg_whip", url, *args]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process, command, cwd=ROOT, check=False,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
            )
        )
        try:
            yield FfmpegPublisher(process)
        finally:
            if process.returncode is None:
                process.kill()


SECRET = "a-token-secret-for-the-ffmpeg-whip-tests-0123456789"


def whip_url(server: Server, stream: str = "cam") -> str:
    host, port = server.http_addresses[0]
    return f"http://{host}:{port}/whip/live/{stream}"


def publish_token() -> str:
    return mint_token(SECRET, "live", uid="ffmpeg", publish=True, now=time.time())


def play_token() -> str:
    return mint_token(SECRET, "live", play=True, now=time.time())


@needs_ffmpeg
async def test_ffmpeg_publishes_aiortc_plays(aio: AsyncioThread, tmp_path: Path) -> None:
    """FFmpeg publishes H264 + Opus over WHIP with the server as DTLS client; an aiortc player decodes
    320x240 pictures whose counters FFmpeg encoded, in order, and the 440 Hz tone; DELETE closes."""
    cert_file, key_file = p256_certificate(tmp_path)
    async with serving(token_secret=SECRET) as (server, _):
        args = ("--cert-file", str(cert_file), "--key-file", str(key_file),
                "--authorization", publish_token())
        async with ffmpeg_publisher(whip_url(server), *args) as publisher:
            live = await publisher.next_event()
            assert live["event"] == "live", live
            (resource,) = server.http.whip.resources.values()
            assert "a=setup:active" in resource.session.negotiated.answer.splitlines()
            player = Player(video_codec="video/H264")
            host, port = server.signal_addresses[0]
            async with open_websocket_url(f"ws://{host}:{port}/ws") as ws, trio.open_nursery() as nursery:
                client = Client(ws, uid="aiortc-player")
                nursery.start_soon(client.pump)
                assert (await client.connect(play_token()))["err"] == 0
                player.offered_at = time.monotonic()
                reply = await client.offer("cam", await aio.call(player.offer), publish=False)
                assert reply["err"] == 0, reply
                await aio.call(player.answer, reply["data"]["sdp"])
                try:
                    await wait_for(
                        lambda: len(player.frames) >= 2 * FPS and len(player.audio_samples) >= 100, 15,
                        f"{2 * FPS} video and 100 audio frames decoded by aiortc",
                    )
                    frequency = player.dominant_frequency()
                    events = await publisher.stop()
                    with trio.fail_after(5):
                        closed = await client.next_server_request()
                finally:
                    await aio.call(player.close)
                nursery.cancel_scope.cancel()

    assert player.codecs == {"video": "video/H264", "audio": "audio/opus"}
    assert {(width, height) for _, _, width, height in player.frames} == {(WIDTH, HEIGHT)}
    read = [counter for _, counter, _, _ in player.frames]
    counters = [counter for counter in read if counter is not None]
    assert counters == read, read  # every decoded picture shows readable bars
    stopping = next(event for event in events if event["event"] == "stopping")
    assert set(counters) <= set(range(min(stopping["video_frames"], 256))), counters
    assert counters == sorted(counters) and len(set(counters)) >= 2 * FPS * 0.9, counters
    assert abs(frequency - TONE_HZ) < 10, frequency
    # The muxer closed (DTLS close_notify, then its DELETE): the resource is gone, the player is told.
    assert events[-1]["event"] == "closed", events
    assert not server.http.whip.resources
    assert closed["method"] == "stream.close", closed
    # FFmpeg closes DTLS before its DELETE; either way its players hear that it closed on purpose.
    assert closed["data"]["reason"] == "publisher_closed", closed
    first = player.frames[0][0] - player.offered_at
    print(f"\nFFmpeg WHIP set-up {live['setup_ms']} ms; aiortc first frame {first * 1000:.0f} ms after its "
          f"offer; counters {counters[0]}..{counters[-1]}, tone {frequency:.0f} Hz; player told "
          f"{closed['data']['reason']}; keyframe requests {server.totals.keyframe_requests}")


@needs_ffmpeg
async def test_ffmpeg_default_certificate_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """FFmpeg's own certificate (GnuTLS: ECDSA P-224) fails the handshake: the server's OpenSSL has no
    P-224 group. The session ends as transport_failed, the muxer reports the DTLS failure, and the
    server's log line tells the operator what FFmpeg needs instead."""
    async with serving(token_secret=SECRET) as (server, _):
        url = whip_url(server)
        async with ffmpeg_publisher(url, "--no-audio", "--authorization", publish_token()) as publisher:
            event = await publisher.next_event()
            with trio.fail_after(10):
                await publisher.process.wait()
        assert event["event"] == "error" and "DTLS session failed" in event["error"], event
        await wait_for(lambda: not server.http.whip.resources, 15, "the failed WHIP session to end")
        assert server.router.lookup(("live", "cam")) is None
    ended = [r.getMessage() for r in caplog.records if "event=transport_ended" in r.getMessage()]
    assert ended and "wrong curve" in ended[0] and "P-256" in ended[0] and "cert_file" in ended[0], ended


# --------------------------------------------------------------------------- a Chromium player

# Chromium's recvonly video offer (made and dropped in the page): which H264 it would accept, if any.
RECEIVE_OFFER = """async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  const offer = await pc.createOffer();
  pc.close();
  return offer.sdp;
}"""

def h264_lines(sdp: str) -> list[str]:
    """An offer's H264 rtpmap lines and the fmtp lines of those payload types."""
    types = [line.split()[0].split(":")[1] for line in sdp.splitlines()
             if line.startswith("a=rtpmap:") and " H264/" in line]
    return [line for line in sdp.splitlines()
            if any(line.startswith((f"a=rtpmap:{pt} ", f"a=fmtp:{pt} ")) for pt in types)]


@needs_ffmpeg
async def test_ffmpeg_publishes_chromium_plays(chromium: Browser, tmp_path: Path) -> None:
    """FFmpeg publishes H264 + Opus over WHIP; the demo page's Play (seed protocol, with a token) in
    Chromium decodes 320x240 H264 whose pictures show FFmpeg's advancing counters, and receives Opus;
    FFmpeg's DELETE ends the player's session with publisher_closed. Skipped when Chromium's offer has
    no H264 (a Chromium built without it cannot decode the stream)."""
    cert_file, key_file = p256_certificate(tmp_path)
    async with serving(token_secret=SECRET) as (server, url):
        page = await chromium.open(await chromium.new_context(), url)
        offered = h264_lines(await page.js(RECEIVE_OFFER))
        print("\nChromium's recvonly offer, H264 lines:", *offered or ["(none)"], sep="\n  ")
        if not offered:
            pytest.skip("this Chromium offers no H264 to receive (built without it): it cannot play FFmpeg")
        args = ("--cert-file", str(cert_file), "--key-file", str(key_file),
                "--authorization", publish_token())
        async with ffmpeg_publisher(whip_url(server), *args) as publisher:
            live = await publisher.next_event()
            assert live["event"] == "live", live
            await page.fill(app="live", stream="cam", token=play_token())
            clicked = time.monotonic()
            play = await page.start("play")
            await page.wait_state(play, "live")
            sent_h264 = h264_lines(await page.offer(play))
            assert sent_h264, "the page's offer has no H264 although a test offer had"
            answered = h264_lines(await page.session(play, "s.sdp.answer"))
            stats = await wait_until(
                lambda: page.stats(play), lambda s: frames(s) >= 2 * FPS and packets(s, "audio") >= 50, 15,
                f"{2 * FPS} H264 frames decoded and 50 audio packets received by Chromium",
            )
            decoded_after = time.monotonic() - clicked
            inbound = await inbound_video(page, play)
            assert inbound is not None
            assert (stats["video"]["codec"], stats["audio"]["codec"]) == ("video/H264", "audio/opus"), stats
            assert (inbound["frameWidth"], inbound["frameHeight"]) == (WIDTH, HEIGHT), inbound
            # Audio keeps arriving, and the picture is FFmpeg's: its counter bars, read off the
            # <video> through a canvas, are readable and advance.
            audio_before = packets(stats, "audio")
            readings = []
            for _ in range(8):
                readings.append(await page.js(READ_BARS, play))
                await trio.sleep(0.25)
            later = await page.stats(play)
            assert packets(later, "audio") >= audio_before + 50, (stats, later)
            assert frames(later) > frames(stats), (stats, later)
            timing = await page.session(play, "s.timing")

            events = await publisher.stop()
            await page.wait_state(play, "ended", timeout=10)
            reason = await page.session(play, "s.endReason")
            shown = await wait_until(
                lambda: page.panel_text(play), lambda text: "ended: publisher_closed" in text, 5,
                "the panel's status line to show the close reason",
            )

    assert events[-1]["event"] == "closed", events
    assert reason == "publisher_closed", (reason, shown)
    assert not server.http.whip.resources
    sizes = {(reading["width"], reading["height"]) for reading in readings}
    assert sizes == {(WIDTH, HEIGHT)}, sizes
    read = [counter_from_levels(reading["levels"]) for reading in readings]
    counters = [counter for counter in read if counter is not None]
    levels = [[round(level) for level in reading["levels"]] for reading in readings]
    assert counters == read, list(zip(read, levels, strict=True))
    stopping = next(event for event in events if event["event"] == "stopping")
    assert all(c < min(stopping["video_frames"], 256) for c in counters), (counters, stopping)
    assert len(set(counters)) >= 4, counters
    # Forward only (modulo the counter's 256): readings ~0.3 s apart, each step under 2 s of frames.
    assert all((b - a) % 256 < 2 * FPS for a, b in itertools.pairwise(counters)), counters
    errors = [line for line in page.console if line.startswith("pageerror")]
    assert not errors, errors
    first_frame = timing["firstFrame"] - timing["offer"] if "firstFrame" in timing else None
    print(f"server's answer to Chromium, H264 lines: {answered}")
    print(f"FFmpeg WHIP set-up {live['setup_ms']} ms; "
          f"first frame {first_frame} ms after the player's offer; {frames(stats)} frames "
          f"({inbound['frameWidth']}x{inbound['frameHeight']} {stats['video']['codec']}) decoded "
          f"{decoded_after:.1f} s after Play, {frames(later)} later; "
          f"audio packets {packets(later, 'audio')}; "
          f"counters read off the picture {counters}; player ended: {reason}")
