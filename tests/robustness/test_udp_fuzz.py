"""UDP fuzz: hostile datagrams at the media port while a real session plays.

The default is CI-sized (60,000 datagrams at 10,000/s); `--run-slow` runs the full 1,000,000.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from trio_sfu.server import metrics

from ..conftest import running_server
from ..peers.aiortc_peers import AsyncioThread, Player, Publisher
from ..support.aiortc_sessions import assert_video_matches, relayed, session, valid_counters, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FLOOD = Path(__file__).parents[1] / "peers" / "udp_flood.py"


def udp_receive_errors() -> int:
    """The kernel's count of datagrams dropped for a full socket buffer (this network namespace)."""
    lines = [
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")
    ]
    return int(dict(zip(lines[0], lines[1], strict=True))["RcvbufErrors"])


def fps(player: Player, start: float, end: float) -> float:
    return len([t for t, c, _, _ in player.frames if start <= t < end and c is not None]) / (end - start)


async def flood_beside_a_session(aio: AsyncioThread, count: int, rate: int) -> dict[str, object]:
    publisher, player = Publisher(), Player()
    async with (
        running_server(udp=True) as sfu,
        relayed(sfu, aio, publisher, "pub") as (_, relay),
        session(sfu, aio, player, "p1"),
    ):
        await wait_for(lambda: len(valid_counters(player)) >= 30, 20, "media before the flood")
        before_start = time.monotonic()
        await trio.sleep(2)
        baseline_fps = fps(player, before_start, time.monotonic())
        server = sfu.server
        host, port = server.candidates[0]
        ufrag = next(iter(server.mux._by_ufrag))  # a real session's ufrag: forged checks name it
        routes = (len(server.mux._by_ufrag), len(server.mux._by_address))
        received_before = sum(server.mux.received.values())
        kernel_drops_before = udp_receive_errors()
        flood_start = time.monotonic()
        flood = await trio.lowlevel.open_process(
            [sys.executable, str(FLOOD), host, str(port), str(count), str(rate), "1", ufrag],
            stdout=subprocess.PIPE,
        )
        replays = 0
        while flood.poll() is None:
            # Meanwhile, replay the publisher's own SRTP from the address the session trusts.
            for packet in relay.captured[-20:]:
                await relay.inject(packet)
                replays += 1
            await trio.sleep(0.05)
        assert flood.stdout is not None
        report = json.loads((await flood.stdout.receive_some(65536)).decode())
        flood_end = time.monotonic()
        await trio.sleep(1)
        flood_fps = fps(player, flood_start, flood_end)
        assert_video_matches(player, publisher, flood_start)
        assert flood_fps >= 0.8 * baseline_fps, (flood_fps, baseline_fps)
        # No state for unauthenticated sources: the routes are exactly the two sessions'.
        assert (len(server.mux._by_ufrag), len(server.mux._by_address)) == routes
        read = sum(server.mux.received.values()) - received_before
        kernel_drops = udp_receive_errors() - kernel_drops_before
        # Every datagram sent was either read (and counted by kind) or dropped by the kernel.
        hostile = sum(report["sent"].values())
        assert read + kernel_drops >= hostile
        text = metrics.render(server.http.registry).decode()
        for kind in ("stun", "dtls", "rtp", "unknown"):
            assert f'kind="{kind}"' in text
        pub_transport = next(
            s.transport for c in server.connections for s in c.sessions.values() if s.publish
        )
        assert pub_transport.peer.srtp is not None
        replay_drops = sum(pub_transport.peer.srtp.counters.values())
        assert replay_drops >= replays * 0.9
        return {
            "sent": report["sent"],
            "seconds": report["seconds"],
            "read_by_server": read,
            "kernel_receive_buffer_drops": kernel_drops,
            "replayed_srtp": replays,
            "srtp_drops": replay_drops,
            "dropped_by_reason": dict(server.mux.dropped),
            "ice_drops": {
                k: v
                for c in server.connections
                for s in c.sessions.values()
                for k, v in (s.transport.peer.ice.counters.items())
            },
            "fps_before": round(baseline_fps, 1),
            "fps_during": round(flood_fps, 1),
        }


async def test_udp_fuzz_beside_a_playing_session(aio: AsyncioThread) -> None:
    figures = await flood_beside_a_session(aio, 60_000, 10_000)
    print(json.dumps(figures))


@pytest.mark.slow
async def test_udp_fuzz_full_size(aio: AsyncioThread) -> None:
    figures = await flood_beside_a_session(aio, 1_000_000, 10_000)
    print(json.dumps(figures))
