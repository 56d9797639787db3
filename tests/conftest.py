"""Shared test harness: a real `Server` over in-memory streams, and a small protocol client."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import wrap_client_stream

from trio_sfu.cluster.signaling_client import SignalingClient
from trio_sfu.config import Config, HostPort
from trio_sfu.server.server import Server
from trio_sfu.server.udp import DatagramEndpoint, UdpEndpoint
from trio_sfu.testing.network import MemoryNetwork

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_sdp(name: str) -> str:
    return (FIXTURES / "sdp" / f"{name}.sdp").read_text()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long fuzz/churn tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long test: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def outside_private_namespace(peer: str, test_file: str) -> str | None:
    """Why `peer` may not run here (it gathers every interface's address, and only loopback may carry
    traffic on this machine), or None inside the loopback-only namespace scripts/test makes."""
    interfaces = [name for _, name in socket.if_nameindex()]
    if os.environ.get("TRIO_SFU_NETNS") == "1" and interfaces == ["lo"]:
        return None
    return (
        f"{peer} tests run only in a private network namespace (loopback only): run them with "
        f"scripts/test, e.g. `TRIO_SFU_NETNS= scripts/test {test_file}`"
    )


# The protocol client of the tests (and of the benchmark's legs).
Client = SignalingClient


class Harness:
    """A server with no real sockets, and a way to open client connections to it."""

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery

    @asynccontextmanager
    async def client(self, app: str = "live", uid: str = "alice") -> AsyncIterator[Client]:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.server.serve_stream, server_stream)
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, client_stream, "sfu.test", "/ws")
            client = Client(ws, app, uid)
            nursery.start_soon(client.pump)
            try:
                yield client
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_server(
    config: Config | None = None,
    *,
    udp: bool = False,
    wrap_endpoint: Callable[[DatagramEndpoint], DatagramEndpoint] | None = None,
    **kwargs: Any,
) -> AsyncIterator[Harness]:
    """A server on in-memory WebSockets; media on an in-memory network, or real UDP on loopback.
    `wrap_endpoint`: what the server's media endpoint is seen through (a test's fault)."""
    config = config or Config()
    network = MemoryNetwork()
    server = Server(config, **kwargs)
    endpoint: DatagramEndpoint = (
        UdpEndpoint.bind(HostPort("127.0.0.1", 0)) if udp else network.endpoint("127.0.0.1", 40000)
    )
    if wrap_endpoint is not None:
        endpoint = wrap_endpoint(endpoint)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: server.serve(
                media_endpoints=[endpoint],
                listen=False,
                task_status=task_status,
            )
        )
        harness = Harness(server, nursery)
        harness.network = network  # type: ignore[attr-defined]
        yield harness
        nursery.cancel_scope.cancel()


def task_names() -> list[str]:
    """Every live task in this run, by name (to prove a subtree is gone)."""
    names = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds (where live media keeps tasks busy, so
    `wait_all_tasks_blocked` would not return)."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def settle() -> None:
    """Let every runnable task run until all are blocked."""
    await trio.testing.wait_all_tasks_blocked()


@pytest.fixture
def aio() -> Iterator[Any]:
    """An asyncio loop in a thread for aiortc peers (tests/peers/aiortc_peers.py)."""
    from .peers.aiortc_peers import AsyncioThread

    thread = AsyncioThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def browser_aio() -> Iterator[Any]:
    """The asyncio thread Playwright's Chromium lives on, kept for a module (Chromium starts in ~1 s)."""
    from .peers.aiortc_peers import AsyncioThread

    thread = AsyncioThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def chromium(browser_aio: Any) -> Iterator[Any]:
    """Headless Chromium (Debian's) for a module's tests; each test opens its own contexts."""
    from .peers.browser_peers import Browser, require_browser

    require_browser()
    browser = Browser(browser_aio)
    browser.start()
    yield browser
    browser.stop()


@pytest.fixture
def autojump_clock() -> Iterator[trio.testing.MockClock]:
    yield trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture(scope="module")
def firefox_process() -> Iterator[Any]:
    """A headless Firefox for a module's tests (skipped without one)."""
    from .peers.firefox_peers import FirefoxProcess, skip_reason

    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    process = FirefoxProcess()
    yield process
    process.stop()


@pytest.fixture
async def firefox(firefox_process: Any) -> AsyncIterator[Any]:
    """A BiDi session to `firefox_process`, one per test; its tabs and user contexts close with it."""
    from .peers.firefox_peers import Firefox

    async with Firefox.connect(firefox_process) as session:
        yield session
