"""Media under hostile or lossy conditions, with real aiortc peers."""

from __future__ import annotations

import os
import re
import socket
import time

import pytest
import trio
from aioice import stun
from prometheus_client.parser import text_string_to_metric_families

from trio_sfu.config import Config
from trio_sfu.server.metrics import make_registry, render
from trio_sfu.server.session import Session

from ..conftest import eventually, running_server
from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import (
    assert_video_matches,
    player_session,
    relayed,
    session,
    valid_counters,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_bad_udp_leaves_the_session_alone(aio: AsyncioThread) -> None:
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        relayed(sfu, aio, player, "relayed") as (_, relay),
    ):
        server = sfu.server.candidates[0]
        await wait_for(lambda: len(valid_counters(player)) >= 20, 20, "video before the attack")
        ufrag = player_session(sfu).transport.local_ufrag

        transport = player_session(sfu).transport
        stranger = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await stranger.bind(("127.0.0.1", 0))
        # The right username (both ufrags travel in clear text), the wrong password.
        forged = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        forged.attributes["USERNAME"] = f"{ufrag}:{transport.peer.ice.remote_ufrag}"
        forged.add_message_integrity(b"not-the-password-at-all")
        forged.add_fingerprint()
        no_integrity = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        no_integrity.attributes["USERNAME"] = f"{ufrag}:{transport.peer.ice.remote_ufrag}"
        attack_start = time.monotonic()
        before = dict(sfu.server.mux.dropped)
        assert transport.peer.srtp is not None
        auth_failures_before = sum(transport.peer.srtp.counters.values())
        for _ in range(20):
            for datagram in [
                os.urandom(200),
                b"\x00\x01\x00",
                bytes(forged),
                bytes(no_integrity),
                b"\x16\xfe\xfd" + os.urandom(60),
                b"\x80\x60" + os.urandom(100),
                b"\x17\xfe\xfd" + os.urandom(40),
            ]:
                await stranger.sendto(datagram, server)
            # From the trusted address: junk DTLS records and SRTP/SRTCP that fail authentication.
            await relay.inject(b"\x16\xfe\xfd\x00\x00" + os.urandom(40))
            await relay.inject(b"\x80\x60" + os.urandom(2) + os.urandom(200))
            await relay.inject(b"\x80\xc8\x00\x06" + os.urandom(40))
            await trio.sleep(0.05)
        await trio.sleep(1)
        stranger.close()

        # Media kept flowing and decoding cleanly through it all.
        assert len(valid_counters(player, attack_start)) >= 15
        assert_video_matches(player, publisher, attack_start)
        dropped = {k: v - before.get(k, 0) for k, v in sfu.server.mux.dropped.items()}
        assert dropped.get("unknown_source", 0) >= 20 * 3  # DTLS, RTP and app data from a stranger
        assert dropped.get("malformed_stun", 0) >= 20
        assert transport.peer.ice.counters["bad_integrity"] >= 20
        assert transport.peer.ice.counters["no_integrity"] >= 20
        assert sum(transport.peer.srtp.counters.values()) - auth_failures_before >= 40


async def test_player_loss_is_repaired_from_the_cache(aio: AsyncioThread) -> None:
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        relayed(sfu, aio, player, "relayed", seed=7) as (_, relay),
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 10, 20, "video before loss")
        relay.loss_to_peer = 0.08
        lossy_since = time.monotonic()
        await wait_for(lambda: len(valid_counters(player, lossy_since)) >= 60, 30, "video under 8% loss")
        consumers = [c for c, _ in player_session(sfu).consumers if c.kind == "video"]
        assert relay.dropped > 10
        assert consumers[0].counters["nack_answered"] > 0
        assert_video_matches(player, publisher, lossy_since)


async def test_sends_to_a_player_that_vanished_are_counted_and_spare_the_others(aio: AsyncioThread) -> None:
    """A player's host disappears: some of the server's sends to it fail (ICMP port unreachable) until
    its consent expires. Each failure is dropped and counted on /metrics, during the session and after
    it; the other player's media goes on."""
    publisher, player, other = Publisher(), Player(), Player()
    config = Config(liveness_timeout=4.0)
    async with (
        running_server(config, udp=True) as sfu,
        session(sfu, aio, publisher, "pub"),
        session(sfu, aio, other, "other"),
        relayed(sfu, aio, player, "gone") as (client, relay),
    ):
        await wait_for(
            lambda: len(valid_counters(player)) >= 10 and len(valid_counters(other)) >= 10, 20, "video"
        )

        def send_errors() -> float:
            for family in text_string_to_metric_families(render(make_registry(sfu.server)).decode()):
                for sample in family.samples:
                    if sample.name == "trio_sfu_dropped_packets_total" and sample.labels == {
                        "reason": "send_error"
                    }:
                        return sample.value
            raise AssertionError("no send_error on /metrics")

        def sessions() -> list[Session]:
            return [s for connection in sfu.server.connections for s in connection.sessions.values()]

        assert send_errors() == 0
        await relay.vanish()
        gone_at = time.monotonic()
        # The kernel limits ICMP errors (net.ipv4.icmp_ratelimit), so only some sends fail.
        await wait_for(lambda: send_errors() >= 2, 5, "failed sends counted while the session lives")
        assert any(s.transport.unsent()[1] for s in sessions())  # still the live transport's
        with trio.fail_after(15):
            notice = await client.next_server_request()  # consent expired
        assert (notice["method"], notice["data"]) == ("stream.close", {"reason": "timeout"}), notice
        await eventually(lambda: len(sessions()) == 2)
        assert send_errors() >= 2  # kept once the session is gone
        assert len(valid_counters(other, gone_at)) >= 30
        assert_video_matches(other, publisher, gone_at)


async def test_fingerprint_mismatch_ends_the_session(aio: AsyncioThread) -> None:
    publisher = Publisher()
    async with running_server(udp=True) as sfu, sfu.client(uid="pub") as client:
        assert (await client.connect())["err"] == 0
        offer = await aio.call(publisher.offer)
        tampered = re.sub(
            r"(a=fingerprint:\S+ )([0-9A-F]{2})",
            lambda m: m.group(1) + ("00" if m.group(2) != "00" else "11"),
            offer,
        )
        assert tampered != offer
        reply = await client.offer("cam", tampered, True)
        assert reply["err"] == 0
        await aio.call(publisher.answer, reply["data"]["sdp"])
        with trio.fail_after(10):
            notice = await client.next_server_request()
        assert notice["method"] == "stream.close"
        assert notice["data"] == {"reason": "transport_failed"}
        await eventually(lambda: sfu.server.router.lookup(("live", "cam")) is None)
        await aio.call(publisher.close)
