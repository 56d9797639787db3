"""Chromium publishes over WHIP and plays over WHEP from the server's small page (`/whip.html`, one
`fetch` each way), with tokens; a WebSocket player (aiortc) watches the same WHIP publisher; DELETE
ends the publication, that player hears `publisher_closed` and the WHEP session ends with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio_websocket

from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.signaling.auth import mint_token

from ..peers.aiortc_peers import AsyncioThread, Player
from ..peers.browser_peers import Browser, DemoPage, require_browser, serving, skip_reason
from ..support.aiortc_sessions import wait_for

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

SECRET = "a-token-secret-for-the-whip-browser-test-0123456789"
MIN_FRAMES = 30


@pytest.fixture(scope="module")
def chromium(browser_aio: AsyncioThread) -> Iterator[Browser]:
    require_browser()
    browser = Browser(browser_aio)
    browser.start()
    yield browser
    browser.stop()


async def whip_page(chromium: Browser, url: str) -> DemoPage:
    context = await chromium.new_context()
    page = DemoPage(chromium.aio, await chromium.aio.call(context.new_page))
    await page.call(page.listen)
    await page.call(lambda: page.page.goto(url))
    ready = "() => Boolean(window.whip && window.whip.ready)"
    await page.call(lambda: page.page.wait_for_function(ready, timeout=10_000))
    return page


def token(**grants: bool) -> str:
    return mint_token(SECRET, "live", now=time.time(), **grants)  # type: ignore[arg-type]


async def video(page: DemoPage, index: int) -> dict[str, Any]:
    stats = await page.js("(i) => window.whip.stats(i)", index)
    return dict(stats["video"] or {})


async def test_chromium_publishes_over_whip_and_plays_over_whep(
    chromium: Browser, aio: AsyncioThread
) -> None:
    async with serving(token_secret=SECRET) as (server, url):
        publisher = await whip_page(chromium, f"{url}whip.html")
        viewer = await whip_page(chromium, f"{url}whip.html")
        started = time.monotonic()
        pub = await publisher.js("([t]) => window.whip.publish('live', 'cam', t)", [token(publish=True)])
        play = await viewer.js("([t]) => window.whip.play('live', 'cam', t)", [token(play=True)])
        with trio.fail_after(20):
            while ((await video(viewer, play)).get("frames") or 0) < MIN_FRAMES:
                await trio.sleep(0.25)
        took = time.monotonic() - started
        shown = await video(viewer, play)
        assert (shown.get("width") or 0) > 0, shown
        assert (await video(publisher, pub)).get("frames"), "the publisher encoded nothing"
        assert len(server.http.whip.resources) == 2
        print(f"\nWHEP viewer decoded {shown['frames']} frames ({shown['width']} px wide) "
              f"{took:.1f} s after the WHIP publish")

        # A WebSocket player of the WHIP publisher decodes it too; DELETE tells it publisher_closed.
        player = Player()
        host, port = server.signal_addresses[0]
        async with (
            trio_websocket.open_websocket_url(f"ws://{host}:{port}/ws") as ws,
            trio.open_nursery() as nursery,
        ):
            client = SignalingClient(ws, "live", "ws-player")
            nursery.start_soon(client.pump)
            assert (await client.connect(token(play=True)))["err"] == 0
            reply = await client.offer("cam", await aio.call(player.offer), False)
            assert reply["err"] == 0, reply
            await aio.call(player.answer, reply["data"]["sdp"])
            await wait_for(lambda: len(player.frames) >= 10, 15, "10 frames decoded by aiortc")
            assert await publisher.js("(i) => window.whip.stop(i)", pub) == 200
            with trio.fail_after(5):
                while True:
                    message = await client.next_server_request()
                    if message["method"] == "stream.close":
                        break
            assert message["data"]["reason"] == "publisher_closed", message
            await aio.call(player.close)
            nursery.cancel_scope.cancel()
        # The WHEP session ended with its publication: nothing is left, and its DELETE finds nothing.
        with trio.fail_after(5):
            while server.http.whip.resources:
                await trio.sleep(0.05)
        assert await viewer.js("(i) => window.whip.stop(i)", play) == 404
        # (The console's resource errors are the favicon's 404 and the expected DELETE's.)
        consoles = [line for page in (publisher, viewer) for line in page.console]
        errors = [line for line in consoles if line.startswith("pageerror")]
        assert not errors, errors
