"""scripts/bench.py works end to end (its --quick mode), and its client-side pieces are right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trio_sfu.testing.offer import LocalParams, build_offer, parse_answer
from trio_sfu.wire.sdp import parse_offer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.media import DEFAULT_PATH, Media, packetize  # noqa: E402
from benchlib.run import percentile  # noqa: E402
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
def test_quick_benchmark_end_to_end(tmp_path: Path) -> None:
    """`scripts/bench.py --quick`: a real server process, publisher and subscribers (N = 1, 5)."""
    output = tmp_path / "quick.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--no-progress",
         "--json", str(output)],
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
    assert "CPU µs/pkt" in completed.stdout
