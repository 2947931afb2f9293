"""Read one node's WAL from the split: its committed divergent changes, key by key.

On each node separately (xids and TIDs collide across nodes):

1. ``pg_get_wal_records_info`` from the split to the node's end: COMMIT records
   (with their subtransactions), heap inserts, updates, deletes and bulk inserts
   of this database, TRUNCATE and Storage CREATE (a rewritten table defeats the
   method). On the old primary, transactions that began before the split and
   committed after it wrote records before the split: the reader walks back to
   a RUNNING_XACTS record older than all of them (``lookback``).
2. The bytes of the few records whose payload matters (old keys of deletes and
   key-changing updates, offsets of bulk inserts) with ``pg_read_binary_file``.
3. The live tuples at the created TIDs whose ``xmin`` is a committed divergent
   xid, in one Tid Scan per relation.

Cost follows the divergent WAL, not the table size. Needs superuser (or
pg_read_server_files and EXECUTE on pg_walinspect). Raises
:class:`WalUnavailable` when the WAL is gone or cannot be used exactly; the
caller then falls back to a full comparison.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain
from queue import Queue
from typing import Any

import psycopg
from psycopg import sql

from drorch.reconcile import walbytes as wb
from drorch.reconcile import walparse as wp
from drorch.reconcile._db import Conn
from drorch.reconcile.catalog import TableMeta
from drorch.reconcile.classify import key_from_array
from drorch.reconcile.tidfetch import (
    block_ranges,
    fetch_live,
    fetch_unkeyed,
    number_array,
    tid_array,
    tid_scan,
)
from drorch.reconcile.tupledecode import (
    UnsupportedKey,
    decode_first_int,
    decode_logged_tuple,
    first_int_format,
)
from drorch.reconcile.walchanges import (
    KeysNotLogged,
    Touch,
    committed_records,
    touched_keys,
    transactions_touching,
)

_RECORDS_SQL = f"""
SELECT (start_lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint,
       CASE WHEN other THEN %(other)s ELSE resource_manager END,
       CASE WHEN other THEN split_part(split_part(block_ref, '/', 2), '/', 1)
            ELSE record_type END,
       record_length, main_data_length,
       CASE WHEN other OR op IS NOT NULL THEN '' ELSE coalesce(description, '') END,
       {wp.HEAP_FIELDS_SQL.replace('%', '%%')}
FROM (SELECT *, CASE WHEN other OR block_ref NOT LIKE %(dbpat)s THEN NULL
                     ELSE {wp.HEAP_OP_SQL} END AS op
      FROM (SELECT *, resource_manager IN ('Heap', 'Heap2')
                      AND block_ref LIKE '%%rel %%' AND block_ref NOT LIKE %(dbpat)s
                      AND block_ref NOT LIKE '%%rel %%/0/%%'
                      AND split_part(split_part(split_part(block_ref, 'rel ', 2), '/', 3),
                                     ' ', 1)::bigint >= 16384 AS other
            FROM pg_get_wal_records_info(%(start)s::pg_lsn, %(end)s::pg_lsn)
            WHERE resource_manager IN ('Heap', 'Heap2', 'Transaction', 'Storage')
            OFFSET 0) AS w
      OFFSET 0) AS w
WHERE other
   OR (resource_manager = 'Transaction' AND record_type IN ('COMMIT', 'COMMIT_PREPARED'))
   OR op IS NOT NULL
   OR (resource_manager = 'Heap' AND record_type = 'TRUNCATE')
   OR (resource_manager = 'Storage' AND record_type = 'CREATE')
"""
"""This database's records that matter, and heap records of *other* databases' user
relations (``resource_manager`` :data:`_OTHER`, the database's oid as ``record_type``):
pg_rewind rewinds the whole cluster, so committed writes there would be erased unseen.
Shared catalogs (database 0) and system catalogs (file nodes below
``FirstNormalObjectId``, 16384: ANALYZE writes ``pg_statistic``) are left out. One
decoding of the WAL serves both (a second pass cost 1-2 s per side at 1,000,000 rows).
Index records (most of the WAL) are dropped before the per-record tests run."""

_OTHER = "drorch:other-database"

_LOOKBACK_SQL = f"""
SELECT (start_lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint, resource_manager, record_type,
       record_length, main_data_length, coalesce(description, ''),
       {wp.HEAP_FIELDS_SQL.replace('%', '%%')}
FROM (SELECT *, CASE WHEN xid = ANY(%(xids)s::xid[]) AND block_ref LIKE %(dbpat)s
                     THEN {wp.HEAP_OP_SQL} END AS op
      FROM pg_get_wal_records_info(%(start)s::pg_lsn, %(end)s::pg_lsn) OFFSET 0) AS w
WHERE (resource_manager = 'Standby' AND record_type = 'RUNNING_XACTS') OR op IS NOT NULL
"""


class WalUnavailable(Exception):
    """This node's WAL cannot give the exact answer; the message says why."""


@dataclass
class SideTable:
    """One table's changes on one side: touched keys, and the live rows read by TID."""

    touched: dict[str, Touch] = field(default_factory=dict)
    rows: dict[str, str] = field(default_factory=dict)
    """key -> ``to_jsonb`` text of the live row read by TID (a table read in bulk: only
    keys handed to the row path; the row path reads the others by key)"""
    transactions: set[int] = field(default_factory=set)
    """Top-level xids (this node's) that touched the table."""
    records: int = 0
    last_commit: dict[str, datetime] = field(default_factory=dict)
    """key -> commit time (this node's clock) of the transaction that last changed it"""
    bulk: BulkRows | None = None
    """Rows inserted after the split that nothing later touched on this side, read as
    keys only (the old side of a table :func:`read_side` was asked to read in bulk):
    not in ``touched`` or ``rows`` until :func:`demote` hands some back."""
    parts: _Parts | None = None
    """What ``touched`` was computed from (bulk tables only): :func:`demote` adds to it."""
    live: set[str] = field(default_factory=set)
    """Keys whose row this side holds now, written after the split (read by TID)."""


@dataclass
class BulkRows:
    """Live tuples the old primary inserted after the split and never updated or deleted
    there: per relation, the candidate TIDs (a ``tid[]`` literal) and the keys found
    live at them, by ``xmin``.

    Their key is new on this side (the chain is one insert), so whether they can be
    applied as they are depends only on the new primary (:mod:`drorch.reconcile.bulk`).
    Kept as plain lists: a divergence of a million rows is mostly such tuples, and one
    object per tuple was the largest cost of reading a side."""

    tids: dict[str, str] = field(default_factory=dict)
    """rel -> candidate TIDs on blocks where other tuples were written too (``tid[]``)"""
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """rel -> block ranges ``[first, end)`` where every tuple written after the split is a
    candidate: read whole by TID range (one Tid Range Scan each; a ``tid[]`` of 70,000
    candidates cost ~0.1 s to build and look up), the ``xmin`` filter leaving out what
    was there before"""
    keys: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    """rel -> xmin -> keys"""
    lsn_of: dict[tuple[str, int], list[tuple[int, int, list[int]]]] = field(
        default_factory=dict)
    """(rel, block) -> (lsn, xid, offsets) of each candidate record on that block"""
    handed_back: set[int] = field(default_factory=set)
    """Keys :func:`demote` gave to the row path (still in ``keys``' TIDs: the copy skips
    them by key)."""

    def count(self) -> int:
        return sum(len(ks) for by in self.keys.values() for ks in by.values())

    def all_keys(self) -> set[int]:
        return {k for by in self.keys.values() for ks in by.values() for k in ks}

    def scan(self, rel: str, qualified: str, cols: sql.Composable, where: sql.Composable
             ) -> sql.Composable:
        """SQL: ``SELECT cols`` from relation ``rel`` (``qualified``, aliased ``t``) of the
        tuples at its candidate TIDs that also meet ``where`` (:func:`tid_scan`)."""
        return tid_scan(qualified, cols, where, self.ranges.get(rel, []),
                        self.tids.get(rel, "{}"))


@dataclass
class _Parts:
    records: list[wp.HeapRecord]
    live: dict[tuple[str, tuple[int, int]], str]
    old_keys: dict[int, str]
    top_of: dict[int, int]
    commit_at: dict[int, datetime]


@dataclass
class WalSide:
    end_lsn: str
    committed_top: int
    tables: dict[str, SideTable] = field(default_factory=dict)
    no_pk_records: dict[str, int] = field(default_factory=dict)
    no_pk_transactions: set[int] = field(default_factory=set)
    no_pk_rows: dict[str, list[str]] = field(default_factory=dict)
    no_pk_removed: dict[str, int] = field(default_factory=dict)
    """Tables without a key: committed deletes and updates (old versions no key can name)"""
    other_db_records: dict[int, int] = field(default_factory=dict)
    """Other databases of the cluster (oid) -> committed heap records after the split"""
    """Tables without a key: live rows this side wrote after the split (``to_jsonb``)."""
    other_rels: dict[str, int] = field(default_factory=dict)
    """``spc/db/filenode`` of unconfigured relations -> committed records"""
    rows_shipped: int = 0
    commit_times: dict[int, datetime] = field(default_factory=dict)
    created_filenodes: set[int] = field(default_factory=set)
    """Relation files this side created after the split (new tables, rewrites)."""
    """Top-level xid -> commit time (this node's clock), every commit after the split"""


@dataclass(frozen=True)
class _WalFiles:
    seg_size: int
    names: dict[int, list[tuple[int, str]]]
    """segno -> [(timeline, file name)]"""

    chosen: dict[tuple[int, int | None], str] = field(default_factory=dict, compare=False,
                                                      repr=False)
    """Answers of :meth:`file_for` (asked once per record whose bytes are read)."""

    def file_for(self, segno: int, max_tli: int | None) -> str:
        if (got := self.chosen.get((segno, max_tli))) is not None:
            return got
        cands = [(t, n) for t, n in self.names.get(segno, []) if max_tli is None or t <= max_tli]
        if not cands:
            raise WalUnavailable(f"WAL segment {segno:X} is no longer in pg_wal")
        got = self.chosen[(segno, max_tli)] = max(cands)[1]
        return got

    def oldest_lsn(self) -> int:
        return min(self.names) * self.seg_size if self.names else 0


def _wal_files(conn: Conn) -> _WalFiles:
    seg = int(conn.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"
                           ).fetchone()[0])  # type: ignore[index]
    names: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for (name,) in conn.execute("SELECT name FROM pg_ls_waldir()"):
        parsed = wb.parse_wal_file_name(name, seg)
        if parsed:
            names[parsed[1]].append((parsed[0], name))
    return _WalFiles(seg, dict(names))


def _query(conn: Conn, q: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        return conn.execute(q, params).fetchall()
    except psycopg.errors.UndefinedFunction as e:
        raise WalUnavailable("extension pg_walinspect is not installed in this database") from e
    except psycopg.Error as e:
        raise WalUnavailable(f"reading WAL failed: {str(e).splitlines()[0]}") from e


def _lookback(conn: Conn, files: _WalFiles, split: int, xids: list[int],
              dbpat: str) -> list[tuple[Any, ...]]:
    """Records before the split of transactions that committed after it."""
    need = xids[0]
    for x in xids[1:]:
        if wp.xid_precedes(x, need):
            need = x
    for lo in wb.lookback_starts(split, files.seg_size, files.oldest_lsn()):
        rows = _query(conn, _LOOKBACK_SQL, {"start": wp.int_to_lsn(lo), "end": wp.int_to_lsn(split),
                                            "xids": [str(x) for x in xids], "dbpat": dbpat})
        starts = [r[0] for r in rows if r[2] == "Standby"
                  and not wp.xid_precedes(need, wp.running_xacts_next_xid(r[6]))]
        if starts:
            cutoff = max(starts)
            return [r for r in rows if r[2] != "Standby" and r[0] > cutoff]
    raise WalUnavailable("a divergent transaction began before the oldest WAL kept")


READ_GAP = 64 * 1024
"""Tails closer than this in one WAL file are read with one ``pg_read_binary_file`` call
(5,000 deletes' keys were 5,000 file reads)."""


def _read_tails(conn: Conn, files: _WalFiles, recs: list[wp.HeapRecord],
                max_tli: int | None) -> dict[int, bytes]:
    """Main data (the record's last bytes) of each record, by LSN, in one query."""
    spans: list[tuple[str, int, int, int]] = []  # (file, offset, length, owner lsn)
    seg = files.seg_size
    for r in recs:
        in_page = r.lsn % wb.PAGE_SIZE
        if in_page and in_page + r.record_length <= wb.PAGE_SIZE:
            # the usual record, on one page: its tail is its last bytes
            at = r.lsn + r.record_length - r.main_data_length
            spans.append(("pg_wal/" + files.file_for(at // seg, max_tli), at % seg,
                          r.main_data_length, r.lsn))
            continue
        for segno, off, n in wb.record_tail_spans(r.lsn, r.record_length, r.main_data_length,
                                                  seg):
            spans.append(("pg_wal/" + files.file_for(segno, max_tli), off, n, r.lsn))
    if not spans:
        return {}
    spans.sort(key=lambda x: (x[0], x[1]))  # a record's pieces keep their order
    reads: list[list[int]] = []  # [file index, offset, length]
    names: list[str] = []
    where: list[tuple[int, int]] = []  # each span: (read index, offset in it)
    for fname, off, n, _owner in spans:
        last = reads[-1] if reads else None
        if last is not None and names[last[0]] == fname and off - (last[1] + last[2]) <= READ_GAP:
            last[2] = max(last[2], off + n - last[1])
        else:
            names.append(fname)
            reads.append([len(names) - 1, off, n])
        where.append((len(reads) - 1, off - reads[-1][1]))
    rows = _query(conn, "SELECT i, pg_read_binary_file(f, o, n) FROM unnest(%(f)s::text[], "
                  "%(o)s::bigint[], %(n)s::bigint[]) WITH ORDINALITY AS u(f, o, n, i) ORDER BY i",
                  {"f": [names[r[0]] for r in reads], "o": [r[1] for r in reads],
                   "n": [r[2] for r in reads]})
    chunks = [bytes(chunk) for _i, chunk in rows]
    out: dict[int, bytes] = {}
    for (_f, _o, n, owner), (ri, at) in zip(spans, where, strict=True):
        piece = chunks[ri][at:at + n]
        out[owner] = piece if (prev := out.get(owner)) is None else prev + piece
    return out


def _canonical_keys(conn: Conn, meta: TableMeta, raw: dict[int, dict[str, Any]]) -> dict[int, str]:
    """Decoded keys rendered by the server, so they equal keys read from rows."""
    if not raw:
        return {}
    if meta.int_key:
        # an integer renders alike in Python and in jsonb: no round trip (10,000 deletes'
        # keys cost ~40 ms through the server)
        col = meta.pk[0]
        return {lsn: f"[{int(v[col])}]" for lsn, v in raw.items()}
    lsns = list(raw)
    payload = json.dumps([raw[k] for k in lsns], default=str)
    key = sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in meta.pk)
    rows = conn.execute(sql.SQL("SELECT jsonb_build_array({})::text FROM "
                                "jsonb_populate_recordset(NULL::{}, %s::jsonb) AS r").format(
                            key, meta.ident), (payload,)).fetchall()
    return {lsn: key_from_array(t) for lsn, (t,) in zip(lsns, rows, strict=True)}


CHUNK_BYTES = 2 << 20
"""WAL is decoded in pieces of about this size, two at a time (:func:`_record_chunks`)."""
MAX_CHUNKS = 8


def _record_chunks(conn: Conn, start: str, end: str, dbpat: str, helper: Conn | None
                   ) -> Iterator[list[tuple[Any, ...]]]:
    """:data:`_RECORDS_SQL`'s rows from ``start`` to ``end``, in LSN order, piece by piece.

    With a ``helper`` connection to the same node, a long WAL is cut into up to
    :data:`MAX_CHUNKS` pieces decoded two at a time, one per connection (pg_walinspect
    decodes on one core), while the caller handles the pieces already read.
    ``pg_get_wal_records_info(a, b)`` returns the records from the first one starting
    at or after ``a`` to the last one *ending* at or before ``b`` (PostgreSQL 15,
    ``contrib/pg_walinspect``: ``XLogFindNextRecord``, then ``EndRecPtr <= end_lsn``):
    so pieces meet at the start of a record (the first one starting in the 64 kB after
    an even cut), and the record before it ends there. A cut with no record starting
    in those 64 kB (a huge record spans them, or the unused rest of a segment that
    ``pg_switch_wal`` ended) is dropped."""
    params = {"start": start, "end": end, "dbpat": dbpat, "other": _OTHER}
    lo, hi = wp.lsn_to_int(start), wp.lsn_to_int(end)
    if hi <= lo:
        return
    pieces = min(MAX_CHUNKS, (hi - lo) // CHUNK_BYTES)
    if helper is None or pieces < 2:
        yield _query(conn, _RECORDS_SQL, params)
        return
    meets: set[int] = set()
    for i in range(1, pieces):
        cut = lo + (hi - lo) * i // pieces
        try:  # one query a cut: after a segment switch, a cut in the segment's unused
            # rest finds no record ("could not find a valid record after"): dropped
            with conn.transaction():
                row = conn.execute(
                    "SELECT min(start_lsn)::text FROM pg_get_wal_records_info(%s::pg_lsn, "
                    "%s::pg_lsn)", (wp.int_to_lsn(cut), wp.int_to_lsn(min(cut + 65536, hi))),
                ).fetchone()
        except psycopg.Error:
            if conn.broken:
                raise
            continue
        if row is not None and row[0] is not None:
            meets.add(wp.lsn_to_int(row[0]))
    meets -= {lo, hi}
    bounds = [start, *(wp.int_to_lsn(m) for m in sorted(meets)), end]
    free: Queue[Conn] = Queue()
    free.put(conn)
    free.put(helper)

    def piece(a: str, b: str) -> list[tuple[Any, ...]]:
        c = free.get()
        try:
            return _query(c, _RECORDS_SQL, {**params, "start": a, "end": b})
        finally:
            free.put(c)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(piece, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def read_side(conn: Conn, start: str, end: str, tables: dict[str, TableMeta], dboid: int, *,
              lookback: bool, max_tli: int | None,
              bulk_tables: frozenset[str] = frozenset(), helper: Conn | None = None
              ) -> WalSide:
    """This node's committed changes after ``start`` to the configured tables.

    ``bulk_tables``: tables (one integer key column) whose untouched inserts are read as
    keys only, into ``SideTable.bulk``. ``helper``: a second connection to the node, to
    decode a long WAL in two halves at once."""
    files = _wal_files(conn)
    dbpat = f"%rel %/{dboid}/%"
    split = wp.lsn_to_int(start)
    chunks = _record_chunks(conn, start, end, dbpat, helper)
    top_of: dict[int, int] = {}
    commit_at: dict[int, datetime] = {}
    heap: list[wp.HeapRecord] = []
    created: set[int] = set()
    truncated: set[int] = set()
    other_dbs: list[tuple[int, int]] = []  # (xid, database oid) of each record
    try:
        with closing(chunks):  # on an error: the pieces still being read are waited for
            for lsn, xid, rm, rt, rlen, mlen, desc, *fields in chain.from_iterable(chunks):
                if rm == _OTHER:
                    other_dbs.append((xid, int(rt)))
                elif fields[0] is not None:
                    heap.append(wp.heap_record(lsn, xid, rlen, mlen, *fields))
                elif rm == "Transaction":
                    ids = wp.commit_xids(xid, desc, rt)
                    top_of.update({x: ids[0] for x in ids})
                    if (at := wp.commit_time(desc)) is not None:
                        commit_at[ids[0]] = at
                elif rm == "Storage":
                    node = wp.storage_create_filenode(desc)
                    if node and node[0] == dboid:
                        created.add(node[1])
                elif rt == "TRUNCATE":
                    truncated.update(wp.truncate_relids(desc))
        committed = set(top_of)
        if lookback and committed:
            heap += [wp.heap_record(r[0], r[1], r[4], r[5], *r[7:])
                     for r in _lookback(conn, files, split, sorted(committed), dbpat)]
    except wp.WalFormatError as e:
        raise WalUnavailable(str(e)) from e
    heap = committed_records(heap, committed)
    side = WalSide(end, len({t for t in top_of.values()}), commit_times=commit_at,
                   created_filenodes=created)
    for x, db_oid in other_dbs:
        if x in committed:
            side.other_db_records[db_oid] = side.other_db_records.get(db_oid, 0) + 1
    by_rel: dict[str, list[wp.HeapRecord]] = defaultdict(list)
    for r in heap:
        by_rel[r.rel].append(r)
    mine = {rel for m in tables.values() for rel in m.rels}
    for rel, recs in by_rel.items():
        if rel not in mine:
            side.other_rels[rel] = len(recs)
    for name, meta in tables.items():
        recs = [r for rel in meta.rels for r in by_rel.get(rel, [])]
        rewritten = {int(rel.rsplit("/", 1)[1]) for rel in meta.rels} & created
        if rewritten or meta.oid in truncated:
            raise WalUnavailable(f"{name} was truncated or rewritten after the split")
        if not meta.pk:
            side.no_pk_records[name] = len(recs)
            side.no_pk_removed[name] = sum(1 for r in recs if r.op in ("delete", "update"))
            side.no_pk_transactions |= transactions_touching(recs, top_of)
            side.no_pk_rows[name] = fetch_unkeyed(conn, meta, recs, set(top_of))
            side.rows_shipped += len(side.no_pk_rows[name])
            continue
        if len(meta.rels) > 1:  # each relation's records are in LSN order already
            recs.sort(key=lambda r: r.lsn)
        st = _table_changes(conn, files, meta, recs, top_of, max_tli, side,
                            name in bulk_tables)
        st.last_commit = {k: at for k, t in st.touched.items()
                          if (at := commit_at.get(top_of.get(t.last_xid, t.last_xid)))}
        if st.parts is not None:
            st.parts.commit_at = commit_at
        side.tables[name] = st
    return side


def _table_changes(conn: Conn, files: _WalFiles, meta: TableMeta, recs: list[wp.HeapRecord],
                   top_of: dict[int, int], max_tli: int | None, side: WalSide,
                   bulk: bool = False) -> SideTable:
    needs_bytes = [r for r in recs if (r.op == "multi_insert" and not r.init_page)
                   or (r.op == "delete" and not r.flags & wp.DELETE_IS_SUPER)
                   or (r.op == "update" and r.flags & (wp.UPDATE_CONTAINS_OLD_KEY
                                                       | wp.UPDATE_CONTAINS_OLD_TUPLE))]
    tails = _read_tails(conn, files, needs_bytes, max_tli)
    expanded: list[wp.HeapRecord] = []
    raw_keys: dict[int, dict[str, Any]] = {}
    want = set(meta.pk)
    attrs = {rel: sorted(m.attrs, key=lambda a: a.attnum) for rel, m in meta.rels.items()}
    first_int = {rel: first_int_format(a, meta.pk) for rel, a in attrs.items()}
    # A tuple some record ended (updated, deleted) or an update created is no candidate:
    # its chain is walked. Blocks without such tuples need no check per tuple.
    busy: dict[tuple[str, int], set[int]] = defaultdict(set)
    if bulk:
        for r in recs:
            if r.old_tid is not None:
                busy[(r.rel, r.old_tid[0])].add(r.old_tid[1])
            if r.op == "update" and r.tid is not None:
                busy[(r.rel, r.tid[0])].add(r.tid[1])
    cands: dict[tuple[str, int], list[tuple[int, int, list[int]]]] = defaultdict(list)
    try:
        for r in recs:
            if r.op in ("multi_insert", "insert"):
                assert r.tid is not None
                blk = r.tid[0]
                offs = (wb.multi_insert_offsets(tails.get(r.lsn, b""), r.ntuples, r.init_page)
                        if r.op == "multi_insert" else [r.tid[1]])
                walk = offs
                if bulk:
                    ended = busy.get((r.rel, blk))
                    walk = [o for o in offs if o in ended] if ended else []
                    if len(walk) < len(offs):
                        cands[(r.rel, blk)].append((r.lsn, r.xid, [o for o in offs
                                                                    if o not in walk]))
                if r.op == "insert" and walk:
                    expanded.append(r)
                    continue
                for off in walk:
                    expanded.append(wp.HeapRecord(r.lsn, r.xid, "insert", r.rel, (blk, off), None,
                                                  r.flags, r.record_length, r.main_data_length))
                continue
            if r.op == "delete" and r.flags & wp.DELETE_IS_SUPER:
                continue  # a speculative insertion taken back: the row never existed
            expanded.append(r)
            if r.lsn in tails and r.op in ("delete", "update"):
                blob = wb.old_tuple_of(r.op, tails[r.lsn])
                if blob is not None:
                    fmt = first_int[r.rel]
                    raw_keys[r.lsn] = {meta.pk[0]: decode_first_int(blob, fmt)} if fmt \
                        else decode_logged_tuple(blob, attrs[r.rel], want)
    except (UnsupportedKey, wp.WalFormatError) as e:
        raise WalUnavailable(f"{meta.name}: {e}") from e
    for where, lst in list(cands.items()):
        offs_all = [o for _lsn, _xid, offs in lst for o in offs]
        if len(set(offs_all)) != len(offs_all):  # a line pointer filled twice: walk it
            del cands[where]
            expanded += [wp.HeapRecord(lsn, xid, "insert", where[0], (where[1], o), None, 0, 0, 0)
                         for lsn, xid, offs in lst for o in offs]
    if cands:
        expanded.sort(key=lambda r: r.lsn)
    old_keys = _canonical_keys(conn, meta, raw_keys)
    live, rows = fetch_live(conn, meta, expanded, set(top_of), whole=not bulk,
                            skip_blocks=set(cands))
    side.rows_shipped += len(live) + len(old_keys)
    try:
        touched = touched_keys(expanded, live, old_keys)
    except KeysNotLogged as e:
        raise WalUnavailable(f"{meta.name}: {e} (needs wal_level=logical and a primary key)"
                             ) from e
    txns = transactions_touching(expanded, top_of)
    txns |= {top_of.get(xid, xid) for lst in cands.values() for _lsn, xid, _o in lst}
    st = SideTable(touched, rows, txns, len(expanded) + sum(
        len(o) for lst in cands.values() for _l, _x, o in lst), live=set(live.values()))
    if bulk:
        st.parts = _Parts(expanded, live, old_keys, top_of, {})
        st.bulk = fetch_bulk(conn, meta, cands, set(top_of),
                             {(r.rel, r.tid[0]) for r in expanded if r.tid is not None})
        side.rows_shipped += st.bulk.count()
        # a bulk table has a one-integer key: every canonical key is ``[n]``
        again = {int(k[1:-1]) for k in touched} & st.bulk.all_keys()
        if again:  # a key this side also changed otherwise (deleted, then inserted anew)
            demote(conn, meta, st, again)
    return st


def int_key_text(key: str) -> bool:
    """A canonical one-column integer key (``[123]``)."""
    return key.startswith("[") and key.endswith("]") and key[1:-1].lstrip("-").isdigit()


def fetch_bulk(conn: Conn, meta: TableMeta,
               cands: dict[tuple[str, int], list[tuple[int, int, list[int]]]],
               committed: set[int], dirty: set[tuple[str, int]]) -> BulkRows:
    """The keys of the live candidate tuples by ``xmin`` (block ranges, and TIDs where the
    block holds other tuples written after the split (``dirty``: (rel, block)), one array
    per transaction): a tuple there written by another xid is not one of them."""
    out = BulkRows(lsn_of=dict(cands))
    xids = number_array(committed)
    by_rel: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for (rel, blk), lst in cands.items():
        by_rel[rel][blk] = [o for _lsn, _xid, offs in lst for o in offs]
    key = sql.Identifier(meta.pk[0])
    for rel, offs_of in by_rel.items():
        ranges, listed = block_ranges(sorted(offs_of), {b for r, b in dirty if r == rel})
        out.ranges[rel] = ranges
        out.tids[rel] = tid_array((b, o) for b in listed for o in offs_of[b])
        scan = out.scan(rel, meta.rels[rel].qualified,
                        sql.SQL("xmin::text::bigint AS x, {k} AS k").format(k=key),
                        sql.SQL("xmin = ANY({x}::xid[])").format(x=sql.Literal(xids)))
        out.keys[rel] = {int(x): list(ks) for x, ks in conn.execute(
            sql.SQL("SELECT x, array_agg(k) FROM ({s}) AS c GROUP BY 1").format(s=scan))}
    return out


def demote(conn: Conn, meta: TableMeta, st: SideTable, keys: set[int]) -> None:
    """Hand these bulk keys back to the row-by-row path: their tuples are read whole and
    join ``touched`` and ``rows`` exactly as if they had never been set aside."""
    assert st.bulk is not None and st.parts is not None
    bulk, parts = st.bulk, st.parts
    keys = keys & bulk.all_keys() - bulk.handed_back
    if not keys:
        return
    recs: list[wp.HeapRecord] = []
    live: dict[tuple[str, tuple[int, int]], str] = {}
    xids = number_array(parts.top_of)
    arr = number_array(keys)
    k = sql.Identifier(meta.pk[0])
    for rel, by_xmin in bulk.keys.items():
        q = sql.SQL("SELECT ctid::text, xmin::text::bigint, jsonb_build_array({k})::text, "
                    "to_jsonb(t.*)::text FROM ONLY {rel} AS t WHERE {k} = ANY(%s::bigint[]) "
                    "AND xmin = ANY(%s::xid[])").format(k=k, rel=sql.SQL(meta.rels[rel].qualified))
        for ctid, xmin, key_text, text in conn.execute(q, (arr, xids)).fetchall():
            blk, off = (int(x) for x in ctid.strip("()").split(","))
            rec = next((wp.HeapRecord(lsn, xid, "insert", rel, (blk, off), None, 0, 0, 0)
                        for lsn, xid, offs in bulk.lsn_of.get((rel, blk), []) if off in offs
                        and xid == xmin), None)
            if rec is None:
                continue  # the key's live tuple is not one of the candidates
            recs.append(rec)
            ck = key_from_array(key_text)
            live[(rel, (blk, off))] = ck
            st.rows[ck] = text
            st.live.add(ck)
        for xmin, ks in by_xmin.items():
            if any(x in keys for x in ks):
                by_xmin[xmin] = [x for x in ks if x not in keys]
    bulk.handed_back |= keys
    parts.live.update(live)
    parts.records += recs
    changed: Iterable[str]
    if any(ck in st.touched for ck in live.values()):
        parts.records.sort(key=lambda r: r.lsn)
        st.touched = touched_keys(parts.records, parts.live, parts.old_keys)
        changed = list(st.touched)
    else:  # keys new to this side's changes: what touched_keys concludes for a lone insert
        for r in recs:
            assert r.tid is not None
            st.touched[live[(r.rel, r.tid)]] = Touch(False, r.lsn, r.lsn, r.xid)
        changed = live.values()
    top_of, commit_at = parts.top_of, parts.commit_at
    for ck in changed:
        t = st.touched[ck]
        if (at := commit_at.get(top_of.get(t.last_xid, t.last_xid))) is not None:
            st.last_commit[ck] = at
