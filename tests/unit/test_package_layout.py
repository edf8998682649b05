"""The shared package's layout holds: the module map names every module, domain modules do no I/O (no
boto3, no HTTP, no adapter imported), and only the composition root and the adapters touch boto3."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import feishu_mirror

PACKAGE = Path(feishu_mirror.__file__).parent
# Modules that talk to the world, or build the graph of those that do.
ADAPTERS = {"feishu", "token_vault", "invoker", "aws_clients", "composition", "config", "observability"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name relative to it (``sync``, ``dynamodb.mirror``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] != "__init__":
            found[".".join(parts)] = path
    return found


def imported(path: Path) -> set[str]:
    """The modules a file imports, at any depth of its code (deferred imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_module_map_names_every_module() -> None:
    # GIVEN the package docstring WHEN every module's name is looked for THEN each is there, on its own line
    doc = feishu_mirror.__doc__ or ""
    missing = [name for name in modules() if f"- ``{name}``:" not in doc]
    assert not missing, f"add these to the module map in feishu_mirror/__init__.py: {missing}"


def test_domain_modules_import_no_adapter_and_no_io_library() -> None:
    # GIVEN the domain modules (everything but the adapters, the dynamodb package and the wiring)
    domain = {
        name: path for name, path in modules().items() if name not in ADAPTERS and not name.startswith("dynamodb")
    }
    assert {"sync", "pings", "resync", "status", "onboarding", "health", "agenda", "listing"} <= set(domain)
    # WHEN their imports are read THEN none reaches boto3, requests or an adapter module
    forbidden = ("boto3", "botocore", "requests", "feishu_mirror.dynamodb", "feishu_mirror.composition")
    offenders = {
        name: sorted(module for module in imported(path) if module.startswith(forbidden))
        for name, path in domain.items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_the_adapters_and_the_composition_root_touch_boto3() -> None:
    users = {name for name, path in modules().items() if any(m.startswith("boto3") for m in imported(path))}
    assert users <= {"aws_clients", "dynamodb.values", "dynamodb.users"}


def test_the_callbacks_cold_path_imports_neither_the_sync_engine_nor_the_read_side() -> None:
    # GIVEN a fresh interpreter with the callback function's environment (as Lambda starts its container)
    root = PACKAGE.parents[2]
    probe = (
        "import sys, app; print(' '.join(sorted(m for m in sys.modules if m.startswith(("
        "'requests', 'dateutil.rrule', 'feishu_mirror.sync', 'feishu_mirror.feishu', 'feishu_mirror.agenda',"
        " 'feishu_mirror.recurrence', 'feishu_mirror.token_vault', 'feishu_mirror.status')))))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{root / 'functions' / 'callback'}{os.pathsep}{PACKAGE.parent}",
        "USERS_TABLE": "users",
        "IDEMPOTENCY_TABLE": "idempotency",
        "SYNC_FUNCTION_NAME": "sync",
        "FEISHU_APP_ID": "cli_test",
        "FEISHU_APP_SECRET": "secret",
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
    }
    # WHEN its module is imported (which also prepares the container: credentials, clients, idempotency)
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed probe
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    # THEN none of what only the other functions need was loaded
    assert done.stdout.split() == []
