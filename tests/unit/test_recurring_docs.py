"""The worked example of docs/recurring-events.md runs and prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import json
import re

from local.stack import ROOT

PAGE = ROOT / "docs" / "recurring-events.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_worked_example_expands_as_documented() -> None:
    # GIVEN the page's expansion code, its example items and its printing snippet
    definitions, printing = blocks("python")
    (items,) = blocks("json")
    (expected,) = blocks("text")
    namespace: dict[str, object] = {"items": json.loads(items)}
    # WHEN they run
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(definitions + printing, namespace)  # noqa: S102 - the documentation's own example
    # THEN they print exactly the occurrences the page shows: the cancelled one skipped, the moved one moved
    assert output.getvalue() == expected
