"""Read the tuples divergent records created, by TID, on the node that wrote them.

One Tid Scan per relation (``ctid = ANY(...)``), filtered by ``xmin`` = one of
this node's committed divergent xids: a TID alone may hold an older or a later
tuple. Bulk inserts on tables without a key are read block-wise (every line
pointer of the block). Read-only.
"""

from __future__ import annotations

from collections import defaultdict

from psycopg import sql

from drorch.reconcile import walparse as wp
from drorch.reconcile._db import Conn
from drorch.reconcile.catalog import TableMeta
from drorch.reconcile.classify import canonical_key, parse_row
from drorch.reconcile.walchanges import created_tids

MAX_TUPLES_PER_PAGE = 291  # MaxHeapTuplesPerPage for 8 kB pages


def fetch_live(conn: Conn, meta: TableMeta, recs: list[wp.HeapRecord], committed: set[int]
               ) -> tuple[dict[tuple[str, tuple[int, int]], str], dict[str, str]]:
    """Live tuples at the created TIDs written by committed divergent xids, per relation."""
    live: dict[tuple[str, tuple[int, int]], str] = {}
    rows: dict[str, str] = {}
    xids = [str(x) for x in committed]
    for rel, tids in created_tids(recs).items():
        q = sql.SQL("SELECT ctid::text, to_jsonb(t)::text FROM ONLY {} AS t "
                    "WHERE ctid = ANY(%s::tid[]) AND xmin = ANY(%s::xid[])").format(
            sql.SQL(meta.rels[rel].qualified))
        for ctid, text in conn.execute(q, ([f"({b},{o})" for b, o in tids], xids)):
            b, o = ctid.strip("()").split(",")
            key = canonical_key([parse_row(text)[c] for c in meta.pk])
            live[(rel, (int(b), int(o)))] = key
            rows[key] = text
    return live, rows


def fetch_unkeyed(conn: Conn, meta: TableMeta, recs: list[wp.HeapRecord], committed: set[int]
                  ) -> list[str]:
    """Live rows a table without a key got after the split (bulk inserts: whole blocks)."""
    out: list[str] = []
    xids = [str(x) for x in committed]
    tids: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for r in recs:
        if r.op == "multi_insert" and r.tid is not None:
            tids[r.rel].update((r.tid[0], off) for off in range(1, MAX_TUPLES_PER_PAGE + 1))
        elif r.tid is not None:
            tids[r.rel].add(r.tid)
    for rel, tset in tids.items():
        q = sql.SQL("SELECT to_jsonb(t)::text FROM ONLY {} AS t WHERE ctid = ANY(%s::tid[]) "
                    "AND xmin = ANY(%s::xid[])").format(sql.SQL(meta.rels[rel].qualified))
        out += [r[0] for r in conn.execute(q, ([f"({b},{o})" for b, o in tset], xids))]
    return sorted(out)
