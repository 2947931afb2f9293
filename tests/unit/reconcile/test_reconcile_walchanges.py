"""From one node's committed heap records to the keys it touched and whether they existed."""

from __future__ import annotations

import pytest

from drorch.reconcile.walchanges import (
    KeysNotLogged,
    Touch,
    committed_records,
    created_tids,
    touched_keys,
    transactions_touching,
)
from drorch.reconcile.walparse import UPDATE_CONTAINS_OLD_KEY, HeapRecord

REL = "1663/5/16390"


def rec(lsn: int, op: str, tid: tuple[int, int] | None = None,
        old: tuple[int, int] | None = None, flags: int = 0, xid: int = 10) -> HeapRecord:
    return HeapRecord(lsn, xid, op, REL, tid, old, flags, 50, 10)


def test_only_committed_xids_count_in_lsn_order() -> None:
    """Records of aborted or unfinished xids are dropped; the rest come in LSN order."""
    recs = [rec(3, "insert", (0, 3), xid=11), rec(1, "insert", (0, 1)), rec(2, "insert", (0, 2),
                                                                             xid=99)]
    kept = committed_records(recs, {10, 11})
    assert [r.lsn for r in kept] == [1, 3]
    assert created_tids(kept) == {REL: {(0, 1), (0, 3)}}


def test_insert_then_update_is_a_new_key() -> None:
    """A chain that starts with an insert in the window: the key did not exist at the split."""
    recs = [rec(1, "insert", (0, 1)), rec(2, "update", (0, 2), (0, 1))]
    out = touched_keys(recs, {(REL, (0, 2)): "[7]"}, {})
    assert out["[7]"].base_had is False


def test_update_of_an_older_tuple_means_the_key_existed() -> None:
    """A chain that leaves the window through an update's old TID started before the split."""
    recs = [rec(5, "update", (1, 4), (0, 9))]
    assert touched_keys(recs, {(REL, (1, 4)): "[3]"}, {})["[3]"].base_had is True


def test_deletes_need_their_logged_key_and_report_existence() -> None:
    """A deleted key comes from the WAL; deleting a tuple inserted in the window: new key."""
    recs = [rec(1, "insert", (0, 5)), rec(2, "delete", None, (0, 5)),
            rec(3, "delete", None, (2, 2))]
    out = touched_keys(recs, {}, {2: "[8]", 3: "[9]"})
    assert (out["[8]"].base_had, out["[9]"].base_had) == (False, True)
    with pytest.raises(KeysNotLogged):
        touched_keys(recs, {}, {2: "[8]"})


def test_key_change_makes_existence_unknown_and_touches_the_old_key() -> None:
    """An update that changed the key touches both keys; the new key's past is unknown."""
    recs = [rec(4, "update", (0, 7), (0, 2), UPDATE_CONTAINS_OLD_KEY)]
    out = touched_keys(recs, {(REL, (0, 7)): "[20001]"}, {4: "[11]"})
    assert out["[20001]"].base_had is None
    assert out["[11]"].base_had is True


def test_reused_line_pointer_follows_the_latest_creator() -> None:
    """After pruning, a TID can be reused: the live tuple belongs to the last record there."""
    recs = [rec(1, "update", (0, 3), (0, 1)), rec(2, "delete", None, (0, 3)),
            rec(3, "insert", (0, 3))]
    out = touched_keys(recs, {(REL, (0, 3)): "[50]"}, {2: "[40]"})
    assert out["[50]"].base_had is False and out["[40]"].base_had is True


def test_earliest_chain_decides_existence() -> None:
    """Deleted then inserted again: the key existed at the split (the first chain says so)."""
    recs = [rec(1, "delete", None, (0, 1)), rec(2, "insert", (0, 8))]
    out = touched_keys(recs, {(REL, (0, 8)): "[1]"}, {1: "[1]"})
    assert out["[1]"].base_had is True


def test_transactions_touching_maps_subtransactions_to_their_parent() -> None:
    """A subtransaction's records count for its top-level transaction once."""
    recs = [rec(1, "insert", (0, 1), xid=733), rec(2, "insert", (0, 2), xid=735),
            rec(3, "insert", (0, 3), xid=740)]
    assert transactions_touching(recs, {733: 732, 735: 732, 732: 732, 740: 740}) == {732, 740}


def test_a_bulk_inserted_tuple_is_a_new_key_last_written_by_its_insert() -> None:
    """The common case (one insert created the live tuple) gives what walking its chain
    gives, also when another record of the window touched the same key first."""
    recs = [rec(1, "insert", (0, 1), xid=20), rec(2, "delete", None, (0, 9), xid=21),
            rec(3, "insert", (0, 2), xid=22)]
    out = touched_keys(recs, {(REL, (0, 1)): "[1]", (REL, (0, 2)): "[2]"}, {2: "[2]"})
    assert out["[1]"] == Touch(False, 1, 1, 20)
    assert out["[2]"].base_had is True  # deleted at the split's row first, then inserted
    assert (out["[2]"].last_lsn, out["[2]"].last_xid) == (3, 22)


def test_a_lone_update_of_a_tuple_from_before_the_split_is_a_key_that_existed() -> None:
    """One update whose old tuple no record of the window created (the bulk update case):
    the key existed, last written by that update; a key change, or an old tuple the
    window created, still walks the chain."""
    recs = [rec(5, "update", (1, 4), (0, 9), xid=30),
            rec(6, "insert", (2, 1), xid=31), rec(7, "update", (2, 2), (2, 1), xid=32),
            rec(8, "update", (3, 1), (0, 3), UPDATE_CONTAINS_OLD_KEY, xid=33)]
    out = touched_keys(recs, {(REL, (1, 4)): "[3]", (REL, (2, 2)): "[4]",
                              (REL, (3, 1)): "[5]"}, {8: "[6]"})
    assert out["[3]"] == Touch(True, 5, 5, 30)
    assert out["[4]"] == Touch(False, 6, 7, 32)
    assert out["[5]"].base_had is None and out["[6]"].base_had is True
