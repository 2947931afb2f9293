"""Read the tuples divergent records created, by TID, on the node that wrote them.

One Tid Scan per relation (``ctid = ANY(...)``), filtered by ``xmin`` = one of
this node's committed divergent xids: a TID alone may hold an older or a later
tuple. Bulk inserts on tables without a key are read block-wise (every line
pointer of the block). Read-only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from psycopg import sql

from drorch.reconcile import walparse as wp
from drorch.reconcile._db import Conn
from drorch.reconcile.catalog import TableMeta
from drorch.reconcile.classify import key_from_array
from drorch.reconcile.walchanges import created_tids

MAX_TUPLES_PER_PAGE = 291  # MaxHeapTuplesPerPage for 8 kB pages


def fetch_live(conn: Conn, meta: TableMeta, recs: list[wp.HeapRecord], committed: set[int],
               *, whole: bool = True
               ) -> tuple[dict[tuple[str, tuple[int, int]], str], dict[str, str]]:
    """Live tuples at the created TIDs written by committed divergent xids, per relation:
    each one's canonical key by ``(rel, TID)``, and its row (``to_jsonb`` text) by key.

    The server renders each tuple's key apart from its row (``jsonb_build_array``): the
    key is what drorch needs here, and parsing every whole row for it was the largest
    cost of reading a side. ``whole=False``: keys only, no rows (a table whose changes
    mostly go as sets: rendering 20,000 rows drorch never looks at cost ~0.1 s; the few
    the row path needs are read by key)."""
    live: dict[tuple[str, tuple[int, int]], str] = {}
    rows: dict[str, str] = {}
    xids = _array_literal(str(x) for x in committed)
    key = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in meta.pk)
    for rel, tids in created_tids(recs).items():
        q = sql.SQL("SELECT (ctid::text::point)[0]::bigint, (ctid::text::point)[1]::int, "
                    "jsonb_build_array({key})::text, {row} "
                    "FROM ONLY {rel} AS t WHERE ctid = ANY(%s::tid[]) "
                    "AND xmin = ANY(%s::xid[])").format(
            key=key, rel=sql.SQL(meta.rels[rel].qualified),
            row=sql.SQL("to_jsonb(t.*)::text" if whole else "NULL::text"))
        # fetchall: one call instead of the cursor's per-row iteration (75,000 rows)
        for b, o, key_text, text in conn.execute(q, (tid_array(tids), xids)).fetchall():
            k = key_from_array(key_text)
            live[(rel, (b, o))] = k
            if whole:
                rows[k] = text
    return live, rows


def tid_array(tids: Iterable[tuple[int, int]]) -> str:
    """A ``tid[]`` literal: one text parameter instead of a list psycopg dumps item by item."""
    return _array_literal(f"({b},{o})" for b, o in tids)


def number_array(items: Iterable[int]) -> str:
    """``{1,2,3}``: an array literal of integers (keys, xids) as one text parameter."""
    return "{" + ",".join(map(str, items)) + "}"


def _array_literal(items: Iterable[str]) -> str:
    """``{"a","b"}`` for items that hold no quote or backslash (numbers, TIDs)."""
    return "{" + ",".join(f'"{i}"' for i in items) + "}"


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
        q = sql.SQL("SELECT to_jsonb(t.*)::text FROM ONLY {} AS t WHERE ctid = ANY(%s::tid[]) "
                    "AND xmin = ANY(%s::xid[])").format(sql.SQL(meta.rels[rel].qualified))
        out += [r[0] for r in conn.execute(q, ([f"({b},{o})" for b, o in tset], xids))]
    return sorted(out)
