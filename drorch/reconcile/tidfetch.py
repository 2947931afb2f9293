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

MAX_RANGES = 64
"""Block ranges read per relation by :func:`tid_scan`; tuples on further, smaller
runs of blocks are listed by TID (a query of thousands of branches costs more to plan)."""


def block_ranges(blocks: list[int], dirty: set[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Sorted candidate ``blocks`` as runs of consecutive blocks ``[first, end)`` that no
    ``dirty`` block (one where a tuple that is no candidate was written after the split)
    belongs to, the largest :data:`MAX_RANGES` of them; and the blocks left, whose
    candidates are listed by TID."""
    runs: list[list[int]] = []
    listed: list[int] = []
    for b in blocks:
        if b in dirty:
            listed.append(b)
        elif runs and runs[-1][1] == b:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    runs.sort(key=lambda r: r[0] - r[1])
    listed += [b for lo, hi in runs[MAX_RANGES:] for b in range(lo, hi)]
    return sorted((lo, hi) for lo, hi in runs[:MAX_RANGES]), sorted(listed)


def tid_scan(qualified: str, cols: sql.Composable, where: sql.Composable,
             ranges: list[tuple[int, int]], tids: str) -> sql.Composable:
    """SQL: ``SELECT cols`` from relation ``qualified`` (aliased ``t``) of the tuples in the
    block ``ranges`` and at the ``tids`` (a ``tid[]`` literal) that also meet ``where``:
    one branch per range (a Tid Range Scan) and one for the TIDs (a Tid Scan), as a
    ``UNION ALL`` (an ``OR`` of them would scan the whole relation)."""
    head = sql.SQL("SELECT {c} FROM ONLY {r} AS t WHERE ").format(c=cols, r=sql.SQL(qualified))
    branches = [head + sql.SQL("ctid >= {lo}::tid AND ctid < {hi}::tid AND ").format(
        lo=sql.Literal(f"({lo},0)"), hi=sql.Literal(f"({hi},0)")) + where
        for lo, hi in ranges]
    if tids != "{}" or not branches:
        branches.append(head + sql.SQL("ctid = ANY({t}::tid[]) AND ").format(
            t=sql.Literal(tids)) + where)
    return sql.SQL(" UNION ALL ").join(branches)


def fetch_live(conn: Conn, meta: TableMeta, recs: list[wp.HeapRecord], committed: set[int],
               *, whole: bool = True, skip_blocks: set[tuple[str, int]] | None = None
               ) -> tuple[dict[tuple[str, tuple[int, int]], str], dict[str, str]]:
    """Live tuples at the created TIDs written by committed divergent xids, per relation:
    each one's canonical key by ``(rel, TID)``, and its row (``to_jsonb`` text) by key.

    The server renders each tuple's key apart from its row (``jsonb_build_array``): the
    key is what drorch needs here, and parsing every whole row for it was the largest
    cost of reading a side. ``whole=False``: keys only, no rows (a table whose changes
    mostly go as sets: rendering 20,000 rows drorch never looks at cost ~0.1 s; the few
    the row path needs are read by key). Blocks where only these records wrote after the
    split are read whole by TID range (every tuple there written by a committed
    divergent xid is one of them); ``skip_blocks`` ((rel, block)) hold other such tuples
    (set aside as bulk candidates): their TIDs are listed."""
    live: dict[tuple[str, tuple[int, int]], str] = {}
    rows: dict[str, str] = {}
    xids = sql.Literal(_array_literal(str(x) for x in committed))
    key = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in meta.pk)
    cols = sql.SQL("(ctid::text::point)[0]::bigint, (ctid::text::point)[1]::int, "
                   "jsonb_build_array({key})::text, {row}").format(
        key=key, row=sql.SQL("to_jsonb(t.*)::text" if whole else "NULL::text"))
    for rel, tids in created_tids(recs).items():
        ranges, listed = block_ranges(sorted({b for b, _o in tids}),
                                      {b for r, b in skip_blocks or () if r == rel})
        keep = set(listed)
        q = tid_scan(meta.rels[rel].qualified, cols,
                     sql.SQL("xmin = ANY({x}::xid[])").format(x=xids), ranges,
                     tid_array(t for t in tids if t[0] in keep))
        # fetchall: one call instead of the cursor's per-row iteration (75,000 rows)
        for b, o, key_text, text in conn.execute(q).fetchall():
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
