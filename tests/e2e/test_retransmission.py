"""Retransmission limits end to end: real aiortc players behind a rate-limited relay and a lossy one.

A player behind a link narrower than the stream NACKs nearly everything, again and again; answering
each NACK in full sent such a player dozens of times the stream's rate. The limits themselves are
tested sans-IO in tests/media/test_retransmission.py.
"""

from __future__ import annotations

import collections
import time

import pytest
import trio

from ..conftest import Harness, running_server
from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, player_session, relayed, valid_counters, wait_for

NARROW_SHARE = 0.4  # the narrow player's link, as a share of the stream's rate
MILD_LOSS = 0.03  # the other player's random loss
MEASURE_SECONDS = 5.0
# Bytes sent to the narrow player / bytes the publisher sent, at most: the stream, half as much again
# in retransmissions, and a burst (1.25 measured; answering every NACK measured 3.0-3.3).
MAX_SEND_RATIO = 2.0


def consumer_counters(sfu: Harness, uid: str) -> collections.Counter[str]:
    total: collections.Counter[str] = collections.Counter()
    for consumer, _ in player_session(sfu, uid).consumers:
        total.update(consumer.counters)
    return total


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_a_narrow_player_link_gets_no_retransmission_flood(aio: AsyncioThread) -> None:
    """A player behind a link at 40 % of the stream's rate NACKs most packets: what the server sends it
    stays a small multiple of what the publisher sends, while a player with ordinary loss beside it
    still has its NACKs answered and decodes clean video."""
    publisher, narrow, lossy = Publisher(), Player(), Player()
    async with (
        running_server(udp=True) as sfu,
        relayed(sfu, aio, publisher, "pub") as (_, upstream),
        relayed(sfu, aio, narrow, "narrow", seed=3) as (_, narrow_relay),
        relayed(sfu, aio, lossy, "lossy", seed=5) as (_, lossy_relay),
    ):
        await wait_for(
            lambda: len(valid_counters(narrow)) >= 10 and len(valid_counters(lossy)) >= 10, 20, "video"
        )
        start, published = trio.current_time(), upstream.rtp_bytes_to_server
        await trio.sleep(1.5)  # measuring the stream's rate over a window: nothing to wait for
        rate = (upstream.rtp_bytes_to_server - published) / (trio.current_time() - start)
        narrow_relay.rate_to_peer = rate * NARROW_SHARE
        lossy_relay.loss_to_peer = MILD_LOSS

        since = time.monotonic()
        published, to_narrow = upstream.rtp_bytes_to_server, narrow_relay.rtp_bytes_to_peer
        lossy_before = consumer_counters(sfu, "lossy")
        await wait_for(lambda: len(valid_counters(lossy, since)) >= 80, 20, "video under mild loss")
        await wait_for(lambda: time.monotonic() - since >= MEASURE_SECONDS, 20, "the measuring window")
        published = upstream.rtp_bytes_to_server - published
        to_narrow = narrow_relay.rtp_bytes_to_peer - to_narrow
        ratio = to_narrow / published
        narrow_counters = consumer_counters(sfu, "narrow")
        lossy_counters = consumer_counters(sfu, "lossy") - lossy_before
        print(
            f"stream {rate * 8 / 1000:.0f} kbit/s; published {published} B, sent to the narrow player "
            f"{to_narrow} B (x{ratio:.2f}), limited {narrow_relay.limited}; narrow {dict(narrow_counters)}; "
            f"lossy {dict(lossy_counters)} dropped {lossy_relay.dropped}; narrow frames "
            f"{len(valid_counters(narrow, since))}, lossy frames {len(valid_counters(lossy, since))}; "
            f"rtt {[c.round_trip.seconds for c, _ in player_session(sfu, 'lossy').consumers]}"
        )
        assert narrow_relay.limited > 100  # the link really was too narrow: the player had much to NACK
        assert ratio < MAX_SEND_RATIO, f"sent {ratio:.2f} x what the publisher sent"
        assert narrow_counters["nack_budget_exceeded"] > 0  # the budget, not luck, held it there
        # The player with ordinary loss: its NACKs answered, nothing held back, clean video.
        assert lossy_relay.dropped > 10
        assert lossy_counters["nack_answered"] > 0
        assert lossy_counters["nack_budget_exceeded"] == 0
        # Its receiver reports (aiortc echoes LSR/DLSR) gave the round trip the resend interval uses.
        rtts = [c.round_trip.seconds for c, _ in player_session(sfu, "lossy").consumers]
        assert all(rtt is not None and rtt < 0.5 for rtt in rtts), rtts
        assert_video_matches(lossy, publisher, since)
