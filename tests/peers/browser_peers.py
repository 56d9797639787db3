"""Headless Chromium (Debian's package) driven by Playwright, for end-to-end tests of the demo page.

Playwright's async API is asyncio; like the aiortc peers it runs on an asyncio loop in a daemon
thread (`AsyncioThread`), and trio tests call into it. Browser tests only run inside a private network
namespace (`scripts/test` sets TRIO_SFU_NETNS=1 there): Chromium gathers every interface's address,
and on this machine only loopback may carry traffic.

Also what every browser test shares: `DemoPageBase` (the page handle, written once over `js` and
`click`; tests/peers/firefox_peers.py drives Firefox with it), `serving` (the real server on loopback),
`aiortc_session`, and the stats helpers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from trio_sfu.config import Config, HostPort
from trio_sfu.server.server import Server

from ..conftest import Client, outside_private_namespace
from .aiortc_peers import AsyncioThread, Player, Publisher

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


LOOPBACK = HostPort("127.0.0.1", 0)


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does, as root)"
    outside = outside_private_namespace("browser", "tests/e2e/test_browser.py")
    if outside is not None:
        return outside
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[test]' (no `playwright install` needed)"
    return None


class Browser:
    """One Chromium process (fresh temporary profile); a new context per test keeps tests apart."""

    def __init__(self, aio: AsyncioThread) -> None:
        self.aio = aio
        self._playwright: Any = None
        self._browser: Any = None

    async def _start(self) -> None:
        from playwright.async_api import async_playwright

        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.aio.loop).result(60)

    async def _stop(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.aio.loop).result(30)

    async def new_context(self) -> Any:
        async def make() -> Any:
            context = await self._browser.new_context()
            await context.grant_permissions(["camera", "microphone"])
            return context

        return await self.aio.call(make)

    async def open(self, context: Any, url: str) -> DemoPage:
        """A page of the demo at `url`, once its module has loaded /config.json."""
        page = DemoPage(self.aio, await self.aio.call(context.new_page))
        await page.call(page.listen)
        await page.goto(url)
        return page


class DemoPageBase:
    """Trio-side handle on one demo page, whatever drives the browser: read and poke `window.sfu`.

    A driver supplies `js` (evaluate an expression, or call a function expression with one JSON
    argument), `click` (a CSS selector) and `fill`; everything else is written once, here, in terms
    of those, so the Chromium and Firefox tests read alike.
    """

    console: list[str]

    async def js(self, expression: str, arg: Any = None) -> Any:
        raise NotImplementedError

    async def click(self, selector: str) -> None:
        raise NotImplementedError

    async def fill(self, **fields: str) -> None:
        raise NotImplementedError

    async def start(self, button: str) -> int:
        """Press publish or play; returns the new session's index in window.sfu.sessions."""
        count = await self.js("window.sfu.sessions.length")
        await self.click(f"#{button}")
        return int(count)

    async def session(self, index: int, expression: str) -> Any:
        """Evaluate `expression` with `s` bound to session `index` (awaits promises)."""
        script = f"async (i) => {{ const s = window.sfu.sessions[i]; return {expression}; }}"
        return await self.js(script, index)

    async def state(self, index: int) -> str:
        return str(await self.session(index, "s.state"))

    async def wait_state(self, index: int, state: str, timeout: float = 15) -> None:
        with trio.move_on_after(timeout):
            while (current := await self.state(index)) != state:
                if current == "ended" and state != "ended":
                    break
                await trio.sleep(0.05)
            else:
                return
        error = await self.session(index, "s.error")
        raise AssertionError(f"session {index}: state {current!r}, wanted {state!r}; error {error!r}; "
                             f"console {self.console[-10:]}")

    async def stats(self, index: int) -> dict[str, Any]:
        return dict(await self.session(index, "s.stats()"))

    async def raw_stats(self, index: int) -> dict[str, Any]:
        return dict(await self.session(index, "s.rawStats()"))

    async def offer(self, index: int) -> str:
        """The SDP offer session `index` sent ("" if it has sent none)."""
        return str(await self.session(index, "s.sdp.offer"))

    async def panel_text(self, index: int) -> str:
        return str(await self.session(index, "s.panel.innerText"))

    async def click_in_panel(self, index: int, role: str) -> None:
        await self.session(index, f"s.panel.querySelector('[data-role={role}]').click()")


class DemoPage(DemoPageBase):
    """A demo page in Chromium, through Playwright (on its asyncio thread)."""

    def __init__(self, aio: AsyncioThread, page: Any) -> None:
        self.aio = aio
        self.page = page
        self.console = []

    async def listen(self) -> None:
        """Keep the page's console and errors (on the asyncio loop: Playwright is not thread-safe)."""
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    async def call(self, function: Callable[[], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            return await function()

        return await self.aio.call(run)

    async def js(self, expression: str, arg: Any = None) -> Any:
        return await self.call(lambda: self.page.evaluate(expression, arg))

    async def click(self, selector: str) -> None:
        await self.call(lambda: self.page.click(selector))

    async def goto(self, url: str) -> None:
        await self.call(lambda: self.page.goto(url))
        # A function, not an expression: Playwright evaluates a bare expression with eval() while it
        # polls, which the page's Content-Security-Policy (default-src 'self') forbids.
        ready = "() => Boolean(window.sfu && window.sfu.ready)"
        await self.call(lambda: self.page.wait_for_function(ready, timeout=10_000))

    async def fill(self, **fields: str) -> None:
        for name, value in fields.items():
            if name == "codec":
                await self.call(lambda v=value: self.page.select_option("select[name=codec]", v))
            else:
                await self.call(lambda n=name, v=value: self.page.fill(f"input[name={n}]", v))


async def wait_until(
    probe: Callable[[], Awaitable[Any]], condition: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """Poll `probe` until `condition(value)`; returns the value (AssertionError with the last one)."""
    value = None
    with trio.move_on_after(timeout):
        while True:
            value = await probe()
            if condition(value):
                return value
            await trio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {value!r}")


def require_browser() -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)


# --------------------------------------------------------------------------- shared by the browser tests


@asynccontextmanager
async def serving(http: HostPort = LOOPBACK, **settings: Any) -> AsyncIterator[tuple[Server, str]]:
    """The real server on loopback (signaling, HTTP, media on free ports unless `http` has one);
    yields it and the page URL."""
    config = Config(signal=LOOPBACK, http=http, media=(LOOPBACK,), **settings)
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(Server(config).serve)
        host, port = server.http_addresses[0]
        yield server, f"http://{host}:{port}/"
        nursery.cancel_scope.cancel()


def frames(stats: dict[str, Any], kind: str = "video") -> int:
    """Frames decoded (players) or encoded (publishers) of `kind` in a `s.stats()` summary."""
    entry = stats.get(kind)
    return int(entry["frames"] or 0) if entry else 0


def packets(stats: dict[str, Any], kind: str) -> int:
    entry = stats.get(kind)
    return int(entry["packets"] or 0) if entry else 0


@asynccontextmanager
async def signaling(server: Server, uid: str) -> AsyncIterator[Client]:
    """A protocol client over a real WebSocket to the server's listener, connected (open mode)."""
    host, port = server.signal_addresses[0]
    async with open_websocket_url(f"ws://{host}:{port}/ws") as ws, trio.open_nursery() as nursery:
        client = Client(ws, uid=uid)
        nursery.start_soon(client.pump)
        try:
            assert (await client.connect())["err"] == 0
            yield client
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def aiortc_session(
    server: Server, aio: AsyncioThread, peer: Publisher | Player, uid: str, stream: str = "cam"
) -> AsyncIterator[Client]:
    """An aiortc peer signaling over a real WebSocket to the server's listener."""
    async with signaling(server, uid) as client:
        peer.offered_at = time.monotonic()
        reply = await client.offer(stream, await aio.call(peer.offer), isinstance(peer, Publisher))
        assert reply["err"] == 0, reply
        await aio.call(peer.answer, reply["data"]["sdp"])
        try:
            yield client
        finally:
            await aio.call(peer.close)


async def check_mute_unmute_close(a: DemoPageBase, pub: int, b: DemoPageBase, plays: list[int]) -> None:
    """Publisher session `pub` on page `a` mutes video, unmutes, closes; player sessions `plays` on page
    `b` see the picture freeze while audio goes on (and are told), resume, then end publisher_closed."""
    play = plays[0]
    await a.click_in_panel(pub, "mute-video")
    await wait_until(lambda: a.session(pub, "s.muted"), lambda m: m["video"], 5, "mute acknowledged")
    await wait_until(lambda: b.panel_text(play), lambda t: "publisher muted video" in t, 5, "notice")
    await trio.sleep(0.7)  # frames in flight when the server stopped forwarding
    before = await b.stats(play)
    await trio.sleep(2)
    after = await b.stats(play)
    assert frames(after) == frames(before), (before, after)
    assert packets(after, "audio") > packets(before, "audio") + 50

    await a.click_in_panel(pub, "mute-video")
    await wait_until(lambda: b.stats(play), lambda s: frames(s) > frames(after) + 20, 10, "video back")

    await a.click_in_panel(pub, "close")
    for index in plays:
        await b.wait_state(index, "ended")
        assert await b.session(index, "s.endReason") == "publisher_closed"
        assert "publisher_closed" in await b.panel_text(index)
    assert await a.state(pub) == "ended"


class FakeCameraBrowser(Browser):
    """Chromium as `Browser`, but its fake camera runs at `fps` frames a second (Chromium's default is 20,
    for any size asked; a test that wants a margin above 20 fps at the receiver needs more)."""

    def __init__(self, aio: AsyncioThread, fps: int) -> None:
        super().__init__(aio)
        self.fps = fps

    async def _start(self) -> None:
        from playwright.async_api import async_playwright

        fake = "--use-fake-device-for-media-stream"
        args = [f"{fake}=fps={self.fps}" if arg == fake else arg for arg in CHROMIUM_ARGS]
        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=args
        )


def sdp_lines(sdp: str, *prefixes: str) -> list[str]:
    """The lines of `sdp` that start with any of `prefixes` (m= lines always, to show the sections)."""
    return [line for line in sdp.splitlines() if line.startswith(("m=", *prefixes))]


# A player session's video inbound-rtp stat as getStats() gives it (the one with the most packets): with
# what the page's summary leaves out, e.g. Chromium's freezeCount and totalFreezesDuration (seconds).
INBOUND_VIDEO = """async (i) => {
  const raw = await window.sfu.sessions[i].rawStats();
  let best = null;
  for (const stat of Object.values(raw)) {
    if (stat.type === "inbound-rtp" && stat.kind === "video"
        && (!best || (stat.packetsReceived || 0) > (best.packetsReceived || 0))) best = stat;
  }
  return best ? { ...best } : null;
}"""


async def inbound_video(page: DemoPageBase, index: int) -> dict[str, Any] | None:
    """Player session `index`'s video inbound-rtp stat, every field the browser gives (None before it
    has one): frameWidth, framesDecoded, freezeCount, totalFreezesDuration, packetsLost, timestamp (ms)…"""
    stat = await page.js(INBOUND_VIDEO, index)
    return dict(stat) if stat else None


# The mean grey level of each of the ten counter bars (tests/peers/aiortc_peers.counter_image, which the
# aiortc and FFmpeg publishers draw) in the picture a player session's <video> shows now, via a canvas;
# with its size and the video's current time.
READ_BARS = """async (i) => {
  const video = window.sfu.sessions[i].panel.querySelector("video");
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [video.videoWidth, video.videoHeight];
  const g = canvas.getContext("2d", { willReadFrequently: true });
  g.drawImage(video, 0, 0);
  const bar = Math.floor(canvas.width / 10), levels = [];
  for (let b = 0; b < 10; b++) {
    const x = b * bar + Math.floor(bar / 4), w = Math.floor(bar / 2);
    const data = g.getImageData(x, Math.floor(canvas.height / 4), w, Math.floor(canvas.height / 2)).data;
    let sum = 0;
    for (let p = 0; p < data.length; p += 4) sum += (data[p] + data[p + 1] + data[p + 2]) / 3;
    levels.push(sum / (data.length / 4));
  }
  return { levels, width: canvas.width, height: canvas.height, time: video.currentTime };
}"""


def counter_from_levels(levels: list[float]) -> int | None:
    """The counter the bars show (as aiortc_peers.read_counter), None when the framing bars are wrong."""
    if any(60 < level < 195 for level in levels) or levels[0] < 128 or levels[-1] > 127:
        return None
    return sum(1 << bit for bit in range(8) if levels[1 + bit] > 127)
