"""Child processes that never outlive the local stack: their own process group, killed as a group,
and (on Linux) a parent-death signal so even a ``kill -9`` of the stack takes them down."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Self

from botocore.config import Config

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_death_signal() -> None:
        os.setsid()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_death_signal


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own process group that is terminated if this process dies."""
    preexec = _die_with_parent()
    if preexec is None:
        return subprocess.Popen(command, start_new_session=True, **kwargs)
    return subprocess.Popen(command, preexec_fn=preexec, **kwargs)  # noqa: PLW1509 - setsid + prctl only


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 5) -> None:
    """Terminate the child's whole process group, killing it if it does not exit in time."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


# One attempt per readiness probe, with short timeouts: botocore's own retries would back off for seconds.
PROBE_CONFIG = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=5)


class LocalService:
    """A local stand-in for an AWS service in a child process: ``launch``, ``wait_until_ready``, ``stop``;
    a context manager that starts it. Subclasses say how to spawn it and how to ask it whether it answers."""

    name = "the local service"

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _probe(self) -> Callable[[], object]:
        """A call that succeeds once the service answers (one attempt, short timeouts)."""
        raise NotImplementedError

    def launch(self) -> Self:
        """Start the process without waiting for it. Call from the thread that will outlive it: the
        child's parent-death signal fires when the *thread* that spawned it ends."""
        self._process = self._spawn()
        return self

    def start(self, timeout: float = 60) -> Self:
        """Start the process and wait until it answers."""
        return self.launch().wait_until_ready(timeout)

    def wait_until_ready(self, timeout: float = 60) -> Self:
        """Wait until the launched process answers its probe."""
        assert self._process is not None, "not launched"
        probe = self._probe()
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe()
                return self
            except Exception:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the process."""
        terminate(self._process, timeout=10)
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
