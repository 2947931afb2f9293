"""Parsing pg_walinspect's text and locating record bytes (PostgreSQL 15 formats)."""

from __future__ import annotations

import pytest

from drorch.reconcile import walparse as wp


def test_block_refs_parse_every_reference_with_its_fork_and_block() -> None:
    """Each blkref in a reference string becomes (id, rel, fork, block); FPW notes are ignored."""
    refs = wp.parse_block_refs(
        "blkref #0: rel 1663/5/16390 fork main blk 6 (FPW); hole: offset: 200, length: 5880 "
        "blkref #1: rel 1663/5/16390 fork main blk 0")
    assert [(r.block_id, r.rel, r.fork, r.blk) for r in refs] == [
        (0, "1663/5/16390", "main", 6), (1, "1663/5/16390", "main", 0)]


def test_insert_record_creates_the_tuple_at_block_and_offset() -> None:
    """An INSERT names the TID it created (block from blkref #0, offset from the description)."""
    r = wp.parse_heap_record(100, 728, "Heap", "INSERT", "off 44 flags 0x08",
                             "blkref #0: rel 1663/5/16390 fork main blk 6", 79, 3)
    assert r is not None and (r.op, r.tid, r.old_tid, r.rel) == ("insert", (6, 44), None,
                                                                  "1663/5/16390")


def test_update_across_pages_ends_the_old_tid_and_creates_the_new() -> None:
    """A non-HOT UPDATE: new tuple on blkref #0 at 'new off', old tuple on blkref #1 at 'off'."""
    r = wp.parse_heap_record(
        200, 729, "Heap", "UPDATE", "off 10 xmax 729 flags 0x18 KEYS_UPDATED ; new off 45 xmax 0",
        "blkref #0: rel 1663/5/16390 fork main blk 6 blkref #1: rel 1663/5/16390 fork main blk 0",
        96, 28)
    assert r is not None
    assert (r.op, r.tid, r.old_tid, r.flags) == ("update", (6, 45), (0, 10), 0x18)


def test_hot_update_stays_on_its_page() -> None:
    """A HOT_UPDATE has one block: old and new tuples share it."""
    r = wp.parse_heap_record(300, 9, "Heap", "HOT_UPDATE", "off 3 xmax 9 flags 0x10 ; new off 7 "
                             "xmax 0", "blkref #0: rel 1663/5/1 fork main blk 2", 60, 14)
    assert r is not None and (r.tid, r.old_tid) == ((2, 7), (2, 3))


def test_delete_and_bulk_insert_records() -> None:
    """DELETE ends a TID; MULTI_INSERT keeps its block and tuple count until offsets are read."""
    d = wp.parse_heap_record(1, 2, "Heap", "DELETE", "off 12 flags 0x04 KEYS_UPDATED ",
                             "blkref #0: rel 1663/5/16390 fork main blk 0", 68, 22)
    m = wp.parse_heap_record(2, 3, "Heap2", "MULTI_INSERT+INIT", "157 tuples flags 0x08",
                             "blkref #0: rel 1663/5/16390 fork main blk 7", 4446, 4)
    assert d is not None and (d.op, d.old_tid, d.tid, d.flags) == ("delete", (0, 12), None, 4)
    assert m is not None and (m.op, m.tid, m.ntuples, m.init_page) == (
        "multi_insert", (7, 0), 157, True)


def test_other_records_are_not_heap_changes_and_bad_ones_raise() -> None:
    """LOCK and PRUNE are ignored; a data record without its block is a format error."""
    assert wp.parse_heap_record(1, 2, "Heap", "LOCK", "off 10: xid 729", "blkref #0: rel "
                                "1/2/3 fork main blk 0", 54, 8) is None
    assert wp.parse_heap_record(1, 0, "Heap2", "PRUNE", "x", "", 1, 1) is None
    with pytest.raises(wp.WalFormatError):
        wp.parse_heap_record(1, 2, "Heap", "INSERT", "off 1 flags 0x00", "", 10, 3)


def test_commit_lists_committed_subtransactions_and_prepared_xid() -> None:
    """Subxacts follow the top xid; a rolled-back subxact is simply not listed."""
    assert wp.commit_xids(732, "2026-11-23 10:50:07.165219+00; subxacts: 733 735") == [
        732, 733, 735]
    assert wp.commit_xids(728, "2026-11-23 10:50:07.14886+00") == [728]
    assert wp.commit_xids(0, "741: 2026-11-23 10:50:07+00", "COMMIT_PREPARED") == [741]


def test_commit_time_and_running_xacts() -> None:
    """Commit descriptions start with the commit time; RUNNING_XACTS gives nextXid."""
    at = wp.commit_time("2026-11-23 10:50:07.14886+00; inval msgs: catcache 80")
    assert at is not None and at.isoformat() == "2026-11-23T10:50:07.148860+00:00"
    assert wp.running_xacts_next_xid("nextXid 728 latestCompletedXid 727 oldestRunningXid "
                                     "728") == 728
    assert wp.storage_create_filenode("base/5/16433") == (5, 16433)
    assert wp.truncate_relids("flags 0x00 nrelids 2 relids 16384 16390") == [16384, 16390]


def test_xids_compare_modulo_two_to_the_32() -> None:
    """An xid just after wraparound follows one just before it."""
    assert wp.xid_precedes(100, 200) and not wp.xid_precedes(200, 100)
    assert wp.xid_precedes(0xFFFFFFF0, 5)


def test_lsns_round_trip() -> None:
    """LSN text and integers convert both ways."""
    assert wp.lsn_to_int("1/302CFA8") == 0x1_0302CFA8 and wp.int_to_lsn(0x1_0302CFA8) == "1/302CFA8"
