"""Full comparison when the WAL cannot answer: COPY both tables in key order, merge.

Both nodes stream ``COPY (SELECT key::text..., row::text ... ORDER BY key) TO
STDOUT`` at once; equal lines are skipped without parsing, and only lines that
differ have their keys parsed to advance the merge. The result is the exact set
of keys whose rows differ (not which side changed them: see
``classify.attribute``). Cost: every row of both tables crosses the network
(~2 s per million rows per side here). Read-only on both nodes.

Tables without a primary key are compared as multisets of rows (sorted by
their text) and only counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from psycopg import sql

from drorch.reconcile._db import Conn
from drorch.reconcile.catalog import TableMeta

_INTS = {"int2", "int4", "int8", "oid"}
_NUMS = {"numeric", "float4", "float8"}
_TEXTS = {"text", "varchar", "bpchar", "name", "citext"}
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


@dataclass
class FullDiff:
    keys: list[dict[str, str]] = field(default_factory=list)
    """Keys (as text) whose rows differ or exist on one side only."""
    only_old: int = 0
    only_new: int = 0
    differ: int = 0
    rows_shipped: int = 0
    old_only_rows: list[str] = field(default_factory=list)
    """Tables without a key: the old side's surplus rows, as record text."""


def unescape(field_text: str) -> str:
    """A COPY text-format field as its value (backslash escapes undone)."""
    if "\\" not in field_text:
        return field_text
    out, i = [], 0
    while i < len(field_text):
        ch = field_text[i]
        if ch == "\\" and i + 1 < len(field_text):
            nxt = field_text[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _key_plan(meta: TableMeta) -> tuple[sql.Composable, list[Callable[[str], Any]]]:
    """ORDER BY for the key, and how Python orders the same key's text (must agree)."""
    order, parsers = [], []
    for col in meta.pk:
        # qualified: a bare name in ORDER BY would mean the output column (the ::text copy)
        ident, t = sql.Identifier("t", col), meta.pk_types[col]
        if t in _INTS:
            order.append(ident)
            parsers.append(int)
        elif t in _NUMS:
            order.append(ident)
            parsers.append(Decimal)
        elif t == "uuid":
            order.append(ident)
            parsers.append(str)
        elif t == "bool":
            order.append(ident)
            parsers.append(lambda s: s == "t")
        elif t in _TEXTS:
            order.append(sql.SQL("{} COLLATE \"C\"").format(ident))
            parsers.append(str)
        else:
            order.append(sql.SQL("{}::text COLLATE \"C\"").format(ident))
            parsers.append(str)
    return sql.SQL(", ").join(order), parsers


def _lines(conn: Conn, query: sql.Composable, out: FullDiff) -> Iterator[str]:
    """Lines of a COPY TO STDOUT, counted into ``out.rows_shipped``."""
    with conn.cursor().copy(query) as copy:
        rest = b""
        for chunk in copy:
            data = rest + bytes(chunk)
            *lines, rest = data.split(b"\n")
            for ln in lines:
                out.rows_shipped += 1
                yield ln.decode("utf-8")
        if rest:
            out.rows_shipped += 1
            yield rest.decode("utf-8")


def compare_table(old: Conn, new: Conn, meta: TableMeta,
                  columns: list[str] | None = None) -> FullDiff:
    """Keys whose rows differ between the two nodes (exact), on ``columns`` (default: the
    whole row)."""
    order, parsers = _key_plan(meta)
    keys_sql = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in meta.pk)
    # ``ROW(t.*)``: a column named ``t`` would stand for the row in ``t::text``
    row = sql.SQL("ROW(t.*)::text") if columns is None else sql.SQL("ROW({})::text").format(
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns))
    q = sql.SQL("COPY (SELECT {keys}, {row} FROM {tbl} AS t ORDER BY {order}) TO STDOUT"
                ).format(keys=keys_sql, row=row, tbl=meta.ident, order=order)
    n = len(meta.pk)

    def key(line: str) -> tuple[Any, ...]:
        parts = line.split("\t", n)[:n]
        return tuple(p(unescape(v)) for p, v in zip(parsers, parts, strict=True))

    def key_dict(line: str) -> dict[str, str]:
        parts = line.split("\t", n)[:n]
        return {c: unescape(v) for c, v in zip(meta.pk, parts, strict=True)}

    out = FullDiff()
    ia, ib = _lines(old, q, out), _lines(new, q, out)
    a, b = next(ia, None), next(ib, None)
    while a is not None or b is not None:
        if a is not None and b is not None and a == b:
            a, b = next(ia, None), next(ib, None)
            continue
        ka = key(a) if a is not None else None
        kb = key(b) if b is not None else None
        if kb is None or (ka is not None and ka < kb):
            assert a is not None
            out.keys.append(key_dict(a))
            out.only_old += 1
            a = next(ia, None)
        elif ka is None or kb < ka:
            assert b is not None
            out.keys.append(key_dict(b))
            out.only_new += 1
            b = next(ib, None)
        else:
            assert a is not None
            out.keys.append(key_dict(a))
            out.differ += 1
            a, b = next(ia, None), next(ib, None)
    return out


def compare_no_pk(old: Conn, new: Conn, meta: TableMeta) -> FullDiff:
    """Rows present more often on one side than the other, counted (no key to name them)."""
    q = sql.SQL("COPY (SELECT ROW(t.*)::text FROM {} AS t ORDER BY ROW(t.*)::text "
                "COLLATE \"C\") TO STDOUT").format(meta.ident)
    out = FullDiff()
    ia, ib = _lines(old, q, out), _lines(new, q, out)
    a, b = next(ia, None), next(ib, None)
    while a is not None or b is not None:
        ua = unescape(a) if a is not None else None
        ub = unescape(b) if b is not None else None
        if ua is not None and ub is not None and ua == ub:
            a, b = next(ia, None), next(ib, None)
        elif ub is None or (ua is not None and ua < ub):
            assert ua is not None
            out.only_old += 1
            out.old_only_rows.append(ua)
            a = next(ia, None)
        else:
            out.only_new += 1
            b = next(ib, None)
    return out
