"""Headless Firefox ESR end to end: the demo page publishes and plays through the server, to and from
Firefox, Chromium and aiortc.

Firefox is Debian's (/usr/bin/firefox-esr) driven over WebDriver BiDi (tests/peers/firefox_peers.py), with
its fake camera (640x480 at 30 fps, but sent at 320x240 at first: Firefox steps the resolution up
as its bandwidth estimate grows) and microphone (a steady 1 kHz tone). One Firefox (and one Chromium) per
module; each test opens its pages in fresh user contexts. Media is checked where it is decoded: frame
counts and picture size from the receiving browser's stats, frames and audio spectrum from aiortc.
Skipped outside a private network namespace (run with scripts/test) or without Firefox; the tests that
also need Chromium skip without it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ..peers.aiortc_peers import AsyncioThread, Player
from ..peers.browser_peers import (
    Browser,
    DemoPageBase,
    aiortc_session,
    check_mute_unmute_close,
    frames,
    packets,
    serving,
    wait_until,
)
from ..peers.firefox_peers import Firefox, FirefoxPage, FirefoxProcess, skip_reason

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CAMERA = (640, 480)  # Firefox's fake camera, like Chromium's; but Firefox starts sending at 320x240


def page_url(url: str, bundle: str | None) -> str:
    return f"{url}?bundle={bundle}" if bundle else url


async def firefox_pages(
    firefox: Firefox, url: str, count: int, bundle: str | None = None
) -> list[FirefoxPage]:
    """`count` demo pages, each in its own user context (like separate machines)."""
    return [await firefox.open(page_url(url, bundle)) for _ in range(count)]


async def chromium_page(chromium: Browser, url: str) -> DemoPageBase:
    return await chromium.open(await chromium.new_context(), url)


async def live(page: DemoPageBase, button: str) -> int:
    """Press publish or play and wait until the session is live; returns its index."""
    index = await page.start(button)
    try:
        await page.wait_state(index, "live")
    except AssertionError as error:
        offer = await page.offer(index)
        raise AssertionError(f"{error}\noffer sent:\n{offer}") from None
    return index


async def decoded(page: DemoPageBase, index: int, count: int = 30, what: str = "") -> dict[str, Any]:
    """Wait for `count` decoded video frames and 50 audio packets at a player; its stats."""
    return dict(await wait_until(
        lambda: page.stats(index), lambda s: frames(s) >= count and packets(s, "audio") >= 50, 20,
        f"{count} decoded video frames and 50 audio packets {what}",
    ))


def size(stats: dict[str, Any]) -> tuple[int, int]:
    return stats["video"]["width"], stats["video"]["height"]


def scaled_camera(width: int, height: int) -> bool:
    """A picture size the fake camera's 640x480 can be sent at: 4:3, a quarter to full width.
    (Firefox starts at 320x240 and steps up as its bandwidth estimate grows.)"""
    return width * 3 == height * 4 and CAMERA[0] // 4 <= width <= CAMERA[0]


async def same_picture(publisher: DemoPageBase, pub: int, player: DemoPageBase, play: int) -> tuple[int, int]:
    """The size the player decodes is the size the publisher encodes; returns it. The encoder changes
    size now and then, and the decoder follows a few frames later: so sample the encoder on either
    side of the decoder, and again if a change fell in between."""

    async def sample() -> tuple[tuple[int, int], ...]:
        before = size(await publisher.stats(pub))
        return before, size(await player.stats(play)), size(await publisher.stats(pub))

    _, shown, _ = await wait_until(
        sample, lambda s: s[1] in (s[0], s[2]), 5, "the player's picture size to be the publisher's"
    )
    assert scaled_camera(*shown), shown
    return (shown[0], shown[1])


def no_page_errors(*pages: DemoPageBase) -> None:
    errors = [line for page in pages for line in page.console if line.startswith(("error", "pageerror"))]
    assert not errors, errors


def sections(sdp: str) -> list[str]:
    """The m= sections of an SDP, each as its text."""
    return re.split(r"\r?\n(?=m=)", sdp)[1:]


async def test_firefox_publishes_chromium_and_aiortc_play(
    firefox: Firefox, firefox_process: FirefoxProcess, chromium: Browser, aio: AsyncioThread
) -> None:
    async with serving(http=firefox_process.http) as (server, url):
        (a,) = await firefox_pages(firefox, url, 1)
        pub = await live(a, "publish")
        b = await chromium_page(chromium, url)
        play = await live(b, "play")
        stats = await decoded(b, play, what="at Chromium")
        await same_picture(a, pub, b, play)
        assert (stats["video"]["codec"], stats["audio"]["codec"]) == ("video/VP8", "audio/opus")

        player = Player()
        async with aiortc_session(server, aio, player, "aiortc-player"):

            async def counts() -> tuple[int, int]:
                return len(player.frames), player.audio_frames

            await wait_until(
                counts, lambda counts: counts[0] >= 30 and counts[1] >= 100, 20,
                "30 video and 100 audio frames decoded by aiortc",
            )
        sizes = {(w, h) for _, _, w, h in player.frames}
        assert all(scaled_camera(*s) for s in sizes), sizes
        assert player.codecs == {"video": "video/VP8", "audio": "audio/opus"}
        tone = player.dominant_frequency()
        print(f"\naiortc hears Firefox's fake microphone at {tone:.0f} Hz")
        assert abs(tone - 1000) < 20, tone
        assert await a.state(pub) == "live"
        no_page_errors(a, b)


async def test_chromium_publishes_firefox_plays(
    firefox: Firefox, firefox_process: FirefoxProcess, chromium: Browser
) -> None:
    async with serving(http=firefox_process.http) as (_, url):
        a = await chromium_page(chromium, url)
        pub = await live(a, "publish")
        (b,) = await firefox_pages(firefox, url, 1)
        play = await live(b, "play")
        stats = await decoded(b, play, what="at Firefox")
        await same_picture(a, pub, b, play)
        # Chromium's fake microphone beeps: Firefox hears sound between the beeps' silences.
        await wait_until(lambda: b.stats(play), lambda s: s["audio"]["audioEnergy"] > 0.01, 5, "sound")
        assert (stats["video"]["codec"], stats["audio"]["codec"]) == ("video/VP8", "audio/opus")
        no_page_errors(a, b)


@pytest.mark.parametrize("bundle", ["max-bundle", "balanced"])
async def test_firefox_to_firefox(firefox: Firefox, firefox_process: FirefoxProcess, bundle: str) -> None:
    """Both bundle policies, publishing and playing: max-bundle offers later sections as bundle-only
    with port 0, balanced gives every section its own port and candidates."""
    async with serving(http=firefox_process.http) as (_, url):
        a, b = await firefox_pages(firefox, url, 2, bundle)
        pub = await live(a, "publish")
        play = await live(b, "play")
        stats = await decoded(b, play, what="at the Firefox player")
        await same_picture(a, pub, b, play)
        assert stats["audio"]["audioEnergy"] > 0.001, stats  # Firefox's fake microphone: a steady tone
        assert (stats["video"]["codec"], stats["audio"]["codec"]) == ("video/VP8", "audio/opus")
        for offer in (await a.offer(pub), await b.offer(play)):
            _, second = sections(offer)
            assert "a=group:BUNDLE 0 1" in offer
            if bundle == "max-bundle":
                assert re.match(r"m=video 0 ", second) and "a=bundle-only" in second, offer
            else:
                assert not re.match(r"m=\w+ 0 ", second) and "a=candidate:" in second, offer
        no_page_errors(a, b)


async def test_mute_and_close(firefox: Firefox, firefox_process: FirefoxProcess) -> None:
    """As test_browser.test_publish_play_mute_close, with Firefox on both ends."""
    async with serving(http=firefox_process.http) as (_, url):
        a, b = await firefox_pages(firefox, url, 2)
        pub = await live(a, "publish")
        play = await live(b, "play")
        await decoded(b, play, what="before muting")

        await check_mute_unmute_close(a, pub, b, [play])
        no_page_errors(a, b)


@pytest.mark.parametrize("codec", ["video/VP8", "video/VP9", "video/AV1"])
async def test_each_codec_firefox_to_firefox(
    firefox: Firefox, firefox_process: FirefoxProcess, codec: str
) -> None:
    """The publisher offers only `codec` (setCodecPreferences, which leaves a=rtcp-fb lines of the
    payload types it dropped); the player decodes it, and Opus."""
    async with serving(http=firefox_process.http) as (_, url):
        a, b = await firefox_pages(firefox, url, 2)
        await a.fill(codec=codec)
        pub = await live(a, "publish")
        play = await live(b, "play")
        stats = await decoded(b, play, 20, f"of {codec}")
        sent = await a.stats(pub)
        assert sent["video"]["codec"] == codec, sent
        assert (stats["video"]["codec"], stats["audio"]["codec"]) == (codec, "audio/opus")
        await same_picture(a, pub, b, play)
        # The case this covers: feedback lines for payload types the m= line no longer lists.
        video = sections(await a.offer(pub))[1]
        listed = set(video.split("\n", 1)[0].split()[3:])
        assert set(re.findall(r"a=rtcp-fb:(\d+) ", video)) - listed, video
        no_page_errors(a, b)
