"""The virtual-time scheduler: time advances only when every simulated thread is blocked, runs are
deterministic, and a killed thread unwinds at its next sleep whatever it catches."""

from __future__ import annotations

import time

import pytest

from local.virtual_time import DEFAULT_EPOCH, Killed, VirtualTime


def test_sleeping_threads_interleave_in_virtual_time_without_real_waiting() -> None:
    # GIVEN two threads that sleep an hour in steps
    clock = VirtualTime()
    trail: list[tuple[str, float]] = []

    def worker(name: str, step: float) -> None:
        for _ in range(3):
            clock.sleep(step)
            trail.append((name, clock.now))

    clock.spawn(worker, "a", 1200.0)
    clock.spawn(worker, "b", 1800.0)
    # WHEN the scheduler runs
    started = time.perf_counter()
    clock.run()
    # THEN their wake-ups come in time order, ties in the order they were scheduled, and no real hour passed
    assert trail == [
        ("a", 1200.0),
        ("b", 1800.0),
        ("a", 2400.0),
        ("b", 3600.0),  # scheduled at 1800, before a's at 2400
        ("a", 3600.0),
        ("b", 5400.0),
    ]
    assert time.perf_counter() - started < 5
    assert clock.time() == DEFAULT_EPOCH + 5400.0


def test_time_stands_still_while_a_thread_computes() -> None:
    clock = VirtualTime()
    seen: list[float] = []

    def busy() -> None:
        seen.append(clock.monotonic())
        sum(range(200_000))  # real work takes no virtual time
        seen.append(clock.monotonic())

    clock.spawn(busy)
    clock.run()
    assert seen[0] == seen[1]


def test_callbacks_and_events_wake_waiters_at_their_time() -> None:
    clock = VirtualTime()
    ready = clock.event()
    woke: list[float] = []

    def waiter() -> None:
        assert ready.wait()
        woke.append(clock.now)
        assert not clock.event().wait(timeout=5.0)  # a timed wait that nobody sets
        woke.append(clock.now)

    clock.spawn(waiter)
    clock.at(42.0, ready.set)
    clock.run()
    assert woke == [42.0, 47.0]


def test_join_waits_for_a_thread_and_run_stops_at_until() -> None:
    clock = VirtualTime()
    order: list[str] = []

    def child() -> str:
        clock.sleep(10)
        order.append("child")
        return "done"

    def parent() -> None:
        thread = clock.spawn(child)
        thread.join()
        order.append(f"parent saw {thread.result} at {clock.now:g}")
        clock.sleep(100)
        order.append("late")

    clock.spawn(parent)
    clock.run(until=50)
    assert order == ["child", "parent saw done at 10"]
    assert clock.now == 50
    clock.run()
    assert order[-1] == "late"


def test_a_killed_thread_unwinds_even_through_except_exception() -> None:
    # GIVEN code that swallows every Exception around its sleeps (as a sync's error handling does)
    clock = VirtualTime()
    progress: list[float] = []

    def stubborn() -> None:
        while True:
            try:
                clock.sleep(1)
                progress.append(clock.now)
            except Exception:
                progress.append(-1)

    thread = clock.spawn(stubborn, propagate=False)
    # WHEN it is killed at 3.5 s (as Lambda ends an invocation at its timeout)
    clock.at(3.5, thread.kill)
    clock.run()
    # THEN it stopped at its next sleep, by Killed, without running on
    assert progress == [1, 2, 3]
    assert isinstance(thread.error, Killed)
    assert thread.done


def test_a_failing_thread_fails_the_run_and_sleep_needs_a_simulated_thread() -> None:
    clock = VirtualTime()

    def broken() -> None:
        clock.sleep(1)
        raise ValueError("bug")

    clock.spawn(broken)
    with pytest.raises(RuntimeError, match="failed") as caught:
        clock.run()
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match="outside a simulated thread"):
        clock.sleep(1)


def test_runs_are_deterministic() -> None:
    def trace() -> list[tuple[int, float]]:
        clock = VirtualTime()
        out: list[tuple[int, float]] = []

        def worker(n: int) -> None:
            for k in range(5):
                clock.sleep((n * 7 + k * 3) % 5 * 0.1)
                out.append((n, round(clock.now, 6)))

        for n in range(6):
            clock.spawn(worker, n)
        clock.run()
        return out

    assert trace() == trace()


def test_map_runs_on_worker_threads_in_virtual_time_and_keeps_the_order() -> None:
    # GIVEN 10 calls of 1 s each on 4 workers
    clock = VirtualTime()
    out: dict[str, object] = {}

    def caller() -> None:
        def slow(n: int) -> int:
            clock.sleep(1)
            return n * n

        out["results"] = clock.map(slow, range(10), 4)
        out["took"] = clock.now
        try:
            clock.map(lambda n: 1 // (n - 3), range(6), 2)
        except ZeroDivisionError:
            out["raised"] = True

    clock.spawn(caller)
    clock.run()
    # THEN they overlap (3 rounds of 1 s), results keep the order, and an exception reaches the caller
    assert out == {"results": [n * n for n in range(10)], "took": 3.0, "raised": True}
