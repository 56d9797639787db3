"""The compiled fan-out (_fastpath.c, built by setup.py) against the Python one: the same bytes on the wire.

tests/media/fastpath_scenario.py plays one deterministic stream to several players over real sockets
and real SRTP; it runs here in two interpreters (compiled, and TRIO_SFU_PURE_PYTHON=1) and in this one
(the compiled `fan_out` against the plain `for consumer in consumers: consumer.forward(...)` loop over
the same compiled state); its VP8 simulcast part (picture ids and TL0PICIDX renumbered per player,
temporal layers dropped) is checked to do what it says. The rest checks which packets take the
compiled route (a steady VP8 simulcast player's included), and that the compiled types keep their
references straight.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trio_sfu.media import fanout
from trio_sfu.media.consumer import Consumer
from trio_sfu.media.producer import Producer
from trio_sfu.media.rewriter import HeaderMap
from trio_sfu.media.totals import Totals
from trio_sfu.server.session import ChannelBacklog
from trio_sfu.transport.dtls import SrtpKeys, SrtpProfile
from trio_sfu.transport.srtp import SrtpSession
from trio_sfu.wire.rtp import parse_rtp
from trio_sfu.wire.vp8 import Vp8Descriptor, parse_descriptor

from ..support.media_model import (
    C_ABS,
    C_MID,
    C_TCC,
    CHROMIUM_VIDEO_SSRC,
    CHROMIUM_VP8,
    FakeLink,
    header,
    play,
    publish,
    rtp_packet,
)
from .fastpath_scenario import (
    PROFILES,
    SHARED_ENV,
    VP8_STATE,
    CountingConsumer,
    Player,
    make_player,
    player_keys,
    pure_fan_out,
    run_all,
    vp8_simulcast,
)

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = "from tests.media.fastpath_scenario import main; main()"

needs_compiled = pytest.mark.skipif(
    not fanout.COMPILED,
    reason="the compiled fan-out is not in use here (not built, or TRIO_SFU_PURE_PYTHON=1): "
    "nothing compiled to compare",
)


# Where the extension is built (setup.py); the first name is where trio_sfu.media.fanout imports it from.
FASTPATH_MODULES = ("trio_sfu.media._fastpath", "trio_sfu._fastpath")


def compiled_module() -> Any:
    """The compiled extension module (ImportError where it was not built)."""
    if fanout.COMPILED:
        return sys.modules[fanout.fan_out.__module__]
    errors = []
    for name in FASTPATH_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as error:
            errors.append(f"{name}: {error}")
    raise ImportError("; ".join(errors))


# --------------------------------------------------------------------------- the build


def test_the_extension_is_built_where_a_c_compiler_exists() -> None:
    """CI with a compiler must not silently fall back to the Python path (setup.py builds the
    extension with optional=True: a failed build only warns)."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) here: the Python fan-out is the expected one")
    try:
        module = compiled_module()
    except ImportError as error:
        pytest.fail(
            f"a C compiler exists but the compiled fan-out does not import ({error}): run `pip install -e .`"
        )
    assert callable(module.fan_out)
    if os.environ.get(fanout.PURE_PYTHON_ENV, "") in ("", "0"):
        assert fanout.COMPILED
        assert fanout.fan_out is module.fan_out and fanout.Outlet is module.Outlet


def pure_fanout_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """trio_sfu/media/fanout.py loaded again with TRIO_SFU_PURE_PYTHON=1: its Python classes."""
    monkeypatch.setenv(fanout.PURE_PYTHON_ENV, "1")
    path = Path(fanout.__file__)
    spec = importlib.util.spec_from_file_location("_fanout_pure_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.COMPILED is False
    return module


def attribute_names(cls: type) -> set[str]:
    """The data attributes of a compiled type (members and getters; not its methods)."""
    return {name for name in dir(cls) if not name.startswith("__") and not callable(getattr(cls, name))}


@needs_compiled
def test_compiled_types_have_the_python_fallback_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    pure, compiled = pure_fanout_module(monkeypatch), compiled_module()
    assert set(pure.Lane.__slots__) == attribute_names(compiled.Lane)
    # The sent-sequence map is two typed arrays in Python, two C arrays there.
    assert set(pure.Outlet.__slots__) - {"_sent_input", "_sent_output"} == attribute_names(compiled.Outlet)
    assert set(pure.Wire.__slots__) - {"_keep"} == attribute_names(compiled.Wire)
    assert compiled.MAX_INPUT == 1500 - 144  # pylibsrtp's buffer less its longest trailer


@needs_compiled
def test_sent_sequence_map_matches_the_python_one(monkeypatch: pytest.MonkeyPatch) -> None:
    pure, compiled = pure_fanout_module(monkeypatch).Outlet(), compiled_module().Outlet()
    rng = random.Random(7)
    outputs = [0, 1, 1023, 1024, 65535, 65535 - 1024, *(rng.randrange(0x10000) for _ in range(3000))]
    for output in outputs:
        source = rng.randrange(0x10000)
        pure.record_sent(output, source)
        compiled.record_sent(output, source)
        probe = rng.choice([output, (output + 1024) & 0xFFFF, rng.randrange(0x10000)])
        assert compiled.sent_source(probe) == pure.sent_source(probe)
    assert [compiled.sent_source(o) for o in range(0x10000)] == [pure.sent_source(o) for o in range(0x10000)]


# --------------------------------------------------------------------------- the scenario


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON values first differ, for a readable failure."""
    if type(a) is not type(b):
        return f"{path}: {a!r:.200} != {b!r:.200}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}/{key}: only in {'the first' if key in a else 'the second'}"
            found = first_difference(a[key], b[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None if len(a) == len(b) else f"{path}: {len(a)} items != {len(b)}"
    return None if a == b else f"{path}: {a!r:.200} != {b!r:.200}"


def assert_same_runs(compiled: dict[str, Any], python: dict[str, Any]) -> None:
    difference = first_difference(compiled["runs"], python["runs"])
    assert difference is None, f"compiled and Python fan-out differ at {difference}"
    assert compiled["runs"] == python["runs"]


def assert_substantial(output: dict[str, Any]) -> None:
    """The scenario did what it says (so equal outputs mean something)."""
    for profile in PROFILES:
        run = output["runs"][profile.name]
        players, consumers = run["players"], run["consumers"]
        for name, player in players.items():
            assert len(player["datagrams"]) >= 200, name
        for name, player in run["simulcast"]["players"].items():
            assert len(player["datagrams"]) >= 30, name
        assert consumers["blocked/video"]["counters"]["backlog_full"] > 0
        assert run["totals"]["blocked"]["drop_fanout_queue_full"] > 0
        assert players["gone"]["send_errors"] > 0
        assert players["aiortc"]["protect_failed"] > 0  # over the protect limit
        assert consumers["aiortc/video"]["counters"]["nack_answered"] >= 2
        assert consumers["aiortc/video"]["counters"]["nack_missed"] >= 1
        assert consumers["aiortc/video"]["counters"]["probe_bytes"] > 0
        assert consumers["aiortc/video"]["counters"]["keyframe_cache_starts"] == 1
        assert consumers["late/video"]["counters"]["keyframe_cache_starts"] == 1
        assert consumers["unconnected/audio"]["counters"]["not_connected"] > 0
        assert run["simulcast"]["players"]["switching"]["video"]["counters"]["layer_switches"] == 2
        for consumer in consumers.values():
            assert consumer["rewriter"]["packets"] > 0
            assert consumer["sender_report"] is not None
        # Sequence numbers wrapped on the way out (the pinned start is 65450).
        assert consumers["aiortc/video"]["rewriter"]["last_sequence"] < 65450
        assert_vp8_substantial(profile, run["vp8_simulcast"])


VP8_PLAYERS = ("steady-q", "capped", "switching", "steady-h", "blocked-h", "settled", "joiner")
VP8_WINDOWS = ("steady-q", "capped", "switching", "steady-h", "settled", "joiner")  # blocked-h: its backlog


def vp8_received(
    profile: SrtpProfile, player: dict[str, Any]
) -> list[tuple[Vp8Descriptor | None, int | None]]:
    """The VP8 descriptor (None: cut short) and TL0PICIDX (None: none) of each media packet (not RTX)
    the player could open, in arrival order (replays, of duplicates and plain resends, left out)."""
    keys = player_keys(profile, player["index"])
    receiver = SrtpSession(SrtpKeys(profile, local_key=keys.remote_key, remote_key=keys.local_key))
    received = []
    for datagram in player["datagrams"]:
        packet = receiver.unprotect_rtp(bytes.fromhex(datagram))
        parsed = parse_rtp(packet) if packet is not None else None
        if packet is None or parsed is None or parsed.ssrc != player["ssrc"]:
            continue
        descriptor = parse_descriptor(packet, parsed.header_length)
        tl0 = None
        if descriptor is not None and descriptor.tl0_at >= 0:
            tl0 = packet[parsed.header_length + descriptor.tl0_at]
        received.append((descriptor, tl0))
    return received


def assert_numbered_without_gaps(values: list[tuple[int, int]], late: int) -> None:
    """Each (value, modulus) is the newest so far, one more than it, or (a late packet, a picture
    before a dropped one) at most `late` behind it: the player sees no gap. Across moduli (7-bit and
    15-bit picture ids: a switch between layers), the smaller one's bits are compared."""
    newest: tuple[int, int] | None = None
    for value, modulus in values:
        if newest is not None:
            mask = min(modulus, newest[1]) - 1
            step = (value - newest[0]) & mask
            assert step in (0, 1) or mask + 1 - step <= late, (newest, value)
            if step != 1:
                continue
        newest = (value, modulus)


def assert_vp8_substantial(profile: SrtpProfile, vp8: dict[str, Any]) -> None:
    """The VP8 simulcast part did what it says: switches, caps, wraparound, odd descriptors."""
    players = vp8["players"]
    assert set(players) == set(VP8_PLAYERS)
    counters = {name: player["video"]["counters"] for name, player in players.items()}
    for name in ("steady-q", "steady-h"):
        assert set(counters[name]) <= {"nack_answered"}, (name, counters[name])
    assert counters["settled"]["layer_switches"] == 1
    switching = counters["switching"]
    assert (switching["layer_switches"], switching["layer_targets"]) == (3, 6)
    assert switching["nack_previous_layer"] == 1 and switching["nack_answered"] >= 2
    assert switching["probe_bytes"] > 0
    capped = counters["capped"]
    assert capped["layer_switches"] == 1 and capped["temporal_drops"] >= 30
    assert capped["temporal_switches"] >= 4 and capped["nack_answered"] >= 2 and capped["probe_bytes"] > 0
    assert counters["joiner"]["keyframe_cache_starts"] == 1
    # Dropped pictures were pending for a while (the numbering went through Python's _drops_after).
    drops = VP8_STATE.index("drops")
    assert any(state[drops] for state in players["capped"]["trace"])
    assert all(offered >= 100 for offered in vp8["windows"].values()), vp8["windows"]

    received = {name: vp8_received(profile, player) for name, player in players.items()}
    for name, packets in received.items():
        assert len(packets) >= 300, name
        pictures = [
            (d.picture_id, 0x8000 if d.wide else 0x80)
            for d, _ in packets
            if d is not None and d.picture_at >= 0
        ]
        assert_numbered_without_gaps(pictures, late=4)
        assert_numbered_without_gaps([(tl0, 0x100) for _, tl0 in packets if tl0 is not None], late=1)

    def steps(name: str, wide: bool) -> set[tuple[int, int]]:
        """Consecutive picture ids (of one width) the player received."""
        ids = [
            d.picture_id for d, _ in received[name] if d is not None and d.picture_at >= 0 and d.wide == wide
        ]
        return set(itertools.pairwise(ids))

    def tl0_steps(name: str) -> set[tuple[int, int]]:
        return set(itertools.pairwise(tl0 for _, tl0 in received[name] if tl0 is not None))

    # Picture id and TL0PICIDX wraparound, in and out (the steady players' numbers are the publisher's).
    for name in ("steady-q", "switching", "joiner"):
        assert (0x7FFF, 0) in steps(name, True) and (255, 0) in tl0_steps(name), name
    assert (127, 0) in steps("steady-h", False) and (255, 0) in tl0_steps("steady-h")
    assert (1, 0x7FFF) in steps("steady-q", True)  # the late packet of picture 0x7FFF
    # Both widths (the 7-bit layer and the others) where a player moved between them, and packets
    # with no picture id (the f layer, the descriptor variants) or no descriptor at all (cut short).
    for name in ("settled", "switching", "capped"):
        assert steps(name, True) and steps(name, False), name
    assert any(d is not None and d.picture_at < 0 for d, _ in received["switching"])
    assert sum(d is None for d, _ in received["steady-q"]) == 2


def assert_decrypts(output: dict[str, Any]) -> None:
    """Every datagram is SRTP the player can open with its keys (only replays, of the duplicates and
    the resends without RTX, are refused)."""
    for profile in PROFILES:
        run = output["runs"][profile.name]
        players = run["players"] | run["simulcast"]["players"] | run["vp8_simulcast"]["players"]
        for name, player in players.items():
            keys = player_keys(profile, player["index"])
            receiver = SrtpSession(SrtpKeys(profile, local_key=keys.remote_key, remote_key=keys.local_key))
            opened = [receiver.unprotect_rtp(bytes.fromhex(d)) for d in player["datagrams"]]
            refused = dict(receiver.counters)
            assert set(refused) <= {"rtp_replay"}, (profile.name, name, refused)
            assert refused.get("rtp_replay", 0) <= 4, (profile.name, name, refused)
            assert sum(p is not None for p in opened) >= 30


def run_scenario(pure: bool, *, shared: bool = False) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONHASHSEED="1234")
    env[fanout.PURE_PYTHON_ENV] = "1" if pure else "0"
    env[SHARED_ENV] = "1" if shared else "0"
    return subprocess.Popen(
        [sys.executable, "-c", SCENARIO],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scenario_output(process: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    output: dict[str, Any] = json.loads(stdout)
    return output


def without_send_errors(output: dict[str, Any]) -> dict[str, Any]:
    """The runs with the players' send error counts left out: sent through the shared socket, a
    datagram to a closed port is not refused on the spot; its ICMP error reaches the player's own
    socket, which the server's reader counts (ConnectedUdp.receive_into; the scenario's sockets do not
    share a port, so here it reaches nobody). tests/e2e/test_media_faults.py checks that count."""
    runs = json.loads(json.dumps(output["runs"]))
    for run in runs.values():
        for player in run["players"].values():
            player.pop("send_errors")
    return {"runs": runs}


def test_scenario_gives_identical_datagrams_compiled_and_in_python() -> None:
    processes = run_scenario(pure=True), run_scenario(pure=False), run_scenario(pure=False, shared=True)
    python, compiled, shared = (scenario_output(process) for process in processes)
    assert python["compiled"] is False
    assert_substantial(python)
    assert_decrypts(python)
    if not compiled["compiled"]:
        pytest.skip("the compiled fan-out is not built here: only the Python path ran (see the build test)")
    assert_same_runs(compiled, python)
    assert_same_runs(without_send_errors(shared), without_send_errors(python))
    # The compiled runs did take their own route: most packets never reached a Python `forward`, and
    # their send found the blocked player's kernel buffer full (batched: sendmmsg could not send its
    # datagram, a Unix socket pair's address, on the UDP socket, and the player's own socket refused it).
    for run in (compiled, shared):
        for profile in PROFILES:
            ours, theirs = run["forward_calls"][profile.name], python["forward_calls"][profile.name]
            assert ours["blocked/would_block"] > 0 and theirs["blocked/would_block"] == 0
            for name in ("aiortc/video", "chromium/video", "late/video", "simulcast/staying"):
                assert ours[name] * 2 < theirs[name], (name, ours[name], theirs[name])
    # Batched, most datagrams came through the shared socket; without it, none.
    assert "shared" not in python["received"] and "shared" not in compiled["received"]
    assert shared["received"]["shared"] > 2 * shared["received"]["own"], shared["received"]


@needs_compiled
def test_compiled_fan_out_matches_the_python_loop_in_process() -> None:
    """The same state types (compiled), fanned out by `_fastpath.fan_out` or by the plain loop."""
    compiled = run_all(compiled_module().fan_out)
    python = run_all(pure_fan_out)
    assert_same_runs(compiled, python)
    assert_substantial(compiled)
    for profile in PROFILES:
        ours, theirs = compiled["forward_calls"][profile.name], python["forward_calls"][profile.name]
        assert ours["blocked/would_block"] > 0
        # The VP8 simulcast part's are left out here (test_vp8_simulcast_steady_players_take_the_compiled_path
        # is about them; "vp8-window/" counts are a subset of "vp8/" ones).
        main = [name for name in theirs if not name.startswith("vp8")]
        assert sum(ours[name] for name in main) * 2 < sum(theirs[name] for name in main)


@needs_compiled
def test_vp8_simulcast_steady_players_take_the_compiled_path() -> None:
    """A simulcast VP8 player in its steady case (all temporal layers, no layer switch pending, its
    picture numbering in sync, no dropped picture pending) is renumbered and sent by the compiled
    fan-out: its Python `forward` runs for fewer than half of its packets. Over the whole run for the
    players that never switch nor are capped; over each player's steady stretch (`windows`: after its
    switch, its join from the keyframe cache, its cap lifted and its drops forgotten by a switch) for
    all. (That the bytes are the same either way, the scenario tests above check.)"""
    for profile in PROFILES:
        result = vp8_simulcast(profile)
        summary, calls = result["summary"], result["calls"]
        offered, windows = summary["offered"], summary["windows"]
        assert set(windows) == set(VP8_WINDOWS)
        # The blocked player's socket refused packets on the compiled path, which queued them (with
        # its own picture numbers: the scenario's bytes are compared above).
        assert calls["vp8-would-block/blocked-h"] > 0
        slow = {
            f"{name}, whole run": (calls[f"vp8/{name}"], offered[name])
            for name in ("steady-q", "steady-h")
            if calls[f"vp8/{name}"] * 2 >= offered[name]
        }
        slow |= {
            f"{name}, steady stretch": (calls[f"vp8-window/{name}"], count)
            for name, count in windows.items()
            if calls[f"vp8-window/{name}"] * 2 >= count
        }
        assert not slow, f"{profile.name}: (Python forward calls, packets fanned out to it): {slow}"


# --------------------------------------------------------------------------- which route a packet takes


class Bench:
    """One VP8 track, one player (a real socket and SRTP), fanned out by the compiled fan-out."""

    def __init__(self, *, players: int = 1, shared_totals: Totals | None = None) -> None:
        published = publish()
        self.link = FakeLink()
        self.producer = Producer(next(t for t in published.tracks if t.kind == "video"), self.link)
        producers = {"video": self.producer, "audio": Producer(published.tracks[0], self.link)}
        self.profile = SrtpProfile.AEAD_AES_128_GCM
        self.players: list[Player] = []
        for index in range(players):
            totals = shared_totals if shared_totals is not None else Totals()
            player = make_player(
                f"p{index}",
                index,
                "aiortc_offer_play",
                published.tracks,
                producers,
                player_keys(self.profile, index),
                totals,
                backlog=8,
            )
            video = player.consumers["video"]
            video.update_mute(False, 1.0)
            self.producer.add_player(video)
            self.players.append(player)
        self.player = self.players[0]
        self.consumer = self.player.consumers["video"]
        self.sink = self.player.sink
        self.sequence = 1000
        self.timestamp = 90000
        self.now = 1.0
        self.receivers = [
            SrtpSession(
                SrtpKeys(self.profile, local_key=p.sink.keys.remote_key, remote_key=p.sink.keys.local_key)
            )
            for p in self.players
        ]

    def packet(
        self,
        *,
        key: bool = False,
        size: int = 40,
        sequence: int | None = None,
        payload_type: int = CHROMIUM_VP8,
    ) -> bytes:
        if sequence is None:
            sequence = self.sequence
            self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp += 3000
        self.now += 0.033
        payload = (b"\x10\x50" if key else b"\x10\x51") + bytes(
            (sequence * 5 + 7 * i) & 0xFF for i in range(size)
        )
        return rtp_packet(
            sequence,
            self.timestamp,
            CHROMIUM_VIDEO_SSRC,
            payload_type,
            payload,
            extensions=[(C_ABS, b"\x01\x02\x03"), (C_TCC, b"\x00\x07"), (C_MID, b"1")],
        )

    def send(self, packet: bytes | None = None, **options: Any) -> bytes:
        packet = self.packet(**options) if packet is None else packet
        self.producer.receive(packet, header(packet), self.now)
        return packet

    def datagrams(self, index: int = 0) -> list[bytes]:
        """What player `index` received since the last call, as received."""
        sink = self.players[index].sink
        sink.receive()
        datagrams, sink.datagrams = sink.datagrams, []
        return datagrams

    def received(self, index: int = 0) -> list[bytes]:
        """What player `index` received since the last call, decrypted."""
        datagrams = self.datagrams(index)
        opened = [self.receivers[index].unprotect_rtp(d) for d in datagrams]
        assert None not in opened, self.receivers[index].counters
        return [p for p in opened if p is not None]

    def expected(self, packet: bytes, consumer: Consumer | None = None) -> bytes:
        """What the Python path makes of `packet` for `consumer`, numbered as it was last."""
        consumer = self.consumer if consumer is None else consumer
        rewriter = consumer.rewriter
        rewriter.header_map._last_in = None  # mapped afresh, not the compiled path's copy
        mapped = rewriter.header_map.apply(packet, header(packet), self.now)
        return rewriter.patch(mapped, rewriter.last_sequence, rewriter.last_timestamp)

    def start(self) -> None:
        """The first keyframe (through `forward`: it syncs the rewriter), received."""
        key = self.send(key=True)
        assert self.received() == [self.expected(key)]

    def steady(self, count: int = 3) -> None:
        """In-order packets: none reaches the Python `forward`, each arrives as Python would make it."""
        for _ in range(count):
            calls = self.consumer.forward_calls
            packet = self.send()
            assert self.consumer.forward_calls == calls, "a steady packet took the Python path"
            assert self.received() == [self.expected(packet)]

    def close(self) -> None:
        for player in self.players:
            player.sink.close()


@pytest.fixture
def bench() -> Iterator[Bench]:
    bench = Bench()
    yield bench
    bench.close()


@needs_compiled
def test_the_first_packets_take_python_then_steady_ones_do_not(bench: Bench) -> None:
    assert not bench.consumer._ready  # video waits for a keyframe
    bench.send()
    assert bench.consumer.forward_calls == 1 and bench.received() == []
    key = bench.send(key=True)
    assert bench.consumer.forward_calls == 2 and bench.consumer._ready
    assert bench.received() == [bench.expected(key)]
    before = (
        bench.consumer.rewriter.packets,
        bench.consumer.rewriter.octets,
        bench.sink.totals.rtp_packets_out,
    )
    bench.steady(5)
    rewriter = bench.consumer.rewriter
    assert rewriter.packets == before[0] + 5 and rewriter.octets == before[1] + 5 * 42
    assert bench.sink.totals.rtp_packets_out == before[2] + 5
    # The NACK map and the sender-report offset were kept on the compiled path too.
    assert bench.consumer.sent_source(rewriter.last_sequence) == (bench.sequence - 1) & 0xFFFF
    assert bench.consumer._timestamp_offset == (rewriter.last_timestamp - bench.timestamp) & 0xFFFFFFFF
    assert rewriter.last_sent_at == bench.now


Condition = Callable[[Bench], Callable[[], None]]


def awaiting_keyframe(bench: Bench) -> Callable[[], None]:
    bench.consumer.awaiting_keyframe = True

    def restore() -> None:
        bench.send(key=True)

    return restore


def backlogged(bench: Bench) -> Callable[[], None]:
    bench.consumer.backlogged = 1  # as if one packet were queued: the rest queue behind it

    def restore() -> None:
        bench.player.pump()  # the forwarding task sends the queue
        assert len(bench.received()) == 3
        bench.consumer.backlogged -= 1  # and the one we made up
        assert bench.consumer.backlogged == 0

    return restore


def target_set(bench: Bench) -> Callable[[], None]:
    track = attrs.evolve(bench.producer.negotiated, ssrc=CHROMIUM_VIDEO_SSRC + 99)
    other = Producer(track, bench.link, rid="h")
    bench.consumer.select_layer(other, bench.now)

    def restore() -> None:
        bench.consumer.select_layer(bench.producer, bench.now)

    return restore


def socket_gone(bench: Bench) -> Callable[[], None]:
    bench.sink.wire.fd = -1

    def restore() -> None:
        bench.sink.wire.fd = bench.sink.sender.fileno()

    return restore


def wire_detached(bench: Bench) -> Callable[[], None]:
    bench.sink.wire.detach()
    return bench.sink.connect


def muted(bench: Bench) -> Callable[[], None]:
    bench.consumer.rewriter.mute(bench.now)

    def restore() -> None:
        bench.consumer.rewriter.unmute(bench.now)
        bench.send()  # splices: the Python path
        bench.received()

    return restore


CONDITIONS: dict[str, tuple[Condition, bool, bool]] = {
    # name: (condition, the consumer's own gate closes, the packet still reaches the player)
    "awaiting keyframe": (awaiting_keyframe, True, False),
    "backlogged": (backlogged, True, False),
    "layer target set": (target_set, True, True),
    "no connected socket (fd -1)": (socket_gone, False, True),
    "wire detached": (wire_detached, False, True),
    "muted": (muted, False, False),
}


@needs_compiled
@pytest.mark.parametrize("name", list(CONDITIONS))
def test_a_consumer_off_the_steady_case_goes_through_forward(bench: Bench, name: str) -> None:
    condition, gated, delivered = CONDITIONS[name]
    bench.start()
    bench.steady(2)
    restore = condition(bench)
    assert bench.consumer._ready is not gated
    for _ in range(3):
        calls = bench.consumer.forward_calls
        packet = bench.send()
        assert bench.consumer.forward_calls == calls + 1
        assert bench.received() == ([bench.expected(packet)] if delivered else [])
    restore()
    bench.received()
    assert bench.consumer._ready
    bench.steady(3)


@needs_compiled
def test_late_duplicate_unmapped_oversize_and_foreign_packets_go_through_forward(bench: Bench) -> None:
    bench.start()
    bench.steady(2)
    calls = bench.consumer.forward_calls

    def through_forward(packet: bytes, received: int) -> None:
        nonlocal calls
        bench.send(packet)
        calls += 1
        assert bench.consumer.forward_calls == calls
        assert len(bench.datagrams()) == received

    newest = (bench.sequence - 1) & 0xFFFF
    bench.sequence += 1  # one missing
    bench.steady(1)
    through_forward(bench.packet(sequence=newest + 1), 1)  # late, and forwarded in its place
    through_forward(bench.producer.cached(newest) or b"", 1)  # a duplicate is forwarded again
    through_forward(bench.packet(size=1400), 0)  # too long to protect, dropped (counted by SRTP)
    assert bench.sink.srtp is not None and bench.sink.srtp.counters["rtp_protect_failed"] == 1
    bench.steady(1)
    # A payload type the player did not negotiate: dropped, and until the rewriter forgets the drop
    # (MAX_MISORDER packets later) every packet is numbered in Python.
    through_forward(bench.packet(payload_type=100), 0)
    through_forward(bench.packet(), 1)
    assert bench.consumer.rewriter._drops
    bench.sequence += 1100
    through_forward(bench.packet(), 1)  # prunes the drop list
    assert not bench.consumer.rewriter._drops
    bench.steady(2)

    # Another SSRC (the publisher restarted): spliced in Python, then steady again on it.
    def foreign() -> bytes:
        packet = bytearray(bench.packet())
        packet[8:12] = (CHROMIUM_VIDEO_SSRC + 1).to_bytes(4, "big")
        return bytes(packet)

    through_forward(foreign(), 1)
    assert bench.consumer.rewriter._input_ssrc == CHROMIUM_VIDEO_SSRC + 1
    for _ in range(3):
        packet = foreign()
        bench.send(packet)
        assert bench.consumer.forward_calls == calls
        assert bench.received() == [bench.expected(packet)]


@needs_compiled
def test_objects_other_than_consumers_are_called_by_name(bench: Bench) -> None:
    seen: list[int] = []

    class Tap:
        def forward(self, packet: bytes, header: Any, now: float) -> None:
            seen.append(header.sequence)

    bench.producer.consumers.insert(0, Tap())  # type: ignore[arg-type]
    bench.start()
    bench.steady(2)
    assert seen == [1000, 1001, 1002]


class Boom(Exception):
    pass


class Exploding(CountingConsumer):
    __slots__ = ()

    def forward(self, packet: bytes, header: Any, now: float) -> None:
        raise Boom


@needs_compiled
def test_an_exception_in_one_forward_stops_the_round_with_totals_counted() -> None:
    """As the Python loop: the consumers before it sent (and are counted), those after it did not."""
    totals = Totals()
    bench = Bench(players=3, shared_totals=totals)
    try:
        first, middle, last = (p.consumers["video"] for p in bench.players)
        bench.send(key=True)
        for index in range(3):
            bench.received(index)
        sent_before, last_packets = totals.rtp_packets_out, last.rewriter.packets

        middle.__class__ = Exploding
        middle.awaiting_keyframe = True  # off the steady case: its forward is called
        with pytest.raises(Boom):
            bench.send()
        assert len(bench.received(0)) == 1 and bench.received(2) == []
        assert totals.rtp_packets_out == sent_before + 1
        assert last.rewriter.packets == last_packets
        assert first.rewriter.packets == last_packets + 1
    finally:
        bench.close()


# --------------------------------------------------------------------------- references


@needs_compiled
def test_fan_out_leaves_reference_counts_as_it_found_them(bench: Bench) -> None:
    bench.start()
    bench.steady(3)
    watched = [bench.consumer, bench.consumer.rewriter, bench.consumer.rewriter.header_map, bench.sink.totals]
    watched += [
        bench.sink.wire,
        bench.sink.srtp,
        bench.consumer.rewriter._drops,
        bench.consumer.rewriter._pt_map,
    ]
    before = [sys.getrefcount(o) for o in watched]
    for _ in range(200):
        bench.send()
    bench.received()
    after = [sys.getrefcount(o) for o in watched]
    assert after == before
    # The mapped packet of the round is released: only its header map holds it (and the call).
    mapped_refs = sys.getrefcount(bench.consumer.rewriter.header_map._last_out)
    assert mapped_refs == 2


@needs_compiled
def test_consumers_made_and_dropped_are_freed() -> None:
    bench = Bench()
    try:
        played = {
            name: next(t for t in play(publish().tracks, name).tracks if t.kind == "video")
            for name in ("aiortc_offer_play", "chromium_offer_play", "firefox_offer_play_max_bundle")
        }
        bench.start()
        bench.steady(1)
        refs: list[weakref.ref[CountingConsumer]] = []
        maps: list[weakref.ref[HeaderMap]] = []
        gc.collect()
        gc.disable()  # no cycle to collect: reference counts alone must free them
        try:
            for round_ in range(150):
                track = attrs.evolve(list(played.values())[round_ % 3], ssrc=0x70000000 + round_)
                send, _ = trio.open_memory_channel[bytes](8)
                consumer = CountingConsumer("churn", bench.producer, track, bench.sink, ChannelBacklog(send))
                bench.producer.add_player(consumer)
                bench.send(key=True)
                bench.send()
                bench.send()
                assert consumer.forward_calls == 1  # the first packet only: the others were compiled
                refs.append(weakref.ref(consumer))
                maps.append(weakref.ref(consumer.rewriter.header_map))
                bench.producer.remove_player(consumer)
                del consumer, send, _
                assert refs[-1]() is None, "a consumer outlived its last reference"
                bench.datagrams()
        finally:
            gc.enable()
        assert all(ref() is None for ref in refs)
        # The header maps went with their rewriters, but for the one the bench's own player uses.
        alive = {id(m) for ref in maps if (m := ref()) is not None}
        assert alive == {id(bench.consumer.rewriter.header_map)}
        assert list(bench.producer.header_maps.values()) == [bench.consumer.rewriter.header_map]
        gc.collect()
        living = {id(o) for o in gc.get_objects() if isinstance(o, CountingConsumer)}
        assert living == {id(c) for c in bench.player.consumers.values()}
    finally:
        bench.close()


class Holder:
    __slots__ = ("__weakref__", "ref")

    def __init__(self) -> None:
        self.ref: object = None


@needs_compiled
def test_cycles_through_the_compiled_types_are_collected(bench: Bench) -> None:
    """Each compiled type reports what it holds to the collector (tp_traverse): a cycle through it
    is freed. A slot the collector cannot see would keep these alive forever."""
    compiled = compiled_module()
    dead: list[weakref.ref[Holder]] = []

    # Outlet.totals
    consumer = CountingConsumer(
        "x", bench.producer, bench.consumer.played, bench.sink, bench.consumer._backlog
    )
    holder = Holder()
    holder.ref, consumer.totals = consumer, holder  # type: ignore[assignment]
    dead.append(weakref.ref(holder))
    # Outlet.rewriter and Lane.header_map
    lane_holder = Holder()
    lane_holder.ref, consumer.rewriter.header_map = consumer, lane_holder  # type: ignore[assignment]
    dead.append(weakref.ref(lane_holder))
    # Outlet._wire and Wire.keep
    wire = compiled.Wire()
    wire_holder = Holder()
    wire.attach(1, 1, wire_holder)  # never sent with: no socket
    wire_holder.ref, consumer._wire = consumer, wire
    dead.append(weakref.ref(wire_holder))
    # Lane._drops (not a list of ints now: the compiled path would decline it; none runs here)
    drops_holder = Holder()
    consumer.rewriter._drops = [drops_holder]  # type: ignore[list-item]
    drops_holder.ref = consumer
    dead.append(weakref.ref(drops_holder))
    consumer_ref = weakref.ref(consumer)
    del consumer, holder, lane_holder, wire, wire_holder, drops_holder
    gc.collect()
    assert consumer_ref() is None
    assert [ref() for ref in dead] == [None] * len(dead)


@needs_compiled
def test_a_wire_holds_its_srtp_session_while_attached(bench: Bench) -> None:
    srtp = SrtpSession(bench.sink.keys)
    wire = compiled_module().Wire()
    assert (wire.fd, wire.attached) == (-1, False)
    # (Counted outside the asserts: pytest's rewriting of them holds references of its own.)
    base = sys.getrefcount(srtp)
    wire.attach(*srtp.fanout_handles, srtp)
    wire.attach(*srtp.fanout_handles, srtp)  # again: replaces, does not add
    attached = sys.getrefcount(srtp)
    assert wire.attached and attached == base + 1
    wire.fd = 5
    wire.detach()
    detached = sys.getrefcount(srtp)
    assert (wire.fd, wire.attached) == (-1, False) and detached == base
    wire.attach(*srtp.fanout_handles, srtp)
    del wire
    freed = sys.getrefcount(srtp)
    assert freed == base


@needs_compiled
def test_a_wire_shares_only_a_connected_socket_and_forgets_it_with_a_new_one() -> None:
    wire = compiled_module().Wire()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as shared,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own,
    ):
        shared.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="no connected socket"):
            wire.share(shared.fileno())
        wire.fd = own.fileno()
        with pytest.raises(OSError):  # not connected: no peer to send to
            wire.share(shared.fileno())
        assert wire.shared_fd == -1
        own.connect(shared.getsockname())
        wire.share(shared.fileno())
        assert wire.shared_fd == shared.fileno()
        wire.fd = own.fileno()  # a new socket (here the same number): its peer is read again
        assert wire.shared_fd == -1
        wire.share(shared.fileno())
        wire.share(-1)
        assert (wire.fd, wire.shared_fd) == (own.fileno(), -1)
        wire.share(shared.fileno())
        wire.detach()
        assert (wire.fd, wire.shared_fd) == (-1, -1)


def _udp_pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    """A player's receiving socket and the server's socket connected to it (non-blocking)."""
    receiver, sender = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family, socket.SOCK_DGRAM)
    receiver.bind((host, 0))
    sender.bind((host, 0))
    sender.connect(receiver.getsockname())
    receiver.setblocking(False)
    sender.setblocking(False)
    return receiver, sender


@needs_compiled
def test_batched_sends_go_through_each_family_s_shared_socket_in_order() -> None:
    """35 IPv4 players (more than one batch) then 5 IPv6 ones (the batch changes socket): every
    steady packet reaches every player once, from its family's shared socket, as Python makes it."""
    bench = Bench(players=40)
    shared = {
        socket.AF_INET: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        socket.AF_INET6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    }
    try:
        shared[socket.AF_INET].bind(("127.0.0.1", 0))
        shared[socket.AF_INET6].bind(("::1", 0))
        for index, player in enumerate(bench.players):
            family, host = (socket.AF_INET, "127.0.0.1") if index < 35 else (socket.AF_INET6, "::1")
            sink = player.sink
            sink.sender.close()
            sink.receiver.close()
            sink.receiver, sink.sender = _udp_pair(family, host)
            sink.wire.fd = sink.sender.fileno()
            sink.wire.share(shared[family].fileno())
        bench.send(key=True)
        for index in range(40):
            assert len(bench.received(index)) == 1, index  # the keyframe, through Python's forward
        calls = [player.consumers["video"].forward_calls for player in bench.players]
        for _ in range(3):
            packet = bench.send()
            for index, player in enumerate(bench.players):
                consumer = player.consumers["video"]
                datagram, source = player.sink.receiver.recvfrom(4096)
                assert source[:2] == shared[player.sink.receiver.family].getsockname()[:2], index
                opened = bench.receivers[index].unprotect_rtp(datagram)
                assert opened == bench.expected(packet, consumer), index
                with pytest.raises(BlockingIOError):
                    player.sink.receiver.recvfrom(4096)
        assert [player.consumers["video"].forward_calls for player in bench.players] == calls  # compiled
    finally:
        for sock in shared.values():
            sock.close()
        bench.close()
