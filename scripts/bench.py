#!/usr/bin/env python3
"""Benchmark trio_sfu (or another server command) with one real publisher and N real subscribers.

    scripts/bench.py                                   # N = 1, 10, 100, 300; 10 s windows
    scripts/bench.py --subscribers 1,10,100 --json bench-results/today.json
    scripts/bench.py --quick                           # N = 1, 5; 3 s windows (what the test runs)
    scripts/bench.py --compare "CMD_A" "CMD_B"         # A, B, A, B per N; prints ratios B/A
    scripts/bench.py --simulcast --compare "CMD --config off.toml" default
                                                       # a simulcast publisher; e.g. adaptation off/on
    scripts/bench.py --compare "CMD --workers 1" "CMD --workers 2" --find-capacity
                                                       # the largest N each holds loss-free; the ratio
    scripts/bench.py --pin 0:1 --janus --subscribers 100,300
                                                       # the headline: server and Janus on CPU 0, load on 1
    scripts/bench.py --transport both --subscribers 100
                                                       # players over UDP, then over ICE-TCP; TCP/UDP

The server runs as its own process, so its CPU (utime+stime from /proc) is its alone. One publisher
process sends pre-encoded VP8 (1.5 Mbit/s, 30 fps) and Opus (20 ms) in real time over a real leg
(WebSocket signaling, ICE, DTLS, SRTP), with abs-send-time in every packet. Subscriber worker processes
hold N real play legs and count what arrives. Everything runs in a private network namespace on
loopback (the script re-executes itself under `unshare --net` unless told not to). See
docs/performance.md for how to read the figures.

With --simulcast the publisher offers its video as Chromium does for three layers (a=rid q, h, f send,
a=simulcast:send q;h;f, the rid header extension, no a=ssrc lines for the video) and sends them: f is
the stream above, h and q the same frames cut to about 1/3 and 1/8 (see scripts/benchlib/publisher.py);
every layer's VP8 descriptor marks L1T3 temporal layers. The run fails if the answer does not receive
the three layers. Players still get one video stream each; "fwd pkt/s" and "CPU µs/pkt" count what they
receive, never the publisher's layers.

After each measurement window the bench reads the server's /metrics (if it printed an `http` start-up
line; Janus does not) for its keyframe cache: "kf cache KB" is the largest of a few samples taken after
the window (the cache grows from one keyframe to the next), the sum over the stream's video layers.

A server of several workers (`python -m trio_sfu --workers N`: a supervisor printing `supervisor N
workers, pid P`, each worker its own `media udp ... (worker i)` line): the server's CPU is the whole
process tree's (supervisor and workers), and each run also prints and records (see
benchlib/run.py:_cluster_figures for the exact definitions):
  - per worker: its CPU (share of one core), the legs that landed on it (the kernel spreads the
    WebSockets; a leg belongs to the worker whose media port its answer named) and its CPU per packet
    those legs received; the supervisor's CPU;
  - the origin worker (the one the publisher's answer named) and "relay added latency p50/p99": the
    end-to-end latency percentiles of the legs on other workers (served through a relay) minus those
    of the legs on the origin;
  - "relay CPU per packet": the origin's CPU per packet it sent (to its players and to each relay), the
    other workers' CPU per packet their players got, and from those an estimate of the relay's receive
    side and of what one relayed packet costs both ends together.

--transport tcp: every player (and probe) connects over ICE-TCP instead of UDP: a TCP connection to
the passive TCP candidate of the server's answer (RFC 6544; `a=candidate:... tcp ... tcptype passive`),
the same ICE, DTLS and SRTP over it, each datagram an RFC 4571 frame (a 2-byte length, then the
datagram). The players deframe what they read and count each frame as they count a UDP datagram (see
benchlib/subscriber.py). The publisher stays on UDP. --transport both: for each N and round, a run
with UDP players, then one with TCP players, against the same server command; the table has a
"players" column, and a TCP/UDP ratio table follows it (like --compare's). Runs with TCP players in
the invocation also read the server's ICE-TCP counters before and after the window: whole frames it
dropped for a TCP player whose connection's queue was full (`stream_congestion`; a player that reads
too slowly), connections refused. All the players connect from 127.0.0.1, and trio_sfu refuses more
than `tcp_max_per_address` (1000) ICE-TCP connections from one address: a trio_sfu server command
without its own --config gets `--config FILE` that raises that limit (and `tcp_max_connections`), in
every run of the invocation, UDP ones included (printed at the start; in the JSON's `servers`).

--find-capacity steps N up from --capacity-start by --capacity-step to --capacity-max for each server
command (alternating them), then bisects to --capacity-resolution, and reports the largest N each held
loss-free (see benchlib/capacity.py for the criteria) and, with --compare, the ratio B/A. The bench's
own processes (publisher, subscribers) share the machine's CPUs with the server: a run where they or
the whole machine were saturated is flagged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import media, procfs
from benchlib.capacity import Criteria, capacity_lines, find_capacity
from benchlib.progress import Progress
from benchlib.publisher import simulcast_summary
from benchlib.run import (
    Options,
    cluster_lines,
    python_command,
    ratio_table,
    ratios,
    run_all,
    summarize,
    table,
)

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--subscribers", default="1,10,100,300", help="comma-separated N (1,10,100,300)")
    parser.add_argument("--duration", type=float, help="measurement window, s (10; --quick: 3)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="wait after ramp-up before measuring, s (2)")
    parser.add_argument("--quick", action="store_true", help="CI mode: N=1,5, 3 s windows, 3 probes")
    parser.add_argument("--json", type=Path, help="write the results here (e.g. bench-results/NAME.json)")
    parser.add_argument("--server-cmd", help="server command line (default: this tree's python -m trio_sfu "
                        "--signal 127.0.0.1:0 --media 127.0.0.1:0 --log-level warning, and --http "
                        "127.0.0.1:0 if it has that option); it must print the same 'signaling ws://...' and "
                        "'media udp ...' start-up lines, and may print 'http http://...' (its /metrics is "
                        "read for the keyframe cache)")
    parser.add_argument("--compare", nargs=2, metavar=("CMD_A", "CMD_B"),
                        help="bench two server command lines in alternation and print ratios B/A; "
                        "'default' is this tree's server, 'janus' is Debian's Janus (VideoRoom, HTTP API); "
                        "another checkout: 'env PYTHONPATH=/path/to/it python -m trio_sfu ...'")
    parser.add_argument("--janus", action="store_true",
                        help="also bench Janus in the same run (alternating with trio_sfu): same as "
                        "--compare default janus")
    parser.add_argument("--janus-event-loops", type=int, default=os.cpu_count() or 2,
                        help="Janus's event_loops setting (default: one per CPU); 0 = Janus's default, "
                        "one media thread per handle")
    parser.add_argument("--rounds", type=int, help="runs per (server, N); default 1, or 2 with --compare "
                        "(--find-capacity: 1; N holds only if every round holds)")
    parser.add_argument("--probes", type=int, help="new subscribers timed after the window (5)")
    parser.add_argument("--legs-per-worker", type=int, default=75, help="subscriber legs per process (75)")
    parser.add_argument("--decrypt-every", type=int, default=8, choices=(1, 2, 4, 8, 16, 32),
                        help="subscribers unprotect 1 packet in this many (8); one leg per process: all")
    parser.add_argument("--pacing", type=float, default=2.5,
                        help="publisher pacer rate as a multiple of the video bitrate (of all layers with "
                        "--simulcast) (2.5); 0 = bursts")
    parser.add_argument("--simulcast", action="store_true",
                        help="the publisher sends its video as three simulcast layers q, h, f (rids, as "
                        "Chromium) with VP8 temporal layers; players still get one layer each")
    parser.add_argument("--pin", metavar="SERVER:LOAD",
                        help="CPU lists, e.g. 0:1: the server under test (trio_sfu or Janus) runs on "
                        "SERVER's CPUs, this script, the publisher and the players on LOAD's; the headline "
                        "figures are pinned (an unpinned server shares its core with the load, or gets two)")
    parser.add_argument("--transport", choices=("udp", "tcp", "both"), default="udp",
                        help="how the players connect: udp (default), tcp (ICE-TCP to the server's passive "
                        "TCP candidate, RFC 4571 framing), or both (a UDP run and a TCP run for each N and "
                        "round, and TCP/UDP ratios)")
    parser.add_argument("--media", type=Path, default=media.DEFAULT_PATH, help="pre-encoded media file")
    parser.add_argument("--regenerate-media", action="store_true", help="encode the media file again")
    parser.add_argument("--token", default="", help="token for stream.connect (open mode: empty)")
    parser.add_argument("--keep-logs", type=Path, help="copy each run's server stdout/stderr here")
    parser.add_argument("--find-capacity", action="store_true",
                        help="instead of --subscribers: find the largest N each server holds loss-free "
                        "(criteria: scripts/benchlib/capacity.py)")
    parser.add_argument("--capacity-start", type=int, default=100, help="first N tried (100)")
    parser.add_argument("--capacity-step", type=int, default=100, help="N grows by this while it holds (100)")
    parser.add_argument("--capacity-max", type=int, default=1000, help="the largest N tried (1000)")
    parser.add_argument("--capacity-resolution", type=int, default=25,
                        help="bisect until the last N that held and the first that did not are this "
                        "close (25)")
    parser.add_argument("--max-loss-pct", type=float, default=0.01,
                        help="--find-capacity: the most loss (%%) that still counts as loss-free (0.01)")
    parser.add_argument("--max-p99-ms", type=float, default=50.0,
                        help="--find-capacity: the highest end-to-end latency p99 that still holds (50)")
    parser.add_argument("--no-netns", action="store_true",
                        help="do not re-execute in a private network namespace")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def reexec_in_netns() -> None:
    """Run again inside `unshare --net` with only loopback up, if this machine allows it."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        print("warning: cannot create a private network namespace; running in this one", file=sys.stderr)
        return
    script = 'ip link set lo up && exec "$@"'
    os.execvp("unshare", ["unshare", "--net", "--", "env", "TRIO_SFU_NETNS=1", "bash", "-c", script,
                          "bench", sys.executable, *sys.argv])


TCP_LIMIT = 10_000
"""tcp_max_per_address and tcp_max_connections for a trio_sfu server benched with TCP players: they
all connect from 127.0.0.1, and its defaults (1000 per address, 2000 in all) would refuse the largest runs."""


def is_trio_sfu(command: list[str]) -> bool:
    """`... python -m trio_sfu ...` or the `trio-sfu` script (also behind env, taskset, ...)."""
    after_m = any(arg == "trio_sfu" and i and command[i - 1] == "-m" for i, arg in enumerate(command))
    return after_m or any(Path(arg).name == "trio-sfu" for arg in command)


def allow_tcp_players(
    servers: list[tuple[str, list[str]]], folder: Path
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The server commands, each trio_sfu one without a --config of its own given one that lets every
    TCP player in (see TCP_LIMIT), and what to tell the user about it."""
    config = folder / "ice-tcp-players.toml"
    config.write_text(
        "# scripts/bench.py --transport tcp|both: every player connects from 127.0.0.1\n"
        f"tcp_max_per_address = {TCP_LIMIT}\ntcp_max_connections = {TCP_LIMIT}\n"
    )
    out, notes = [], []
    for label, command in servers:
        if not is_trio_sfu(command):
            notes.append(f"note: {label} is not a trio_sfu command: its TCP players connect only if its "
                         "answers offer a passive TCP candidate on 127/8 and it takes that many from one "
                         "address")
        elif any(arg == "--config" or arg.startswith("--config=") for arg in command):
            notes.append(f"warning: {label} has its own --config: its tcp_max_per_address (default 1000) and "
                         "tcp_max_connections must allow N players + probes from 127.0.0.1, or the rest fail")
        else:
            command = [*command, "--config", str(config)]
            notes.append(f"{label}: TCP players all connect from 127.0.0.1, so the server command gets "
                         f"--config {config} (tcp_max_per_address = tcp_max_connections = {TCP_LIMIT}), "
                         "in its UDP runs too")
        out.append((label, command))
    return out, notes


def series_name(label: str, transport: str, transports: tuple[str, ...]) -> str:
    return label if transports == ("udp",) else f"{label} ({transport} players)"


def parse_cpus(text: str) -> set[int]:
    """`0`, `0,2` or `0-3` (taskset's list form)."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def parse_pin(text: str) -> tuple[set[int], set[int]]:
    """--pin SERVER:LOAD, each a CPU list; refused if they overlap or name CPUs this machine lacks."""
    try:
        server_text, load_text = text.split(":")
        server, load = parse_cpus(server_text), parse_cpus(load_text)
    except ValueError:
        raise SystemExit(f"--pin {text!r}: write SERVER:LOAD CPU lists, e.g. 0:1 or 0:1-3") from None
    available = os.sched_getaffinity(0)
    if server & load or not (server | load) <= available:
        raise SystemExit(f"--pin {text!r}: the lists must not overlap and must be among CPUs "
                         f"{sorted(available)}")
    return server, load


def tree_state() -> str:
    """The commit being benched, and whether trio_sfu/ had uncommitted changes (others edit it)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "trio_sfu")
    return commit + (" + uncommitted changes in trio_sfu/" if dirty else "")


def tcp_problems(result: dict[str, Any]) -> list[str]:
    """What a run with TCP players in the invocation says about ICE-TCP: connections that ended, and
    from the server's /metrics whole frames dropped for slow TCP readers and connections refused."""
    problems = []
    closed = sum(counters.get("tcp_closed", 0) for counters in result.get("worker_counters", []))
    if closed:
        problems.append(f"{closed} ICE-TCP connections ended during the run (closed by the server or broken)")
    counters = result.get("server_tcp_counters")
    if counters:
        window, total = counters["window"], counters["since_start"]
        drops = window.get("stream_congestion_drops", 0)
        if drops or window.get("send_queue_full", 0):
            problems.append(
                f"the server dropped {drops:.0f} packets whole-frame for ICE-TCP players whose connection's "
                f"queue was full (stream_congestion; {window.get('send_queue_full', 0):.0f} sends refused) "
                f"in the window, {total.get('stream_congestion_drops', 0):.0f} since it started: TCP "
                "players read too slowly"
            )
        refused = total.get("refused_per_address", 0) + total.get("refused_total", 0)
        if refused:
            problems.append(
                f"the server refused {refused:.0f} ICE-TCP connections (over tcp_max_per_address: "
                f"{total.get('refused_per_address', 0):.0f}; over tcp_max_connections: "
                f"{total.get('refused_total', 0):.0f})"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.no_netns and not os.environ.get("TRIO_SFU_NETNS") and not procfs.loopback_only():
        reexec_in_netns()
    if args.quick:
        subscribers, duration, settle, probes = [1, 5], 3.0, 0.5, 3
    else:
        subscribers = [int(x) for x in args.subscribers.split(",") if x.strip()]
        duration, settle, probes = 10.0, args.settle, 5
    if args.duration is not None:
        duration = args.duration
    if args.probes is not None:
        probes = args.probes

    loaded = media.load_or_generate(args.media, regenerate=args.regenerate_media)

    def command(text: str) -> list[str]:
        return python_command() if text == "default" else shlex.split(text)

    if args.janus:
        args.compare = [args.server_cmd or "default", "janus"]
    if args.compare:
        pairs = zip(args.compare, "AB", strict=True)
        labels = [text if text in ("default", "janus") else name for text, name in pairs]
        if labels[0] == labels[1]:
            labels = ["A", "B"]
        labels = ["trio_sfu" if label == "default" else label for label in labels]
        servers = [(labels[0], command(args.compare[0])), (labels[1], command(args.compare[1]))]
    elif args.server_cmd:
        servers = [("janus" if args.server_cmd == "janus" else "server", command(args.server_cmd))]
    else:
        servers = [("trio_sfu", python_command())]
    transports = {"udp": ("udp",), "tcp": ("tcp",), "both": ("udp", "tcp")}[args.transport]
    tcp_folder = Path(tempfile.mkdtemp(prefix="trio_sfu_bench_tcp_")) if "tcp" in transports else None
    tcp_notes: list[str] = []
    if tcp_folder is not None:
        servers, tcp_notes = allow_tcp_players(servers, tcp_folder)
    rounds = args.rounds or (2 if args.compare and not args.find_capacity else 1)
    criteria = Criteria(
        start=args.capacity_start, step=args.capacity_step, max=args.capacity_max,
        resolution=args.capacity_resolution, max_loss_pct=args.max_loss_pct, max_p99_ms=args.max_p99_ms,
    )
    capacity: dict[str, dict[str, Any]] = {}
    server_cpus = None
    if args.pin:
        server_cpus, load_cpus = parse_pin(args.pin)
        os.sched_setaffinity(0, load_cpus)  # the publisher and player processes inherit it
        print(f"pinned: server on CPUs {sorted(server_cpus)}, load on {sorted(load_cpus)}", file=sys.stderr)
    options = Options(
        subscribers=subscribers, duration=duration, settle=settle, probes=probes,
        legs_per_worker=args.legs_per_worker, decrypt_every=args.decrypt_every, pacing=args.pacing,
        media_path=args.media, token=args.token, keep_logs=args.keep_logs,
        janus_event_loops=args.janus_event_loops, simulcast=args.simulcast, transports=transports,
        server_cpus=server_cpus,
    )
    load_before = procfs.load_average()
    tree_before = tree_state()
    started = datetime.datetime.now(datetime.UTC)
    print(f"media: {loaded.summary()}", file=sys.stderr)
    if args.simulcast:
        print(f"simulcast layers: {simulcast_summary(loaded)}", file=sys.stderr)
    if args.transport != "udp":
        shown = {"tcp": "over ICE-TCP", "both": "over UDP, then over ICE-TCP (for each N and round)"}
        print(f"players: {shown[args.transport]}; the publisher over UDP", file=sys.stderr)
    for note in tcp_notes:
        print(note, file=sys.stderr)
    progress = Progress(enabled=not args.no_progress)
    os.chdir(ROOT)  # `python -m trio_sfu` runs this tree
    try:
        if args.find_capacity:
            results, capacity = find_capacity(servers, options, criteria, rounds, progress)
            subscribers = sorted({result["n"] for result in results})
        else:
            results = run_all(servers, options, rounds, progress)
    finally:
        progress.close()
        if tcp_folder is not None:
            shutil.rmtree(tcp_folder, ignore_errors=True)
    summaries = [
        s for n in subscribers for label, _ in servers for transport in transports
        if (s := summarize(results, label, n, transport))
    ]

    print(table(summaries))
    for result in results:
        problems = []
        if not result.get("ok"):
            problems.append(f"FAILED: {result.get('error')}")
        else:
            if result["subscriber_saturated"]:
                problems.append(
                    f"subscriber processes saturated ({result['subscriber_cpu_pct']} % of a core): "
                    "the figures are not trustworthy"
                )
            if result.get("machine_saturated"):
                problems.append(
                    f"the machine's CPUs were {result['machine_cpu_busy_pct']} % busy (server "
                    f"{result['server_cpu_pct']:.0f} % + bench {result['bench_cpu_pct']:.0f} % of a core, "
                    "the rest elsewhere): the load generator competes with the server"
                )
            if result.get("ramp_incomplete"):
                problems.append(
                    f"ramp-up incomplete: {result['legs_ready_at_ramp_end']}/{result['n']} legs connected "
                    f"after {result['ramp_s']:.0f} s; measured with {result['legs']}"
                )
            if result["legs_failed"]:
                problems.append(
                    f"{result['legs_failed']} legs failed to connect: {result['leg_failures'][:2]}"
                )
            if result["srtp_auth_failures_total"]:
                problems.append(f"{result['srtp_auth_failures_total']} SRTP auth failures")
            if result["closed_by_server"]:
                problems.append(f"server closed {len(result['closed_by_server'])} legs")
            if result["udp_drops_server_socket"] or result["udp_drops_client_sockets"]:
                problems.append(
                    f"kernel UDP drops: server socket {result['udp_drops_server_socket']}, "
                    f"client sockets {result['udp_drops_client_sockets']}"
                )
            late = result["publisher"].get("late_max_ms") or 0
            if late > 50:
                problems.append(f"the publisher fell up to {late:.0f} ms behind real time (CPU contention?)")
            failures = [f for w in result.get("worker_failures", []) for f in w if f.startswith("receiver")]
            if failures:
                problems.append(f"subscriber process errors: {failures[:2]}")
            if result["probe_errors"]:
                problems.append(f"probe errors: {result['probe_errors'][:2]}")
            if result.get("probe_leave_errors"):
                problems.append(f"probes measured, then failed to leave: {result['probe_leave_errors'][:2]}")
            if result.get("metrics_errors"):
                problems.append(f"/metrics could not be read: {result['metrics_errors'][:2]}")
            problems += tcp_problems(result)
        log = result["server_log"]
        if log["errors"] or log["tracebacks"] or log["warnings"]:
            problems.append(
                f"server log: {log['warnings']} warnings, {log['errors']} errors, "
                f"{log['tracebacks']} tracebacks {log['events']}"
            )
        if log["exit_code"] not in (0, None):
            problems.append(f"server exit code {log['exit_code']} after SIGTERM")
        name = series_name(result["server"], result.get("transport", "udp"), transports)
        if problems:
            print(f"{name} N={result['n']} round {result['round']}: " + "; ".join(problems))
        for line in cluster_lines(result) if result.get("ok") else []:
            print(f"{name} N={result['n']} round {result['round']}: {line}")
    comparison: list[dict[str, Any]] = []
    for transport in transports if args.compare else ():
        a, b = servers[0][0], servers[1][0]
        rows = ratios(summaries, (a, transport), (b, transport))
        if rows:
            players = f", {transport} players" if len(transports) > 1 else ""
            print(f"\nratios {b}/{a}{players} (below 1: {b} uses less / is faster):")
            print(ratio_table(rows))
        comparison += [{**row, "transport": transport} if len(transports) > 1 else row for row in rows]
    tcp_over_udp: list[dict[str, Any]] = []
    for label, _ in servers if len(transports) > 1 else ():
        rows = ratios(summaries, (label, "udp"), (label, "tcp"))
        if rows:
            server = f" ({label})" if len(servers) > 1 else ""
            print(f"\nratios TCP/UDP players{server} (below 1: TCP players cost less / are faster):")
            print(ratio_table(rows))
        tcp_over_udp += [{"server": label, **row} for row in rows]
    if capacity:
        print()
        print("\n".join(capacity_lines(capacity, criteria)))

    load_after = procfs.load_average()
    tree_after = tree_state()
    print(f"\nload average before {load_before}, after {load_after}; {procfs.machine()}")
    changed = f" at the start, {tree_after} at the end" if tree_after != tree_before else ""
    print(f"tree: {tree_before}{changed}")
    if args.json:
        document = {
            "started": started.isoformat(timespec="seconds"),
            "argv": sys.argv,
            "machine": procfs.machine(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "tree_before": tree_before,
            "tree_after": tree_after,
            "media": loaded.summary(),
            "servers": {label: shlex.join(command) for label, command in servers},
            "options": {"subscribers": subscribers, "duration": duration, "settle": settle,
                        "probes": probes, "rounds": rounds, "legs_per_worker": args.legs_per_worker,
                        "decrypt_every": args.decrypt_every, "pacing": args.pacing,
                        "simulcast": args.simulcast, "transport": args.transport,
                        **({"tcp_server_config": {"tcp_max_per_address": TCP_LIMIT,
                                                  "tcp_max_connections": TCP_LIMIT}}
                           if "tcp" in transports else {}),
                        **({"find_capacity": attrs.asdict(criteria)} if args.find_capacity else {})},
            **({"capacity": capacity} if args.find_capacity else {}),
            "summary": summaries,
            "ratios_b_over_a": comparison,
            **({"ratios_tcp_over_udp": tcp_over_udp} if len(transports) > 1 else {}),
            "runs": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1, default=str) + "\n")
        print(f"results: {args.json}")
    # --find-capacity: a run that fails is an N not held, not a failed search.
    return 0 if args.find_capacity or all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
