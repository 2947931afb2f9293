"""Timeline history parsing and the WAL retention warning's rules."""

from __future__ import annotations

import pytest

from drorch.reconcile.retention import RetentionFacts, retention_problems
from drorch.reconcile.timeline import parse_history


def test_last_history_entry_is_the_latest_split() -> None:
    """A node promoted twice lists both splits; the last one is where it left its parent."""
    text = "1\t0/302CFA8\tno recovery target specified\n\n2\t0/5000000\tno recovery target\n"
    assert parse_history(text) == (2, "0/5000000")
    with pytest.raises(ValueError):
        parse_history("# nothing\n")


GOOD = RetentionFacts("logical", 1024, -1, 0, True, True, False, True)


def test_a_well_configured_primary_gets_no_warning() -> None:
    """wal_keep_size large enough, logical WAL, walinspect, rewindable: nothing to say."""
    assert retention_problems(GOOD, 512) == []


def test_small_retention_warns_unless_a_slot_keeps_the_wal() -> None:
    """Too little wal_keep_size warns; an unlimited physical slot keeps from the split."""
    small = RetentionFacts("logical", 64, -1, 0, True, True, False, True)
    assert "keeps only 64 MB" in retention_problems(small, 512)[0]
    slotted = RetentionFacts("logical", 64, -1, 1, True, True, False, True)
    assert retention_problems(slotted, 512) == []
    capped = RetentionFacts("logical", 64, 128, 1, True, True, False, True)
    assert "keeps only 128 MB" in retention_problems(capped, 512)[0]


def test_each_missing_prerequisite_is_named() -> None:
    """replica WAL level, no walinspect, no rewind support, no commit timestamps."""
    bad = RetentionFacts("replica", 1024, -1, 0, False, False, False, False)
    text = " ".join(retention_problems(bad, 512))
    for word in ("wal_level is replica", "pg_walinspect", "pg_rewind", "track_commit_timestamp"):
        assert word in text
