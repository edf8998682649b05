"""AWS Lambda modelled in virtual time (``local.virtual_time``), where it matters for a fleet of syncs.

- **Reserved concurrency**: at most ``reserved_concurrency`` invocations of a function run at once.
- **Asynchronous invokes** (``InvocationType=Event``) are always accepted into the function's queue. An
  attempt that finds no free slot is throttled and the event goes back to the queue: Lambda retries it
  "for up to 6 hours, the retry interval increasing exponentially from 1 second after the first attempt
  to a maximum of 5 minutes" (AWS, *Asynchronous invocation*); the model doubles from 1 s up to 300 s
  with ±20 % jitter. An event older than ``max_event_age`` is dropped (to the on-failure destination).
- **Function errors and timeouts** are retried ``max_retry_attempts`` times, 1 and then 2 minutes later.
- **The timeout**: an invocation still running ``timeout`` seconds after it started is killed (its next
  virtual sleep raises ``LambdaTimeout``, a ``BaseException`` the code cannot catch as an ``Exception``)
  and its slot is freed, as Lambda ends the sandbox's process.
- **Execution environments**: a slot with no idle environment pays ``cold_start`` seconds of init first.

Every invocation is recorded (``Invocation``) with its billed duration, for costs and for checking what
the fleet did (who ran when, what each returned).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from local.virtual_time import Killed, VirtualThread, VirtualTime

THROTTLE_RETRY_FIRST = 1.0
THROTTLE_RETRY_MAX = 300.0
ERROR_RETRY_DELAYS = (60.0, 120.0)


class LambdaTimeout(Killed):
    """The invocation reached its timeout and Lambda ended it."""


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    """What the template sets for one function (and what Lambda adds)."""

    name: str
    memory_mb: int = 512
    timeout: float = 300.0
    reserved_concurrency: int | None = None  # None: the account's unreserved pool (not a bound here)
    max_retry_attempts: int = 2
    max_event_age: float = 21_600.0
    cold_start: float = 0.8  # init of a new execution environment (imports, clients, the secret)
    dispatch_delay: float = 0.02  # from the queue to the handler


@dataclass(slots=True)
class Invocation:
    """One run of the handler."""

    request_id: str
    payload: dict[str, Any]
    queued_at: float  # when the event was first accepted
    slot_at: float  # when it took a slot (a cold start's init comes next)
    attempt: int  # 1 for the first run of an event, 2.. for retries after errors
    cold: bool
    started_at: float = 0.0  # when the handler began
    ended_at: float | None = None
    outcome: str = "running"  # "ok", "error", "timeout"
    result: Any = None
    error: BaseException | None = None

    @property
    def billed_seconds(self) -> float:
        """What Lambda bills: the init of a cold start included, rounded up to the millisecond."""
        assert self.ended_at is not None
        return math.ceil((self.ended_at - self.slot_at) * 1000) / 1000


class LambdaContext:
    """The handler's ``context`` (the attributes the project's handlers read)."""

    def __init__(
        self, clock: VirtualTime, request_id: str, function_name: str, memory_mb: int, deadline: float
    ) -> None:
        self._clock = clock
        self.aws_request_id = request_id
        self.function_name = function_name
        self.memory_limit_in_mb = memory_mb
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until the timeout, on the virtual clock."""
        return max(0, int((self._deadline - self._clock.now) * 1000))


@dataclass(slots=True)
class _Event:
    payload: dict[str, Any]
    queued_at: float
    throttles: int = 0
    attempt: int = 1


@dataclass(slots=True)
class FunctionStats:
    """What happened to a function's events."""

    accepted: int = 0
    throttled_attempts: int = 0
    dropped_events: int = 0  # too old, or out of retries after errors (to the on-failure destination)
    cold_starts: int = 0
    peak_concurrency: int = 0
    invocations: list[Invocation] = field(default_factory=list)


class LambdaFunction:
    """One function: its asynchronous queue, its slots and its invocations (see the module docstring)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        clock: VirtualTime,
        config: FunctionConfig,
        handler: Callable[[dict[str, Any], LambdaContext], Any],
        *,
        rng: random.Random,
    ) -> None:
        self._clock = clock
        self.config = config
        self._handler = handler
        self._rng = rng
        self._running = 0
        self._environments = 0  # created so far; idle ones are reused
        self.stats = FunctionStats()
        self.on_finish: Callable[[Invocation], None] | None = None

    @property
    def running(self) -> int:
        """Invocations running now."""
        return self._running

    def invoke_async(self, payload: dict[str, Any]) -> None:
        """``InvocationType=Event``: accepted at once, run when a slot is free (throttled otherwise)."""
        self.stats.accepted += 1
        event = _Event(dict(payload), self._clock.now)
        self._clock.after(self.config.dispatch_delay, lambda: self._attempt(event))

    def _free_slot(self) -> bool:
        limit = self.config.reserved_concurrency
        return limit is None or self._running < limit

    def _attempt(self, event: _Event) -> None:
        if self._clock.now - event.queued_at > self.config.max_event_age:
            self.stats.dropped_events += 1
            return
        if not self._free_slot():
            self.stats.throttled_attempts += 1
            event.throttles += 1
            wait = min(THROTTLE_RETRY_MAX, THROTTLE_RETRY_FIRST * 2 ** (event.throttles - 1))
            self._clock.after(wait * self._rng.uniform(0.8, 1.2), lambda: self._attempt(event))
            return
        self._start(event)

    def _start(self, event: _Event) -> None:
        self._running += 1
        self.stats.peak_concurrency = max(self.stats.peak_concurrency, self._running)
        cold = self._running > self._environments
        if cold:
            self._environments += 1
            self.stats.cold_starts += 1
        request_id = f"{self.config.name}-{next(self._ids):08d}"
        taken_at = self._clock.now
        invocation = Invocation(request_id, event.payload, event.queued_at, taken_at, event.attempt, cold)
        self.stats.invocations.append(invocation)
        deadline = taken_at + self.config.timeout + (self.config.cold_start if cold else 0.0)
        context = LambdaContext(self._clock, request_id, self.config.name, self.config.memory_mb, deadline)
        thread_box: list[VirtualThread] = []

        def run() -> Any:
            if cold:
                self._clock.sleep(self.config.cold_start)
            invocation.started_at = self._clock.now
            try:
                return self._handler(event.payload, context)
            finally:
                self._clock.at(self._clock.now, lambda: self._finish(event, invocation, thread_box[0]))

        thread = self._clock.spawn(run, name=request_id, propagate=False)
        thread_box.append(thread)
        self._clock.at(deadline, lambda: self._time_out(thread))

    def _time_out(self, thread: VirtualThread) -> None:
        if not thread.done:
            thread.kill(LambdaTimeout(thread.name))

    def _finish(self, event: _Event, invocation: Invocation, thread: VirtualThread) -> None:
        if invocation.ended_at is not None:
            return
        invocation.ended_at = self._clock.now
        self._running -= 1
        error = thread.error
        if error is None:
            invocation.outcome, invocation.result = "ok", thread.result
        else:
            invocation.outcome = "timeout" if isinstance(error, LambdaTimeout) else "error"
            invocation.error = error
            if event.attempt <= self.config.max_retry_attempts:
                retry = _Event(event.payload, event.queued_at, attempt=event.attempt + 1)
                delay = ERROR_RETRY_DELAYS[min(event.attempt - 1, len(ERROR_RETRY_DELAYS) - 1)]
                self._clock.after(delay, lambda: self._attempt(retry))
            else:
                self.stats.dropped_events += 1
        if self.on_finish is not None:
            self.on_finish(invocation)

    def gb_seconds(self) -> float:
        """Billed GB-seconds of every finished invocation."""
        gb = self.config.memory_mb / 1024
        return sum(i.billed_seconds * gb for i in self.stats.invocations if i.ended_at is not None)
