"""Readings from /proc: CPU time and RSS of a process tree, per-socket UDP drops, the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """`pid` and all its descendants (a --server-cmd may be a wrapper around the real server)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cmdline(pid: int) -> list[str]:
    """The process's argv ([] if it is gone or a kernel thread)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime (all threads) of each process, summed."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all CPUs, since boot (/proc/stat): whatever runs,
    the server, the bench or anything else. Idle and iowait are not busy."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    busy = total - fields[3] - fields[4]
    return busy / CLOCK_TICK, total / CLOCK_TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def udp_drops() -> dict[int, int]:
    """Datagrams the kernel dropped per UDP socket (by inode; receive buffer full), in this network
    namespace."""
    drops: dict[int, int] = {}
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            drops[int(fields[9])] = int(fields[-1])  # inode, drops
    return drops


def socket_inodes(pids: list[int]) -> set[int]:
    """The inodes of the sockets these processes hold open."""
    inodes = set()
    for pid in pids:
        try:
            entries = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for entry in entries:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{entry}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


BENCH_INTERFACES = frozenset({"lo", "bench0", "bench1"})  # bench0/1: see janus.prepare_network


def loopback_only() -> bool:
    """Whether this network namespace has no interface but loopback (and the bench's own veth pair):
    a private one made by `unshare --net`, not the machine's."""
    try:  # /proc/self/net follows this process's namespace (/sys/class/net follows sysfs's mount)
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    interfaces = {line.split(":", 1)[0].strip() for line in lines}
    return bool(interfaces) and interfaces <= BENCH_INTERFACES


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine() -> dict[str, object]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
