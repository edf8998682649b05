"""End-to-end fixtures: where the functions record their AWS calls (for the IAM test), and the check
that no table of a local run holds a token in plaintext."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from local.stack import ROOT, LocalStack

CALLS = ROOT / ".local" / "aws-calls" / "e2e"


@pytest.fixture(scope="session")
def aws_calls() -> Path:
    """A directory, emptied once per session, where every e2e stack's functions record their AWS calls."""
    shutil.rmtree(CALLS, ignore_errors=True)
    CALLS.mkdir(parents=True)
    return CALLS


def assert_no_plaintext_token(stack: LocalStack, tokens: frozenset[str]) -> int:
    """Scan every table of the stack: no item holds any of ``tokens`` in any attribute, text or binary.
    Returns how many items were scanned."""
    assert tokens, "the run issued no token"
    client = stack.client()
    scanned = 0
    for table in stack.table_names.values():
        for page in client.get_paginator("scan").paginate(TableName=table):
            for item in page["Items"]:
                scanned += 1
                blob = repr(item).encode() + b"".join(_binaries(item))
                leaked = sorted(token[:6] for token in tokens if token.encode() in blob)
                assert not leaked, f"{table}: an item holds plaintext tokens starting {leaked}"
    return scanned


def _binaries(value: Any) -> list[bytes]:
    """Every binary value inside a DynamoDB attribute value or item."""
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, dict):
        return [b for v in value.values() for b in _binaries(v)]
    if isinstance(value, list):
        return [b for v in value for b in _binaries(v)]
    return []
