"""Pure parts of the set path: key ranges, counts and the split in time with sets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drorch.reconcile.bulk import key_ranges
from drorch.reconcile.find import split_in_time
from drorch.reconcile.model import (
    ApplyResult,
    Change,
    Divergence,
    DivergenceReport,
    TableReport,
)


@pytest.mark.parametrize(("keys", "ranges"), [
    ([7], "{[7,8)}"),
    ([1, 2, 3, 5, 6, 9], "{[1,4),[5,7),[9,10)}"),
    ([-3, -2, 0], "{[-3,-1),[0,1)}"),
])
def test_key_ranges_cover_exactly_the_keys(keys: list[int], ranges: str) -> None:
    assert key_ranges(keys) == ranges


def _table(bulk: int, changes: int) -> TableReport:
    t = TableReport("public.t", ["id"], "old-wins")
    t.changes = [Change(f"c{i}", "public.t", {"id": i}, "old-only", "apply-old", ["v"],
                        "insert") for i in range(changes)]
    t.bulk_applied = bulk
    return t


def test_rows_applied_as_a_set_count_as_old_only_changes_to_apply() -> None:
    counts = _table(1000, 3).counts()
    assert (counts["rows_diverged"], counts["old_only"], counts["to_apply"],
            counts["applied_as_set"]) == (1003, 1003, 1003, 1000)


def test_a_stored_report_keeps_the_set_count() -> None:
    report = DivergenceReport("db@2:0/1", "db", "wal", "", Divergence("0/1", 2, 1),
                              tables=[_table(500, 2)])
    back = DivergenceReport.from_dict(report.to_dict(with_changes=False))
    assert back.table("public.t").counts() == report.table("public.t").counts()
    assert back.table("public.t").bulk_applied == 500


def test_the_split_in_time_counts_a_sets_rows_by_their_transactions_commit() -> None:
    at = datetime(2026, 12, 1, 12, tzinfo=UTC)
    t = _table(0, 0)
    t.bulk_commits = {10: 300, 11: 200, 12: 7}
    report = DivergenceReport("db@2:0/1", "db", "wal", "", Divergence("0/1", 2, 1), tables=[t])
    split = split_in_time(report, {10: at - timedelta(seconds=1),
                                   11: at + timedelta(seconds=1)}, at)
    assert (split["before"]["rows"], split["after"]["rows"], split["rows_unknown"]) == \
        (300, 200, 7)


def test_rows_recovered_include_the_sets() -> None:
    res = ApplyResult("r", applied=5, already_applied=2, applied_as_set=1000)
    assert res.rows_recovered == 1007 and res.to_dict()["applied_as_set"] == 1000



def test_block_ranges_keep_dirty_blocks_listed_and_cap_the_ranges() -> None:
    """Runs of consecutive clean blocks become ranges; a block where another tuple was
    written after the split breaks a run and its candidates are listed; beyond
    MAX_RANGES, the smallest runs are listed too."""
    from drorch.reconcile import tidfetch

    assert tidfetch.block_ranges([3, 4, 5, 7, 8, 10], {7}) == ([(3, 6), (8, 9), (10, 11)], [7])
    assert tidfetch.block_ranges([], set()) == ([], [])
    many = list(range(0, 2 * tidfetch.MAX_RANGES + 4, 2)) + [1000, 1001, 1002]
    ranges, listed = tidfetch.block_ranges(many, set())
    assert len(ranges) == tidfetch.MAX_RANGES and (1000, 1003) in ranges
    covered = {b for lo, hi in ranges for b in range(lo, hi)}
    assert covered | set(listed) == set(many) and not covered & set(listed)
