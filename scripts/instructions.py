#!/usr/bin/env python3
"""Instructions per forwarded packet of the fan-out path: a figure the machine's noise cannot move.

Timings on a shared machine wander by tens of percent; the number of instructions a packet costs does
not. This runs scripts/profile_fanout.py (one producer, N players, real SRTP, real sends) under
valgrind's cachegrind (no cache simulation: it only counts) twice, with K and 2K packets, and reports
the difference divided by the K x N extra forwarded packets: start-up and set-up cancel out. User space
only (the kernel's part of `send` is not counted), which is the part our code decides. Perf's hardware
counters would be faster but are not available in every VM (they are not on our CI machines).

    scripts/instructions.py [--players 100] [--packets 200] [--tree DIR] [--json FILE]

`--tree DIR` measures another checkout (e.g. `git worktree add /tmp/before COMMIT`) with this
script's profile, to compare before and after a change. About a minute per run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions(tree: Path, players: int, packets: int) -> int:
    """User-space instructions of one profile_fanout run (cachegrind's `I refs`)."""
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, str(ROOT / "scripts" / "profile_fanout.py"),
        "--players", str(players), "--packets", str(packets),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if result.returncode != 0 or found is None:
        tail = "\n".join(result.stderr.splitlines()[-15:])
        raise SystemExit(f"valgrind run failed (exit {result.returncode}):\n{tail}")
    return int(found[1].replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--players", type=int, default=100)
    parser.add_argument("--packets", type=int, default=200, help="K: runs with K and 2K packets")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose trio_sfu is measured")
    parser.add_argument("--json", type=Path, help="append the result (one JSON object a line)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 2
    counts = []
    for packets in (args.packets, 2 * args.packets):
        started = time.monotonic()
        what = f"valgrind: {args.players} players x {packets} packets ..."
        print(what, end=" ", flush=True, file=sys.stderr)
        counts.append(instructions(args.tree, args.players, packets))
        print(f"{counts[-1]:,} instructions ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    forwarded = args.packets * args.players
    per_packet = (counts[1] - counts[0]) / forwarded
    tree = subprocess.run(["git", "-C", str(args.tree), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip() or str(args.tree)
    print(f"tree {tree}: {per_packet:,.0f} instructions per forwarded packet "
          f"({args.players} players, {args.packets} packets more in the second run)")
    if args.json is not None:
        record = {"tree": tree, "players": args.players, "packets": args.packets,
                  "instructions_per_packet": round(per_packet), "runs": counts, "time": time.time()}
        with args.json.open("a") as out:
            out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
