"""Linux traffic control on `lo` for the tests that need a narrow or broken link (run as root in the
suite's private network namespace, where `lo` is all there is): an HTB root whose default class passes
everything at a wide rate, one limited class with a drop-tail queue, and filters that send chosen UDP
into it. Removed on exit; a machine that cannot do it skips the test, saying why."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio

WIDE_RATE = "10gbit"
LIMITED = "1:1"  # the limited class (its queue is qdisc 10:)


async def tc(*args: str) -> trio.CompletedProcess[bytes]:
    """Run `tc` (its failure is the caller's to judge: a skip when shaping, nothing when removing)."""
    return await trio.run_process(["tc", *args], capture_stdout=True, capture_stderr=True, check=False)


def limited_class(rate: str, queue_bytes: int, wide_rate: str = WIDE_RATE) -> list[list[str]]:
    """The HTB root, its default class 1:10 at `wide_rate`, and class 1:1 at `rate` with a drop-tail
    queue of `queue_bytes` (a queue smaller than a packet drops every packet sent into it)."""
    return [
        ["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10"],
        ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", wide_rate],
        ["class", "add", "dev", "lo", "parent", "1:", "classid", LIMITED, "htb", "rate", rate, "ceil", rate],
        ["qdisc", "add", "dev", "lo", "parent", LIMITED, "handle", "10:", "bfifo", "limit", str(queue_bytes)],
    ]


def udp_filter(*matches: str, prio: int = 1, flowid: str = LIMITED) -> list[str]:
    """A filter sending UDP that matches `matches` (u32 `match ip ...` words) to `flowid`."""
    return ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", str(prio), "u32",
            "match", "ip", "protocol", "17", "0xff", *matches, "flowid", flowid]


def port(direction: str, number: int) -> list[str]:
    """u32 words matching a UDP source (`sport`) or destination (`dport`) port."""
    return ["match", "ip", direction, str(number), "0xffff"]


@asynccontextmanager
async def loopback_rules(commands: Sequence[list[str]]) -> AsyncIterator[None]:
    """`commands` applied in order while the block runs; the root qdisc deleted on exit."""
    if shutil.which("tc") is None:
        pytest.skip("tc is missing: install Debian's iproute2 (scripts/test runs the suite as root)")
    try:
        for command in commands:
            result = await tc(*command)
            if result.returncode != 0:
                pytest.skip(f"cannot shape loopback (`tc {' '.join(command)}`: "
                            f"{result.stderr.decode().strip()}); needs root in a network namespace")
        yield
    finally:
        await tc("qdisc", "del", "dev", "lo", "root")
