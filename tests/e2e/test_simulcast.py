"""Simulcast end to end (issue 12): a browser publishes three layers, an unconstrained Chromium player
decodes the top one, and keeps it (on loopback nothing should move it down).

The demo page's `simulcast=1` asks the camera for 1280x720 and adds the video track with three
encodings, Chromium's order low to high: rid q (1/4 size, 150 kbit/s), h (1/2, 500 kbit/s), f (full,
1.5 Mbit/s). Its `s.stats()` summary lists a publisher's video outbound-rtp stats as `layers`.

Chromium's fake camera runs at 20 fps unless told otherwise, so the player's ">= 20 fps" would have no
margin: this module's Chromium runs it at 30 fps (`FakeCameraBrowser`). Firefox's fake camera gives
1280x720 at 30 fps when asked. Skipped outside a private network namespace (run with scripts/test) or
without Chromium; the Firefox test also without Firefox.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from ..peers.aiortc_peers import AsyncioThread
from ..peers.browser_peers import (
    Browser,
    DemoPage,
    DemoPageBase,
    FakeCameraBrowser,
    frames,
    require_browser,
    sdp_lines,
    serving,
    skip_reason,
)
from ..peers.firefox_peers import Firefox, FirefoxProcess

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

RIDS = ("q", "h", "f")  # as the page offers them: 1/4, 1/2 and full size
LAYERS_WITHIN = 20.0  # s from pressing publish until all three layers are being encoded
# Firefox turns its top layer on late: 5-19 s after the others when idle, later on a loaded machine
# (seen in CI beside other browser tests: f had 7 frames at 20 s). Its own ramp, not the server's.
FIREFOX_LAYERS_WITHIN = 40.0
TOP_WITHIN = 20.0  # s from seeing the three layers until the player decodes the top one
TOP_WIDTH = 1200  # the top layer is 1280 wide; the others are 640 and 320
MIN_FPS = 20.0
# Once the player shows the top layer it must keep it: its frame rate (from its frames-decoded count) and
# picture size are checked over HOLD_WINDOWS windows of FPS_WINDOW s. That outlasts the start, when a
# server has no estimate from the player yet (Chromium's first REMB comes some 5 s after it connects).
FPS_WINDOW = 4.0
HOLD_WINDOWS = 3
# What the server needs to see of a simulcast offer: rids, the simulcast line, and the header extensions
# that carry the rid (and mid) in the RTP packets.
OFFER_LINES = ("a=rid:", "a=simulcast:", "a=extmap:", "a=extmap-allow-mixed", "a=ssrc-group:", "a=mid:")


@pytest.fixture(scope="module")
def chromium(browser_aio: AsyncioThread) -> Iterator[Browser]:
    """This module's Chromium: as conftest's, but its fake camera runs at 30 fps."""
    require_browser()
    browser = FakeCameraBrowser(browser_aio, fps=30)
    browser.start()
    yield browser
    browser.stop()


async def chromium_page(chromium: Browser, url: str) -> DemoPage:
    """A demo page in a fresh Chromium context (like a separate machine)."""
    return await chromium.open(await chromium.new_context(), url)


def simulcast_url(url: str) -> str:
    return f"{url}?simulcast=1"


async def live(page: DemoPageBase, button: str) -> int:
    """Press publish or play and wait until the session is live; returns its index."""
    index = await page.start(button)
    await page.wait_state(index, "live")
    return index


def describe_layers(layers: list[dict[str, Any]]) -> str:
    """One line per layer: rid, size, frames encoded, fps, bytes, active, quality limitation."""
    if not layers:
        return "  (no video outbound-rtp stats)"
    lines = []
    for layer in layers:
        size = f"{layer['frameWidth']}x{layer['frameHeight']}" if layer["frameWidth"] else "no size"
        lines.append(
            f"  rid {layer['rid']}: {size}, {layer['framesEncoded']} frames encoded, "
            f"{layer['framesPerSecond']} fps, {layer['bytesSent']} bytes, active {layer['active']}, "
            f"quality limitation {layer['qualityLimitationReason']}"
        )
    return "\n".join(lines)


def describe_player(stats: dict[str, Any]) -> str:
    video = stats.get("video")
    if not video:
        return "no video inbound-rtp stat"
    return (
        f"{video['width']}x{video['height']}, {video['frames']} frames decoded, "
        f"browser's fps {video['fps']}, codec {video['codec']}"
    )


def encoding(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    """The rids whose framesEncoded grew from `before` to `after`, with a size and not inactive."""
    counts = {layer["rid"]: layer["framesEncoded"] or 0 for layer in before}
    return [
        layer["rid"] for layer in after
        if layer["rid"] in counts and (layer["framesEncoded"] or 0) > counts[layer["rid"]]
        and layer["frameWidth"] and layer["active"] is not False
    ]


async def three_layers(page: DemoPageBase, index: int, deadline: float) -> tuple[bool, list[dict[str, Any]]]:
    """Sample the publisher's layers every second until each of q, h and f is being encoded, or the
    deadline (time.monotonic()) passes; whether they were, and the last sample."""
    previous = (await page.stats(index))["layers"]
    while True:
        await trio.sleep(1)
        layers = (await page.stats(index))["layers"]
        if set(RIDS) <= set(encoding(previous, layers)):
            return True, layers
        if time.monotonic() > deadline:
            return False, layers
        previous = layers


async def player_rate(page: DemoPageBase, index: int, seconds: float) -> tuple[float, dict[str, Any]]:
    """Frames decoded per second over `seconds` (from the frames-decoded count and the page's clock),
    and the last stats summary."""
    first = await page.stats(index)
    await trio.sleep(seconds)
    last = await page.stats(index)
    return (frames(last) - frames(first)) * 1000 / (last["time"] - first["time"]), last


async def check_three_layers_and_top_at_player(
    publisher: DemoPageBase,
    pub: int,
    pressed: float,
    player: DemoPageBase,
    play: int,
    who: str,
    layers_within: float = LAYERS_WITHIN,
) -> None:
    """The publisher encodes q, h and f within LAYERS_WITHIN s of `pressed`; the player then decodes
    the top layer (>= TOP_WIDTH wide) within TOP_WITHIN s and keeps it at >= MIN_FPS. Prints what both
    saw; fails saying it."""
    ok, layers = await three_layers(publisher, pub, pressed + layers_within)
    took = time.monotonic() - pressed
    print(f"{who} publisher's layers {took:.1f} s after publish:\n{describe_layers(layers)}")
    if not ok:
        seen = describe_player(await player.stats(play))
        raise AssertionError(
            f"{who} did not encode all of q, h, f within {layers_within:.0f} s of publishing; its layers:\n"
            f"{describe_layers(layers)}\nthe player decodes {seen}"
        )

    stats: dict[str, Any] = {}
    with trio.move_on_after(TOP_WITHIN):
        while True:
            stats = await player.stats(play)
            if stats["video"] and (stats["video"]["width"] or 0) >= TOP_WIDTH:
                break
            await trio.sleep(0.5)
    if not stats["video"] or (stats["video"]["width"] or 0) < TOP_WIDTH:
        layers = (await publisher.stats(pub))["layers"]
        raise AssertionError(
            f"the player did not get the top layer (>= {TOP_WIDTH} px wide) within {TOP_WITHIN:.0f} s: it "
            f"decodes {describe_player(stats)}; {who} publisher's layers:\n{describe_layers(layers)}"
        )

    got_top = time.monotonic() - pressed
    windows: list[tuple[float, int]] = []
    lines = []
    for i in range(HOLD_WINDOWS):
        fps, stats = await player_rate(player, play, FPS_WINDOW)
        windows.append((fps, stats["video"]["width"] or 0))
        lines.append(f"  {i * FPS_WINDOW:.0f}-{(i + 1) * FPS_WINDOW:.0f} s: {describe_player(stats)}; "
                     f"{fps:.1f} fps decoded")
    shown = "\n".join(lines)
    print(f"Chromium player, top layer {got_top:.1f} s after publish, then over {FPS_WINDOW:.0f} s "
          f"windows:\n{shown}")
    if not all(fps >= MIN_FPS and width >= TOP_WIDTH for fps, width in windows):
        layers = (await publisher.stats(pub))["layers"]
        raise AssertionError(
            f"the player did not keep the top layer at >= {MIN_FPS:.0f} fps (>= {TOP_WIDTH} px wide) for "
            f"{HOLD_WINDOWS * FPS_WINDOW:.0f} s once it had it; over {FPS_WINDOW:.0f} s windows it decoded:\n"
            f"{shown}\n{who} publisher's layers now:\n{describe_layers(layers)}"
        )


def check_offer(offer: str, who: str) -> None:
    """The page offered three rids and a=simulcast:send q;h;f in its video section (the page's part)."""
    video = offer[offer.index("m=video"):]
    lines = sdp_lines(video, *OFFER_LINES)
    print(f"\n{who}'s offer, video section:\n" + "\n".join(lines))
    for rid in RIDS:
        assert f"a=rid:{rid} send" in lines, lines
    assert "a=simulcast:send q;h;f" in lines, lines


def no_page_errors(*pages: DemoPageBase) -> None:
    errors = [line for page in pages for line in page.console if line.startswith(("error", "pageerror"))]
    assert not errors, errors


async def test_chromium_publishes_three_layers_and_a_player_decodes_the_top_one(chromium: Browser) -> None:
    """The page offers q, h, f (a=rid, a=simulcast:send) from a 1280x720 camera; within 20 s Chromium
    encodes all three; a Chromium player (another context, no preference) gets >= 1200 px wide within
    20 s more and keeps it at >= 20 fps for 12 s."""
    async with serving() as (_, url):
        a = await chromium_page(chromium, simulcast_url(url))
        b = await chromium_page(chromium, url)
        assert await a.js("document.querySelector('input[name=simulcast]').checked") is True
        pressed = time.monotonic()
        pub = await live(a, "publish")
        check_offer(await a.offer(pub), "Chromium")
        camera = await a.session(pub, "s.localStream.getVideoTracks()[0].getSettings()")
        assert (camera["width"], camera["height"]) == (1280, 720), camera
        answer = sdp_lines(await a.session(pub, "s.sdp.answer"), "a=rid:", "a=simulcast:")
        print("the server's answer:\n" + "\n".join(answer))
        play = await live(b, "play")
        await check_three_layers_and_top_at_player(a, pub, pressed, b, play, "Chromium")
        no_page_errors(a, b)


async def test_firefox_publishes_three_layers_and_a_chromium_player_decodes_the_top_one(
    firefox: Firefox, firefox_process: FirefoxProcess, chromium: Browser
) -> None:
    """As the Chromium test with Firefox publishing: the same page, the same encodings (Firefox takes
    them in the same order, low to high)."""
    async with serving(http=firefox_process.http) as (_, url):
        a = await firefox.open(simulcast_url(url))
        b = await chromium_page(chromium, url)
        pressed = time.monotonic()
        pub = await live(a, "publish")
        check_offer(await a.offer(pub), "Firefox")
        camera = await a.session(pub, "s.localStream.getVideoTracks()[0].getSettings()")
        assert (camera["width"], camera["height"]) == (1280, 720), camera
        answer = sdp_lines(await a.session(pub, "s.sdp.answer"), "a=rid:", "a=simulcast:")
        print("the server's answer:\n" + "\n".join(answer))
        play = await live(b, "play")
        await check_three_layers_and_top_at_player(
            a, pub, pressed, b, play, "Firefox", layers_within=FIREFOX_LAYERS_WITHIN
        )
        no_page_errors(a, b)
