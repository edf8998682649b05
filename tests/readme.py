"""Rewriting a section of the README between two markers (the suites' own figures go there)."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def rewrite_section(start: str, end: str, body: str) -> None:
    """Replace what stands between the ``start`` and ``end`` markers of the README with ``body``."""
    text = README.read_text()
    head, rest = text.split(start, 1)
    README.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")
