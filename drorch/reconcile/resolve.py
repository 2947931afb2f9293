"""Apply the resolutions a human wrote into a conflict file (idempotent).

``old`` applies the old primary's captured row, ``new`` keeps the new
primary's; both are recorded (``drorch_reconcile.applied``) in the same
transaction as any write, so applying the file again changes nothing. An
``old`` resolution is refused as stale when the new primary's row no longer
matches the fingerprint the human saw; the file is then rewritten with the
current row and that entry's resolution cleared.
"""

from __future__ import annotations

from pathlib import Path

from drorch.reconcile import conflicts, store
from drorch.reconcile._db import Conn, adopt, connect
from drorch.reconcile.apply import (
    NotCaptured,
    _decision,
    _replica_role_txn,
    _retrying,
    _try_apply,
    advance_sequences,
    as_captured,
    resolve_rekeyed,
    write_conflict_file,
)
from drorch.reconcile.catalog import TableMeta, load_table
from drorch.reconcile.model import ApplyResult


def apply_conflict_file(path: str | Path, conn: Conn | str) -> ApplyResult:
    """Apply every resolved entry of the file at ``path`` to the new primary.

    ``conn``: a superuser connection (its session rendering settings are set
    to drorch's) or a DSN. Raises :class:`NotCaptured` for an unknown run and
    ``ValueError`` for a malformed file or an entry this run does not have.
    """
    doc = conflicts.load(path)
    if isinstance(conn, str):
        with connect(conn) as c:
            return _apply_file(doc, c, str(path))
    adopt(conn)
    return _apply_file(doc, conn, str(path))


def _apply_file(doc: conflicts.ConflictFile, conn: Conn, path: str) -> ApplyResult:
    run_id = doc.run_id
    report = store.load_report(conn, run_id)
    if report is None:
        raise NotCaptured(f"run {run_id} was never captured on this database")
    sens = {t.table: set(t.sensitive) for t in report.tables}
    hidden = {t.table: t.new_only_columns for t in report.tables}
    stored = {c.change_id: c for c in store.changes(
        conn, run_id, [e.change_id for e in doc.conflicts])}
    unknown = [e.change_id for e in doc.conflicts if e.change_id not in stored]
    if unknown:
        raise ValueError(f"conflict file names changes run {run_id} does not have: {unknown}")

    def attempt() -> tuple[ApplyResult, dict[str, TableMeta], set[str]]:
        # one transaction for the whole file, run again from the start on contention
        metas: dict[str, TableMeta] = {}
        res = ApplyResult(run_id, conflict_file=path)
        stale: set[str] = set()
        with _replica_role_txn(conn, run_id):
            for e in doc.conflicts:
                _resolve_one(conn, run_id, e, stored[e.change_id], sens, hidden, metas, res,
                             stale)
        return res, metas, stale

    res, metas, stale = _retrying(f"conflict file {path}", attempt,
                                  "apply the file again (nothing is applied twice)")
    res.sequences_advanced = advance_sequences(conn, list(metas.values()))
    refused = {str(d["change_id"]): str(d["error"]) for d in res.decisions
               if d["outcome"] == "error" and d.get("error")}
    if stale or refused:
        # the file again, with the rows as they are now: a stale entry's resolution is
        # cleared (the row changed since the human chose), a refused one says why
        ordered = [t.table for t in report.tables]
        tables = [m for n in ordered if (m := metas.get(n) or load_table(conn, n)) is not None]
        write_conflict_file(conn, run_id, tables, sens, path, frozenset(stale),
                            errors=refused)
    return res


def _resolve_one(conn: Conn, run_id: str, e: conflicts.ConflictEntry, ch: store.StoredChange,
                 sens: dict[str, set[str]], hidden: dict[str, list[str]],
                 metas: dict[str, TableMeta], res: ApplyResult, stale: set[str]) -> None:
    """Apply one entry's resolution inside the file's transaction; counted into ``res``."""
    s = sens.get(ch.table, set())
    if e.resolution is None:
        res.manual_pending += 1
        res.decisions.append(_decision(ch, s, "pending"))
        return
    meta = metas.get(ch.table)
    if meta is None:
        now = load_table(conn, ch.table)
        if now is None:
            raise ValueError(f"table {ch.table} no longer exists")
        # columns added since keep their default; a captured one dropped raises
        meta = metas[ch.table] = as_captured(conn, run_id, now, hidden.get(ch.table, []))
    detail = None
    if e.resolution == "old" and ch.action == "rekey" and ch.outcome is None:
        outcome, detail = resolve_rekeyed(conn, meta, run_id, ch.change_id)
    elif e.resolution == "old":
        outcome, detail = _try_apply(conn, meta, run_id, ch, "resolved-old",
                                     e.new_fingerprint, ("stale",))
    else:
        claimed = store.claim(conn, run_id, ch.change_id, "resolved-new", ("stale",))
        outcome = "resolved-new" if claimed else "already"
    if outcome == "resolved-old":
        res.applied += 1
    elif outcome == "rekeyed":
        res.rekeyed += 1
    elif outcome == "resolved-new":
        res.kept_new += 1
    elif outcome == "already":
        res.already_applied += 1
        outcome = "already-decided"
    elif outcome == "stale":
        res.stale += 1
        stale.add(ch.change_id)
    else:
        res.errors += 1
    res.decisions.append(_decision(ch, s, outcome, detail))
