"""Orchestration: one server process, one publisher process, subscriber worker processes; the
measurement window; the figures; the table and the JSON.

The orchestrator itself is plain blocking Python: it only starts processes, sends them commands over
pipes, and reads /proc at the edges of the measurement window. After the window it also reads the
server's /metrics (a server that prints an `http http://...` start-up line: trio_sfu does, Janus
does not) for its keyframe cache gauges: once at the window's end and five times in the second after
each probe, which spreads the samples over a few seconds (the cache grows from one keyframe to the
next, so the largest sample is what the stream's cache holds at most).

"Forwarded" packets are those the subscribers receive: with a simulcast publisher (`Options.simulcast`)
the server takes in three video layers but forwards one to each player, so the publisher's packets
count nowhere in the per-packet figure; its delivery ratio is against audio and the top layer.

A run's players connect over UDP or over ICE-TCP (its `transport`; `Options.transports` are those of
the whole invocation, run in alternation for each server and N). When TCP players are in the
invocation, every run of it also reads the server's ICE-TCP counters and its `stream_congestion` drops
(whole frames dropped for a TCP player whose connection's queue is full) just before the window and
again after it (`server_tcp_counters`): in the window, and in all since the server started.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import attrs

from . import janus, procfs
from .media import Media
from .progress import Progress
from .publisher import PublisherConfig, run_publisher
from .sendlog import SendLog
from .subscriber import COARSE_WIDTH, FINE_WIDTH, WorkerConfig, run_worker

SATURATED = 0.90  # of one core
MACHINE_SATURATED = 0.90  # of all the machine's CPUs


@attrs.define
class Options:
    subscribers: list[int]
    duration: float = 10.0
    settle: float = 2.0
    probes: int = 5
    legs_per_worker: int = 75
    decrypt_every: int = 8
    pacing: float = 2.5
    media_path: Path = Path()
    token: str = ""
    stream: str = "bench"
    setup_concurrency: int = 8
    ramp_timeout: float = 60.0
    keep_logs: Path | None = None
    janus_event_loops: int = 0
    simulcast: bool = False  # the publisher sends three simulcast video layers (see publisher.py)
    # How the players connect, each in turn for every (server, N, round): "udp", "tcp" (ICE-TCP).
    transports: tuple[str, ...] = ("udp",)
    # --pin: the CPUs the server under test (trio_sfu or Janus alike) runs on (None: unpinned).
    server_cpus: set[int] | None = None

    @property
    def tcp_metrics(self) -> bool:
        """Whether runs read the server's ICE-TCP counters around the window (see the docstring)."""
        return "tcp" in self.transports

    def run_name(self, label: str, transport: str) -> str:
        """How progress and problems name a run's series: the server alone when every player is UDP."""
        return label if self.transports == ("udp",) else f"{label} ({transport} players)"


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- the server


JANUS = "janus"
"""The server command that means: Debian's Janus with a generated loopback-only configuration."""
KEYFRAME_CACHE_BYTES = "trio_sfu_keyframe_cache_bytes"
KEYFRAME_CACHE_PACKETS = "trio_sfu_keyframe_cache_packets"
METRICS = (KEYFRAME_CACHE_BYTES, KEYFRAME_CACHE_PACKETS)
"""What the bench reads from a server's /metrics: its keyframe caches (the sum over every producer:
with the bench's one publisher, what one stream holds; with simulcast, its three layers together)."""
METRICS_PER_PROBE = 5  # /metrics samples in the second after each probe
TCP_METRICS = {
    "stream_congestion_drops": 'trio_sfu_dropped_packets_total{reason="stream_congestion"}',
    "send_queue_full": "trio_sfu_ice_tcp_send_queue_full_total",
    "accepted": "trio_sfu_ice_tcp_accepted_total",
    "refused_per_address": 'trio_sfu_ice_tcp_refused_total{reason="refused_per_address"}',
    "refused_total": 'trio_sfu_ice_tcp_refused_total{reason="refused_total"}',
    "handshake_timeouts": 'trio_sfu_ice_tcp_refused_total{reason="handshake_timeouts"}',
    "open": "trio_sfu_ice_tcp_connections",
}
"""The ICE-TCP figures read around the window when TCP players are benched (our name: the sample's
name on /metrics). With `--workers N` one worker answers each scrape: its own counters only."""


MEDIA_LINE = re.compile(r"media\s+udp\s+127\.0\.0\.1:(\d+)(?:\s+\(worker (\d+)\))?\s*$")
SUPERVISOR_LINE = re.compile(r"supervisor\s+(\d+) workers?, pid (\d+)")
CLUSTER_LINE = re.compile(r"cluster\s+(\S+)\s+\(worker (\d+)\)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """The server under test, alone in its process (tree), its output in files that cannot fill up."""

    def __init__(
        self, command: list[str], workdir: Path, janus_event_loops: int = 0, cpus: set[int] | None = None
    ) -> None:
        self.janus_url = ""
        if command == [JANUS]:
            janus.prepare_network()
            port = _free_port()
            command = janus.write_config(workdir / "janus", port, janus_event_loops)
            self.janus_url = f"http://127.0.0.1:{port}/janus"
        if cpus is not None:  # --pin: every server on the same CPUs (taskset, so the command line shows it)
            command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *command]
        self.command = command
        self.stdout_path = workdir / "server.stdout"
        self.stderr_path = workdir / "server.stderr"
        # In the run's own directory: `python -m` puts the working directory first on sys.path, so from
        # a checkout it would import that tree's trio_sfu whatever PYTHONPATH the command sets.
        self.proc = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.ws_url = ""
        self.media_port = 0  # a single process's (its last 127.0.0.1 one), or worker 0's
        self.http_url = ""  # from the `http http://...` start-up line, if the server prints one
        # `--workers N` (a `supervisor N workers, pid P` line): each worker's media port and cluster URL
        # from its `media udp 127.0.0.1:PORT (worker i)` and `cluster ws://... (worker i)` lines.
        self.workers: int | None = None
        self.supervisor_pid = 0
        self.worker_media_ports: dict[int, int] = {}
        self.worker_cluster_urls: dict[int, str] = {}
        self.returncode: int | None = None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Read the `signaling ws://...` and `media udp ...` start-up lines (Janus: ask its HTTP API);
        a supervisor of N workers: until every worker printed its media line."""
        deadline = time.monotonic() + timeout
        if self.janus_url:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"Janus exited ({self.proc.returncode}): {self.stderr_tail()}")
                try:
                    body = json.dumps({"janus": "info", "transaction": "ready"}).encode()
                    with urllib.request.urlopen(self.janus_url, body, timeout=2) as reply:
                        if json.load(reply).get("janus") == "server_info":
                            self.ws_url = self.janus_url
                            return
                except (OSError, ValueError):
                    time.sleep(0.1)
            raise BenchError(f"Janus did not answer within {timeout} s: {self.stderr_tail()}")
        while time.monotonic() < deadline:
            self._read_startup_lines()
            workers_ready = self.workers is None or len(self.worker_media_ports) >= self.workers
            if self.ws_url and self.media_port and workers_ready:
                return
            if self.proc.poll() is not None:
                raise BenchError(f"the server exited ({self.proc.returncode}): {self.stderr_tail()}")
            time.sleep(0.05)
        raise BenchError(f"no start-up lines from the server within {timeout} s: {self.stderr_tail()}")

    def _read_startup_lines(self) -> None:
        # Only whole lines: the last one may still be being written (several processes print here).
        for line in self.stdout_path.read_text(errors="replace").split("\n")[:-1]:
            fields = line.split()
            if line.startswith("signaling") and len(fields) >= 2:
                self.ws_url = fields[1]
            elif media := MEDIA_LINE.match(line):
                if media[2] is None:
                    self.media_port = int(media[1])
                else:  # a worker's (a restarted worker prints it again, maybe with another port)
                    self.worker_media_ports[int(media[2])] = int(media[1])
                    self.media_port = self.worker_media_ports[min(self.worker_media_ports)]
            elif cluster := CLUSTER_LINE.match(line):
                self.worker_cluster_urls[int(cluster[2])] = cluster[1]
            elif supervisor := SUPERVISOR_LINE.match(line):
                self.workers, self.supervisor_pid = int(supervisor[1]), int(supervisor[2])
            elif line.startswith("http ") and len(fields) >= 2 and fields[1].startswith("http://127.0.0.1:"):
                self.http_url = fields[1].rstrip("/") + "/"

    def metrics(self, names: tuple[str, ...] = METRICS) -> dict[str, float] | None:
        """These gauges and counters (without labels) from the server's /metrics; None if the server
        has no HTTP port it told us of. Raises OSError or ValueError if it fails to answer."""
        if not self.http_url and not self.janus_url:
            self._read_startup_lines()  # its http line may have come after the ones wait_ready waits for
        if not self.http_url:
            return None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
        with opener.open(self.http_url + "metrics", timeout=5) as reply:
            text = reply.read().decode("utf-8", "replace")
        found: dict[str, float] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] in names:
                found[fields[0]] = float(fields[1])
        return found

    def pids(self) -> list[int]:
        return procfs.children(self.proc.pid)

    def process_groups(self) -> dict[str, list[int]]:
        """A supervisor's process tree by role: `worker i` (the process started with `--worker-index i`
        and its descendants) and `supervisor` (the rest: the supervisor, and any wrapper around it);
        {} for a single process."""
        if self.workers is None:
            return {}
        tree = self.pids()
        groups: dict[str, list[int]] = {}
        for pid in tree:
            args = procfs.cmdline(pid)
            if "--worker-index" in args[:-1]:
                groups[f"worker {args[args.index('--worker-index') + 1]}"] = procfs.children(pid)
        in_workers = {pid for pids in groups.values() for pid in pids}
        groups["supervisor"] = [pid for pid in tree if pid not in in_workers]
        return groups

    def stderr_tail(self, lines: int = 5) -> str:
        text = self.stderr_path.read_text(errors="replace").strip().splitlines()
        if self.janus_url:  # Janus logs to stdout
            text += self.stdout_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.returncode = self.proc.returncode

    def log_summary(self) -> dict[str, Any]:
        lines = self.stderr_path.read_text(errors="replace").splitlines()
        if self.janus_url:  # Janus logs to stdout: "[WARN] ...", "[ERR] ..."
            janus_lines = self.stdout_path.read_text(errors="replace").splitlines()
            benign = ("has been disabled, skipping", "mDNS resolution disabled")  # our configuration
            lines += [
                line.replace("[WARN]", "level=warning").replace("[ERR]", "level=error")
                for line in janus_lines
                if not any(text in line for text in benign)
            ]
        problems = [
            line for line in lines
            if "level=warning" in line or "level=error" in line or "Traceback" in line
        ]
        events: dict[str, int] = {}
        for line in problems:
            kind = next((f[6:] for f in line.split() if f.startswith("event=")), None)
            if kind is None and self.janus_url:  # "[date] level=warning [handle id] message..."
                text = line.split("level=", 1)[-1].split(None, 1)[-1]
                kind = re.sub(r"\d+", "N", text)[:70]
            if kind:
                events[kind] = events.get(kind, 0) + 1
        return {
            "exit_code": self.returncode,
            "warnings": sum("level=warning" in line for line in lines),
            "errors": sum("level=error" in line for line in lines),
            "tracebacks": sum("Traceback" in line for line in lines),
            "events": events,
            "first_problems": problems[:5],
        }


# --------------------------------------------------------------------------- child processes


class Child:
    def __init__(self, name: str, target: Any, config: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=target, args=(child_conn, config), name=name, daemon=True)
        self.process.start()
        child_conn.close()
        self.stash: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, message: dict[str, Any]) -> None:
        self.conn.send(message)

    def wait_event(self, *kinds: str, timeout: float) -> dict[str, Any]:
        """The next event of one of `kinds`; other events are kept for whoever asks for them."""
        for i, event in enumerate(self.stash):
            if event.get("event") in kinds:
                return self.stash.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.conn.poll(remaining):
                raise BenchError(f"{self.name}: no {'/'.join(kinds)} event within {timeout:.0f} s")
            try:
                received: dict[str, Any] = self.conn.recv()
            except EOFError:
                raise BenchError(f"{self.name} exited (code {self.process.exitcode})") from None
            if received.get("event") in kinds:
                return received
            self.stash.append(received)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send({"cmd": "stop"})
            self.process.join(3)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _events(children: list[Child], timeout: float) -> list[tuple[Child, dict[str, Any]]]:
    """Every event available within `timeout` from any child (stashed ones first)."""
    out = [(child, event) for child in children for event in child.stash]
    for child in children:
        child.stash.clear()
    if out:
        return out
    by_conn = {child.conn: child for child in children}
    for conn in wait(list(by_conn), timeout):
        child = by_conn[conn]  # type: ignore[index]
        assert isinstance(conn, Connection)
        try:
            while conn.poll():
                out.append((child, conn.recv()))
        except EOFError:
            raise BenchError(f"{child.name} exited (code {child.process.exitcode})") from None
    return out


# --------------------------------------------------------------------------- one run


@attrs.define
class Reading:
    at: float
    server_cpu: float
    child_cpu: dict[str, float]
    drops: dict[int, int]
    server_sockets: set[int]
    publisher: dict[str, Any]
    workers: list[dict[str, Any]]
    # A supervisor's processes by role (ServerProcess.process_groups): CPU seconds and pids.
    server_groups: dict[str, tuple[float, tuple[int, ...]]]
    machine_cpu: tuple[float, float]  # (busy, total) CPU seconds of the machine, all CPUs


@attrs.define
class Baseline:
    """A supervisor's processes' CPU seconds over `seconds` with the publisher sending and no player
    (taken before the ramp-up), and the packets the publisher sent meanwhile."""

    seconds: float
    cpu: dict[str, float]
    published: int


BASELINE_S = 3.0


def _baseline(server: ServerProcess, publisher: Child, seconds: float = BASELINE_S) -> Baseline:
    def read() -> tuple[float, dict[str, tuple[float, tuple[int, ...]]], int]:
        publisher.send({"cmd": "snapshot"})
        at = time.monotonic()
        groups = {
            role: (procfs.cpu_seconds(pids), tuple(sorted(pids)))
            for role, pids in server.process_groups().items()
        }
        return at, groups, int(publisher.wait_event("snapshot", timeout=10).get("packets", 0))

    at, before, sent = read()
    time.sleep(seconds)
    at_end, after, sent_end = read()
    return Baseline(
        seconds=at_end - at,
        cpu={role: cpu - before[role][0] for role, (cpu, pids) in after.items()
             if role in before and before[role][1] == pids},
        published=sent_end - sent,
    )


def _reading(server: ServerProcess, publisher: Child, workers: list[Child]) -> Reading:
    for child in (publisher, *workers):
        child.send({"cmd": "snapshot"})
    at = time.monotonic()
    machine_cpu = procfs.machine_cpu()
    pids = server.pids()
    server_cpu = procfs.cpu_seconds(pids)
    groups = {
        role: (procfs.cpu_seconds(group), tuple(sorted(group)))
        for role, group in server.process_groups().items()
    }
    child_cpu = {child.name: procfs.cpu_seconds([child.pid]) for child in (publisher, *workers)}
    drops = procfs.udp_drops()
    server_sockets = procfs.socket_inodes(pids)
    return Reading(
        at=at,
        server_cpu=server_cpu,
        child_cpu=child_cpu,
        drops=drops,
        server_sockets=server_sockets,
        server_groups=groups,
        machine_cpu=machine_cpu,
        publisher=publisher.wait_event("snapshot", timeout=10),
        workers=[worker.wait_event("snapshot", timeout=10) for worker in workers],
    )


def percentile(fine: list[int], coarse: list[int], q: float) -> float | None:
    """The q-quantile (seconds) of the latency histogram, at bucket centres."""
    total = sum(fine) + sum(coarse)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(fine):
        seen += count
        if seen >= rank:
            return (i + 0.5) * FINE_WIDTH
    for i, count in enumerate(coarse):
        seen += count
        if seen >= rank:
            return (i + 0.5) * COARSE_WIDTH
    return None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _diff_lists(after: list[int], before: list[int]) -> list[int]:
    return [a - (before[i] if i < len(before) else 0) for i, a in enumerate(after)]


def figures(
    start: Reading,
    end: Reading,
    server: ServerProcess,
    n: int,
    origin_port: int | None = None,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """The window's figures. `origin_port`: the media port the publisher's answer named (with
    --workers N: the origin worker's); `baseline`: see _cluster_figures."""
    seconds = end.at - start.at
    delivered_per_leg: list[int] = []
    leg_ports: list[int] = []  # the server media port each leg's answer named, as delivered_per_leg
    e2e_by_port: dict[int, tuple[list[int], list[int]]] = {}
    expected = 0
    fine = [0] * len(start.workers[0]["fine"])
    coarse = [0] * len(start.workers[0]["coarse"])
    e2e_fine = [0] * len(start.workers[0]["e2e_fine"])
    e2e_coarse = [0] * len(start.workers[0]["e2e_coarse"])
    decrypted = decrypted_all = 0
    srtp_after: dict[str, int] = {}
    srtp_window: dict[str, int] = {}
    for before, after in zip(start.workers, end.workers, strict=True):
        delivered_per_leg += _diff_lists(after["packets"], before["packets"])
        leg_ports += after.get("ports", [0] * len(after["packets"]))
        for port, histogram in after.get("e2e_by_port", {}).items():
            earlier = before.get("e2e_by_port", {}).get(port, {"fine": [], "coarse": []})
            total = e2e_by_port.setdefault(
                port, ([0] * len(histogram["fine"]), [0] * len(histogram["coarse"]))
            )
            for i, count in enumerate(_diff_lists(histogram["fine"], earlier["fine"])):
                total[0][i] += count
            for i, count in enumerate(_diff_lists(histogram["coarse"], earlier["coarse"])):
                total[1][i] += count
        expected += sum(_diff_lists(after["expected"], before["expected"]))
        fine = [a + b for a, b in zip(fine, _diff_lists(after["fine"], before["fine"]), strict=True)]
        coarse = [a + b for a, b in zip(coarse, _diff_lists(after["coarse"], before["coarse"]), strict=True)]
        e2e_fine = [
            a + b for a, b in zip(e2e_fine, _diff_lists(after["e2e_fine"], before["e2e_fine"]), strict=True)
        ]
        e2e_coarse = [
            a + b
            for a, b in zip(e2e_coarse, _diff_lists(after["e2e_coarse"], before["e2e_coarse"]), strict=True)
        ]
        decrypted += after["decrypted"] - before["decrypted"]
        decrypted_all += after["decrypted_all_legs"] - before["decrypted_all_legs"]
        for key, value in after["srtp"].items():
            srtp_after[key] = srtp_after.get(key, 0) + value
            srtp_window[key] = srtp_window.get(key, 0) + value - before["srtp"].get(key, 0)
    delivered = sum(delivered_per_leg)
    server_cpu = end.server_cpu - start.server_cpu
    published = end.publisher.get("packets", 0) - start.publisher.get("packets", 0)
    # What one player can get: with simulcast, audio and one video layer (the top one, at best).
    layers: list[str] = end.publisher.get("simulcast_layers") or []
    playable = published
    if layers:
        keys = ("audio_packets", f"video_packets_{layers[-1]}")
        playable = sum(end.publisher.get(key, 0) - start.publisher.get(key, 0) for key in keys)
    legs = len(delivered_per_leg)
    drops = {inode: end.drops[inode] - start.drops.get(inode, 0) for inode in end.drops}
    server_drops = sum(drops.pop(inode, 0) for inode in start.server_sockets | end.server_sockets)
    children = {
        name: (end.child_cpu[name] - start.child_cpu[name]) / seconds for name in end.child_cpu
    }
    subscriber_cpu = [load for name, load in children.items() if name.startswith("subscribers")]
    lost = expected - delivered
    machine_busy = end.machine_cpu[0] - start.machine_cpu[0]
    machine_total = end.machine_cpu[1] - start.machine_cpu[1]
    return {
        "window_s": seconds,
        "legs": legs,
        "published_pps": published / seconds,
        "delivered_packets": delivered,
        "forwarded_pps": delivered / seconds,
        "server_cpu_s": server_cpu,
        "server_cpu_pct": 100 * server_cpu / seconds,
        "server_us_per_packet": 1e6 * server_cpu / delivered if delivered else None,
        "loss_pct": 100 * lost / expected if expected else None,
        "lost_packets": lost,
        "delivery_ratio": delivered / (playable * legs) if playable and legs else None,
        "per_leg_pps": {
            "min": min(delivered_per_leg) / seconds if legs else None,
            "median": _median([d / seconds for d in delivered_per_leg]),
            "max": max(delivered_per_leg) / seconds if legs else None,
        },
        "latency_ms": _latency(fine, coarse),
        "e2e_latency_ms": _latency(e2e_fine, e2e_coarse),
        "decrypted_packets": decrypted,
        "decrypted_on_full_legs": decrypted_all,
        "srtp_auth_failures": srtp_window.get("rtp_auth_failed", 0),
        "srtp_auth_failures_total": srtp_after.get("rtp_auth_failed", 0),
        "srtp_other_failures": {k: v for k, v in srtp_after.items() if k != "rtp_auth_failed" and v},
        "failing_legs": [leg for w in end.workers for leg in w.get("failing_legs", [])][:20],
        "udp_drops_server_socket": server_drops,
        "udp_drops_client_sockets": sum(drops.values()),
        "subscriber_cpu_pct": [round(100 * load, 1) for load in subscriber_cpu],
        "subscriber_saturated": any(load > SATURATED for load in subscriber_cpu),
        "publisher_cpu_pct": round(100 * children.get("publisher", 0.0), 1),
        # The bench's own processes (publisher and subscribers), share of one core; and how busy the
        # whole machine was (every CPU, whatever ran), share of all its CPUs.
        "bench_cpu_pct": round(100 * sum(children.values()), 1),
        "machine_cpu_busy_pct": round(100 * machine_busy / machine_total, 1) if machine_total > 0 else None,
        "machine_saturated": machine_total > 0 and machine_busy / machine_total > MACHINE_SATURATED,
        **_cluster_figures(
            start, end, server, seconds, origin_port, delivered_per_leg, leg_ports, e2e_by_port,
            published, baseline,
        ),
        "publisher": {
            key: end.publisher.get(key)
            for key in ("keyframes", "keyframe_jumps", "pli", "fir", "keyframe_requests_deferred",
                        "nacked_packets", "remb_bps", "late_max_ms", "queued_max")
        },
        **_layer_figures(start, end, layers, seconds),
        "publisher_queue_at_start_end": [start.publisher.get("queued"), end.publisher.get("queued")],
        "worker_counters": [w["counters"] for w in end.workers],
        "worker_failures": [w["failures"] for w in end.workers if w["failures"]],
        "closed_by_server": [reason for w in end.workers for reason in w["closed_by_server"]],
    }


def _cluster_figures(
    start: Reading,
    end: Reading,
    server: ServerProcess,
    seconds: float,
    origin_port: int | None,
    delivered_per_leg: list[int],
    leg_ports: list[int],
    e2e_by_port: dict[int, tuple[list[int], list[int]]],
    published: int,
    baseline: Baseline | None,
) -> dict[str, Any]:
    """A server of several workers (`--workers N`): its CPU per process, its legs per worker, and what
    the relay costs. Empty for a single process.

    `server_processes`: per `worker i` (and `supervisor`) its CPU over the window as a share of one
    core (None if the worker was restarted during the window: its pids changed); for a worker also
    its media port, whether it is the origin (the worker the publisher's answer named), how many legs
    landed on it (their answers named its port), the packets a second those legs received, its CPU
    per packet they received (`us_per_packet`), and the end-to-end latency of its legs.

    `relay` (when some legs landed on the origin and some elsewhere):
      - `direct` / `relayed`: legs, and the end-to-end latency (publisher's send -> the player's
        kernel receive timestamp, p50/p99 of all their packets) of the legs on the origin worker /
        of the legs on the others, which get the stream through a relay from the origin.
      - `added_latency_p50_ms` / `added_latency_p99_ms`: relayed minus direct, per percentile.
      - `relays`: workers other than the origin with legs (each holds one relay leg of the stream, so
        the origin sends that many copies more).
      - `relayed_packets`: packets sent origin -> relays in the window, estimated as `relays` x the
        median packets one leg received in the window (the bench cannot count them: each worker's
        /metrics is not reachable alone).
      - `origin_us_per_packet`: the origin's CPU / (its legs' packets + `relayed_packets`): its CPU per
        packet it sent, to a player or to a relay, everything included.
      - `relaying_us_per_packet`: the other workers' CPU / the packets their legs received: the same
        for them, the relay's receive side included.
      The relay's own cost, from the idle baseline (`Baseline`: the server's CPU for a few seconds
      before the ramp-up, the publisher sending and nobody playing):
      - `publisher_ingest_us_per_packet`: the origin's CPU then / the packets the publisher sent then:
        what taking in one packet costs a worker (receive, unprotect, RTCP, timers), no forwarding.
      - `origin_forward_us_per_packet`: (the origin's CPU in the window - that ingest cost x the
        packets published in the window) / (its legs' packets + `relayed_packets`): the origin's CPU
        per packet it sends, to a player or a relay.
      - `relay_receive_us_per_packet`: (the other workers' CPU in the window - their idle CPU in the
        baseline - their legs' packets x `origin_forward_us_per_packet`) / `relayed_packets`: what is
        left of their CPU once forwarding is paid for at the origin's rate, per packet relayed to
        them: the receive side of the relay leg (compare it with `publisher_ingest_us_per_packet`).
        It assumes forwarding costs the same in every worker; it is a difference of two large numbers,
        so it is noisy (CPU times are read in 10 ms ticks).
      - `relay_cpu_us_per_packet`: `origin_forward_us_per_packet` + `relay_receive_us_per_packet`:
        what one packet relayed from the origin to another worker costs, both ends together.
    At low N every per-packet figure is dominated by fixed costs; they mean something from ~100
    players on. With --simulcast the relays' input is not what a player receives: their figures are off.
    """
    if not end.server_groups:
        return {}
    port_to_worker = {port: index for index, port in server.worker_media_ports.items()}
    origin = port_to_worker.get(origin_port) if origin_port is not None else None
    processes: dict[str, dict[str, Any]] = {}
    cpu_by_worker: dict[int, float | None] = {}
    for role, (cpu_end, pids_end) in sorted(end.server_groups.items()):
        cpu_start, pids_start = start.server_groups.get(role, (0.0, ()))
        restarted = pids_start != pids_end
        cpu = None if restarted else cpu_end - cpu_start
        entry: dict[str, Any] = {
            "cpu_pct": None if cpu is None else round(100 * cpu / seconds, 1),
            "restarted": restarted,
        }
        if role.startswith("worker "):
            index = int(role.split()[1])
            cpu_by_worker[index] = cpu
            port = server.worker_media_ports.get(index)
            delivered = [d for d, p in zip(delivered_per_leg, leg_ports, strict=True) if p == port]
            packets = sum(delivered)
            fine, coarse = e2e_by_port.get(port or -1, ([], []))
            entry.update({
                "media_port": port,
                "origin": index == origin,
                "legs": len(delivered),
                "forwarded_pps": packets / seconds,
                "us_per_packet": 1e6 * cpu / packets if cpu is not None and packets else None,
                "e2e_latency_ms": _latency(fine, coarse),
            })
            if baseline is not None and role in baseline.cpu:
                entry["idle_cpu_pct"] = round(100 * baseline.cpu[role] / baseline.seconds, 1)
        processes[role] = entry
    out: dict[str, Any] = {
        "server_processes": processes,
        "origin_worker": origin,
        "legs_per_worker": {role: p["legs"] for role, p in processes.items() if "legs" in p},
    }
    others = [i for i in cpu_by_worker if i != origin and processes[f"worker {i}"]["legs"]]
    if origin is None or not others or not processes[f"worker {origin}"]["legs"]:
        return out
    direct = processes[f"worker {origin}"]
    histograms = [e2e_by_port.get(server.worker_media_ports[i], ([], [])) for i in others]
    relayed_latency = _latency(_summed([h[0] for h in histograms]), _summed([h[1] for h in histograms]))
    direct_latency = direct["e2e_latency_ms"]

    def added(q: str) -> float | None:
        a, b = relayed_latency[q], direct_latency[q]
        return None if a is None or b is None else round(a - b, 3)

    relay: dict[str, Any] = {
        "direct": {"legs": direct["legs"], **direct_latency},
        "relayed": {"legs": sum(processes[f"worker {i}"]["legs"] for i in others), **relayed_latency},
        "added_latency_p50_ms": added("p50"),
        "added_latency_p99_ms": added("p99"),
        "relays": len(others),
    }
    out["relay"] = relay
    origin_cpu = cpu_by_worker.get(origin)
    other_cpus = [cpu_by_worker[i] for i in others]
    relayed_packets = len(others) * (statistics.median(delivered_per_leg) if delivered_per_leg else 0)
    origin_sent = direct["forwarded_pps"] * seconds + relayed_packets
    other_sent = sum(processes[f"worker {i}"]["forwarded_pps"] for i in others) * seconds
    if origin_cpu is None or not relayed_packets or not other_sent or None in other_cpus:
        return out
    other_cpu = sum(cpu for cpu in other_cpus if cpu is not None)
    relay.update({
        "relayed_packets": relayed_packets,
        "origin_us_per_packet": 1e6 * origin_cpu / origin_sent,
        "relaying_us_per_packet": 1e6 * other_cpu / other_sent,
    })
    origin_role = f"worker {origin}"
    if baseline is None or origin_role not in baseline.cpu or not baseline.published:
        return out
    ingest = baseline.cpu[origin_role] / baseline.published  # CPU seconds per packet taken in
    forward = (origin_cpu - ingest * published) / origin_sent
    idle = sum(baseline.cpu.get(f"worker {i}", 0.0) for i in others) / baseline.seconds * seconds
    receive = (other_cpu - idle - forward * other_sent) / relayed_packets
    relay.update({
        "publisher_ingest_us_per_packet": 1e6 * ingest,
        "origin_forward_us_per_packet": 1e6 * forward,
        "relay_receive_us_per_packet": 1e6 * receive,
        "relay_cpu_us_per_packet": 1e6 * (forward + receive),
    })
    return out


def _summed(histograms: list[list[int]]) -> list[int]:
    out: list[int] = []
    for histogram in histograms:
        out += [0] * (len(histogram) - len(out))
        for i, count in enumerate(histogram):
            out[i] += count
    return out


def _layer_figures(start: Reading, end: Reading, layers: list[str], seconds: float) -> dict[str, Any]:
    """A simulcast publisher's layers: packets a second each, and its per-layer keyframe counters."""
    if not layers:
        return {}
    before, after = start.publisher, end.publisher

    def rate(key: str) -> float:
        return float(after.get(key, 0) - before.get(key, 0)) / seconds

    return {
        "simulcast_layers": layers,
        "published_playable_pps": rate("audio_packets") + rate(f"video_packets_{layers[-1]}"),
        "published_layer_pps": {rid: rate(f"video_packets_{rid}") for rid in layers},
        "publisher_layers": {
            rid: {key: after.get(f"{key}_{rid}", 0)
                  for key in ("keyframes", "keyframe_jumps", "keyframe_requests_deferred")}
            for rid in layers
        },
    }


def _keyframe_cache(samples: list[dict[str, float]]) -> dict[str, Any]:
    """The keyframe cache gauges over the samples taken after the window (empty: none were taken)."""
    sizes = [s[KEYFRAME_CACHE_BYTES] for s in samples if KEYFRAME_CACHE_BYTES in s]
    packets = [s[KEYFRAME_CACHE_PACKETS] for s in samples if KEYFRAME_CACHE_PACKETS in s]
    if not sizes:
        return {}
    return {
        "keyframe_cache_bytes": {"at_window_end": sizes[0], "mean": statistics.fmean(sizes),
                                 "max": max(sizes), "samples": sizes},
        "keyframe_cache_packets": {"at_window_end": packets[0] if packets else None,
                                   "mean": statistics.fmean(packets) if packets else None,
                                   "max": max(packets, default=None)},
    }


def _latency(fine: list[int], coarse: list[int]) -> dict[str, Any]:
    return {
        "p50": _ms(percentile(fine, coarse, 0.50)),
        "p90": _ms(percentile(fine, coarse, 0.90)),
        "p99": _ms(percentile(fine, coarse, 0.99)),
        "p999": _ms(percentile(fine, coarse, 0.999)),
        "samples": sum(fine) + sum(coarse),
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(1000 * value, 3)


def _tcp_counters(server: ServerProcess, result: dict[str, Any]) -> dict[str, float] | None:
    """The server's ICE-TCP figures (TCP_METRICS) now; None if it has no /metrics or they are not on
    it (a server without ICE-TCP), an error noted in the result's `metrics_errors`."""
    try:
        sample = server.metrics(tuple(TCP_METRICS.values()))
    except (OSError, ValueError) as exc:
        result.setdefault("metrics_errors", []).append(f"{type(exc).__name__}: {exc}")
        return None
    if not sample:
        return None
    return {key: sample[name] for key, name in TCP_METRICS.items() if name in sample}


def run_case(
    label: str,
    command: list[str],
    n: int,
    options: Options,
    progress: Progress,
    round_: int = 0,
    transport: str = "udp",
) -> dict[str, Any]:
    """One server process, one publisher, `n` subscribers (over `transport`: "udp", or "tcp" for
    ICE-TCP): ramp up, settle, measure, probe, stop."""
    result: dict[str, Any] = {"server": label, "command": shlex.join(command), "n": n, "round": round_,
                              "transport": transport}
    name = options.run_name(label, transport)
    workdir = Path(tempfile.mkdtemp(prefix="trio_sfu_bench_"))
    server = ServerProcess(command, workdir, options.janus_event_loops, options.server_cpus)
    result["server_command"] = shlex.join(server.command)
    children: list[Child] = []
    try:
        progress.update(f"{name} N={n}: starting the server", 0, n)
        server.wait_ready()
        result["media_port"] = server.media_port
        if server.workers is not None:
            result["server_workers"] = server.workers
            result["worker_media_ports"] = dict(sorted(server.worker_media_ports.items()))
        send_log = SendLog.create(layers=3 if options.simulcast else 1)
        publisher = Child(
            "publisher", run_publisher,
            PublisherConfig(
                server.ws_url, str(options.media_path), options.stream, options.token, options.pacing,
                send_log, options.simulcast,
            ),
        )
        children.append(publisher)
        worker_count = max(1, math.ceil(n / options.legs_per_worker))
        worker_config = WorkerConfig(
            server.ws_url, options.stream, options.token, options.decrypt_every,
            setup_concurrency=options.setup_concurrency, send_log=send_log,
            latency_by_port=server.workers is not None, transport=transport,
        )
        workers = [Child(f"subscribers-{i}", run_worker, worker_config) for i in range(worker_count)]
        children += workers
        ready = publisher.wait_event("ready", "failed", timeout=30)
        if ready.get("event") == "failed":
            raise BenchError(f"publisher: {ready['error']}")
        result["publisher_setup_s"] = ready.get("setup_s")
        origin_port = ready.get("media_port")
        result["publisher_media_port"] = origin_port
        for worker in workers:
            worker.wait_event("worker_ready", timeout=30)
        time.sleep(0.5)
        result["server_rss_base"] = procfs.rss_bytes(server.pids())
        baseline = None
        if server.workers is not None:  # the origin's input cost, for the relay's (see _cluster_figures)
            progress.update(f"{name} N={n}: idle baseline", 0, 1)
            baseline = _baseline(server, publisher)
            result["idle_baseline"] = attrs.asdict(baseline)

        # Ramp-up: every worker sets up its legs (a few at a time each).
        for i, worker in enumerate(workers):
            worker.send({"cmd": "add", "indexes": list(range(i, n, worker_count))})
        ramp_started = time.monotonic()
        done = failed = 0
        failures: list[str] = []
        deadline = ramp_started + options.ramp_timeout + 0.2 * n
        result["ramp_incomplete"] = False
        while done + failed < n:
            if time.monotonic() > deadline:
                # Measure what is there (the rest keep trying, and count if they connect), and say so.
                result["ramp_incomplete"] = True
                break
            for _, event in _events(workers, 0.2):
                if event.get("event") == "leg_ready":
                    done += 1
                elif event.get("event") == "leg_failed":
                    failed += 1
                    failures.append(event["error"])
            progress.update(f"{name} N={n}: ramp-up ({failed} failed)", done, n)
        result["ramp_s"] = time.monotonic() - ramp_started
        result["legs_ready_at_ramp_end"] = done
        result["legs_failed"] = failed
        result["leg_failures"] = failures[:5]
        if done == 0 and n:
            raise BenchError(f"no subscriber leg connected: {failures[:3]}")

        progress.update(f"{name} N={n}: settling", 0, 1)
        time.sleep(options.settle)
        # Keyframes requested during the ramp-up may still sit in the publisher's pacer: the window
        # must see the stream's normal rate.
        drain_deadline = time.monotonic() + 15
        while time.monotonic() < drain_deadline:
            publisher.send({"cmd": "snapshot"})
            if publisher.wait_event("snapshot", timeout=10).get("queued", 0) < 20:
                break
            time.sleep(0.2)
        # Not in the window: the scrape's CPU is paid before it starts.
        tcp_start = _tcp_counters(server, result) if options.tcp_metrics else None
        start = _reading(server, publisher, workers)
        end_at = start.at + options.duration
        while (now := time.monotonic()) < end_at:
            progress.update(f"{name} N={n}: measuring", now - start.at, options.duration)
            time.sleep(min(0.25, end_at - now))
        end = _reading(server, publisher, workers)
        result["server_rss"] = procfs.rss_bytes(server.pids())
        result.update(figures(start, end, server, n, origin_port, baseline))
        metric_samples: list[dict[str, float]] = []
        result["metrics_errors"] = result.get("metrics_errors", [])
        if tcp_start is not None and (tcp_end := _tcp_counters(server, result)) is not None:
            result["server_tcp_counters"] = {
                "window": {key: tcp_end[key] - tcp_start[key]
                           for key in tcp_end if key in tcp_start and key != "open"},
                "since_start": tcp_end,
            }

        def sample_metrics() -> None:
            try:
                sample = server.metrics()
            except (OSError, ValueError) as exc:
                result["metrics_errors"].append(f"{type(exc).__name__}: {exc}")
                return
            if sample is not None:
                metric_samples.append(sample)

        sample_metrics()  # after the window: its figures do not pay for it
        result["rss_per_session"] = (result["server_rss"] - result["server_rss_base"]) / max(1, done)
        ramp_legs = {
            "first_rtp_s": [v for w in end.workers for v in w["first_rtp_s"]],
            "first_keyframe_s": [v for w in end.workers for v in w["first_keyframe_s"]],
            "setup_s": [v for w in end.workers for v in w["setup_s"]],
        }
        result["ramp_legs"] = {key: _median(values) for key, values in ramp_legs.items()}

        # New subscribers joining the loaded stream, one at a time.
        probes = []
        for i in range(options.probes):
            progress.update(f"{name} N={n}: new-subscriber probes", i, options.probes)
            workers[0].send({"cmd": "probe"})
            probes.append(workers[0].wait_event("probe", timeout=30))
            # Servers throttle keyframe requests (trio_sfu: 1 s per track or layer): wait, reading
            # the keyframe cache meanwhile (the probe is done, the next not begun).
            for _ in range(METRICS_PER_PROBE):
                sample_metrics()
                time.sleep(1.0 / METRICS_PER_PROBE)
        result.update(_keyframe_cache(metric_samples))
        result["probes"] = probes
        good = [p for p in probes if "error" not in p]
        result["probe_errors"] = [p["error"] for p in probes if "error" in p]
        result["probe_leave_errors"] = [p["leave_error"] for p in probes if "leave_error" in p]
        result["first_rtp_s"] = _median([p["first_rtp_s"] for p in good])
        result["first_keyframe_s"] = _median([p["first_keyframe_s"] for p in good])
        result["setup_s"] = _median([p["setup_s"] for p in good])
        result["ok"] = True
    except BenchError as exc:
        result["ok"] = False
        result["error"] = str(exc)
    finally:
        for child in reversed(children):
            child.stop()
        server.stop()
        result["server_log"] = server.log_summary()
        if options.keep_logs is not None:
            options.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in (server.stdout_path, server.stderr_path):
                series = label if options.transports == ("udp",) else f"{label}-{transport}"
                target = options.keep_logs / f"{series}-N{n}-r{result.get('round', 0)}-{path.name}"
                target.write_bytes(path.read_bytes())
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- many runs, reporting


def run_all(
    servers: list[tuple[str, list[str]]], options: Options, rounds: int, progress: Progress
) -> list[dict[str, Any]]:
    """Each N in turn; for several servers (or transports), alternate them (A, B, A, B) so drift hits
    both alike."""
    results = []
    plan = [(n, r, label, command, transport) for n in options.subscribers for r in range(rounds)
            for label, command in servers for transport in options.transports]
    for step, (n, r, label, command, transport) in enumerate(plan):
        progress.run(step, len(plan))
        result = run_case(label, command, n, options, progress, r, transport)
        results.append(result)
    progress.run(len(plan), len(plan))
    return results


def latency_of(result: dict[str, Any]) -> dict[str, Any]:
    e2e: dict[str, Any] = result["e2e_latency_ms"]
    return e2e if e2e["samples"] else result["latency_ms"]


def summarize(
    results: list[dict[str, Any]], label: str, n: int, transport: str = "udp"
) -> dict[str, Any] | None:
    """The mean over rounds of one (server, N, players' transport); None if no round succeeded."""
    runs = [
        r for r in results
        if r["server"] == label and r["n"] == n and r.get("transport", "udp") == transport and r.get("ok")
    ]
    if not runs:
        return None

    def mean(get: Any) -> float | None:
        values = [v for v in (get(r) for r in runs) if v is not None]
        return statistics.fmean(values) if values else None

    return {
        "server": label,
        "transport": transport,
        "n": n,
        "rounds": len(runs),
        "forwarded_pps": mean(lambda r: r["forwarded_pps"]),
        "server_us_per_packet": mean(lambda r: r["server_us_per_packet"]),
        "server_cpu_pct": mean(lambda r: r["server_cpu_pct"]),
        "loss_pct": mean(lambda r: r["loss_pct"]),
        # End to end (the publisher's send log) when there are samples, else from abs-send-time.
        "latency_p50_ms": mean(lambda r: latency_of(r)["p50"]),
        "latency_p99_ms": mean(lambda r: latency_of(r)["p99"]),
        "abs_send_time_latency_p50_ms": mean(lambda r: r["latency_ms"]["p50"]),
        "abs_send_time_latency_p99_ms": mean(lambda r: r["latency_ms"]["p99"]),
        "first_rtp_ms": mean(lambda r: r["first_rtp_s"] and 1000 * r["first_rtp_s"]),
        "first_keyframe_ms": mean(lambda r: r["first_keyframe_s"] and 1000 * r["first_keyframe_s"]),
        "server_rss_mb": mean(lambda r: r["server_rss"] / 2**20),
        "rss_per_session_kb": mean(lambda r: r["rss_per_session"] / 1024),
        "subscriber_cpu_max_pct": max(max(r["subscriber_cpu_pct"], default=0.0) for r in runs),
        "subscriber_saturated": any(r["subscriber_saturated"] for r in runs),
        "legs_min": min(r["legs"] for r in runs),
        "auth_failures": sum(r["srtp_auth_failures_total"] for r in runs),
        "decrypted_packets": sum(r["decrypted_packets"] for r in runs),
        # The largest of each run's samples (the cache peaks just before a keyframe), in KB.
        "keyframe_cache_kb": mean(lambda r: r.get("keyframe_cache_bytes", {}).get("max") and
                                  r["keyframe_cache_bytes"]["max"] / 1024),
        "keyframe_cache_kb_mean": mean(lambda r: r.get("keyframe_cache_bytes", {}).get("mean") and
                                       r["keyframe_cache_bytes"]["mean"] / 1024),
        "keyframe_cache_packets": mean(lambda r: r.get("keyframe_cache_packets", {}).get("max")),
        "machine_cpu_busy_pct": mean(lambda r: r.get("machine_cpu_busy_pct")),
        # --workers N: see _cluster_figures
        "relay_added_latency_p50_ms": mean(lambda r: r.get("relay", {}).get("added_latency_p50_ms")),
        "relay_added_latency_p99_ms": mean(lambda r: r.get("relay", {}).get("added_latency_p99_ms")),
        "relay_cpu_us_per_packet": mean(lambda r: r.get("relay", {}).get("relay_cpu_us_per_packet")),
        # Runs with TCP players in the invocation: whole-frame drops for slow ICE-TCP readers.
        "stream_congestion_drops": mean(
            lambda r: r.get("server_tcp_counters", {}).get("window", {}).get("stream_congestion_drops")
        ),
    }


COLUMNS = (
    ("server", "server", "{}"),
    ("players", "transport", "{}"),
    ("N", "n", "{}"),
    ("fwd pkt/s", "forwarded_pps", "{:.0f}"),
    ("CPU µs/pkt", "server_us_per_packet", "{:.1f}"),
    ("srv CPU %", "server_cpu_pct", "{:.0f}"),
    ("loss %", "loss_pct", "{:.2f}"),
    ("lat p50 ms", "latency_p50_ms", "{:.2f}"),
    ("lat p99 ms", "latency_p99_ms", "{:.2f}"),
    ("1st RTP ms", "first_rtp_ms", "{:.0f}"),
    ("1st key ms", "first_keyframe_ms", "{:.0f}"),
    ("RSS MB", "server_rss_mb", "{:.1f}"),
    ("KB/session", "rss_per_session_kb", "{:.0f}"),
    ("sub CPU %", "subscriber_cpu_max_pct", "{:.0f}"),
    ("kf cache KB", "keyframe_cache_kb", "{:.0f}"),
)
OPTIONAL_COLUMNS = ("keyframe_cache_kb",)  # shown only when some row has a value (not for Janus alone)


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    tcp = any(row.get("transport", "udp") != "udp" for row in rows)  # "players" only beside TCP ones
    return [
        column for column in COLUMNS
        if (column[1] not in OPTIONAL_COLUMNS or any(row.get(column[1]) is not None for row in rows))
        and (column[1] != "transport" or tcp)
    ]


def table(rows: list[dict[str, Any]]) -> str:
    columns = _columns(rows)
    cells = [[title for title, _, _ in columns]]
    for row in rows:
        line = []
        for _, key, fmt in columns:
            value = row.get(key)
            text = "-" if value is None else fmt.format(value)
            if key == "n" and value is not None and row.get("legs_min", value) < value:
                text = f"{row['legs_min']}/{value}"  # fewer legs connected than asked for
            if key == "subscriber_cpu_max_pct" and row.get("subscriber_saturated"):
                text += "!"
            line.append(text)
        cells.append(line)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for k, cells_row in enumerate(cells):
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(cells_row, widths, strict=True)))
        if k == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


RATIO_KEYS = ("server_us_per_packet", "forwarded_pps", "loss_pct", "latency_p50_ms", "latency_p99_ms",
              "first_keyframe_ms", "rss_per_session_kb", "keyframe_cache_kb")
RATIO_TITLES = ("µs/pkt", "fwd pkt/s", "loss", "lat p50", "lat p99", "1st key", "KB/session", "kf cache")


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def cluster_lines(result: dict[str, Any]) -> list[str]:
    """A --workers N run, in a few lines: CPU and legs per worker, the relay's latency and CPU."""
    processes = result.get("server_processes")
    if not processes:
        return []
    parts = []
    for role, p in processes.items():
        if role.startswith("worker "):
            origin = " (origin)" if p["origin"] else ""
            restarted = " RESTARTED" if p["restarted"] else ""
            parts.append(
                f"w{role.split()[1]}{origin}: {p['legs']} legs, {_num(p['cpu_pct'], '{:.0f}')} % CPU, "
                f"{_num(p['us_per_packet'])} µs/pkt{restarted}"
            )
    parts.append(f"supervisor {_num(processes.get('supervisor', {}).get('cpu_pct'))} %")
    lines = ["workers: " + "; ".join(parts)]
    relay = result.get("relay")
    if relay is None:
        if result.get("origin_worker") is None:
            lines.append("relay: the publisher's answer named no worker's media port")
        else:
            lines.append("relay: not measured (all legs on one worker)")
        return lines
    direct, relayed = relay["direct"], relay["relayed"]
    lines.append(
        f"relay added latency p50/p99 {_num(relay['added_latency_p50_ms'], '{:+.2f}')}/"
        f"{_num(relay['added_latency_p99_ms'], '{:+.2f}')} ms (e2e p50/p99: {direct['legs']} legs on the "
        f"origin {_num(direct['p50'], '{:.2f}')}/{_num(direct['p99'], '{:.2f}')} ms, "
        f"{relayed['legs']} relayed {_num(relayed['p50'], '{:.2f}')}/{_num(relayed['p99'], '{:.2f}')} ms)"
    )
    if "origin_us_per_packet" in relay:
        lines.append(
            f"CPU per packet sent, all included: origin {_num(relay['origin_us_per_packet'])} µs (to its "
            f"players and {relay['relays']} relay leg(s)), relaying workers "
            f"{_num(relay['relaying_us_per_packet'])} µs (to their players; the relay's input included)"
        )
    if "relay_cpu_us_per_packet" in relay:
        lines.append(
            f"relay CPU per relayed packet ~{_num(relay['relay_cpu_us_per_packet'])} µs = the origin "
            f"sends it {_num(relay['origin_forward_us_per_packet'])} + the relaying worker takes it in "
            f"{_num(relay['relay_receive_us_per_packet'])} (a publisher's packet costs its worker "
            f"{_num(relay['publisher_ingest_us_per_packet'])} to take in; estimates, see _cluster_figures)"
        )
    return lines


def ratios(
    summaries: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str]
) -> list[dict[str, Any]]:
    """B/A per N of the RATIO_KEYS, A and B each a (server label, players' transport)."""
    out = []
    by_key = {(s["server"], s.get("transport", "udp"), s["n"]): s for s in summaries}
    for n in sorted({s["n"] for s in summaries}):
        sa, sb = by_key.get((*a, n)), by_key.get((*b, n))
        if sa is None or sb is None:
            continue
        row: dict[str, Any] = {"n": n}
        for key in RATIO_KEYS:
            va, vb = sa.get(key), sb.get(key)
            row[key] = vb / va if va and vb is not None else None
        out.append(row)
    return out


def ratio_table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in RATIO_KEYS if k not in OPTIONAL_COLUMNS or any(row[k] is not None for row in rows)]
    titles = ["N", *(title for key, title in zip(RATIO_KEYS, RATIO_TITLES, strict=True) if key in keys)]
    cells = [titles]
    for row in rows:
        cells.append([str(row["n"])] + ["-" if row[k] is None else f"{row[k]:.2f}" for k in keys])
    widths = [max(len(r[i]) for r in cells) for i in range(len(titles))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def media_summary(path: Path) -> str:
    return Media.load(path).summary()


def python_command() -> list[str]:
    command = [sys.executable, "-m", "trio_sfu", "--signal", "127.0.0.1:0", "--media", "127.0.0.1:0",
               "--log-level", "warning"]
    usage = subprocess.run([*command[:3], "--help"], capture_output=True, text=True).stdout
    if "--http" in usage:  # newer servers also listen on HTTP (8081 by default): any free port
        command[5:5] = ["--http", "127.0.0.1:0"]
    return command
