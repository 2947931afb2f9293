"""Reading synchronous_standby_names, and when a promoted node's commits could return."""

from __future__ import annotations

import pytest

from drorch.adapters.postgres import SyncStandbys, parse_sync_standbys
from drorch.steps.promote import _sync_satisfied


@pytest.mark.parametrize(("value", "expected"), [
    ("*", SyncStandbys("FIRST", 1, ("*",))),
    ("s1, s2", SyncStandbys("FIRST", 1, ("s1", "s2"))),
    ("FIRST 2 (s1, s2, s3)", SyncStandbys("FIRST", 2, ("s1", "s2", "s3"))),
    ("any 1 (\"Region-B\", s2)", SyncStandbys("ANY", 1, ('"Region-B"', "s2"))),
    ("2 (a,b)", SyncStandbys("FIRST", 2, ("a", "b"))),
])
def test_parse(value: str, expected: SyncStandbys) -> None:
    assert parse_sync_standbys(value) == expected


def test_empty_is_asynchronous_and_garbage_is_an_error() -> None:
    assert parse_sync_standbys("  ") is None
    with pytest.raises(ValueError, match="cannot read"):
        parse_sync_standbys("FIRST 2 ()")


@pytest.mark.parametrize(("value", "streaming", "satisfied", "named"), [
    ("", [], True, []),
    ("*", [], False, []),
    ("*", ["walreceiver"], True, ["walreceiver"]),
    ("FIRST 2 (a, b)", ["a"], False, ["a"]),
    ("ANY 1 (a, b)", ["B", "c"], True, ["B"]),
    ("a", ["other"], False, []),
    ('ANY 1 ("Region-B")', ["region-b"], False, []),
    ('ANY 1 ("Region-B")', ["Region-B"], True, ["Region-B"]),
])
def test_satisfied_only_when_enough_named_standbys_stream(
        value: str, streaming: list[str], satisfied: bool, named: list[str]) -> None:
    assert _sync_satisfied(value, streaming) == (satisfied, named)
