"""The shared timer queue (trio_sfu/server/timers.py), on Trio's mock clock, and a transport on it."""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_sfu.server.mux import MediaMux
from trio_sfu.server.timers import Timers
from trio_sfu.server.transport_driver import TransportDriver
from trio_sfu.transport.certificate import Certificate
from trio_sfu.wire.sdp import parse_offer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sdp"


class Calls:
    def __init__(self) -> None:
        self.at: list[tuple[str, float]] = []

    def callback(self, name: str) -> Callable[[float], None]:
        return lambda now: self.at.append((name, now))


async def test_deadlines_fire_in_order_never_early_at_most_one_resolution_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers, calls = Timers(resolution=0.01), Calls()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        start = trio.current_time()
        for name, delay in (("c", 0.5), ("a", 0.1234), ("b", 0.3), ("none", math.inf)):
            timers.add(calls.callback(name)).set(start + delay)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [name for name, _ in calls.at] == ["a", "b", "c"]
    for (name, now), delay in zip(calls.at, (0.1234, 0.3, 0.5), strict=True):
        assert start + delay <= now <= start + delay + 0.01, name


async def test_a_deadline_moved_earlier_wakes_the_queue_and_one_moved_later_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers, calls = Timers(resolution=0.001), Calls()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        start = trio.current_time()
        early, late = timers.add(calls.callback("early")), timers.add(calls.callback("late"))
        early.set(start + 10)
        late.set(start + 1)
        await trio.sleep(0.5)  # the queue sleeps until start + 1 now
        early.set(start + 0.7)  # earlier than its entry: wakes the queue sooner
        late.set(start + 2)  # later: its entry at start + 1 moves on when it comes due
        await trio.sleep(10)  # past early's first entry (start + 10): stale, dropped when due
        nursery.cancel_scope.cancel()
    assert calls.at == [("early", pytest.approx(start + 0.7)), ("late", pytest.approx(start + 2))]
    assert len(timers) == 0


async def test_a_cancelled_timer_never_fires_and_lets_its_owner_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers = Timers()

    class Owner:
        fired = False

        def on_timer(self, now: float) -> None:
            self.fired = True

    owner = Owner()
    gone = weakref.ref(owner)
    timer = timers.add(owner.on_timer)
    timer.set(trio.current_time() + 30)
    timer.cancel()
    del owner
    gc.collect()
    assert gone() is None and len(timers) == 1  # the entry waits for its time, the owner does not
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        await trio.sleep(31)
        nursery.cancel_scope.cancel()
    assert len(timers) == 0


async def test_a_callback_that_raises_is_counted_and_the_others_still_run(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    timers, calls = Timers(), Calls()

    def broken(now: float) -> None:
        raise RuntimeError("bug")

    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        now = trio.current_time()
        timers.add(broken).set(now + 1)
        timers.add(calls.callback("after")).set(now + 1)
        timers.add(calls.callback("later")).set(now + 2)
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert timers.errors == 1 and "event=timer_callback_error" in caplog.text
    assert [name for name, _ in calls.at] == ["after", "later"]


async def test_a_callback_that_sets_its_deadline_to_now_runs_again_on_the_next_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Not within the same pass (a callback that always asks for now would spin there forever)."""
    timers = Timers()
    runs: list[float] = []

    def again(now: float) -> None:
        runs.append(now)
        if len(runs) < 3:
            timer.set(now)

    timer = timers.add(again)
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        timer.set(trio.current_time() + 1)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert len(runs) == 3 and runs[2] - runs[0] <= timers.resolution


def transport(timers: Timers) -> TransportDriver:
    offer = parse_offer((FIXTURES / "aiortc_offer_play.sdp").read_text())
    return TransportDriver(MediaMux(), offer, Certificate.generate(), timers=timers, handshake_timeout=2.0)


async def test_a_transport_times_out_on_the_shared_timers(autojump_clock: trio.testing.MockClock) -> None:
    """No ICE check ever comes: the handshake timeout ends it, through the queue's callback."""
    timers = Timers()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        driver = transport(timers)
        ended = []
        driver.on_ended = ended.append
        start = trio.current_time()
        await nursery.start(driver.run)
        while not ended:
            await trio.sleep(0.1)
        assert 2.0 <= trio.current_time() - start <= 2.2
        nursery.cancel_scope.cancel()


class BrokenDriver(TransportDriver):
    __slots__ = ()

    def _on_timer(self, now: float) -> None:
        raise RuntimeError("bug in handle_timer")


async def test_a_bug_in_a_transports_timer_ends_that_transport_not_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timers, calls = Timers(), Calls()
    offer = parse_offer((FIXTURES / "aiortc_offer_play.sdp").read_text())
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        broken = BrokenDriver(MediaMux(), offer, Certificate.generate(), timers=timers)
        with pytest.raises(BaseExceptionGroup) as caught:
            async with trio.open_nursery() as session:  # the session's nursery gets the error
                await session.start(broken.run)
        assert caught.group_contains(RuntimeError, match="bug in handle_timer", depth=2)
        healthy = transport(timers)
        ended: list[object] = []
        healthy.on_ended = ended.append
        nursery.start_soon(healthy.run)
        timers.add(calls.callback("still running")).set(trio.current_time() + 1)
        await trio.sleep(3)
        assert ended  # the other transport's handshake timeout still came
        nursery.cancel_scope.cancel()
    assert [name for name, _ in calls.at] == ["still running"]
