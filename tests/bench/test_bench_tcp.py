"""scripts/bench.py with players over ICE-TCP: the deframing of its receive loop, the candidate it
connects to, and `--quick --transport both` end to end (UDP players, then TCP players, same server)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib.proto import tcp_candidate  # noqa: E402
from benchlib.subscriber import FrameReader  # noqa: E402


def test_frames_are_read_whole_whatever_pieces_they_come_in() -> None:
    """A length split from its body, a body over several reads, two frames in one send; then the end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reader = FrameReader(ours)
    assert reader.read() is None  # nothing yet
    theirs.send(b"\x00")
    assert reader.read() is None  # half a length
    theirs.send(b"\x05ab")
    assert reader.read() is None  # the length, and part of the body
    theirs.send(b"cd")
    assert reader.read() is None
    theirs.send(b"e\x00\x02xy\x00\x00\x00\x01z")  # its end, a frame, an empty frame, a frame
    frames = [reader.read() for _ in range(4)]
    assert [frame and frame[0] for frame in frames] == [b"abcde", b"xy", None, b"z"]
    assert reader.read() is None
    theirs.close()
    with pytest.raises(EOFError):
        reader.read()
    ours.close()


def test_the_passive_tcp_candidate_is_found_in_the_answer() -> None:
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
        "a=candidate:2 1 tcp 1518280447 ::1 40001 typ host tcptype passive\r\n"
        "a=candidate:3 1 tcp 1518280447 127.0.0.1 40000 typ host tcptype passive\r\n"
    )
    assert tcp_candidate(sdp) == ("127.0.0.1", 40000)
    assert tcp_candidate(sdp.replace("tcptype passive", "tcptype active")) is None
    assert tcp_candidate("a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n") is None


@pytest.mark.bench
def test_quick_benchmark_with_tcp_players(tmp_path: Path) -> None:
    """`scripts/bench.py --quick --transport both`: for N = 1 and 5 a run with UDP players, then one with
    TCP players against the same server command; both in the table and the JSON, and TCP/UDP ratios."""
    output = tmp_path / "quick-tcp.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--no-progress",
         "--transport", "both", "--json", str(output)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    results = json.loads(output.read_text())
    runs = results["runs"]
    assert [(run["n"], run["transport"]) for run in runs] == [(1, "udp"), (1, "tcp"), (5, "udp"), (5, "tcp")]
    (command,) = results["servers"].values()  # one server command for the UDP and the TCP runs
    assert "--config" in command
    for run in runs:
        assert run["ok"], run.get("error")
        assert run["legs"] == run["n"] and run["legs_failed"] == 0, run["leg_failures"]
        assert run["forwarded_pps"] > 150 * run["n"]
        assert run["loss_pct"] < 5
        assert run["decrypted_packets"] > 0 and run["srtp_auth_failures_total"] == 0
        assert run["e2e_latency_ms"]["samples"] > 0
        assert run["first_keyframe_s"] is not None and not run["probe_errors"]
        assert run["server_log"]["tracebacks"] == 0 and run["server_log"]["exit_code"] == 0
        tcp = run["server_tcp_counters"]
        assert tcp["since_start"]["refused_per_address"] == 0
        if run["transport"] == "tcp":
            # Every player (and every probe so far) came over ICE-TCP; nothing was framed wrongly.
            assert tcp["since_start"]["accepted"] >= run["n"]
            counters = run["worker_counters"][0]
            assert not counters.get("tcp_closed") and not counters.get("recv_error")
        else:
            assert tcp["since_start"]["accepted"] == 0
    assert [row["n"] for row in results["ratios_tcp_over_udp"]] == [1, 5]
    assert all(row["server_us_per_packet"] for row in results["ratios_tcp_over_udp"])
    assert "players" in completed.stdout and "ratios TCP/UDP players" in completed.stdout
