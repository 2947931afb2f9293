"""Pure parsing of what ``pg_walinspect`` (PostgreSQL 15) says about WAL records.

PG 15's ``pg_get_wal_records_info`` gives each record as text: a resource
manager, a record type, a description and a block reference string. Formats
(measured on 15.18)::

    Heap INSERT       "off 44 flags 0x08"          "blkref #0: rel 1663/5/16390 fork main blk 6"
    Heap UPDATE       "off 10 xmax 729 flags 0x10 ; new off 45 xmax 0"
                      "blkref #0: rel ... blk 6 blkref #1: rel ... blk 0"   (#0 new page, #1 old)
    Heap DELETE       "off 12 flags 0x04 KEYS_UPDATED "
    Heap2 MULTI_INSERT "109 tuples flags 0x08"      (offsets only in the record's main data)
    Transaction COMMIT "2026-11-23 10:50:07.165219+00; subxacts: 733 735"
    Standby RUNNING_XACTS "nextXid 728 latestCompletedXid 727 oldestRunningXid 728"

Xids are 32-bit and wrap: compare them with :func:`xid_precedes`, and never
across two nodes. Record bytes are located and decoded in ``walbytes``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import NamedTuple

# xl_heap_delete.flags / xl_heap_update.flags (heapam_xlog.h, PG 15)
DELETE_CONTAINS_OLD_TUPLE = 0x02
DELETE_CONTAINS_OLD_KEY = 0x04
DELETE_IS_SUPER = 0x08
UPDATE_CONTAINS_OLD_TUPLE = 0x04
UPDATE_CONTAINS_OLD_KEY = 0x08
SIZE_OF_HEAP_DELETE = 8
SIZE_OF_HEAP_UPDATE = 14
SIZE_OF_HEAP_HEADER = 5

HEAP_OPS = {"INSERT": "insert", "UPDATE": "update", "HOT_UPDATE": "update", "DELETE": "delete"}

_BLKREF = re.compile(r"blkref #(\d+): rel (\d+/\d+/\d+)(?: fork (\w+))? blk (\d+)")
_OFF = re.compile(r"^off (\d+)")
_NEW_OFF = re.compile(r"new off (\d+)")
_FLAGS = re.compile(r"flags 0x([0-9A-Fa-f]+)")
_NTUPLES = re.compile(r"^(\d+) tuples")
_SUBXACTS = re.compile(r"subxacts:((?: \d+)+)")
_NEXT_XID = re.compile(r"nextXid (\d+)")
_PREPARED_XID = re.compile(r"^(\d+): ")
_TRUNCATE_RELIDS = re.compile(r"\brelids((?: \d+)+)")
_COMMIT_TS = re.compile(r"^(?:\d+: )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d(?::?\d\d)?)")
_STORAGE_PATH = re.compile(r"(\d+)/(\d+)$")


class WalFormatError(ValueError):
    """A WAL record did not look the way this module expects (a new PG version?)."""


class BlockRef(NamedTuple):
    """One block reference of a record (a tuple: built once per reference of every
    divergent record, where a frozen dataclass cost several times as much)."""

    block_id: int
    rel: str
    """``spcoid/dboid/filenode``"""
    fork: str
    blk: int


class HeapRecord(NamedTuple):
    """One heap change: which tuple it created and which it ended, by TID on its own node.

    A tuple: one is built per divergent record (a million at a time), and building a
    slotted dataclass cost about three times as much (a frozen one, fifteen)."""

    lsn: int
    xid: int
    op: str
    """``insert`` | ``update`` | ``delete`` | ``multi_insert``"""
    rel: str
    tid: tuple[int, int] | None
    """The tuple this record created (insert, update's new version); None for delete.
    A bulk insert (``multi_insert``) holds ``(block, 0)`` until its offsets are read."""
    old_tid: tuple[int, int] | None
    """The tuple this record ended (update's old version, the deleted tuple)."""
    flags: int
    record_length: int
    main_data_length: int
    init_page: bool = False
    ntuples: int = 0


def parse_block_refs(text: str | None) -> list[BlockRef]:
    """Every ``blkref #N: rel S/D/F [fork F] blk B`` in a block reference string."""
    return [BlockRef(int(i), rel, fork or "main", int(blk))
            for i, rel, fork, blk in _BLKREF.findall(text or "")]


def _flags(desc: str) -> int:
    m = _FLAGS.search(desc)
    return int(m[1], 16) if m else 0


def parse_heap_record(lsn: int, xid: int, rm: str, record_type: str, desc: str,
                      block_ref: str | None, record_length: int,
                      main_data_length: int) -> HeapRecord | None:
    """A heap data change (insert, update, delete, bulk insert) or None for anything else."""
    base, _, suffix = record_type.partition("+")
    init = suffix == "INIT"
    refs = [r for r in parse_block_refs(block_ref) if r.fork == "main"]
    if rm == "Heap2" and base == "MULTI_INSERT":
        if not refs:
            raise WalFormatError(f"MULTI_INSERT at {lsn:X} without a block reference")
        m = _NTUPLES.search(desc)
        if not m:
            raise WalFormatError(f"MULTI_INSERT description not understood: {desc!r}")
        return HeapRecord(lsn, xid, "multi_insert", refs[0].rel, (refs[0].blk, 0), None,
                          _flags(desc),
                          record_length, main_data_length, init, int(m[1]))
    if rm != "Heap" or base not in HEAP_OPS:
        return None
    op = HEAP_OPS[base]
    by_id = {r.block_id: r for r in refs}
    if 0 not in by_id:
        raise WalFormatError(f"{record_type} at {lsn:X} without block #0: {block_ref!r}")
    blk0 = by_id[0]
    off_m = _OFF.search(desc)
    if not off_m:
        raise WalFormatError(f"{record_type} description not understood: {desc!r}")
    off = int(off_m[1])
    if op == "insert":
        return HeapRecord(lsn, xid, op, blk0.rel, (blk0.blk, off), None, _flags(desc),
                          record_length, main_data_length, init)
    if op == "delete":
        return HeapRecord(lsn, xid, op, blk0.rel, None, (blk0.blk, off), _flags(desc),
                          record_length, main_data_length)
    new_m = _NEW_OFF.search(desc)
    if not new_m:
        raise WalFormatError(f"{record_type} without a new offset: {desc!r}")
    old_blk = by_id[1].blk if 1 in by_id else blk0.blk
    flags_part = desc.split(";", 1)[0]
    return HeapRecord(lsn, xid, op, blk0.rel, (blk0.blk, int(new_m[1])), (old_blk, off),
                      _flags(flags_part), record_length, main_data_length, init)


HEAP_OP_SQL = """CASE WHEN resource_manager = 'Heap' THEN
    CASE split_part(record_type, '+', 1) WHEN 'INSERT' THEN 'insert' WHEN 'UPDATE' THEN 'update'
      WHEN 'HOT_UPDATE' THEN 'update' WHEN 'DELETE' THEN 'delete' END
  WHEN resource_manager = 'Heap2' AND split_part(record_type, '+', 1) = 'MULTI_INSERT'
    THEN 'multi_insert' END"""
"""The heap data change a ``pg_get_wal_records_info`` row is (the ``op`` of
:func:`parse_heap_record`), or NULL. A query computes it as a column ``op`` in a subquery
kept apart (``OFFSET 0``): :data:`HEAP_FIELDS_SQL` names it ten times, and an expression
the planner inlines is evaluated at each mention (it tripled the read's server time)."""

HEAP_FIELDS_SQL = """op,
  CASE WHEN op IS NOT NULL THEN
    block_ref LIKE 'blkref #0: rel % fork main blk %'
    AND (op = 'multi_insert' OR description LIKE 'off % flags 0x%')
    AND (op <> 'update' OR description LIKE '%; new off %')
    AND (op <> 'multi_insert' OR description LIKE '% tuples flags 0x%') END,
  CASE WHEN op IS NOT NULL THEN split_part(split_part(block_ref, 'blkref #0: rel ', 2), ' ', 1)
    END,
  CASE WHEN op IS NOT NULL THEN split_part(split_part(split_part(
    block_ref, 'blkref #0: rel ', 2), ' blk ', 2), ' ', 1)::bigint END,
  CASE WHEN op IN ('insert', 'update', 'delete') THEN split_part(description, ' ', 2)::int
    END,
  CASE WHEN op = 'update' THEN split_part(split_part(description, '; new off ', 2), ' ', 1
    )::int END,
  CASE WHEN op = 'update' THEN nullif(split_part(split_part(split_part(
    block_ref, 'blkref #1: rel ', 2), ' blk ', 2), ' ', 1), '')::bigint END,
  CASE WHEN op IS NOT NULL THEN ('x' || lpad(split_part(split_part(
    description, 'flags 0x', 2), ' ', 1), 8, '0'))::bit(32)::int END,
  record_type LIKE '%+INIT',
  CASE WHEN op = 'multi_insert' THEN split_part(description, ' ', 1)::int END"""
"""The fields :func:`parse_heap_record` takes from the description and block reference,
extracted by the server (the same formats; parsing 30,000 records' text in Python cost
~0.25 s): ``op, well_formed, rel, block #0, off, new off, block #1, flags, init_page,
ntuples``, all NULL but ``init_page`` for other records. A text that is not a number
where one must be fails the query (the reader says the WAL cannot be used), and one
that is not shaped as expected is ``well_formed = false``: :func:`heap_record` raises."""


def heap_record(lsn: int, xid: int, record_length: int, main_data_length: int, op: str,
                well_formed: bool, rel: str, blk: int, off: int | None, new_off: int | None,
                old_blk: int | None, flags: int, init: bool, ntuples: int | None
                ) -> HeapRecord:
    """A :class:`HeapRecord` from :data:`HEAP_FIELDS_SQL`'s columns (those of
    :func:`parse_heap_record`). Raises :class:`WalFormatError` when not ``well_formed``."""
    if not well_formed:
        raise WalFormatError(f"{op} record at {lsn:X} not understood (block reference or "
                             "description in an unexpected format)")
    if op == "update":
        assert off is not None and new_off is not None
        return HeapRecord(lsn, xid, op, rel, (blk, new_off),
                          (blk if old_blk is None else old_blk, off), flags, record_length,
                          main_data_length, init)
    if op == "insert":
        return HeapRecord(lsn, xid, op, rel, (blk, off or 0), None, flags, record_length,
                          main_data_length, init)
    if op == "delete":
        return HeapRecord(lsn, xid, op, rel, None, (blk, off or 0), flags, record_length,
                          main_data_length)
    return HeapRecord(lsn, xid, op, rel, (blk, 0), None, flags, record_length,
                      main_data_length, init, ntuples or 0)


def commit_xids(xid: int, desc: str, record_type: str = "COMMIT") -> list[int]:
    """The top-level xid of a COMMIT record followed by the subtransactions it committed.

    Only the parent's COMMIT names its subtransactions; a subtransaction rolled
    back to a savepoint is not listed (its changes never became visible). A
    COMMIT_PREPARED names the prepared transaction's xid first (``735: ...``).
    """
    if record_type == "COMMIT_PREPARED":
        p = _PREPARED_XID.search(desc)
        if not p:
            raise WalFormatError(f"COMMIT_PREPARED description not understood: {desc!r}")
        xid = int(p[1])
    m = _SUBXACTS.search(desc)
    subs = [int(s) for s in m[1].split()] if m else []
    return [xid, *subs]


def commit_time(desc: str) -> datetime | None:
    """The commit timestamp at the start of a COMMIT description (the writer's clock)."""
    m = _COMMIT_TS.search(desc)
    if not m:
        return None
    text = m[1]
    if re.search(r"[+-]\d\d$", text):
        text += ":00"
    return datetime.fromisoformat(text)


def running_xacts_next_xid(desc: str) -> int:
    m = _NEXT_XID.search(desc)
    if not m:
        raise WalFormatError(f"RUNNING_XACTS description not understood: {desc!r}")
    return int(m[1])


def storage_create_filenode(desc: str) -> tuple[int, int] | None:
    """``(dboid, filenode)`` of a Storage CREATE record (``base/5/16390``)."""
    m = _STORAGE_PATH.search(desc.strip())
    return (int(m[1]), int(m[2])) if m else None


def truncate_relids(desc: str) -> list[int]:
    """Relation OIDs a Heap TRUNCATE record names."""
    m = _TRUNCATE_RELIDS.search(desc)
    return [int(x) for x in m[1].split()] if m else []


def xid_precedes(a: int, b: int) -> bool:
    """``a`` was assigned before ``b`` on the same node (mod 2^32, as TransactionIdPrecedes)."""
    diff = (a - b) & 0xFFFFFFFF
    return diff >= 0x80000000


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
