"""COPY text handling of the full comparison (pure parts)."""

from __future__ import annotations

from drorch.reconcile.fullcompare import unescape


def test_copy_escapes_are_undone() -> None:
    """Tabs, newlines and backslashes in COPY text come back as the characters they stand for."""
    assert unescape(r"a\tb\nc\\d") == "a\tb\nc\\d"
    assert unescape("plain") == "plain"
