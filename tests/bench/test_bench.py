"""scripts/bench.py works end to end (its --quick mode), and its client-side pieces are right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trio_sfu.media.negotiation import EXT_RID, TransportParameters, answer_publish
from trio_sfu.testing.offer import (
    SIMULCAST_RIDS,
    LocalParams,
    build_offer,
    parse_answer,
    simulcast_answer_problem,
)
from trio_sfu.wire.keyframe import vp8, vp8_keyframe_size
from trio_sfu.wire.rtcp import Pli, serialize_compound
from trio_sfu.wire.sdp import parse_offer
from trio_sfu.wire.vp8 import parse_descriptor

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.capacity import Criteria, shortfall  # noqa: E402
from benchlib.media import DEFAULT_PATH, Media, packetize  # noqa: E402
from benchlib.publisher import Sender  # noqa: E402
from benchlib.run import ServerProcess, percentile  # noqa: E402
from benchlib.subscriber import FINE_WIDTH, is_vp8_keyframe_start  # noqa: E402


def test_offers_are_accepted_by_the_server_parser() -> None:
    from trio_sfu.transport.certificate import Certificate

    local = LocalParams.new(Certificate.generate(), 50000)
    for publish in (True, False):
        offer = parse_offer(build_offer(local, publish=publish))
        assert offer.bundle == ("0", "1")
        assert offer.setup == "active"
        assert [m.kind for m in offer.media] == ["audio", "video"]
        assert all(m.sends == publish and m.receives != publish for m in offer.media)
        uris = {e.uri for m in offer.media for e in m.header_extensions}
        assert "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time" in uris
        if publish:
            assert [m.ssrcs[0].ssrc for m in offer.media] == [local.audio_ssrc, local.video_ssrc]


def test_simulcast_offer_is_answered_with_three_layers() -> None:
    from trio_sfu.transport.certificate import Certificate

    local = LocalParams.new(Certificate.generate(), 50000)
    offer = parse_offer(build_offer(local, publish=True, rids=SIMULCAST_RIDS))
    audio, video = offer.media
    assert video.simulcast_send == ("q", "h", "f") and not video.ssrcs  # as Chromium: no a=ssrc
    assert [s.ssrc for s in audio.ssrcs] == [local.audio_ssrc]
    assert EXT_RID in {e.uri for e in video.header_extensions}
    ours = TransportParameters("abcd", "0123456789012345678901", "AB:CD", (("127.0.0.1", 4000),))
    answer = parse_answer(answer_publish(offer, ours).answer)
    assert answer.sections[1].simulcast == "recv q;h;f"
    assert simulcast_answer_problem(answer, SIMULCAST_RIDS) is None
    plain = parse_answer(answer_publish(parse_offer(build_offer(local, publish=True)), ours).answer)
    assert "a=simulcast:recv q;h;f" in (simulcast_answer_problem(plain, SIMULCAST_RIDS) or "")


class _Local:
    audio_ssrc, video_ssrc, cname = 1111, 2223, "bench"


class _Transport:
    local = _Local()
    srtp = None


async def test_simulcast_layers() -> None:
    """Three layers of the same frames: f as the media file's (two descriptor bytes more), h and q cut
    but still keyframes of a half and quarter size; L1T3 TIDs 0 2 1 2 from each keyframe; a keyframe
    request for one layer's SSRC makes only that layer's next frame a keyframe."""
    media = Media.load(DEFAULT_PATH)
    sender = Sender(media, _Transport(), 2.5, rids=SIMULCAST_RIDS)  # type: ignore[arg-type]
    q, h, f = sender.layers
    assert len({q.ssrc, h.ssrc, f.ssrc, _Local.audio_ssrc}) == 4
    assert 1.4 < sender.pacing_bps / (2.5 * media.bitrate) < 1.55  # the pacer covers every layer
    frames: dict[str, list[list[bytes]]] = {"q": [], "h": [], "f": []}
    for i in range(12):
        if i == 6:
            later = trio.current_time() + 1  # past KEYFRAME_MIN_INTERVAL after the first keyframe
            sender.on_rtcp(serialize_compound([Pli(sender_ssrc=1, media_ssrc=h.ssrc)]), later)
        for layer, _, _, payload in sender.next_frame():
            if parse_descriptor(payload, 0).frame_start:  # type: ignore[union-attr]
                frames[layer.rid or ""].append([])
            frames[layer.rid or ""][-1].append(payload)
    sizes = {rid: sum(len(p) for frame in fs for p in frame) for rid, fs in frames.items()}
    assert sizes["q"] < sizes["h"] < sizes["f"]
    assert [p[6:] for p in frames["f"][0]] == [p[4:] for p in media.video[0].payloads]
    for rid, picture in (("q", (160, 120)), ("h", (320, 240)), ("f", (640, 480))):
        tids, keys = [], []
        for frame in frames[rid]:
            descriptor = parse_descriptor(frame[0], 0)
            assert descriptor is not None and descriptor.wide
            tids.append((descriptor.temporal_id, descriptor.layer_sync))
            keys.append(vp8(frame[0]))
            if vp8(frame[0]):
                assert vp8_keyframe_size(frame[0]) == picture
        expected = [(0, False), (2, True), (1, True), (2, False)] * 3
        if rid == "h":  # asked for a keyframe at frame 6: it restarts the pattern there
            assert keys == [True] + [False] * 5 + [True] + [False] * 5
            expected = expected[:6] + expected[:6]
        else:
            assert keys == [True] + [False] * 11
        assert tids == expected
    assert sender.counters["keyframe_jumps_h"] == 1 and not sender.counters["keyframe_jumps"] - 1


def test_answer_parsing() -> None:
    answer = parse_answer(
        "v=0\r\na=ice-lite\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\n"
        "a=ice-pwd:0123456789012345678901\r\na=fingerprint:sha-256 AB:CD\r\n"
        "a=candidate:1 1 udp 2130706431 ::1 4000 typ host\r\n"
        "a=candidate:2 1 udp 2130706431 127.0.0.1 4000 typ host\r\na=ssrc:42 cname:x\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"
    )
    assert answer.address == ("127.0.0.1", 4000)
    assert answer.ssrcs == {"audio": 42}
    assert answer.payload_types == {"audio": 111}


def test_vp8_keyframe_detection() -> None:
    header = bytes([0x90, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]) + bytes([0xBE, 0xDE, 0, 1, 0x22, 1, 2, 3])
    keyframe, delta = packetize(b"\x10" + bytes(50)), packetize(b"\x11" + bytes(50))
    assert is_vp8_keyframe_start(header + keyframe[0])
    assert not is_vp8_keyframe_start(header + delta[0])
    continuation = packetize(b"\x10" + bytes(3000))[1]
    assert not is_vp8_keyframe_start(header + continuation)


def test_latency_percentiles() -> None:
    fine = [0] * 4096
    fine[10], fine[100] = 98, 2
    assert percentile(fine, [0] * 2048, 0.5) == pytest.approx(10.5 * FINE_WIDTH)
    assert percentile(fine, [0] * 2048, 0.99) == pytest.approx(100.5 * FINE_WIDTH)


def test_media_fixture() -> None:
    media = Media.load(DEFAULT_PATH)
    assert DEFAULT_PATH.stat().st_size < 2_000_000
    assert media.video[0].keyframe
    assert 1.2e6 < media.video_bitrate() < 1.7e6
    assert 220 < media.packets_per_second() < 250


@pytest.mark.bench
@pytest.mark.parametrize("simulcast", [False, True], ids=["one-layer", "simulcast"])
def test_quick_benchmark_end_to_end(tmp_path: Path, simulcast: bool) -> None:
    """`scripts/bench.py --quick`: a real server process, publisher and subscribers (N = 1, 5); with
    --simulcast the publisher sends three layers and each player still gets one."""
    output = tmp_path / "quick.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--no-progress",
         "--json", str(output), *(["--simulcast"] if simulcast else [])],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(output.read_text())
    runs = results["runs"]
    assert [run["n"] for run in runs] == [1, 5]
    for run in runs:
        assert run["ok"], run.get("error")
        assert run["legs"] == run["n"] and run["legs_failed"] == 0
        assert run["forwarded_pps"] > 150 * run["n"]
        assert run["loss_pct"] < 5
        assert run["decrypted_packets"] > 0 and run["decrypted_on_full_legs"] > 0
        assert run["srtp_auth_failures_total"] == 0
        # The headline latency is the send log's (the server stamps abs-send-time with its own clock).
        assert run["e2e_latency_ms"]["samples"] > 0
        assert run["first_keyframe_s"] is not None and not run["probe_errors"]
        assert run["server_log"]["tracebacks"] == 0 and run["server_log"]["exit_code"] == 0
        assert run["keyframe_cache_bytes"]["max"] > 0 and not run["metrics_errors"]
        if simulcast:
            assert run["simulcast_layers"] == ["q", "h", "f"]
            assert all(pps > 150 for pps in run["published_layer_pps"].values())
            # Players get one layer: what each receives is what the publisher sends of audio and f.
            assert 0.9 < run["delivery_ratio"] < 1.1
    assert "CPU µs/pkt" in completed.stdout and "kf cache KB" in completed.stdout


def _startup(tmp_path: Path, text: str) -> ServerProcess:
    server = ServerProcess.__new__(ServerProcess)  # no process: only the start-up line parsing
    server.stdout_path = tmp_path / "server.stdout"
    server.stdout_path.write_text(text)
    server.ws_url, server.media_port, server.http_url = "", 0, ""
    server.workers, server.supervisor_pid = None, 0
    server.worker_media_ports, server.worker_cluster_urls = {}, {}
    server._read_startup_lines()
    return server


def test_startup_lines(tmp_path: Path) -> None:
    """One process; a supervisor and its workers (interleaved, the last line still being written)."""
    single = _startup(
        tmp_path,
        "signaling  ws://127.0.0.1:8080/ws\nmedia      udp [::1]:40001\nmedia      udp 127.0.0.1:40000\n"
        "http       http://127.0.0.1:8081/\n",
    )
    assert (single.ws_url, single.media_port, single.http_url) == (
        "ws://127.0.0.1:8080/ws", 40000, "http://127.0.0.1:8081/"
    )
    assert single.workers is None and not single.worker_media_ports
    cluster = _startup(
        tmp_path,
        "signaling  ws://127.0.0.1:8080/ws\nhttp       http://127.0.0.1:8081/\nsupervisor 2 workers, pid 77\n"
        "media      udp 127.0.0.1:40001 (worker 1)\nmedia      udp 127.0.0.1:40000 (worker 0)\n"
        "cluster    ws://127.0.0.1:9001/ws (worker 1)\nmedia      udp 127.0.0.1:4",
    )
    assert (cluster.workers, cluster.supervisor_pid) == (2, 77)
    assert cluster.worker_media_ports == {0: 40000, 1: 40001} and cluster.media_port == 40000
    assert cluster.worker_cluster_urls == {1: "ws://127.0.0.1:9001/ws"}


def test_capacity_criteria() -> None:
    good = {"ok": True, "n": 100, "legs": 100, "legs_failed": 0, "loss_pct": 0.0, "delivery_ratio": 1.0,
            "e2e_latency_ms": {"p99": 12.0, "samples": 10}, "closed_by_server": []}
    criteria = Criteria(max_p99_ms=50)
    assert shortfall(good, criteria) is None
    assert "p99" in (shortfall({**good, "e2e_latency_ms": {"p99": 80.0, "samples": 10}}, criteria) or "")
    assert "loss" in (shortfall({**good, "loss_pct": 0.5}, criteria) or "")
    assert "delivery" in (shortfall({**good, "delivery_ratio": 0.5}, criteria) or "")
    assert "legs" in (shortfall({**good, "legs": 90}, criteria) or "")
    assert "failed" in (shortfall({"ok": False, "error": "boom"}, criteria) or "")


def test_capacity_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step up until a run fails, then bisect; servers alternate; a ceiling is said to be one."""
    import benchlib.capacity as capacity
    from benchlib.progress import Progress
    from benchlib.run import Options

    limits = {"A": 230, "B": 5000}
    order: list[tuple[str, int]] = []

    def fake_run(label: str, command: list[str], n: int, *args: object) -> dict[str, object]:
        order.append((label, n))
        p99 = 10.0 if n <= limits[label] else 90.0
        return {"ok": True, "server": label, "n": n, "legs": n, "legs_failed": 0, "loss_pct": 0.0,
                "delivery_ratio": 1.0, "e2e_latency_ms": {"p99": p99, "samples": 1}, "closed_by_server": []}

    monkeypatch.setattr(capacity, "run_case", fake_run)
    criteria = Criteria(start=100, step=100, max=400, resolution=10)
    _, report = capacity.find_capacity(
        [("A", ["a"]), ("B", ["b"])], Options(subscribers=[]), criteria, 1, Progress(enabled=False)
    )
    assert [n for label, n in order if label == "A"] == [100, 200, 300, 250, 225, 237, 231]
    assert order[:4] == [("A", 100), ("B", 100), ("A", 200), ("B", 200)]
    assert report["A"]["capacity"] == 225 and report["A"]["failed_at"] == 231  # within resolution
    assert report["B"]["capacity"] == 400 and report["B"]["at_ceiling"]
    lines = "\n".join(capacity.capacity_lines(report, criteria))
    assert ">=400" in lines and "raise the ceiling" in lines


@pytest.mark.bench
def test_workers_benchmark(tmp_path: Path) -> None:
    """`--workers 2`: the CPU of the supervisor and both workers, the legs per worker (from their
    answers' ports), and with legs on both workers the relay's added latency."""
    output = tmp_path / "workers.json"
    server = (f"{sys.executable} -m trio_sfu --signal 127.0.0.1:0 --http 127.0.0.1:0 --media 127.0.0.1:0 "
              "--log-level warning --workers 2")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--server-cmd", server, "--subscribers", "8",
         "--duration", "2", "--settle", "0.5", "--probes", "1", "--no-progress", "--json", str(output)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    run = json.loads(output.read_text())["runs"][0]
    assert run["ok"], run.get("error")
    assert run["legs"] == 8 and run["legs_failed"] == 0, run["leg_failures"]
    assert run["server_workers"] == 2 and len(run["worker_media_ports"]) == 2
    assert run["origin_worker"] in (0, 1)
    assert sum(run["legs_per_worker"].values()) == 8
    processes = run["server_processes"]
    assert set(processes) == {"supervisor", "worker 0", "worker 1"}
    assert all(p["cpu_pct"] is not None and not p["restarted"] for p in processes.values())
    assert processes["worker 0"]["cpu_pct"] > 0 and processes["worker 1"]["cpu_pct"] > 0
    # The server's CPU is the whole tree's: the supervisor's and the workers' (10 ms ticks apart).
    assert abs(sum(p["cpu_pct"] for p in processes.values()) - run["server_cpu_pct"]) < 5
    assert run["server_log"]["tracebacks"] == 0 and run["server_log"]["exit_code"] == 0
    assert "workers: w0" in completed.stdout
    if all(run["legs_per_worker"].values()):  # the kernel put legs on both (all but ~1 run in 128)
        relay = run["relay"]
        assert relay["direct"]["samples"] > 0 and relay["relayed"]["samples"] > 0
        assert relay["added_latency_p50_ms"] is not None and relay["relay_cpu_us_per_packet"] is not None
        assert "relay added latency p50/p99" in completed.stdout
