"""The real handlers (``functions/<name>/app.py``) in-process, called the way Lambda calls them.

``FakeContext`` is the part of the Lambda context the handlers and Powertools read. ``handler_module``
imports a function's ``app.py`` afresh (a handler reads its settings at import) with the environment
given, under a name of its own (never ``app``, which every function's module is called), and with the
shared package's cached clients dropped before and after, so a test's endpoints are the ones it uses.
The e2e tier runs the same files under the Lambda runtime interface emulator instead (``local.lambdas``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from feishu_mirror import composition

ROOT = Path(__file__).resolve().parents[1]
REGION, ACCOUNT = "us-east-1", "000000000000"


@dataclass
class FakeContext:
    """The parts of the Lambda context the handlers and Powertools read."""

    function_name: str = "function"
    remaining_ms: int = 10_000
    aws_request_id: str = "request-1"
    memory_limit_in_mb: int = 512

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def drop_cached_clients() -> None:
    """Forget every client and service the shared package cached (``composition.forget``): the next use
    builds them from the environment as it is then."""
    composition.forget()


@contextmanager
def handler_module(
    function: str, monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str] | None = None
) -> Iterator[ModuleType]:
    """``functions/<function>/app.py`` imported afresh with ``env`` set (through ``monkeypatch``, so it is
    undone after the test), as the module ``<function>_app``."""
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    drop_cached_clients()
    spec = importlib.util.spec_from_file_location(f"{function}_app", ROOT / "functions" / function / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        drop_cached_clients()
