"""The Lambda model in virtual time: reserved concurrency, throttled asynchronous events retried with
backoff, the timeout that ends an invocation, retries after errors, and billed time."""

from __future__ import annotations

import random
from typing import Any

from local.lambda_model import FunctionConfig, LambdaContext, LambdaFunction
from local.virtual_time import VirtualTime


def _function(clock: VirtualTime, handler: Any, **config: Any) -> LambdaFunction:
    return LambdaFunction(clock, FunctionConfig("fn", cold_start=0.0, **config), handler, rng=random.Random(7))


def test_reserved_concurrency_throttles_and_lambda_retries_with_growing_intervals() -> None:
    # GIVEN a function with 2 reserved slots whose invocations take 10 s
    clock = VirtualTime()
    fn = _function(clock, lambda _payload, _context: clock.sleep(10), reserved_concurrency=2)
    # WHEN 5 events arrive at once
    for n in range(5):
        fn.invoke_async({"n": n})
    clock.run()
    runs = fn.stats.invocations
    # THEN never more than 2 ran, all 5 ran once, and the throttled ones waited for a retry of the queue
    assert fn.stats.peak_concurrency == 2
    assert sorted(run.payload["n"] for run in runs) == [0, 1, 2, 3, 4]
    assert all(run.outcome == "ok" for run in runs)
    late = sorted(run.slot_at for run in runs)[2:]
    assert all(start >= 10 for start in late)
    # the retries of one event double (1, 2, 4, 8 s ± 20 %): a slot stays unused until the next retry
    assert fn.stats.throttled_attempts >= 3 * 4
    assert max(late) > 20


def test_an_invocation_past_its_timeout_is_ended_and_retried_twice() -> None:
    clock = VirtualTime()
    seen: list[float] = []

    def slow(_payload: dict[str, Any], context: LambdaContext) -> None:
        seen.append(context.get_remaining_time_in_millis())
        try:
            clock.sleep(400)
        except Exception:
            seen.append(-1)
        seen.append(clock.now)

    fn = _function(clock, slow, timeout=300, reserved_concurrency=1)
    fn.invoke_async({})
    clock.run()
    runs = fn.stats.invocations
    assert [run.outcome for run in runs] == ["timeout", "timeout", "timeout"]
    assert seen == [300_000, 300_000, 300_000]  # never resumed after the sleep
    assert [round(run.slot_at, 2) for run in runs] == [0.02, 360.02, 780.02]  # retried 1 and 2 minutes later
    assert [round(run.billed_seconds) for run in runs] == [300, 300, 300]
    assert fn.stats.dropped_events == 1
    assert round(fn.gb_seconds()) == 450  # 3 × 300 s × 0.5 GB


def test_an_error_is_retried_a_minute_later_and_old_events_are_dropped() -> None:
    clock = VirtualTime()
    failures = [True]

    def flaky(_payload: dict[str, Any], _context: LambdaContext) -> str:
        clock.sleep(1)
        if failures.pop() if failures else False:
            raise RuntimeError("boom")
        return "done"

    fn = _function(clock, flaky, reserved_concurrency=1)
    fn.invoke_async({})
    clock.run()
    assert [(run.outcome, run.attempt, round(run.slot_at)) for run in fn.stats.invocations] == [
        ("error", 1, 0),
        ("ok", 2, 61),
    ]
    assert fn.stats.invocations[1].result == "done"

    # an event that cannot get a slot for longer than its maximum age goes to the on-failure destination
    clock = VirtualTime()
    busy = _function(clock, lambda _p, _c: clock.sleep(200), reserved_concurrency=1, max_event_age=120)
    busy.invoke_async({"first": True})
    busy.invoke_async({"second": True})
    clock.run()
    assert [run.payload for run in busy.stats.invocations] == [{"first": True}]
    assert busy.stats.dropped_events == 1


def test_a_cold_start_delays_the_first_invocations_of_new_environments_only() -> None:
    clock = VirtualTime()
    fn = LambdaFunction(
        clock,
        FunctionConfig("fn", cold_start=0.8, reserved_concurrency=2),
        lambda _p, _c: clock.sleep(5),
        rng=random.Random(1),
    )
    for _ in range(2):
        fn.invoke_async({})
    clock.run()
    fn.invoke_async({})
    clock.run()
    runs = fn.stats.invocations
    assert [run.cold for run in runs] == [True, True, False]
    assert [round(run.started_at - run.slot_at, 2) for run in runs] == [0.8, 0.8, 0.0]
    assert fn.stats.cold_starts == 2
