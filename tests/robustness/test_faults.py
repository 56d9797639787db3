"""Peers that fail: silent publishers and players, handshakes that never finish, and shutdown.

Over real UDP with aiortc peers the timing can only be loose, so it is asserted exactly under MockClock
in tests/server/test_transport_faults.py."""

from __future__ import annotations

import time

import pytest
import trio

from trio_sfu.config import Config

from ..conftest import Harness, eventually, running_server
from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import relayed, session, valid_counters, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHORT = Config(liveness_timeout=3.0, dtls_handshake_timeout=3.0)


def sessions(sfu: Harness) -> list[str]:
    return sorted(
        f"{s.header.uid}:{s.direction}" for c in sfu.server.connections for s in c.sessions.values()
    )


async def test_silent_publisher_times_out_and_players_are_told(aio: AsyncioThread) -> None:
    publisher, player = Publisher(), Player()
    async with (
        running_server(SHORT, udp=True) as sfu,
        relayed(sfu, aio, publisher, "pub") as (pub, relay),
        session(sfu, aio, player, "p1") as p1,
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 10, 20, "media")
        relay.paused = True  # no consent checks, no media
        with trio.fail_after(10):
            notice = await pub.next_server_request()
        assert notice["data"] == {"reason": "timeout"}
        with trio.fail_after(5):
            notice = await p1.next_server_request()
        assert notice["data"] == {"reason": "publisher_gone"}
        await eventually(lambda: sessions(sfu) == [])
        assert sfu.server.router.lookup(("live", "cam")) is None


async def test_silent_player_is_reclaimed_and_the_publisher_goes_on(aio: AsyncioThread) -> None:
    publisher, quiet, other = Publisher(), Player(), Player()
    async with (
        running_server(SHORT, udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        relayed(sfu, aio, quiet, "quiet") as (client, relay),
        session(sfu, aio, other, "other"),
    ):
        await wait_for(
            lambda: len(valid_counters(quiet)) >= 10 and len(valid_counters(other)) >= 10, 20, "media"
        )
        relay.paused = True
        with trio.fail_after(10):
            notice = await client.next_server_request()
        assert notice["data"] == {"reason": "timeout"}
        await eventually(lambda: sessions(sfu) == ["other:play", "pub:publish"])
        publication = sfu.server.router.lookup(("live", "cam"))
        assert publication is not None
        assert [len(p.consumers) for p in publication.producers] == [1, 1]
        before = len(valid_counters(other))
        await trio.sleep(1)
        assert len(valid_counters(other)) > before + 10


async def test_dtls_that_never_finishes_fails_the_session(aio: AsyncioThread) -> None:
    publisher = Publisher()
    async with running_server(SHORT, udp=True) as sfu:
        relay_cm = relayed(sfu, aio, publisher, "pub")
        async with relay_cm as (client, relay):
            relay.drop_dtls = True
            with trio.fail_after(10):
                notice = await client.next_server_request()
            assert notice["data"] == {"reason": "transport_failed"}
            assert sfu.server.totals.dtls_failures == 1
            assert sfu.server.router.lookup(("live", "cam")) is None


async def test_shutdown_during_active_streams(aio: AsyncioThread) -> None:
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub") as pub,
        session(sfu, aio, player, "p1") as p1,
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 10, 20, "media")
        started = time.monotonic()
        await sfu.server.shutdown()
        assert time.monotonic() - started < 5
        for client in (pub, p1):
            with trio.fail_after(1):
                notice = await client.next_server_request()
            assert notice["data"] == {"reason": "server_shutdown"}
