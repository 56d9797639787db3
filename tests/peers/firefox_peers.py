"""Headless Firefox ESR (Debian's package) driven over WebDriver BiDi, for end-to-end tests of the demo page.

Firefox has its own BiDi server (`--remote-debugging-port`), so there is no geckodriver and nothing to
download. The client here is a few dozen lines over `trio_websocket`, which the project already depends
on: it is Trio-native, so, unlike Playwright or aiortc, it needs no asyncio thread. pytest-trio runs
every test in its own `trio.run`, and a WebSocket cannot outlive its run, so the split is:
`FirefoxProcess` (plain subprocess, one per test module) and `Firefox` (a BiDi connection and session,
one per test, opened with `Firefox.connect`). Each test's pages live in a fresh BiDi user context
(separate cookies and storage, like separate machines), removed when the session ends.

Prefs go in a fresh profile's user.js: fake camera and microphone without prompts, host candidates
on loopback (Firefox leaves loopback out and hides host addresses behind mDNS names by default), and
everything that would reach the internet (updates, telemetry, remote settings, safe browsing, OpenH264
download) turned off. Like the Chromium tests these only run in a private network namespace.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from trio_sfu.config import HostPort

from ..conftest import outside_private_namespace
from .browser_peers import DemoPageBase

FIREFOX = "/usr/bin/firefox-esr"

PREFS: dict[str, bool | int | str] = {
    # Fake media, no prompts.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,  # let <video> play with sound without a user gesture
    # ICE on loopback, with real addresses rather than mDNS names.
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    # No H264 plugin download (OpenH264 comes from the network).
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "media.gmp-manager.url": "data:text/plain,",
    # Nothing in the background that would reach the internet.
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "browser.newtabpage.enabled": False,
    "browser.aboutwelcome.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.search.update": False,
    "browser.region.network.url": "",
    "browser.topsites.contile.enabled": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "data:,",
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "services.settings.server": "data:,",
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.proxy.type": 0,
    "dom.push.connection.enabled": False,
    "geo.provider.network.url": "",
    "browser.ping-centre.telemetry": False,
    "identity.fxaccounts.enabled": False,
    "browser.tabs.warnOnClose": False,
    # The camera permission FirefoxProcess grants holds in every user context (one per test page).
    "permissions.isolateBy.userContext": False,
}

LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")


def skip_reason() -> str | None:
    """Why Firefox tests cannot run here, or None."""
    if not os.path.exists(FIREFOX):
        return f"{FIREFOX} is missing: install Debian's firefox-esr (apt-get install firefox-esr)"
    outside = outside_private_namespace("Firefox", "tests/e2e/test_firefox.py")
    if outside is not None:
        return outside
    return None


def free_tcp_port() -> int:
    """A TCP port free on loopback now (the namespace is private: nobody else will take it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def require_firefox() -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)


class FirefoxProcess:
    """One headless Firefox with a fresh temporary profile; `url` is its BiDi WebSocket address."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="trio-sfu-firefox-")
        # Firefox lets a page gather host candidates only when it captures or has camera or microphone
        # permission; otherwise it offers just its default-route address, and a loopback-only namespace
        # has none (players would offer no candidate at all). Permissions are per origin, port
        # included, and the profile's defaults file is read at start-up: so the demo page is served
        # on one port, picked now, for all tests of this Firefox (`http`).
        self.http = HostPort("127.0.0.1", free_tcp_port())
        origin = f"http://{self.http.host}:{self.http.port}"
        permissions = os.path.join(self.profile, "permissions.txt")
        with open(permissions, "w") as lines:
            lines.write(f"origin\tcamera\t1\t{origin}\norigin\tmicrophone\t1\t{origin}\n")
        prefs = {**PREFS, "permissions.manager.defaultsUrl": f"file://{permissions}"}
        with open(os.path.join(self.profile, "user.js"), "w") as user_js:
            for name, value in prefs.items():
                user_js.write(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n")
        self.log: collections.deque[str] = collections.deque(maxlen=300)  # its stderr, for failures
        self.url = ""
        self._listening = threading.Event()
        self.process = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", self.profile,
             "--remote-debugging-port", "0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,  # its own process group, so its content processes go with it
            preexec_fn=_die_with_parent,
        )
        # Drain stderr all along (a full pipe would block Firefox); it announces the BiDi address there.
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._listening.wait(30):
            self.stop()
            raise RuntimeError(f"Firefox did not announce WebDriver BiDi; stderr: {list(self.log)[-20:]}")

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip())
            if match := LISTENING.search(line):
                self.url = match.group(1)
                self._listening.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # content processes left over, if any
        shutil.rmtree(self.profile, ignore_errors=True)


def _die_with_parent() -> None:
    """Linux: Firefox gets SIGKILL when the test process dies, even killed before its teardown ran."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class BiDiError(Exception):
    """A BiDi command failed (its `error` and `message`), or a script threw."""


class Firefox:
    """One BiDi session on a running Firefox: commands with replies, console events to their pages."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._next_id = 0
        self._waiting: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}
        self._pages: dict[str, FirefoxPage] = {}  # by browsing context id
        self._user_contexts: list[str] = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, process: FirefoxProcess) -> AsyncIterator[Firefox]:
        """A new BiDi session (Firefox allows one at a time); its user contexts go when it ends."""
        async with (
            open_websocket_url(f"{process.url}/session", max_message_size=64 << 20) as ws,
            trio.open_nursery() as nursery,
        ):
            firefox = cls(ws)
            nursery.start_soon(firefox._read)
            await firefox.command("session.new", capabilities={})
            await firefox.command("session.subscribe", events=["log.entryAdded"])
            try:
                yield firefox
            finally:
                # Shielded (the test may be cancelled) and quiet (not to hide why the test failed).
                with trio.move_on_after(10) as cleanup, contextlib.suppress(BiDiError, ConnectionClosed):
                    cleanup.shield = True
                    for user_context in firefox._user_contexts:
                        await firefox.command("browser.removeUserContext", userContext=user_context)
                    await firefox.command("session.end")
                nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        try:
            while True:
                message = json.loads(await self.ws.get_message())
                if "id" in message and message["id"] in self._waiting:
                    event, slot = self._waiting.pop(message["id"])
                    slot.append(message)
                    event.set()
                elif message.get("method") == "log.entryAdded":
                    self._console(message["params"])
        except ConnectionClosed:
            for event, _ in self._waiting.values():
                event.set()

    def _console(self, entry: dict[str, Any]) -> None:
        page = self._pages.get(entry.get("source", {}).get("context", ""))
        if page is None:
            return
        if entry.get("type") == "javascript":  # an uncaught exception
            page.console.append(f"pageerror: {entry.get('text')}")
        else:
            level = {"warn": "warning"}.get(entry.get("level", ""), entry.get("level", ""))
            page.console.append(f"{level}: {entry.get('text')}")  # as Playwright names them

    async def command(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        """Send one command; its result, or BiDiError (also when Firefox does not answer in time)."""
        self._next_id += 1
        ident = self._next_id
        event, slot = trio.Event(), list[dict[str, Any]]()
        self._waiting[ident] = (event, slot)
        await self.ws.send_message(json.dumps({"id": ident, "method": method, "params": params}))
        with trio.move_on_after(timeout):
            await event.wait()
        if not event.is_set():
            self._waiting.pop(ident, None)
            raise BiDiError(f"{method}: no answer in {timeout} s")
        if not slot:
            raise BiDiError(f"{method}: the BiDi connection closed")
        reply = slot[0]
        if reply.get("type") == "error":
            raise BiDiError(f"{method}: {reply.get('error')}: {reply.get('message')}")
        return dict(reply["result"])

    async def new_context(self) -> str:
        """A fresh user context: its own cookies and storage (permissions are shared, see PREFS)."""
        user_context = str((await self.command("browser.createUserContext"))["userContext"])
        self._user_contexts.append(user_context)
        return user_context

    async def open(self, url: str, user_context: str | None = None) -> FirefoxPage:
        """A demo page at `url` in a new tab (of a new user context unless given), once it is ready."""
        user_context = user_context or await self.new_context()
        created = await self.command("browsingContext.create", type="tab", userContext=user_context)
        page = FirefoxPage(self, str(created["context"]))
        self._pages[page.context] = page
        await page.goto(url)
        return page


# Calls the caller's expression: a function expression gets the JSON argument and is awaited, anything
# else is just awaited. The value crosses as JSON text, so BiDi's typed remote values never matter.
CALL = """async (argument) => {
  const f = (%s);
  const value = typeof f === "function" ? await f(JSON.parse(argument)) : await f;
  return JSON.stringify(value === undefined ? null : value);
}"""


class FirefoxPage(DemoPageBase):
    """A demo page in one Firefox tab."""

    def __init__(self, firefox: Firefox, context: str) -> None:
        self.firefox = firefox
        self.context = context
        self.console = []

    async def js(self, expression: str, arg: Any = None) -> Any:
        reply = await self.firefox.command(
            "script.callFunction",
            functionDeclaration=CALL % expression,
            arguments=[{"type": "string", "value": json.dumps(arg)}],
            target={"context": self.context},
            awaitPromise=True,
            resultOwnership="none",
        )
        if reply["type"] == "exception":
            details = reply["exceptionDetails"]
            raise BiDiError(f"{details.get('text')} (evaluating {expression[:200]!r})")
        return json.loads(reply["result"]["value"])

    async def goto(self, url: str) -> None:
        await self.firefox.command("browsingContext.navigate", context=self.context, url=url, wait="complete")
        with trio.move_on_after(10):
            while not await self.js("Boolean(window.sfu && window.sfu.ready)"):
                await trio.sleep(0.05)
            return
        text = await self.js("document.body.innerText")
        raise AssertionError(f"the demo page at {url} never got ready: {text}; console {self.console[-10:]}")

    async def click(self, selector: str) -> None:
        await self.js("(selector) => document.querySelector(selector).click()", selector)

    async def fill(self, **fields: str) -> None:
        """Set form fields as typing would (the select must offer the value)."""
        script = """([name, value]) => {
          const field = document.querySelector(`[name=${name}]`);
          field.value = value;
          if (field.value !== value) throw new Error(`${name} cannot be ${value}`);
          field.dispatchEvent(new Event("input", { bubbles: true }));
          field.dispatchEvent(new Event("change", { bubbles: true }));
        }"""
        for name, value in fields.items():
            await self.js(script, [name, value])
