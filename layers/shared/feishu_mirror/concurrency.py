"""How the sync runs work side by side within one invocation: a bounded map and a lock.

``THREADS`` is what Lambda runs: a ``ThreadPoolExecutor`` joined before the call returns (nothing
outlives the invocation) and ``threading.Lock``. A simulation in virtual time passes its own (the
workers are simulated threads, and a lock held across a virtual wait must park, not block).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Protocol


class Concurrency(Protocol):
    """A bounded map and a lock factory."""

    def map[T, R](self, function: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
        """``function`` over ``items`` on at most ``workers`` workers, results in order. After a failure no
        new item starts; the first exception is raised once every started item has ended."""
        ...

    def lock(self) -> AbstractContextManager[object]:
        """A new mutual-exclusion lock."""
        ...


class Threads:
    """Real threads (see the module docstring)."""

    def map[T, R](self, function: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
        """See ``Concurrency.map``."""
        pending = list(items)
        if workers <= 1 or len(pending) <= 1:
            return [function(item) for item in pending]
        failed = threading.Event()

        def guarded(item: T) -> tuple[bool, R | None]:
            if failed.is_set():
                return False, None
            try:
                return True, function(item)
            except BaseException:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=min(workers, len(pending))) as pool:
            futures = [pool.submit(guarded, item) for item in pending]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]  # type: ignore[misc]
        return [f.result()[1] for f in futures]  # type: ignore[misc]

    def lock(self) -> AbstractContextManager[object]:
        """``threading.Lock``."""
        return threading.Lock()


THREADS = Threads()
