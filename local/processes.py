"""Child processes that never outlive the local stack: their own process group, killed as a group,
and (on Linux) a parent-death signal so even a ``kill -9`` of the stack takes them down."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

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
