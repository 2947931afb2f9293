"""Helpers of finding that need no server."""

from __future__ import annotations

from datetime import UTC, datetime

from drorch.reconcile.find import _iso, _iso_cached


def test_commit_times_are_formatted_as_before_once_per_moment() -> None:
    iso = _iso_cached()
    at = datetime(2026, 12, 1, 4, 10, 0, 123456, tzinfo=UTC)
    assert iso(at) == _iso(at) == at.isoformat()
    assert iso(at) is iso(datetime(2026, 12, 1, 4, 10, 0, 123456, tzinfo=UTC))
    assert iso(None) is None
