"""`--find-capacity`: the largest N each server holds loss-free, found by stepping N up, then bisecting.

"Holds N" (`shortfall` returns None) means, for every round at that N: the run completed; all N
legs connected within the ramp-up (none failed); the loss (sequence gaps per SSRC at the players,
over the window) is at most `max_loss_pct`; the delivery ratio (packets the players received /
(packets the publisher sent that a player can get x legs)) is at least `min_delivery` (this catches
legs that receive nothing, which have no gaps); the end-to-end latency p99 is at most `max_p99_ms`
(a server that queues instead of dropping is full too); and the server closed no leg.

The search, per server: N = start, start + step, ... until a run fails or N reaches `max`; then
bisection between the largest N that held and the smallest that did not, until they are at most
`resolution` apart. With several servers their runs alternate (A at its next N, B at its next N, ...)
so that the machine's drift hits them alike. With players over UDP and over ICE-TCP (`--transport
both`), each (server, transport) is searched as a server of its own, named "SERVER udp", "SERVER tcp".
The capacity is the largest N that held (0: not even `start`; at `max`: the ceiling, not the server,
stopped the search).
"""

from __future__ import annotations

from typing import Any

import attrs

from .progress import Progress
from .run import Options, latency_of, run_case


@attrs.define
class Criteria:
    start: int = 100
    step: int = 100
    max: int = 1000
    resolution: int = 25
    max_loss_pct: float = 0.01
    min_delivery: float = 0.99
    max_p99_ms: float = 50.0

    def describe(self) -> str:
        return (f"every leg connected, loss <= {self.max_loss_pct:g} %, "
                f"delivery >= {100 * self.min_delivery:g} %, e2e p99 <= {self.max_p99_ms:g} ms")


def shortfall(result: dict[str, Any], criteria: Criteria) -> str | None:
    """Why this run does not count as holding its N loss-free; None if it does."""
    if not result.get("ok"):
        return f"failed: {result.get('error')}"
    reasons = []
    if result["legs"] < result["n"] or result["legs_failed"] or result.get("ramp_incomplete"):
        reasons.append(f"{result['legs']}/{result['n']} legs ({result['legs_failed']} failed)")
    loss = result["loss_pct"]
    if loss is None or loss > criteria.max_loss_pct:
        reasons.append(f"loss {'-' if loss is None else f'{loss:.3f}'} %")
    delivery = result["delivery_ratio"]
    if delivery is None or delivery < criteria.min_delivery:
        reasons.append(f"delivery {'-' if delivery is None else f'{100 * delivery:.1f}'} %")
    p99 = latency_of(result)["p99"]
    if p99 is None or p99 > criteria.max_p99_ms:
        reasons.append(f"p99 {'-' if p99 is None else f'{p99:.1f}'} ms")
    if result["closed_by_server"]:
        reasons.append(f"server closed {len(result['closed_by_server'])} legs")
    return "; ".join(reasons) or None


def _bench_limits(result: dict[str, Any]) -> list[str]:
    """What may have limited the run other than the server: the bench's processes or the machine."""
    notes = []
    if result.get("subscriber_saturated"):
        notes.append(f"subscriber processes saturated ({max(result['subscriber_cpu_pct'])} % of a core)")
    if result.get("machine_saturated"):
        notes.append(f"machine CPUs {result['machine_cpu_busy_pct']} % busy")
    return notes


def find_capacity(
    servers: list[tuple[str, list[str]]],
    options: Options,
    criteria: Criteria,
    rounds: int,
    progress: Progress,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every run, and per server (per server and transport if `options.transports` has several): the
    capacity, the smallest N that did not hold and why, every N tried."""
    several = len(options.transports) > 1
    series = [
        (f"{label} {transport}" if several else label, label, command, transport)
        for label, command in servers for transport in options.transports
    ]
    state: dict[str, dict[str, Any]] = {
        name: {"capacity": 0, "failed_at": None, "why": None, "next": criteria.start, "done": False,
               "tried": []}
        for name, _, _, _ in series
    }
    ramp = max(0, -(-(criteria.max - criteria.start) // max(1, criteria.step))) + 1
    guess = len(series) * rounds * (ramp + max(1, criteria.step // max(1, criteria.resolution)).bit_length())
    results: list[dict[str, Any]] = []
    while not all(s["done"] for s in state.values()):
        for name, label, command, transport in series:
            current = state[name]
            if current["done"]:
                continue
            n = current["next"]
            runs = []
            for r in range(rounds):
                progress.run(len(results), max(guess, len(results) + 1))
                runs.append(run_case(label, command, n, options, progress, r, transport))
            results += runs
            why = next((w for run in runs if (w := shortfall(run, criteria)) is not None), None)
            limits = sorted({note for run in runs for note in _bench_limits(run)})
            current["tried"].append({"n": n, "holds": why is None, "why": why, "bench_limits": limits})
            if why is None:
                current["capacity"] = max(current["capacity"], n)
            else:
                current["failed_at"], current["why"] = n, why
            low, high = current["capacity"], current["failed_at"]
            if high is None:
                if n >= criteria.max:
                    current["done"] = True
                else:
                    current["next"] = min(n + criteria.step, criteria.max)
            elif high - low <= criteria.resolution:
                current["done"] = True
            else:
                current["next"] = (low + high) // 2
    report = {
        label: {
            "capacity": s["capacity"],
            "failed_at": s["failed_at"],
            "why": s["why"],
            "at_ceiling": s["failed_at"] is None,
            "tried": s["tried"],
        }
        for label, s in state.items()
    }
    return results, report


def capacity_lines(report: dict[str, dict[str, Any]], criteria: Criteria) -> list[str]:
    lines = [f"capacity: the largest N held loss-free ({criteria.describe()}; one server at a time):"]
    width = max(len(label) for label in report)
    for label, found in report.items():
        if found["at_ceiling"]:
            end = f"every N held up to the ceiling {criteria.max} (--capacity-max)"
        else:
            end = f"{found['failed_at']} did not: {found['why']}"
        tried = ", ".join(f"{t['n']}{'' if t['holds'] else ' (x)'}" for t in found["tried"])
        shown = f"{'>=' if found['at_ceiling'] else ''}{found['capacity']}"
        lines.append(f"  {label.ljust(width)}  {shown:>7}   ({end}; tried {tried})")
        for t in found["tried"]:
            if t["bench_limits"] and (not t["holds"] or t["n"] == found["capacity"]):
                lines.append(f"  {' ' * width}  warning at N={t['n']}: {'; '.join(t['bench_limits'])}: "
                             "the bench's own processes compete with the server for the CPUs")
    labels = list(report)
    if len(labels) == 2:
        a, b = (report[label] for label in labels)
        ratio = f"{b['capacity'] / a['capacity']:.2f}" if a["capacity"] else "-"
        if a["at_ceiling"] or b["at_ceiling"]:
            ratio += " (a server reached --capacity-max: not its capacity; raise the ceiling)"
        lines.append(f"  capacity {labels[1]}/{labels[0]}: {ratio}")
    return lines
