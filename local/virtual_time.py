"""Virtual time for synchronous code: a discrete-event scheduler over real threads.

The mirror's code is synchronous and takes its ``clock``, ``monotonic`` and ``sleep`` as callables, so
a whole fleet of it (Lambda invocations, their worker threads, the Feishu simulator's answer times) can
run in simulated time: each simulated thread is a real thread, but only one of them runs at any
moment, and time advances only when every simulated thread is blocked in a virtual ``sleep`` or
``wait``. The scheduler then jumps to the earliest wake-up. An hour of fleet time costs only the CPU
its code needs, and a run is deterministic: the order of wake-ups at equal times is the order they
were scheduled in, and nothing else decides who runs (seed ``random`` for the rest).

Callbacks (``at``/``after``) run in the scheduler's own thread at their time and must not block; they
may schedule more callbacks and ``spawn`` threads. A simulated thread can be ``kill``ed: its next (or
current) virtual sleep or wait raises the given ``BaseException`` — how a Lambda timeout ends an
invocation without the code under test being able to catch it as an ``Exception``.
"""

from __future__ import annotations

import _thread
import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# A fixed epoch (2026-03-02T01:00:00Z, a Monday 09:00 in Shanghai): runs do not depend on the real date.
DEFAULT_EPOCH = 1_772_413_200.0
MONOTONIC_BASE = 100_000.0


class Killed(BaseException):
    """Raised inside a killed simulated thread (a ``BaseException``: the code under test cannot swallow it)."""


class Stalled(RuntimeError):
    """A simulated thread held the baton for longer than allowed (blocked on a real lock: a harness bug)."""


@dataclass(eq=False)
class VirtualThread:
    """A simulated thread: ``result`` or ``error`` once ``done``."""

    name: str
    propagate: bool
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    _resume: Any = field(default_factory=_thread.allocate_lock, repr=False)
    _park: int = 0  # bumped at each park: stale wake-ups are ignored
    _kill: BaseException | None = None
    _joiners: list[VirtualThread] = field(default_factory=list, repr=False)
    _clock: VirtualTime | None = field(default=None, repr=False)

    def join(self) -> None:
        """From another simulated thread: wait (in virtual time) until this one has finished."""
        clock = self._clock
        assert clock is not None
        while not self.done:
            me = clock.current()
            self._joiners.append(me)
            clock._park(me, None)

    def kill(self, exc: BaseException | None = None) -> None:
        """Make the thread's current or next virtual sleep or wait raise ``exc`` (``Killed`` by default)."""
        clock = self._clock
        assert clock is not None
        if self.done or self._kill is not None:
            return
        self._kill = exc or Killed(self.name)
        if clock._running is not self:
            clock._wake(self, clock.now)


class VirtualEvent:
    """An event flag in virtual time (``threading.Event`` for simulated threads)."""

    def __init__(self, clock: VirtualTime) -> None:
        self._clock = clock
        self._set = False
        self._waiters: list[VirtualThread] = []

    def is_set(self) -> bool:
        """Whether ``set`` was called."""
        return self._set

    def set(self) -> None:
        """Set the flag and wake every waiter (at the current virtual time)."""
        self._set = True
        waiters, self._waiters = self._waiters, []
        for thread in waiters:
            self._clock._wake(thread, self._clock.now)

    def wait(self, timeout: float | None = None) -> bool:
        """From a simulated thread: block until set or ``timeout`` virtual seconds passed; returns the flag."""
        if self._set:
            return True
        me = self._clock.current()
        self._waiters.append(me)
        self._clock._park(me, None if timeout is None else self._clock.now + max(0.0, timeout))
        if me in self._waiters:
            self._waiters.remove(me)
        return self._set


class VirtualLock:
    """A lock in virtual time (``threading.Lock`` for simulated threads): a waiter parks until released."""

    def __init__(self, clock: VirtualTime) -> None:
        self._clock = clock
        self._held = False
        self._waiters: deque[VirtualThread] = deque()

    def __enter__(self) -> VirtualLock:
        while self._held:
            me = self._clock.current()
            self._waiters.append(me)
            self._clock._park(me, None)
        self._held = True
        return self

    def __exit__(self, *_exc: object) -> None:
        self._held = False
        if self._waiters:
            self._clock._wake(self._waiters.popleft(), self._clock.now)


class VirtualTime:
    """The scheduler (see the module docstring). ``run`` drives it from the calling thread."""

    def __init__(
        self, *, epoch: float = DEFAULT_EPOCH, monotonic_base: float = MONOTONIC_BASE, stall_seconds: float = 900.0
    ) -> None:
        self._epoch = epoch
        self._monotonic_base = monotonic_base
        self._stall_seconds = stall_seconds
        self._now = 0.0
        self._seq = itertools.count()
        self._queue: list[tuple[float, int, VirtualThread | None, int, Callable[[], None] | None]] = []
        self._baton = _thread.allocate_lock()
        self._baton.acquire()
        self._running: VirtualThread | None = None
        self._threads: dict[int, VirtualThread] = {}  # OS thread id → simulated thread
        self.failures: list[VirtualThread] = []
        self.switches = 0

    # ------------------------------------------------------------------ clocks
    @property
    def now(self) -> float:
        """Virtual seconds since the start."""
        return self._now

    def time(self) -> float:
        """Wall-clock time (``time.time``'s stand-in): the epoch plus virtual seconds."""
        return self._epoch + self._now

    def monotonic(self) -> float:
        """``time.monotonic``'s stand-in."""
        return self._monotonic_base + self._now

    def to_monotonic(self, wall: float) -> float:
        """A wall-clock time as a ``monotonic`` value (deadlines given in wall time)."""
        return wall - self._epoch + self._monotonic_base

    # ------------------------------------------------------------------ from simulated threads
    def current(self) -> VirtualThread:
        """The simulated thread calling; raises outside one."""
        thread = self._threads.get(threading.get_ident())
        if thread is None or thread is not self._running:
            raise RuntimeError("a virtual sleep or wait outside a simulated thread (or while another runs)")
        return thread

    def is_simulated(self) -> bool:
        """Whether the caller is the simulated thread that runs now."""
        thread = self._threads.get(threading.get_ident())
        return thread is not None and thread is self._running

    def sleep(self, seconds: float) -> None:
        """``time.sleep``'s stand-in: park the calling simulated thread for ``seconds`` of virtual time."""
        me = self.current()
        self._park(me, self._now + max(0.0, float(seconds)))

    def event(self) -> VirtualEvent:
        """A new ``VirtualEvent``."""
        return VirtualEvent(self)

    def lock(self) -> VirtualLock:
        """A new ``VirtualLock``."""
        return VirtualLock(self)

    # ------------------------------------------------------------------ scheduling
    def spawn(self, target: Callable[..., Any], *args: Any, name: str = "", propagate: bool = True) -> VirtualThread:
        """Start a simulated thread at the current virtual time (it runs once the caller blocks).

        An exception escaping a thread spawned with ``propagate`` fails ``run``; otherwise it is only
        kept in the thread's ``error`` (a Lambda invocation's failure is its model's business).
        """
        thread = VirtualThread(name or f"vthread-{next(self._seq)}", propagate, _clock=self)
        thread._resume.acquire()

        def body() -> None:
            self._threads[threading.get_ident()] = thread
            thread._resume.acquire()
            try:
                if thread._kill is not None:
                    raise thread._kill
                thread.result = target(*args)
            except BaseException as exc:
                thread.error = exc
                if propagate and not isinstance(exc, Killed):
                    self.failures.append(thread)
            finally:
                thread.done = True
                for joiner in thread._joiners:
                    self._wake(joiner, self._now)
                thread._joiners.clear()
                del self._threads[threading.get_ident()]
                self._running = None
                self._baton.release()

        threading.Thread(target=body, name=thread.name, daemon=True).start()
        self._wake(thread, self._now)
        return thread

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the scheduler at virtual time ``when`` (not before now)."""
        heapq.heappush(self._queue, (max(when, self._now), next(self._seq), None, 0, callback))

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` ``delay`` virtual seconds from now."""
        self.at(self._now + max(0.0, delay), callback)

    def run(self, until: float | None = None) -> None:
        """Run until nothing is scheduled, or until virtual time ``until`` (then time stands at ``until``).

        Raises the first exception that escaped a thread spawned with ``propagate``, and ``Stalled``
        when a thread holds the baton past ``stall_seconds`` of real time.
        """
        if self.is_simulated():
            raise RuntimeError("run() is called by the driver, not from a simulated thread")
        while self._queue:
            when, _, thread, park, callback = self._queue[0]
            if until is not None and when > until:
                break
            heapq.heappop(self._queue)
            self._now = max(self._now, when)
            if callback is not None:
                callback()
            elif thread is not None and not thread.done and park == thread._park:
                self._hand_over(thread)
            if self.failures:
                failed = self.failures[0]
                assert failed.error is not None
                raise RuntimeError(f"simulated thread {failed.name} failed") from failed.error
        if until is not None:
            self._now = max(self._now, until)

    def map[T, R](self, function: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
        """From a simulated thread: ``function`` over ``items`` on ``workers`` simulated threads (what a
        ``ThreadPoolExecutor.map`` does in real time); the results in the items' order. The first
        exception raised by ``function`` is raised here, after every worker has stopped."""
        queue = deque(enumerate(items))
        results: dict[int, R] = {}
        failures: list[BaseException] = []

        def work() -> None:
            while queue and not failures:
                index, item = queue.popleft()
                try:
                    results[index] = function(item)
                except Exception as exc:  # handed to the caller below
                    failures.append(exc)

        threads = [self.spawn(work, propagate=False) for _ in range(max(1, min(workers, len(queue))))]
        for thread in threads:
            thread.join()
        for thread in threads:
            if thread.error is not None:  # killed, or a BaseException: the caller unwinds too
                raise thread.error
        if failures:
            raise failures[0]
        return [results[index] for index in sorted(results)]

    def pending(self) -> int:
        """How many wake-ups and callbacks are scheduled."""
        return len(self._queue)

    # ------------------------------------------------------------------ the baton
    def _hand_over(self, thread: VirtualThread) -> None:
        self._running = thread
        self.switches += 1
        thread._resume.release()
        if not self._baton.acquire(timeout=self._stall_seconds):
            raise Stalled(f"simulated thread {thread.name} did not yield within {self._stall_seconds} s")

    def _wake(self, thread: VirtualThread, when: float) -> None:
        thread._park += 1
        heapq.heappush(self._queue, (max(when, self._now), next(self._seq), thread, thread._park, None))

    def _park(self, thread: VirtualThread, until: float | None) -> None:
        """Block the running simulated thread until woken (or until virtual time ``until``)."""
        if thread._kill is not None:
            raise thread._kill
        if until is not None:
            self._wake(thread, until)
        else:
            thread._park += 1
        self._running = None
        self._baton.release()
        thread._resume.acquire()
        if thread._kill is not None:
            raise thread._kill
