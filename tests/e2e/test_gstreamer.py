"""GStreamer's webrtcbin as a real peer: it publishes to and plays from the server, media decoded and checked.

webrtcbin is a third WebRTC stack nobody here wrote (libnice ICE, its own DTLS and RTP), with quirks of
its own (DESIGN.md, "Facts about real peers"): `max-bundle` offers later sections `bundle-only` with port
0, its default policy offers no BUNDLE group at all, it offers no header extensions, `a=rtcp-mux-only`
and H264 without `profile-level-id`. gi lives only in Debian's /usr/bin/python3, so the peer is
tests/peers/gst_peer.py run as a subprocess speaking JSON lines; the test side signals over a real WebSocket
to a real server on loopback. The publisher's video shows the frame counter bars of
tests/aiortc_peers.counter_image, so every player checks the pictures it decodes, not packet counts.

The fixtures tests/fixtures/sdp/gstreamer_offer_*.sdp are offers this script printed, e.g.
`/usr/bin/python3 tests/peers/gst_peer.py publish --bundle max-bundle` (inside a loopback-only namespace).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_sfu.server.server import Server

from ..conftest import outside_private_namespace
from ..peers.aiortc_peers import TONE_HZ, AsyncioThread, Player, Publisher
from ..peers.browser_peers import aiortc_session, serving, signaling
from ..support.aiortc_sessions import wait_for

GST_PYTHON = "/usr/bin/python3"
PEER_SCRIPT = Path(__file__).parents[1] / "peers" / "gst_peer.py"
PACKAGES = (
    "gstreamer1.0-plugins-bad gstreamer1.0-nice python3-gi gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 "
    "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav"
)
ELEMENTS = (
    "webrtcbin nicesrc appsrc appsink videoconvert vp8enc vp8dec x264enc avdec_h264 h264parse "
    "rtpvp8pay rtpvp8depay rtph264pay rtph264depay opusenc opusdec rtpopuspay rtpopusdepay audiotestsrc"
)
CHECK = f"""
import gi
for name, version in [("Gst", "1.0"), ("GstSdp", "1.0"), ("GstWebRTC", "1.0"), ("Nice", "0.1")]:
    gi.require_version(name, version)
from gi.repository import Gst, GstSdp, GstWebRTC, Nice
Gst.init(None)
missing = [e for e in "{ELEMENTS}".split() if Gst.ElementFactory.find(e) is None]
print(" ".join(missing))
"""


@functools.cache
def skip_reason() -> str | None:
    """Why webrtcbin tests cannot run here, or None."""
    if not os.path.exists(GST_PYTHON):
        return f"{GST_PYTHON} is missing (the peer runs with Debian's python3): apt install {PACKAGES}"
    check = subprocess.run([GST_PYTHON, "-c", CHECK], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        last = (check.stderr.strip().splitlines() or ["?"])[-1]
        return f"{GST_PYTHON} cannot import gi/Gst/GstWebRTC/Nice ({last}): apt install {PACKAGES}"
    if check.stdout.strip():
        return f"GStreamer elements missing ({check.stdout.strip()}): apt install {PACKAGES}"
    outside = outside_private_namespace("webrtcbin", "tests/e2e/test_gstreamer.py")
    if outside is not None:
        return outside
    return None


pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

Report = dict[str, Any]


class GstPeer:
    """The test's side of one tests/peers/gst_peer.py process: its offer, its events, its latest report."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.process: trio.Process | None = None
        self.offer_sdp: str | None = None
        self.events: list[Report] = []
        self.report: Report = {}
        self.exited = False

    async def _read(self, stdout: trio.abc.ReceiveStream) -> None:
        pending = b""
        async for chunk in stdout:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if message["type"] == "offer":
                    self.offer_sdp = message["sdp"]
                elif message["type"] == "report":
                    self.report = message
                else:
                    self.events.append(message)
        self.exited = True

    def errors(self) -> list[Report]:
        return [event for event in self.events if event["type"] == "error"]

    async def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Until `condition` holds; fails at once when the peer reports an error or exits."""
        with trio.move_on_after(timeout):
            while not condition():
                if self.errors() or self.exited:
                    problem = self.errors() or "it exited"
                    raise AssertionError(f"gst_peer.py {self.mode} failed waiting for {what}: {problem}")
                await trio.sleep(0.05)
            return
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last report {self.report}")

    async def offer(self) -> str:
        await self.wait(lambda: self.offer_sdp is not None, 15, "webrtcbin's offer")
        assert self.offer_sdp is not None
        return self.offer_sdp

    async def answer(self, sdp: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.send_all((json.dumps({"type": "answer", "sdp": sdp}) + "\n").encode())
        await self.wait(lambda: any(e.get("name") == "answer" for e in self.events), 5, "the answer applied")

    def state(self, name: str) -> str | None:
        values = [e["value"] for e in self.events if e["type"] == "state" and e["name"] == name]
        return values[-1] if values else None


@asynccontextmanager
async def gst_peer(mode: str, *options: str) -> AsyncIterator[GstPeer]:
    """tests/peers/gst_peer.py running; always killed at the end, its stderr and events printed on failure."""
    peer = GstPeer(mode)
    env = {**os.environ, "GST_DEBUG": os.environ.get("GST_DEBUG", "*:2")}
    command = [GST_PYTHON, str(PEER_SCRIPT), mode, *options]
    with tempfile.TemporaryFile() as stderr:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
        peer.process = process
        try:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None
                nursery.start_soon(peer._read, process.stdout)
                try:
                    yield peer
                finally:
                    nursery.cancel_scope.cancel()
        except BaseException:
            stderr.seek(0)
            text = stderr.read().decode(errors="replace")
            print(f"\n--- {' '.join(command[1:])}: stderr (last 6000 characters) ---\n{text[-6000:]}")
            print(f"--- its events ---\n{json.dumps(peer.events, indent=1)[-4000:]}")
            print(f"--- its last report ---\n{peer.report}\n--- its offer ---\n{peer.offer_sdp}")
            raise
        finally:
            process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()


@asynccontextmanager
async def gst_session(
    server: Server, mode: str, *options: str, uid: str, stream: str = "cam"
) -> AsyncIterator[GstPeer]:
    """A webrtcbin peer that has offered, been answered without error, and applied the answer."""
    async with gst_peer(mode, *options) as peer, signaling(server, uid) as client:
        reply = await client.offer(stream, await peer.offer(), mode == "publish")
        assert reply["err"] == 0, (reply["err"], reply["err_msg"])
        await peer.answer(reply["data"]["sdp"])
        yield peer


def assert_counters_advance(counters: list[int | None]) -> None:
    """Decoded pictures are the counter pattern, readable, in sending order and moving on."""
    assert counters, "no frames decoded"
    assert None not in counters, f"{counters.count(None)} of {len(counters)} frames unreadable: {counters}"
    steps = [(b - a) % 256 for a, b in itertools.pairwise(counters)]  # type: ignore[operator]
    assert all(0 < step < 64 for step in steps), counters
    assert len(set(counters)) > 10, counters


def assert_aiortc_player_decoded(player: Player, codec: str, audio: bool = True) -> None:
    """aiortc decoded the webrtcbin publisher's counter pictures at 320x240 (and its 440 Hz tone)."""
    assert_counters_advance([counter for _, counter, _, _ in player.frames])
    assert {(w, h) for _, _, w, h in player.frames} == {(320, 240)}
    assert player.codecs["video"] == codec
    if audio:
        assert abs(player.dominant_frequency() - TONE_HZ) < 15, player.dominant_frequency()


async def assert_gst_player_decodes(player: GstPeer, codec: str, audio: bool = True) -> None:
    """webrtcbin decoded 40 counter pictures at 320x240 (and a 440 Hz tone)."""

    def enough() -> bool:
        video, sound = player.report.get("video", {}), player.report.get("audio", {})
        return video.get("frames", 0) >= 40 and (not audio or sound.get("buffers", 0) >= 100)

    await player.wait(enough, 15, "40 video frames (and 2 s of audio) decoded by webrtcbin")
    video = player.report["video"]
    assert (video["codec"], video["width"], video["height"]) == (codec, 320, 240), video
    assert video["unreadable"] == 0, video
    assert_counters_advance(video["counters"])
    if audio:
        sound = player.report["audio"]
        assert abs(sound["frequency"] - TONE_HZ) < 15 and sound["rms"] > 1000, sound


async def test_webrtcbin_publishes_vp8_opus_max_bundle_aiortc_plays(aio: AsyncioThread) -> None:
    """max-bundle: the audio section is bundle-only with port 0, yet both kinds must be served."""
    options = ("--bundle", "max-bundle")
    async with serving() as (server, _), gst_session(server, "publish", *options, uid="gst") as publisher:
        offer = publisher.offer_sdp or ""
        assert "a=bundle-only" in offer and "\r\nm=audio 0 " in offer, offer
        player = Player()
        async with aiortc_session(server, aio, player, "aiortc-player"):
            await wait_for(
                lambda: len(player.frames) >= 40 and player.audio_frames >= 100, 15,
                "40 video and 100 audio frames decoded by aiortc",
            )
        assert_aiortc_player_decoded(player, "video/VP8")
        assert player.codecs["audio"] == "audio/opus"
        assert publisher.state("connection-state") == "connected"


@pytest.mark.parametrize("player_kind", ["aiortc", "webrtcbin"])
@pytest.mark.parametrize("offer_from", ["encoder", "preferences"])
async def test_webrtcbin_publishes_h264(aio: AsyncioThread, player_kind: str, offer_from: str) -> None:
    """x264enc constrained baseline. Offered once the encoder's caps are known, the fmtp carries
    profile-level-id 42c00d and sprop-parameter-sets; offered from codec preferences (before media),
    only packetization-mode=1 and no a=ssrc for video (the server learns the SSRC by payload type).
    Without profile-level-id RFC 6184 means baseline: a player offering constrained baseline alone is
    refused with the difference spelled out, one offering baseline plays."""
    publish = ("--bundle", "max-bundle", "--video", "h264")
    preferences = ("--codec-preferences",) if offer_from == "preferences" else ()
    async with (
        serving() as (server, _),
        gst_session(server, "publish", *publish, *preferences, uid="gst") as pub,
    ):
        assert ("profile-level-id" in (pub.offer_sdp or "")) == (offer_from == "encoder")
        if player_kind == "aiortc":
            player = Player(video_codec="video/H264")
            async with aiortc_session(server, aio, player, "aiortc-player"):
                await wait_for(
                    lambda: len(player.frames) >= 40 and player.audio_frames >= 100, 15,
                    "40 H264 frames and 100 audio frames decoded by aiortc",
                )
            assert_aiortc_player_decoded(player, "video/H264")
            return
        play = publish
        if offer_from == "preferences":
            async with gst_peer("play", *publish) as refused, signaling(server, "gst-cb") as client:
                reply = await client.offer("cam", await refused.offer(), False)
            assert reply["err"] == 415, reply
            difference = "H264 profile baseline (profile-level-id 42000a) vs constrained-baseline"
            assert difference in reply["err_msg"], reply["err_msg"]
            play = (*publish, "--profile-level-id", "42001f")
        async with gst_session(server, "play", *play, uid="gst-player") as gst_player:
            await assert_gst_player_decodes(gst_player, "H264")


async def test_webrtcbin_plays_aiortc_vp8_max_bundle(aio: AsyncioThread) -> None:
    publisher = Publisher()
    async with (
        serving() as (server, _),
        aiortc_session(server, aio, publisher, "aiortc-publisher"),
        gst_session(server, "play", "--bundle", "max-bundle", uid="gst-player") as player,
    ):
        await assert_gst_player_decodes(player, "VP8")
        sent = {counter for _, counter in publisher.video.sent}
        assert set(player.report["video"]["counters"]) <= sent
        assert player.state("connection-state") == "connected"


async def test_max_compat_webrtcbin_to_webrtcbin() -> None:
    """max-compat bundles with real ports on every section (and candidates only on the first)."""
    async with (
        serving() as (server, _),
        gst_session(server, "publish", "--bundle", "max-compat", uid="gst") as publisher,
        gst_session(server, "play", "--bundle", "max-compat", uid="gst-player") as player,
    ):
        offer = publisher.offer_sdp or ""
        assert "a=group:BUNDLE" in offer and "\r\nm=audio 9 " in offer and "bundle-only" not in offer
        await assert_gst_player_decodes(player, "VP8")


async def test_no_bundle_audio_and_video_refused_with_hint() -> None:
    """webrtcbin's default policy offers two transports; the server serves one and says what to set."""
    async with serving() as (server, _), gst_peer("publish", "--bundle", "none") as peer:
        offer = await peer.offer()
        assert "a=group:BUNDLE" not in offer and offer.count("\nm=") == 2
        async with signaling(server, "gst") as client:
            reply = await client.offer("cam", offer, True)
        assert reply["err"] == 415, reply
        assert "max-bundle" in reply["err_msg"], reply["err_msg"]


async def test_no_bundle_single_section_is_served() -> None:
    """A video-only offer needs no BUNDLE group: webrtcbin's default policy publishes and plays."""
    options = ("--bundle", "none", "--no-audio")
    async with (
        serving() as (server, _),
        gst_session(server, "publish", *options, uid="gst") as publisher,
        gst_session(server, "play", *options, uid="gst-player") as player,
    ):
        assert "a=group:BUNDLE" not in (publisher.offer_sdp or "")
        await assert_gst_player_decodes(player, "VP8", audio=False)
        assert player.report["audio"]["buffers"] == 0
