"""Pure: from one node's committed heap records to the keys it changed after the split.

Each node's records are read on that node and only compared with that node's
tuples: xids and TIDs collide across nodes. A key is *touched* on a side when a
committed divergent record created a live tuple holding it (insert, update),
deleted it, or moved it away (key-changing update). Whether the key existed at
the split (``base_had``) is found by walking each tuple's chain back through the
update records' old TIDs: a chain that starts with an insert in the window means
the key is new on that side; one that leaves the window means it existed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from drorch.reconcile.walparse import UPDATE_CONTAINS_OLD_KEY, HeapRecord

Tid = tuple[int, int]
RelTid = tuple[str, Tid]


class Touch(NamedTuple):
    """A key one side changed: did it exist at the split (None: cannot tell).

    A tuple: one is built per divergent key (a slotted dataclass cost three times as
    much, a frozen one fifteen)."""

    base_had: bool | None
    head_lsn: int
    last_lsn: int = 0
    """LSN of the latest record that changed the key (its transaction's commit time is
    when this side last wrote it)."""
    last_xid: int = 0


class KeysNotLogged(ValueError):
    """A committed delete (or key change) carries no old key: the WAL cannot name it."""


def committed_records(records: Iterable[HeapRecord], committed: set[int]) -> list[HeapRecord]:
    return sorted((r for r in records if r.xid in committed), key=lambda r: r.lsn)


def created_tids(records: Iterable[HeapRecord]) -> dict[str, set[Tid]]:
    """TIDs of the tuples the (committed, expanded) records created, per relation."""
    out: dict[str, set[Tid]] = defaultdict(set)
    for r in records:
        if r.tid is not None:
            out[r.rel].add(r.tid)
    return out


class _Chains:
    def __init__(self, records: list[HeapRecord], key_changed: set[int]) -> None:
        # the record that created each tuple; the rare TID filled again (a line pointer
        # reused) keeps every creator, in LSN order, in ``more`` (one dict entry per
        # record, without a list each: this runs once per divergent tuple)
        self.first: dict[RelTid, HeapRecord] = {}
        self.more: dict[RelTid, list[HeapRecord]] = {}
        first = self.first
        for r in records:
            if r.tid is not None:
                k = (r.rel, r.tid)
                if (prev := first.setdefault(k, r)) is not r:
                    self.more.setdefault(k, [prev]).append(r)
        self.key_changed = key_changed

    def creators(self, rel: str, tid: Tid) -> list[HeapRecord]:
        k = (rel, tid)
        more = self.more.get(k)
        if more is not None:
            return more
        r = self.first.get(k)
        return [r] if r is not None else []

    def head(self, rel: str, tid: Tid, before: int) -> tuple[bool | None, int]:
        """(key existed at the split?, LSN where the chain starts) for the tuple at ``tid``."""
        changed = False
        head_lsn = before
        for _ in range(100_000):
            lst = self.creators(rel, tid)
            i = bisect_left([r.lsn for r in lst], before)
            if i == 0:
                return (None if changed else True), head_lsn
            rec = lst[i - 1]
            head_lsn = rec.lsn
            if rec.op == "insert":
                return (None if changed else False), head_lsn
            if rec.lsn in self.key_changed:
                changed = True
            assert rec.old_tid is not None
            tid, before = rec.old_tid, rec.lsn
        raise RuntimeError("update chain too long")


def touched_keys(records: list[HeapRecord], live: Mapping[RelTid, str],
                 old_keys: Mapping[int, str]) -> dict[str, Touch]:
    """Every key the committed ``records`` changed, with whether it existed at the split.

    ``records``: committed heap records of one table, bulk inserts expanded,
    ordered by LSN. ``live``: key (canonical JSON) of each live tuple fetched at a
    created TID, keyed by ``(rel, tid)``. ``old_keys``: key logged by a delete or
    key-changing update, keyed by record LSN. Raises :class:`KeysNotLogged` when a
    delete has no logged key.
    """
    key_changed = {r.lsn for r in records
                   if r.op == "update" and r.flags & UPDATE_CONTAINS_OLD_KEY}
    chains = _Chains(records, key_changed)
    out: dict[str, Touch] = {}

    def note(key: str, base: bool | None, head_lsn: int, last: HeapRecord | None) -> None:
        cur = out.get(key)
        first = cur if cur is not None and cur.head_lsn <= head_lsn else None
        latest = (last.lsn, last.xid) if last is not None else (0, 0)
        if cur is not None and cur.last_lsn > latest[0]:
            latest = (cur.last_lsn, cur.last_xid)
        out[key] = Touch(first.base_had if first else base,
                         first.head_lsn if first else head_lsn, *latest)

    first, more = chains.first, chains.more
    for rel_tid, key in live.items():
        r = first.get(rel_tid)
        if r is not None and key not in out and rel_tid not in more:
            # the usual cases, what ``head`` and ``note`` conclude without them: the chain
            # is one insert in the window (the key is new on this side: bulk inserts), or
            # one update of a tuple no record in the window created (the key existed at
            # the split: bulk updates)
            if r.op == "insert":
                out[key] = Touch(False, r.lsn, r.lsn, r.xid)
                continue
            if r.lsn not in key_changed and (rel_tid[0], r.old_tid) not in first:
                out[key] = Touch(True, r.lsn, r.lsn, r.xid)
                continue
        creators = chains.creators(*rel_tid)
        base, head_lsn = chains.head(rel_tid[0], rel_tid[1], 1 << 64)
        note(key, base, head_lsn, creators[-1] if creators else None)
    for r in records:
        if r.op == "delete" or (r.op == "update" and r.lsn in old_keys):
            key = old_keys.get(r.lsn)
            if key is None:
                raise KeysNotLogged(f"delete at LSN {r.lsn:X} on {r.rel} carries no old key")
            assert r.old_tid is not None
            if key not in out and (r.rel, r.old_tid) not in first:
                # the usual case (bulk deletes), what ``head`` and ``note`` conclude: the
                # ended tuple was no record's of the window, so the key existed
                out[key] = Touch(True, r.lsn, r.lsn, r.xid)
                continue
            base, head_lsn = chains.head(r.rel, r.old_tid, r.lsn)
            note(key, base, min(head_lsn, r.lsn), r)
    return out


def transactions_touching(records: Iterable[HeapRecord], top_of: Mapping[int, int]) -> set[int]:
    """Top-level xids (on this node) whose committed records touched these records' tables."""
    return {top_of.get(r.xid, r.xid) for r in records}
