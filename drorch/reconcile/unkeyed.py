"""Tables without a primary key: reported, and their old-only rows handed to a human.

Without a key a row cannot be matched across nodes, so nothing is applied
automatically. What can be named is: with the WAL, the live rows the old
primary wrote after the split (found by TID, like keyed tables; its deletes and
the old versions of its updates cannot be named); with a full comparison, the
rows present more often on the old side (a multiset difference). Each such row
becomes an ``unkeyed`` change with action ``manual``: the conflict file shows
it, and resolving it ``old`` inserts it on the new primary.
"""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg import sql

from drorch.reconcile._db import Conn
from drorch.reconcile.catalog import TableMeta
from drorch.reconcile.classify import change_id, parse_row
from drorch.reconcile.config import ReconcileTable, masked_columns
from drorch.reconcile.fullcompare import compare_no_pk
from drorch.reconcile.model import Change, DivergenceReport, TableReport
from drorch.reconcile.walread import WalSide

REASON = "no primary key: rows cannot be matched by key; reported, none applied automatically"


def _as_json(conn: Conn, meta: TableMeta, records: list[str]) -> list[str]:
    """Record text (``t::text``) to ``to_jsonb`` text, through the server's own parser."""
    if not records:
        return []
    q = sql.SQL("SELECT to_jsonb(s::{})::text FROM unnest(%s::text[]) AS s").format(meta.ident)
    return [r[0] for r in conn.execute(q, (records,))]


def unkeyed_table(old: Conn, new: Conn, cfg: ReconcileTable, meta: TableMeta, run_id: str,
                  report: DivergenceReport, wal_old: WalSide | None,
                  wal_new: WalSide | None) -> tuple[dict[str, Any], TableReport]:
    """The report entry for a table without a key, and its old-only rows as changes."""
    entry: dict[str, Any] = {"table": cfg.name, "reason": REASON}
    if report.method == "wal" and wal_old is not None and wal_new is not None:
        texts = wal_old.no_pk_rows.get(cfg.name, [])
        entry["old_records"] = wal_old.no_pk_records.get(cfg.name, 0)
        entry["new_records"] = wal_new.no_pk_records.get(cfg.name, 0)
        entry["rows_written_by_old"] = len(texts)
    else:
        diff = compare_no_pk(old, new, meta)
        report.rows_shipped += diff.rows_shipped
        texts = _as_json(old, meta, diff.old_only_rows)
        entry["rows_only_on_old"], entry["rows_only_on_new"] = diff.only_old, diff.only_new
    tr = TableReport(cfg.name, [], cfg.policy, masked_columns(cfg.sensitive_columns, meta.columns))
    seen: dict[str, int] = {}
    for i, text in enumerate(texts, start=1):
        digest = hashlib.sha256(text.encode()).hexdigest()
        seen[digest] = seen.get(digest, 0) + 1
        tr.changes.append(Change(change_id(run_id, cfg.name, f"{digest}:{seen[digest]}"),
                                 cfg.name, {"row": i}, "unkeyed", "manual",
                                 sorted(parse_row(text)), "changed", None, True, text, None))
    return entry, tr
