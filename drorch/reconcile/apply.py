"""Apply a captured run to the new primary: idempotent, resumable, set-based.

Idempotency (the method, as the issue asks us to name it): every change is
applied in the same transaction that records its outcome, under the run's advisory
lock: a batch of ``apply-old`` changes written as they were is recorded by one row of
``drorch_reconcile.applied_batches`` (its table, side and ``seq`` range), every other
outcome (re-keyed, stale, resolved, held for a parent) by a row of its own in
``drorch_reconcile.applied`` (see :mod:`drorch.reconcile.store`). Only changes without
an outcome are staged, so a change already recorded is skipped, a concurrent applier
waits for the lock and then skips, and a kill before COMMIT undoes both the write and
the record.

At volume the changes go per table in batches of set-based statements (one
transaction each: stage the batch, lock and compare the target rows, record,
delete / update / insert). A batch the new primary refuses is split in halves
until the refused rows are found; those go one by one, each in its own transaction, and
what is refused is handed to a human with the database's error (conflict file).

Before writing, the target row is locked and compared with the row captured
when the divergence was found: if the new primary changed it since, the
change is not applied but marked ``stale`` and handed to a human (conflict
file). Writes run with ``session_replication_role = replica``, as logical
replication does: the old primary's row lands exactly as it was, ordinary
triggers do not fire again and foreign keys are not re-checked (``ENABLE
ALWAYS`` triggers still fire). Values never pass through Python: the rows are
copied from ``drorch_reconcile.changes`` by SQL.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from drorch.reconcile import _db, conflicts, store
from drorch.reconcile._db import Conn, connect
from drorch.reconcile.catalog import TableMeta, load_table
from drorch.reconcile.classify import fingerprint, mask, parse_row
from drorch.reconcile.config import ReconcileSpec
from drorch.reconcile.model import ApplyResult, DivergenceReport


class NotCaptured(RuntimeError):
    """The run was never captured on this database: find_divergence first."""


class SchemaChanged(RuntimeError):
    """A column the captured rows carry is no longer on the new primary (dropped after
    the divergence was found): its old-primary values would be lost. Nothing written."""


class ApplyBlocked(RuntimeError):
    """Rows stayed locked (lock timeout, deadlock, serialization failure) through every
    retry: nothing of the batch was written, nothing was handed to a human as refused.
    Rerunning is safe (idempotent)."""


_TRANSIENT = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected,
              psycopg.errors.SerializationFailure)
"""Errors about contention or time, not about the row: the same batch is retried, never
split into refusals (a lock held by the application says nothing about the old row)."""
RETRIES = 4
T = TypeVar("T")


def _retrying(what: str, fn: Callable[[], T],
              then: str = "rerun the failback (nothing is applied twice)") -> T:
    """Run ``fn`` (one transaction) again on contention, with backoff; then raise
    :class:`ApplyBlocked` naming ``what``, the database's error and ``then`` (what the
    operator does next)."""
    try:
        for attempt in Retrying(retry=retry_if_exception_type(_TRANSIENT),
                                stop=stop_after_attempt(RETRIES),
                                wait=wait_exponential(multiplier=0.5, max=5), reraise=True):
            with attempt:
                return fn()
    except _TRANSIENT as e:
        raise ApplyBlocked(f"{what}: {_refusal(e)}, {RETRIES} attempts; the application "
                           f"holds these rows: {then}") from e
    raise AssertionError("unreachable: tenacity re-raises or returns")


def _key_pred(meta: TableMeta) -> sql.Composable:
    t_cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in meta.pk)
    k_cols = sql.SQL(", ").join(sql.SQL("k.{}").format(sql.Identifier(c)) for c in meta.pk)
    return sql.SQL("({t}) = (SELECT {k} FROM drorch_reconcile.changes AS c, "
                   "jsonb_populate_record(NULL::{tbl}, c.key) AS k "
                   "WHERE c.run_id = %(run)s AND c.change_id = %(cid)s)").format(
        t=t_cols, k=k_cols, tbl=meta.ident)


def _write(conn: Conn, meta: TableMeta, params: dict[str, str], old_absent: bool,
           target_exists: bool) -> None:
    pred, tbl = _key_pred(meta), meta.ident
    params = {**params, **_ref_params(meta)}
    src = sql.SQL("FROM drorch_reconcile.changes AS c, {carry}, "
                  "jsonb_populate_record(NULL::{tbl}, c.old_row || k.carry) AS r "
                  "WHERE c.run_id = %(run)s AND c.change_id = %(cid)s").format(
        carry=_CARRY, tbl=tbl)
    if old_absent:
        conn.execute(sql.SQL("DELETE FROM {} AS t WHERE {}").format(tbl, pred), params)
    elif target_exists:
        cols = [c for c in meta.columns if c not in meta.generated | meta.identity_always]
        conn.execute(sql.SQL("UPDATE {tbl} AS t SET ({cols}) = (SELECT {rcols} {src}) "
                             "WHERE {pred}").format(
            tbl=tbl, cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            rcols=sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in cols),
            src=src, pred=pred), params)
    else:
        cols = [c for c in meta.columns if c not in meta.generated]
        conn.execute(sql.SQL("INSERT INTO {tbl} ({cols}) OVERRIDING SYSTEM VALUE "
                             "SELECT {rcols} {src}").format(
            tbl=tbl, cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            rcols=sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in cols),
            src=src), params)


_CARRY = sql.SQL(
    "LATERAL (SELECT coalesce(jsonb_object_agg(x.col, m.new_id), '{}'::jsonb) AS carry "
    "FROM unnest(%(ref_cols)s::text[], %(ref_parents)s::text[]) AS x(col, parent) "
    "JOIN drorch_reconcile.rekeyed m ON m.run_id = c.run_id AND m.tbl = x.parent "
    "AND m.old_id = CASE WHEN jsonb_typeof(c.old_row->x.col) = 'number' "
    "THEN (c.old_row->>x.col)::numeric::bigint END JOIN drorch_reconcile.applied a "
    "ON a.run_id = m.run_id AND a.change_id = m.change_id AND a.outcome = 'rekeyed') AS k")
"""Foreign-key values of a change's old row that name a parent inserted under a new key
(``c`` is its ``drorch_reconcile.changes`` row): column -> the parent's new key. A row a
human resolves, or is shown, names the parent's new key as the batch path's rows do."""


def _ref_params(meta: TableMeta) -> dict[str, list[str]]:
    """Foreign keys to carry: not those inside the row's own primary key (a carried key
    would no longer find the row it names: such a row stays a collision on its old key)."""
    refs = [(c, p) for c, p in meta.references if c not in meta.pk]
    return {"ref_cols": [c for c, _p in refs], "ref_parents": [p for _c, p in refs]}


def _current(conn: Conn, meta: TableMeta, params: dict[str, str]) -> str | None:
    """The target row on the compared columns (as the conflict file's fingerprint is),
    locked; None when absent."""
    row = conn.execute(sql.SQL("SELECT (to_jsonb(t.*) - %(hidden)s::text[])::text FROM {} AS t "
                               "WHERE {} FOR UPDATE").format(meta.ident, _key_pred(meta)),
                       {**params, "hidden": list(meta.hidden)}).fetchone()
    return row[0] if row else None


def apply_one(conn: Conn, meta: TableMeta, run_id: str, ch: store.StoredChange, outcome: str,
              expected: str, replace: tuple[str, ...] = ()) -> str:
    """Apply one change inside the caller's transaction; returns what happened.

    ``expected``: fingerprint the target row must still have. Returns
    ``outcome`` when written, ``already`` when recorded before, ``stale`` when
    the row changed since it was captured (recorded, not written)."""
    params = {"run": run_id, "cid": ch.change_id}
    with conn.transaction():
        if not store.claim(conn, run_id, ch.change_id, outcome, replace):
            return "already"
        current = _current(conn, meta, params) if meta.pk else None
        if fingerprint(current) != expected:
            conn.execute("UPDATE drorch_reconcile.applied SET outcome = 'stale' "
                         "WHERE run_id = %(run)s AND change_id = %(cid)s", params)
            return "stale"
        _write(conn, meta, params, ch.old_absent, current is not None)
    return outcome


def _lock_run(conn: Conn, run_id: str) -> None:
    """The run's advisory lock, to the end of the caller's transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                 (f"drorch_reconcile:{run_id}",))


@contextmanager
def _replica_role_txn(conn: Conn, run_id: str) -> Iterator[None]:
    """A transaction that writes like logical replication and holds the run's advisory
    lock: appliers of one run (a rerun beside a stuck one, resolve beside apply) take
    turns, so what one stages as unrecorded stays so until it commits."""
    with conn.transaction():
        _lock_run(conn, run_id)
        conn.execute("SET LOCAL session_replication_role = replica")
        # also on a caller's connection (resolve), whose session may wait forever
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
            sql.Literal(f"{int(_db.LOCK_TIMEOUT_MS)}ms")))
        yield


def _would_dangle(conn: Conn, meta: TableMeta, run_id: str, ch: store.StoredChange
                  ) -> str | None:
    """Why writing this change by itself (a human's resolution) would break a foreign
    key the apply does not check, or None: its parent is not on the new primary, its key
    names a re-keyed parent (the row belongs under the parent's new key), or (a delete)
    a child on the new primary still names it."""
    params: dict[str, Any] = {"run": run_id, "cid": ch.change_id, **_ref_params(meta)}
    src = sql.SQL("FROM drorch_reconcile.changes c, {carry} WHERE c.run_id = %(run)s "
                  "AND c.change_id = %(cid)s").format(carry=_CARRY)
    if ch.old_absent:
        for child, ccols, pcols in meta.referenced_by:
            cschema, ctable = child.split(".", 1)
            match = sql.SQL(" AND ").join(
                sql.SQL("x.{cc}::text = c.key->>{pc}").format(cc=sql.Identifier(cc),
                                                             pc=sql.Literal(pc))
                for cc, pc in zip(ccols, pcols, strict=True))
            if all(pc in meta.pk for pc in pcols) and conn.execute(sql.SQL(
                    "SELECT 1 FROM drorch_reconcile.changes c WHERE c.run_id = %(run)s "
                    "AND c.change_id = %(cid)s AND EXISTS (SELECT 1 FROM {ct} x WHERE {m})"
                    ).format(ct=sql.Identifier(cschema, ctable), m=match), params).fetchone():
                return f"rows of {child} on the new primary still name it ({', '.join(ccols)})"
        return None
    for col, parent in meta.references:
        parent_meta = load_table(conn, parent)
        if parent_meta is None or len(parent_meta.pk) != 1:
            continue
        pcol = parent_meta.pk[0]
        if col in meta.pk and conn.execute(
                "SELECT 1 FROM drorch_reconcile.changes c JOIN drorch_reconcile.rekeyed m "
                "ON m.run_id = c.run_id AND m.tbl = %(parent)s AND m.old_id = CASE WHEN "
                "jsonb_typeof(c.old_row->%(col)s) = 'number' THEN "
                "(c.old_row->>%(col)s)::numeric::bigint END JOIN drorch_reconcile.applied a "
                "ON a.run_id = m.run_id AND a.change_id = m.change_id AND a.outcome = 'rekeyed' "
                "WHERE c.run_id = %(run)s AND c.change_id = %(cid)s",
                {**params, "parent": parent, "col": col}).fetchone():
            return (f"its {col}, part of its key, names a row of {parent} that was re-keyed "
                    "(see the key mapping file): insert this row yourself under the new "
                    "key, then choose 'new'")
        pschema, ptable = parent.split(".", 1)
        if conn.execute(sql.SQL(
                "SELECT 1 {src} AND (c.old_row || k.carry)->>{col} IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM {pt} x WHERE x.{pc}::text = "
                "(c.old_row || k.carry)->>{col})").format(
                src=src, col=sql.Literal(col), pt=sql.Identifier(pschema, ptable),
                pc=sql.Identifier(pcol)), params).fetchone():
            return (f"its {col} names a row of {parent} that is not on the new primary "
                    "(not written, or deleted there)")
    return None


def _try_apply(conn: Conn, meta: TableMeta, run_id: str, ch: store.StoredChange, outcome: str,
               expected: str, replace: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """:func:`apply_one`, with a refusal of the row returned as ``("error", why)``;
    contention and anything else not about the row raise. A row that would point at
    nothing, or leave a child on the new primary pointing at nothing, is not written:
    ``("error", "held: ...")``."""
    why = _would_dangle(conn, meta, run_id, ch)
    if why is not None:
        return "error", _HELD + why
    try:
        return apply_one(conn, meta, run_id, ch, outcome, expected, replace), None
    except psycopg.Error as e:
        if conn.closed or conn.broken or not _row_refused(e):
            raise
        return "error", _refusal(e)


SEQUENCE_MARGIN = 1000
"""Values a moved sequence skips beyond the largest key: PostgreSQL has no compare-and-set
for sequences, so between reading a sequence's position and ``setval`` the application may
take a few values (``nextval`` is never rolled back: "Sequence Manipulation Functions",
PostgreSQL 15 docs, 9.17). Moving to max + margin in one statement leaves them behind
instead of handing them out twice."""


def _move_past(conn: Conn, seq: str, max_query: sql.Composable, params: dict[str, Any]
               ) -> bool:
    """Move ``seq`` past the values ``max_query`` returns (lowest, highest): forward past
    the highest (down past the lowest for a descending sequence), never back, never beyond
    its MAXVALUE/MINVALUE, in one statement; True if it moved."""
    return conn.execute(sql.SQL(
        "SELECT setval(%(seq)s::regclass, CASE WHEN s.increment_by > 0 "
        "THEN least(greatest(x.hi, cur) + %(margin)s, s.max_value) "
        "ELSE greatest(least(x.lo, cur) - %(margin)s, s.min_value) END) "
        "FROM ({q}) AS x(lo, hi), pg_sequences s, LATERAL (SELECT coalesce("
        "pg_sequence_last_value(%(seq)s::regclass), s.start_value) AS cur) AS c "
        "WHERE format('%%I.%%I', s.schemaname, s.sequencename)::regclass = %(seq)s::regclass "
        "AND CASE WHEN s.increment_by > 0 THEN x.hi > c.cur AND x.hi < s.max_value "
        "ELSE x.lo < c.cur AND x.lo > s.min_value END").format(q=max_query),
        {**params, "seq": seq, "margin": SEQUENCE_MARGIN}).fetchone() is not None


def advance_sequences(conn: Conn, metas: list[TableMeta]) -> list[str]:
    """Move each serial/identity sequence past the largest value now in its column."""
    moved = []
    for meta in metas:
        for seq, col in meta.sequences:
            if _move_past(conn, seq, sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(
                    c=sql.Identifier(col), t=meta.ident), {}):
                moved.append(seq)
    return moved


def as_captured(conn: Conn, run_id: str, meta: TableMeta, new_only: list[str]) -> TableMeta:
    """``meta`` (the new primary's table now) written and compared on the columns the
    run captured: a column added on the new primary since (after the split, or between
    finding and this apply) is left alone, so it keeps its default or the application's
    value. Raises :class:`SchemaChanged` when a captured column is gone."""
    row = conn.execute(
        "SELECT array(SELECT jsonb_object_keys(coalesce(c.old_row, c.new_row))) "
        "FROM drorch_reconcile.changes c WHERE c.run_id = %s AND c.tbl = %s "
        "AND coalesce(c.old_row, c.new_row) IS NOT NULL LIMIT 1", (run_id, meta.name)
    ).fetchone()
    if row is None:  # only deletes by key, or nothing: no column is written
        return meta.without(new_only)
    captured = [str(c) for c in row[0]]
    gone = sorted(set(captured) - set(meta.columns))
    if gone:
        raise SchemaChanged(
            f"{meta.name}: column(s) {', '.join(gone)} were dropped on the new primary after "
            "the divergence was found; the old primary's values for them would be lost. "
            "Nothing was applied or rewound: add them back (ALTER TABLE ... ADD COLUMN) "
            "and run the failback again, or decide with the data owner first")
    return meta.without(sorted(set(new_only) | (set(meta.columns) - set(captured))))


def _decision(ch: store.StoredChange, sensitive: set[str], outcome: str,
              detail: str | None = None) -> dict[str, Any]:
    d = {"change_id": ch.change_id, "table": ch.table,
         "key": {c: ("***" if c in sensitive else v) for c, v in ch.key.items()},
         "kind": ch.kind, "action": ch.action, "columns": ch.columns, "outcome": outcome}
    if detail:
        d["error"] = detail
    return d


BATCH_ROWS = 10_000
ONE_BY_ONE = 64
"""A refused batch this small goes row by row (each in its own transaction) to name the
rows."""


_WRITES = "('apply-old', 'rekey')"
"""Actions that write the old primary's row: as it was, or under a fresh key."""
_HAS_NEW_KEY = ("(c.action <> 'rekey' OR EXISTS (SELECT 1 FROM drorch_reconcile.rekeyed m "
                "WHERE m.run_id = c.run_id AND m.change_id = c.change_id))")
"""A ``rekey`` change is written only once its new key is assigned (a table whose key is
not fed by a sequence on the new primary has none: those go to a human)."""


def _pending(conn: Conn, run_id: str, table: str, deletes: bool,
             seq_range: tuple[int, int] | None = None) -> list[tuple[int, str]]:
    """(seq, change id) of the table's changes still to write, in capture order."""
    lo, hi = seq_range or (None, None)
    undecided = _undecided(conn, run_id, table, deletes, seq_range)
    return [(int(r[0]), str(r[1])) for r in conn.execute(
        "SELECT c.seq, c.change_id FROM drorch_reconcile.changes c WHERE c.run_id = %s "
        f"AND c.tbl = %s AND c.action IN {_WRITES} AND (c.old_row IS NULL) = %s "
        f"AND (%s::int IS NULL OR c.seq BETWEEN %s AND %s) AND {_HAS_NEW_KEY} "
        f"AND {undecided} ORDER BY c.seq", (run_id, table, deletes, lo, lo, hi))]


_SEQ_ALL = (-2**31, 2**31 - 1)


def _undecided(conn: Conn, run_id: str, table: str, deletes: bool,
               seq_range: tuple[int, int] | None = None) -> str:
    """SQL: the change ``c`` of ``table`` (seq in ``seq_range``) has no outcome yet;
    without a recorded batch of its table and side over that range, its own record is
    all there is to ask (one probe per change instead of two)."""
    lo, hi = seq_range or _SEQ_ALL
    if _batch_overlaps(conn, {"run": run_id, "tbl": table, "del": deletes, "lo": lo,
                              "hi": hi}):
        return store.UNDECIDED
    return f"coalesce({store.own_outcome()}, 'held') = 'held'"


def _match(meta: TableMeta, left: str, right: str) -> sql.Composable:
    """``left``'s key columns equal ``right``'s (a composite value of the table's type)."""
    return sql.SQL(" AND ").join(
        sql.SQL("{l}.{c} = ({r}).{c}").format(l=sql.Identifier(left), c=sql.Identifier(c),
                                              r=sql.SQL(right)) for c in meta.pk)


def assign_new_keys(conn: Conn, run_id: str, metas: dict[str, TableMeta]) -> list[str]:
    """Give every ``rekey`` change its new key from the key's sequence on the new primary,
    once (recorded in ``drorch_reconcile.rekeyed`` before any row is written, so children
    applied in any order find their parent's new key, and a rerun reuses it). Returns the
    sequences moved forward first."""
    moved = []
    for name, meta in metas.items():
        seq = meta.key_sequence
        if seq is None or not conn.execute(
                "SELECT 1 FROM drorch_reconcile.changes WHERE run_id = %s AND tbl = %s "
                "AND action = 'rekey' LIMIT 1", (run_id, name)).fetchone():
            continue  # nothing to re-key, or not re-keyable here (those go to a human)
        # Past every key either side used: the old side's keys not applied yet included,
        # or a fresh key could be one of them.
        if _move_past(conn, seq, sql.SQL(
                "SELECT least(t.lo, k.lo), greatest(t.hi, k.hi) FROM (SELECT min({k}) AS lo, "
                "max({k}) AS hi FROM {tbl}) t, (SELECT min((c.key->>%(col)s)::bigint) AS lo, "
                "max((c.key->>%(col)s)::bigint) AS hi FROM drorch_reconcile.changes c "
                "WHERE c.run_id = %(run)s AND c.tbl = %(tbl)s) k").format(
                    k=sql.Identifier(meta.pk[0]), tbl=meta.ident),
                {"run": run_id, "tbl": name, "col": meta.pk[0]}):
            moved.append(seq)
        # a hash anti join: probed per change by a nested loop, each probe also walked the
        # rows this statement had inserted so far (10,000 re-keys took 5 s)
        conn.execute("SET LOCAL enable_nestloop = off")
        conn.execute(
            "INSERT INTO drorch_reconcile.rekeyed (run_id, change_id, tbl, key_column, "
            "old_id, new_id) SELECT c.run_id, c.change_id, c.tbl, %(col)s, "
            "(c.key->>%(col)s)::bigint, nextval(%(seq)s::regclass) "
            "FROM drorch_reconcile.changes c WHERE c.run_id = %(run)s AND c.tbl = %(tbl)s "
            "AND c.action = 'rekey' AND NOT EXISTS (SELECT 1 FROM drorch_reconcile.rekeyed m "
            "WHERE m.run_id = c.run_id AND m.change_id = c.change_id) ORDER BY c.seq",
            {"run": run_id, "tbl": name, "col": meta.pk[0], "seq": seq})
    return moved


@dataclass
class _Parents:
    """What a batch needs to know about the tables its foreign keys name."""

    rekeyed: set[str]
    """Tables with rows re-keyed in this run (a child's key to them is carried over)."""
    pk: dict[str, str]
    """Table -> its one-column primary key."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Change id -> why the child row was held back (its parent row was not written)."""
    group: list[str] = field(default_factory=list)
    """Change ids written together in one transaction (rows that name each other): a
    parent among them counts as written; the group commits only if all of them are."""

    def __contains__(self, table: object) -> bool:
        return table in self.rekeyed


def _rekeyed_parents(conn: Conn, run_id: str, metas: dict[str, TableMeta]) -> _Parents:
    return _Parents({str(r[0]) for r in conn.execute(
        "SELECT DISTINCT tbl FROM drorch_reconcile.rekeyed WHERE run_id = %s", (run_id,))},
        {n: m.pk[0] for n, m in metas.items() if len(m.pk) == 1})


def _hold_orphans(conn: Conn, meta: TableMeta, p: dict[str, Any], parents: _Parents) -> None:
    """Hold back rows whose foreign key names a parent row the old primary wrote in this
    run that is not written here (refused, stale, held, or not written yet): foreign keys
    are not checked under ``session_replication_role = replica``, so the row would land
    pointing at nothing, or at the new primary's different row under the same key.

    Parents go first (tables in foreign-key order); a parent in the same batch (a
    self-referencing table) counts as written unless it is stale or held itself, so a
    chain is settled by repeating until nothing more is held. A child whose parent comes
    later (a cycle between tables, a parent in a later batch) is held now and tried
    again by :func:`_retry_held`. Runs after the batch's target rows are compared."""
    refs = [(col, parent, parents.pk[parent]) for col, parent in meta.references
            if parent in parents.pk]
    while refs:
        held = 0
        for col, parent, pcol in refs:
            in_batch = sql.SQL(
                "AND NOT EXISTS (SELECT 1 FROM drorch_batch s WHERE s.change_id = pc.change_id "
                "AND s.held IS NULL AND s.cur IS NOT DISTINCT FROM s.new_row)"
            ) if parent == meta.name else sql.SQL("")
            held += conn.execute(sql.SQL(
                "UPDATE drorch_batch b SET held = format('its %%s names a row of %%s the "
                "old primary wrote that was not written here (%%s)', %(col)s::text, "
                "%(parent)s::text, coalesce(a.outcome, CASE WHEN "
                "pb.change_id IS NOT NULL THEN 'stale or held' ELSE 'refused or held' END)) "
                "FROM drorch_reconcile.changes pc CROSS JOIN LATERAL "
                f"(SELECT {store.outcome_of('pc')} AS outcome OFFSET 0) a "
                "LEFT JOIN drorch_batch pb ON pb.change_id = pc.change_id "
                "WHERE b.held IS NULL AND pc.run_id = %(run)s AND pc.tbl = %(parent)s "
                f"AND pc.action IN {_WRITES} AND pc.old_row IS NOT NULL "
                "AND pc.key->>%(pcol)s = b.orig->>%(col)s "
                "AND coalesce(a.outcome, '') NOT IN ('applied', 'rekeyed') "
                "AND pc.change_id <> ALL(%(group)s::text[]) {in_batch}"
            ).format(in_batch=in_batch),
                {**p, "col": col, "parent": parent, "pcol": pcol,
                 "group": parents.group}).rowcount
            held += _hold_missing_parent(conn, meta, p, col, parent, pcol, parents.group)
        if not held or all(parent != meta.name for _c, parent, _k in refs):
            break
    _collect_held(conn, parents)


def _hold_missing_parent(conn: Conn, meta: TableMeta, p: dict[str, Any], col: str,
                         parent: str, pcol: str, group: list[str]) -> int:
    """Hold rows whose foreign key names a row that is not on the new primary now (the
    new primary deleted it, or it was never there) and is not being written in this batch
    or with this ``group`` (change ids written in one transaction: a parent among them
    counts, under its old or its new key): foreign keys are not checked while applying.
    Returns rows held."""
    pschema, ptable = parent.split(".", 1)
    in_batch = sql.SQL(
        "AND NOT EXISTS (SELECT 1 FROM drorch_batch s WHERE s.held IS NULL "
        "AND s.cur IS NOT DISTINCT FROM s.new_row AND (s.r).{pc} = (b.r).{c})").format(
        pc=sql.Identifier(pcol), c=sql.Identifier(col)) if parent == meta.name else sql.SQL("")
    in_group = sql.SQL(
        "AND NOT EXISTS (SELECT 1 FROM drorch_reconcile.changes g "
        "LEFT JOIN drorch_reconcile.rekeyed m ON m.run_id = g.run_id "
        "AND m.change_id = g.change_id WHERE g.run_id = %(run)s "
        "AND g.change_id = ANY(%(group)s::text[]) AND g.tbl = %(parent)s "
        "AND (b.r).{c}::text IN (g.key->>%(pcol)s, m.new_id::text))").format(
        c=sql.Identifier(col)) if group else sql.SQL("")
    return conn.execute(sql.SQL(
        "UPDATE drorch_batch b SET held = format('its %%s names a row of %%s that is not on "
        "the new primary (deleted there, or never written)', %(col)s::text, %(parent)s::text) "
        "WHERE b.held IS NULL AND (b.r).{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {pt} x "
        "WHERE x.{pc} = (b.r).{c}) {in_batch} {in_group}").format(
        c=sql.Identifier(col), pt=sql.Identifier(pschema, ptable), pc=sql.Identifier(pcol),
        in_batch=in_batch, in_group=in_group),
        {**p, "col": col, "parent": parent, "pcol": pcol, "group": group}).rowcount


def _hold_referenced(conn: Conn, meta: TableMeta, p: dict[str, Any],
                     parents: _Parents) -> None:
    """Hold back deletes of rows a child on the new primary still names (one the new
    primary inserted after the split): neither the foreign key nor its ON DELETE action
    runs while applying, so the child would be left pointing at nothing."""
    for child, ccols, pcols in meta.referenced_by:
        cschema, ctable = child.split(".", 1)
        match = sql.SQL(" AND ").join(
            sql.SQL("x.{cc} = (b.r).{pc}").format(cc=sql.Identifier(cc), pc=sql.Identifier(pc))
            for cc, pc in zip(ccols, pcols, strict=True))
        going = sql.SQL(
            "AND NOT EXISTS (SELECT 1 FROM drorch_batch s WHERE s.held IS NULL AND {m})").format(
            m=_match(meta, "x", "s.r")) if child == meta.name and meta.pk else sql.SQL("")
        conn.execute(sql.SQL(
            "UPDATE drorch_batch b SET held = format('rows of %%s on the new primary still "
            "name it (%%s)', %(child)s::text, %(ccols)s::text) WHERE b.held IS NULL "
            "AND b.cur IS NOT DISTINCT FROM b.new_row AND EXISTS (SELECT 1 FROM {ct} x "
            "WHERE {match} {going})").format(ct=sql.Identifier(cschema, ctable), match=match,
                                             going=going),
            {**p, "child": child, "ccols": ", ".join(ccols)})
    _collect_held(conn, parents)


def _hold_renamed(conn: Conn, meta: TableMeta, p: dict[str, Any], parents: _Parents) -> None:
    """Hold back updates that change a column a child on the new primary names (a foreign
    key to a unique column other than the primary key): with the key's checks off while
    applying, the child would be left naming a value no row has."""
    for child, ccols, pcols in meta.referenced_by:
        if list(pcols) == list(meta.pk):
            continue  # an update never changes the key it is matched on
        cschema, ctable = child.split(".", 1)
        names = sql.SQL(" AND ").join(
            sql.SQL("x.{cc} = t2.{pc}").format(cc=sql.Identifier(cc), pc=sql.Identifier(pc))
            for cc, pc in zip(ccols, pcols, strict=True))
        now = sql.SQL(", ").join(sql.SQL("t2.{}").format(sql.Identifier(pc)) for pc in pcols)
        then = sql.SQL(", ").join(sql.SQL("(b.r).{}").format(sql.Identifier(pc)) for pc in pcols)
        conn.execute(sql.SQL(
            "UPDATE drorch_batch b SET held = format('rows of %%s on the new primary still "
            "name its current %%s', %(child)s::text, %(pcols)s::text) WHERE b.held IS NULL "
            "AND b.had AND b.cur IS NOT DISTINCT FROM b.new_row AND EXISTS (SELECT 1 FROM "
            "{tbl} t2 JOIN {ct} x ON {names} WHERE {m} AND ROW({now}) IS DISTINCT FROM "
            "ROW({then}))").format(tbl=meta.ident, ct=sql.Identifier(cschema, ctable),
                                   names=names, m=_match(meta, "t2", "b.r"), now=now,
                                   then=then),
            {**p, "child": child, "pcols": ", ".join(pcols)})
    _collect_held(conn, parents)


_HELD = "held: "
"""Marks a reason as a row held back for its parent (not refused by the database)."""


def _collect_held(conn: Conn, parents: _Parents) -> None:
    """The batch's held rows into ``parents.blocked``, with their reasons."""
    for cid, why in conn.execute("SELECT change_id, held FROM drorch_batch "
                                 "WHERE held IS NOT NULL"):
        parents.blocked[str(cid)] = _HELD + str(why)


def _retry_held(conn: Conn, metas: dict[str, TableMeta], order: list[str], run_id: str,
                parents: _Parents, errors: dict[str, str]) -> None:
    """Try the held rows again, one by one, while that writes some: a child held because
    its parent came later (a cycle, a later batch) goes in once the parent is written.
    What stays held is in ``parents.blocked`` afterwards. Passes alternate between
    capture order and its reverse, so a chain written leaf first (each parent after its
    child) goes in one pass, not one row per pass."""
    backwards = True
    while parents.blocked:
        held = parents.blocked
        parents.blocked = {}
        rank = {name: i for i, name in enumerate(order)}
        rows = sorted(((str(t), int(q), str(c)) for t, q, c in conn.execute(
            "SELECT tbl, seq, change_id FROM drorch_reconcile.changes WHERE run_id = %s "
            "AND change_id = ANY(%s)", (run_id, list(held)))),
            key=lambda r: (rank.get(r[0], len(rank)), -r[1] if backwards else r[1]))
        backwards = not backwards
        for table, seq, _cid in rows:
            _apply_rows(conn, metas[table], run_id, seq, seq, False, parents, errors)
        if len(parents.blocked) >= len(held):
            rows = [r for r in rows if r[2] in parents.blocked]
            if len(rows) < 2 or not _apply_group(conn, metas, run_id, rows, parents):
                return


class _GroupRefused(Exception):
    """Rows of a group were not written: the whole attempt is rolled back."""

    def __init__(self, failed: set[str]) -> None:
        super().__init__(f"{len(failed)} rows of the group not written")
        self.failed = failed


def _apply_group(conn: Conn, metas: dict[str, TableMeta], run_id: str,
                 rows: list[tuple[str, int, str]], parents: _Parents) -> bool:
    """Write rows that name each other (a foreign-key cycle between tables, a chain held
    across batches) in one transaction, each counting the others as written; all or
    none. Rows refused, stale or held for a parent outside the group are dropped from it
    and the rest tried again, so an unrelated held row does not hold a cycle back. True
    when some were written; what stays held is in ``parents.blocked``."""
    held = dict(parents.blocked)
    group = list(rows)
    while len(group) > 1:
        ids = [cid for _t, _q, cid in group]

        def txn(group: list[tuple[str, int, str]] = group, ids: list[str] = ids) -> None:
            refused: set[str] = set()
            with _replica_role_txn(conn, run_id):
                for table, seq, cid in group:
                    try:
                        with conn.transaction():
                            _apply_set(conn, metas[table], run_id, seq, seq, False, parents)
                    except psycopg.Error as e:
                        if conn.closed or conn.broken or not _row_refused(e):
                            raise
                        refused.add(cid)
                written = {str(r[0]) for r in conn.execute(
                    "SELECT change_id FROM drorch_reconcile.outcomes WHERE run_id = %s AND "
                    "change_id = ANY(%s) AND outcome IN ('applied', 'rekeyed')", (run_id, ids))}
                if written != set(ids):
                    raise _GroupRefused(set(ids) - written | refused)

        parents.group, parents.blocked = ids, {}
        try:
            _retrying(f"{len(ids)} rows that name each other", txn)
        except _GroupRefused as e:
            group = [r for r in group if r[2] not in e.failed]
            continue
        finally:
            parents.group = []
        parents.blocked = {k: v for k, v in held.items() if k not in ids}
        return True
    parents.blocked = held
    return False


def _load_batch(conn: Conn, meta: TableMeta, p: dict[str, Any], deletes: bool,
                parents: _Parents) -> None:
    """Stage the batch in ``drorch_batch`` in one statement: each change's row as written
    (a ``rekey`` row under its new key, a foreign key naming a re-keyed parent carrying
    the parent's new key: ``orig`` keeps the old primary's values) and the target row,
    locked, on the compared columns (``cur``)."""
    tbl = meta.ident
    joins: list[sql.Composable] = []
    patches: list[sql.Composable] = []
    new_row = sql.SQL("c.new_row")
    if not deletes and meta.key_sequence is not None and meta.name in parents:
        joins.append(sql.SQL(  # probed only for rekey changes (a join probed every row)
            "CROSS JOIN LATERAL (SELECT CASE WHEN c.action = 'rekey' THEN (SELECT m.new_id "
            "FROM drorch_reconcile.rekeyed m WHERE m.run_id = c.run_id "
            "AND m.change_id = c.change_id) END AS new_id OFFSET 0) m"))
        patches.append(sql.SQL("jsonb_build_object({k}::text, m.new_id)").format(
            k=sql.Literal(meta.pk[0])))
        new_row = sql.SQL("CASE WHEN m.new_id IS NULL THEN c.new_row END")
    for i, (col, parent) in enumerate(meta.references if not deletes else ()):
        if parent in parents:  # the old primary's child row names the old primary's parent
            alias = sql.Identifier(f"p{i}")
            joins.append(sql.SQL(
                "LEFT JOIN drorch_reconcile.rekeyed {a} ON {a}.run_id = c.run_id "
                "AND {a}.tbl = {parent} AND {a}.old_id = CASE WHEN "
                "jsonb_typeof(c.old_row->{col}) = 'number' "
                "THEN (c.old_row->>{col})::numeric::bigint END").format(
                a=alias, parent=sql.Literal(parent), col=sql.Literal(col)))
            patches.insert(0, sql.SQL("jsonb_build_object({col}::text, {a}.new_id)").format(
                col=sql.Literal(col), a=alias))
    row = sql.SQL("coalesce(c.old_row, c.key)")
    for patch in patches:  # a NULL new_id (nothing re-keyed) keeps the old value
        row = sql.SQL("{row} || jsonb_strip_nulls({patch})").format(row=row, patch=patch)
    target = sql.SQL("NULL::jsonb AS cur")
    lateral = sql.SQL("")
    if meta.pk:  # the target row, locked, on the compared columns
        target = sql.SQL("x.cur")
        lateral = sql.SQL(
            "LEFT JOIN LATERAL (SELECT to_jsonb(t.*) - %(hidden)s::text[] AS cur FROM {tbl} t "
            "WHERE {m} FOR UPDATE) x ON true").format(tbl=tbl, m=_match(meta, "t", "s.r"))
    # A change a recorded batch covers has an outcome: asked only where a batch of this
    # table and side overlaps the range (a rerun's), not once per change of every batch.
    batched = sql.SQL(f"AND NOT (c.action = 'apply-old' AND {store.in_batch()}) "
                      if _batch_overlaps(conn, p) else "")  # (see _undecided)
    # ``OFFSET 0`` keeps each subquery's values computed once per change: flattened, the
    # row was built again for the target lookup and the outcome probed twice.
    conn.execute(sql.SQL(
        "INSERT INTO drorch_batch (change_id, action, new_row, orig, r, cur, had, own) "
        "SELECT s.change_id, s.action, s.new_row, s.orig, s.r, {target}, {target} IS NOT NULL, "
        "s.own IS NOT NULL FROM (SELECT c.change_id, c.action, {new_row} AS new_row, "
        "coalesce(c.old_row, c.key) AS orig, jsonb_populate_record(NULL::{tbl}, {row}) AS r, "
        "o.own FROM drorch_reconcile.changes c {joins} "
        f"CROSS JOIN LATERAL (SELECT {store.own_outcome()} AS own OFFSET 0) o "
        "WHERE c.run_id = %(run)s AND c.tbl = %(tbl)s "
        f"AND c.seq BETWEEN %(lo)s AND %(hi)s AND c.action IN {_WRITES} "
        f"AND (c.old_row IS NULL) = %(del)s AND {_HAS_NEW_KEY} "
        "AND (o.own = 'held' OR o.own IS NULL {batched}) OFFSET 0) s {lateral}").format(
        target=target, new_row=new_row, tbl=tbl, row=row, joins=sql.SQL(" ").join(joins),
        batched=batched, lateral=lateral), {**p, "hidden": list(meta.hidden)})


def _batch_overlaps(conn: Conn, p: dict[str, Any]) -> bool:
    """A recorded batch of this table and side overlaps the seq range ``p`` names."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM drorch_reconcile.applied_batches WHERE run_id = %(run)s "
        "AND tbl = %(tbl)s AND deletes = %(del)s AND lo <= %(hi)s AND hi >= %(lo)s)", p
    ).fetchone() == (True,)


_WRITTEN = "b.held IS NULL AND b.cur IS NOT DISTINCT FROM b.new_row"
"""A staged row that is written: not held, and the target still as captured (else
``stale``)."""


def _apply_set(conn: Conn, meta: TableMeta, run_id: str, lo: int, hi: int,
               deletes: bool, parents: _Parents) -> None:
    """One batch (changes of ``meta`` with seq in [lo, hi]) as set-based statements inside
    the caller's transaction (which holds the run's advisory lock: no other applier
    claims these changes meanwhile). A ``rekey`` row goes in under its new key; a foreign
    key naming a re-keyed parent (``parents``) gets the parent's new key. Raises what the
    new primary raises."""
    p = {"run": run_id, "tbl": meta.name, "lo": lo, "hi": hi, "del": deletes}
    tbl = meta.ident
    conn.execute(sql.SQL(
        "CREATE TEMP TABLE drorch_batch (change_id text PRIMARY KEY, action text, "
        "new_row jsonb, cur jsonb, had boolean NOT NULL, held text, orig jsonb, r {}, "
        "own boolean NOT NULL) ON COMMIT DROP").format(tbl))
    _load_batch(conn, meta, p, deletes, parents)
    if deletes:
        _hold_referenced(conn, meta, p, parents)
    else:
        _hold_orphans(conn, meta, p, parents)
        if any(list(pc) != list(meta.pk) for _c, _cc, pc in meta.referenced_by):
            _hold_renamed(conn, meta, p, parents)
    _record(conn, meta, p)
    counts = conn.execute(
        f"SELECT count(*) FILTER (WHERE {_WRITTEN} AND b.had), "
        f"count(*) FILTER (WHERE {_WRITTEN} AND NOT b.had) FROM drorch_batch b").fetchone()
    assert counts is not None
    if deletes:
        cur = conn.execute(sql.SQL(
            "DELETE FROM {tbl} t USING drorch_batch b WHERE {w} AND {m}"
        ).format(tbl=tbl, w=sql.SQL(_WRITTEN), m=_match(meta, "t", "b.r")))
        _all_written(meta, "deleted", cur.rowcount, counts[0])
    else:
        writable = [c for c in meta.columns if c not in meta.generated | meta.identity_always]
        if meta.pk and writable:
            cur = conn.execute(sql.SQL(
                "UPDATE {tbl} t SET {sets} FROM drorch_batch b WHERE {w} AND b.had "
                "AND {m}").format(
                tbl=tbl, w=sql.SQL(_WRITTEN), m=_match(meta, "t", "b.r"),
                sets=sql.SQL(", ").join(
                    sql.SQL("{c} = (b.r).{c}").format(c=sql.Identifier(c)) for c in writable)))
            _all_written(meta, "updated", cur.rowcount, counts[0])
        cols = [c for c in meta.columns if c not in meta.generated]
        cur = conn.execute(sql.SQL(
            "INSERT INTO {tbl} ({cols}) OVERRIDING SYSTEM VALUE SELECT {rcols} "
            "FROM drorch_batch b WHERE {w} AND NOT b.had"
        ).format(tbl=tbl, w=sql.SQL(_WRITTEN), cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                 rcols=sql.SQL(", ").join(sql.SQL("(b.r).{}").format(sql.Identifier(c))
                                          for c in cols)))
        _all_written(meta, "inserted", cur.rowcount, counts[1])
    conn.execute("DROP TABLE drorch_batch")


def _all_written(meta: TableMeta, what: str, written: int, staged: int) -> None:
    """Every staged row was written: a trigger or rule enabled ``ALWAYS`` or ``REPLICA``
    (they fire under ``session_replication_role = replica``) may skip a write without an
    error. Raised as a refusal of the rows (P0001): the batch is retried in halves, down
    to the rows such a trigger skips, which go to a human with this reason."""
    if meta.pk and written != staged:
        raise psycopg.errors.RaiseException(
            f"{meta.name}: {written} of {staged} rows {what}: a trigger or rule of the "
            "table (or a partition) enabled ALWAYS or REPLICA skipped the others")


_ON_ITS_OWN = ("b.own OR b.held IS NOT NULL OR b.action = 'rekey' "
               "OR b.cur IS DISTINCT FROM b.new_row")
"""A staged change whose outcome is recorded on its own row: held for a parent (no
decision yet), stale, re-keyed, or one that has a row already (held before)."""


def _record(conn: Conn, meta: TableMeta, p: dict[str, Any]) -> None:
    """Record the staged batch's outcomes in the caller's transaction (the one that
    writes it): one ``applied_batches`` row for the ``apply-old`` changes written as
    they are, an ``applied`` row for each exception (:data:`_ON_ITS_OWN`)."""
    own = conn.execute(
        "INSERT INTO drorch_reconcile.applied AS a (run_id, change_id, outcome) "
        "SELECT %(run)s, b.change_id, CASE WHEN b.held IS NOT NULL THEN 'held' "
        "WHEN b.cur IS DISTINCT FROM b.new_row THEN 'stale' "
        "WHEN b.action = 'rekey' THEN 'rekeyed' ELSE 'applied' END FROM drorch_batch b "
        f"WHERE {_ON_ITS_OWN} ON CONFLICT (run_id, change_id) DO UPDATE "
        "SET outcome = EXCLUDED.outcome, decided_at = now() WHERE a.outcome = 'held'", p)
    expected = conn.execute(f"SELECT count(*) FROM drorch_batch b WHERE {_ON_ITS_OWN}"
                            ).fetchone()
    if expected is None or own.rowcount != expected[0]:
        # only without the advisory lock (an older drorch applying at the same time)
        raise RuntimeError(f"{meta.name}: another applier recorded some of these changes "
                           "meanwhile; nothing of this batch is written: rerun")
    conn.execute(
        "INSERT INTO drorch_reconcile.applied_batches (run_id, tbl, deletes, lo, hi, rows) "
        "SELECT %(run)s, %(tbl)s, %(del)s, %(lo)s, %(hi)s, count(*) FROM drorch_batch b "
        f"WHERE NOT ({_ON_ITS_OWN}) HAVING count(*) > 0 ON CONFLICT DO NOTHING", p)


_ROW_ERRORS = ("22", "23", "44", "P0", "2F", "38", "39")
"""SQLSTATE classes that say the row itself is refused (data exception, integrity
constraint, WITH CHECK OPTION, a trigger's RAISE or routine error: PostgreSQL 15,
Appendix A). Anything else (a syntax or type error, a lost connection) is drorch's or the
server's fault, not the row's: it stops the apply instead of handing rows to a human."""


def _row_refused(e: psycopg.Error) -> bool:
    return (e.sqlstate or "")[:2] in _ROW_ERRORS


def resolve_rekeyed(conn: Conn, meta: TableMeta, run_id: str, change_id: str
                    ) -> tuple[str, str | None]:
    """A human chose ``old`` for a row that was to be re-keyed (refused before): insert it
    under its assigned new key, as the batch path does, never over the new primary's row
    under the old key. Runs in the caller's transaction (replica role); returns the
    outcome and the database's error, if any."""
    seq = int(conn.execute("SELECT seq FROM drorch_reconcile.changes WHERE run_id = %s "
                           "AND change_id = %s", (run_id, change_id)).fetchone()[0])  # type: ignore[index]
    parents = _rekeyed_parents(conn, run_id, {meta.name: meta})
    try:
        with conn.transaction():
            _apply_set(conn, meta, run_id, seq, seq, False, parents)
    except psycopg.Error as e:
        if conn.closed or conn.broken or not _row_refused(e):
            raise
        return "error", _refusal(e)
    if change_id in parents.blocked:
        return "error", parents.blocked[change_id]
    row = conn.execute("SELECT outcome FROM drorch_reconcile.outcomes WHERE run_id = %s "
                       "AND change_id = %s", (run_id, change_id)).fetchone()
    return (str(row[0]) if row else "error"), None


def _refusal(e: psycopg.Error) -> str:
    diag = e.diag
    where = f" (constraint {diag.constraint_name})" if diag.constraint_name else ""
    return f"{diag.sqlstate or e.sqlstate}: {diag.message_primary or e}{where}"


def _apply_rows(conn: Conn, meta: TableMeta, run_id: str, lo: int, hi: int, deletes: bool,
                parents: _Parents, errors: dict[str, str]) -> None:
    """The slow path for a refused batch: row by row, each in its own transaction, each
    refusal recorded in ``errors`` with the database's words."""
    for seq, change_id in _pending(conn, run_id, meta.name, deletes, (lo, hi)):
        def one(seq: int = seq, change_id: str = change_id) -> None:
            try:
                with _replica_role_txn(conn, run_id):
                    _apply_set(conn, meta, run_id, seq, seq, deletes, parents)
            except psycopg.Error as e:
                if conn.closed or conn.broken or not _row_refused(e):
                    raise
                errors[change_id] = _refusal(e)

        _retrying(f"{meta.name} change {change_id}", one)


def _batches(conn: Conn, run_id: str, table: str, deletes: bool, batch: int
             ) -> list[tuple[int, int, int]]:
    """(first seq, last seq, changes) of each batch of the table's pending changes, in
    capture order: only the bounds travel, never one row per change."""
    joins, outcome = store.outcomes_joined(conn, run_id)
    with conn.transaction():
        conn.execute("SET LOCAL enable_nestloop = off")  # see store.outcomes_joined
        return [(int(lo), int(hi), int(n)) for lo, hi, n in conn.execute(
            "SELECT min(seq), max(seq), count(*) FROM (SELECT c.seq, (row_number() OVER "
            "(ORDER BY c.seq) - 1) / %(batch)s AS g FROM drorch_reconcile.changes c "
            f"{joins} WHERE c.run_id = %(run)s AND c.tbl = %(tbl)s AND c.action IN {_WRITES} "
            f"AND (c.old_row IS NULL) = %(del)s AND {_HAS_NEW_KEY} AND ({outcome}) IS NULL"
            ") x GROUP BY g ORDER BY 1",
            {"batch": batch, "run": run_id, "tbl": table, "del": deletes})]


def _apply_table(conn: Conn, meta: TableMeta, run_id: str, deletes: bool, batch: int,
                 parents: _Parents, errors: dict[str, str]) -> None:
    """Every pending change of one table (its upserts, or its deletes)."""
    todo = [(lo, hi, n, False) for lo, hi, n in _batches(conn, run_id, meta.name, deletes,
                                                         batch)][::-1]
    while todo:
        lo, hi, n, refused_before = todo.pop()
        if refused_before and n <= ONE_BY_ONE or n == 1:
            _apply_rows(conn, meta, run_id, lo, hi, deletes, parents, errors)
            continue

        def batch_txn(lo: int = lo, hi: int = hi) -> None:
            with _replica_role_txn(conn, run_id):
                _apply_set(conn, meta, run_id, lo, hi, deletes, parents)

        try:
            _retrying(f"{meta.name} batch of {n} changes", batch_txn)
        except psycopg.Error as e:
            if conn.closed or conn.broken or not _row_refused(e):
                raise
            # find the refused rows: halves, then one by one
            seqs = [q for q, _cid in _pending(conn, run_id, meta.name, deletes, (lo, hi))]
            if not seqs:
                continue
            mid = len(seqs) // 2
            todo += [(seqs[mid], seqs[-1], len(seqs) - mid, True)]
            if mid:
                todo += [(seqs[0], seqs[mid - 1], mid, True)]


def _keep_new(conn: Conn, run_id: str) -> int:
    """Record every ``keep-new`` change as kept (nothing to write); rows recorded now."""
    cur = conn.execute(
        "INSERT INTO drorch_reconcile.applied (run_id, change_id, outcome) "
        "SELECT run_id, change_id, 'kept-new' FROM drorch_reconcile.changes "
        "WHERE run_id = %s AND action = 'keep-new' ON CONFLICT (run_id, change_id) DO NOTHING",
        (run_id,))
    return cur.rowcount


def _outcomes_query(conn: Conn, run_id: str) -> str:
    """Rows per table, kind and outcome of the run, with a digest of each set."""
    joins, outcome = store.outcomes_joined(conn, run_id)
    return f"""
SELECT c.tbl, c.kind, coalesce(x.outcome, CASE WHEN c.action = 'apply-old' THEN 'error'
       ELSE 'pending' END) AS outcome, count(*),
       encode(sha256(convert_to(string_agg(c.change_id || ':' || coalesce(x.outcome,
              'pending'), ',' ORDER BY c.change_id), 'UTF8')), 'hex')
FROM drorch_reconcile.changes c {joins}
CROSS JOIN LATERAL (SELECT {outcome} AS outcome) x
WHERE c.run_id = %(run)s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def _count_applied(conn: Conn, run_id: str) -> int:
    """Changes recorded ``applied``: a batch's rows were counted when it was written (and
    a change a batch covers never gets another outcome), so this reads records, not
    changes."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM drorch_reconcile.applied WHERE run_id = %(run)s "
        "AND outcome = 'applied') + (SELECT coalesce(sum(rows), 0) "
        "FROM drorch_reconcile.applied_batches WHERE run_id = %(run)s)", {"run": run_id}
    ).fetchone()
    return int(row[0]) if row else 0


def _tally(conn: Conn, run_id: str, res: ApplyResult, before: dict[str, int],
           present: set[str]) -> None:
    """Fill ``res`` from the recorded outcomes (``outcomes``: the truth, also for
    changes decided by an earlier, killed run): per table, kind and outcome. ``before``:
    rows per outcome recorded before this call."""
    totals: dict[str, int] = {}
    with conn.transaction():
        conn.execute("SET LOCAL enable_nestloop = off")  # see store.outcomes_joined
        rows = conn.execute(_outcomes_query(conn, run_id), {"run": run_id}).fetchall()
    for table, kind, outcome, n, digest in rows:
        n = int(n)
        if outcome in ("error", "pending", "stale") and table not in present:
            res.unshown += n
            outcome = "unshown"
        res.outcomes.append({"table": table, "kind": kind, "outcome": outcome, "rows": n,
                             "digest": digest})
        totals[outcome] = totals.get(outcome, 0) + n
    for table, n, digest in store.bulk_sets(conn, run_id):
        res.outcomes.append({"table": table, "kind": "old-only", "outcome": "applied",
                             "rows": n, "digest": digest, "as_set": True})
        res.applied_as_set += n
    res.applied = totals.get("applied", 0) - before.get("applied", 0)
    res.already_applied = before.get("applied", 0) + totals.get("resolved-old", 0)
    res.rekeyed = totals.get("rekeyed", 0)
    res.kept_new = totals.get("kept-new", 0) + totals.get("resolved-new", 0)
    res.stale = totals.get("stale", 0)
    res.errors = totals.get("error", 0)
    res.manual_pending = totals.get("pending", 0)


def write_key_mapping(conn: Conn, run_id: str, path: str) -> int:
    """The old -> new key of every re-keyed row as CSV (table, key column, old key, new
    key, change id), for the business to act on; returns rows written."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two appliers of one run may write the file at once
    tmp = Path(f"{path}.{os.getpid()}.{threading.get_ident()}.tmp")
    n = 0
    with tmp.open("wb") as f, conn.cursor() as cur, cur.copy(sql.SQL(
            "COPY (SELECT m.tbl AS table, m.key_column, m.old_id AS old_key, "
            "m.new_id AS new_key, m.change_id FROM drorch_reconcile.rekeyed m "
            "JOIN drorch_reconcile.applied a USING (run_id, change_id) "
            "WHERE m.run_id = {} AND a.outcome = 'rekeyed' ORDER BY m.tbl, m.old_id) "
            "TO STDOUT WITH (FORMAT csv, HEADER)").format(sql.Literal(run_id))) as copy:
        for chunk in copy:
            f.write(chunk)
            n += bytes(chunk).count(b"\n")
    os.replace(tmp, path)
    return max(0, n - 1)


def _mapping_sample(conn: Conn, run_id: str, limit: int = 20) -> list[dict[str, Any]]:
    return [{"table": t, "column": c, "old": o, "new": n} for t, c, o, n in conn.execute(
        "SELECT m.tbl, m.key_column, m.old_id, m.new_id FROM drorch_reconcile.rekeyed m "
        "JOIN drorch_reconcile.applied a USING (run_id, change_id) WHERE m.run_id = %s "
        "AND a.outcome = 'rekeyed' ORDER BY m.tbl, m.old_id LIMIT %s", (run_id, limit))]


def apply_reconciliation(report: DivergenceReport | str, new_dsn: str, spec: ReconcileSpec, *,
                         batch_size: int = BATCH_ROWS,
                         conflict_file: str | None = None,
                         mapping_file: str | None = None) -> ApplyResult:
    """Apply every ``apply-old`` change of a captured run, insert every ``rekey`` one under
    a fresh key; record ``keep-new`` ones.

    Safe to rerun, also after a kill: nothing is applied twice, a re-keyed row keeps its
    first new key. Upserts go in the run's table order (listed tables first, as listed),
    deletes in reverse. Manual conflicts, collisions that cannot be re-keyed, stale
    changes and rows the new primary refused (with its error) go to ``conflict_file``
    (default ``spec.conflict_file``; rewritten on each run, resolutions kept); the old ->
    new keys to ``mapping_file`` (CSV; default beside the conflict file). ``res.outcomes``:
    rows per table, kind and outcome, with a digest of the change set (never one entry
    per row). Raises :class:`NotCaptured` when the run is not on this database.
    """
    run_id = report if isinstance(report, str) else report.run_id
    path = conflict_file or spec.conflict_file
    res = ApplyResult(run_id)
    with connect(new_dsn) as conn:
        captured = store.load_report(conn, run_id)
        if captured is None:
            raise NotCaptured(f"run {run_id} was never captured on this database")
        store.ensure_schema(conn)
        order = [t.table for t in captured.tables]
        sens = {t.table: set(t.sensitive) for t in captured.tables}
        metas = {t.table: as_captured(conn, run_id, m, t.new_only_columns)
                 for t in captured.tables if (m := load_table(conn, t.table)) is not None}
        before = {"applied": _count_applied(conn, run_id)}
        def keys() -> list[str]:  # under the run's lock: a second applier waits, then reuses
            with conn.transaction():
                _lock_run(conn, run_id)
                return assign_new_keys(conn, run_id, metas)

        moved = _retrying("assigning new keys", keys)
        parents = _rekeyed_parents(conn, run_id, metas)
        errors: dict[str, str] = {}
        order = _parents_first(order, metas)
        try:
            for deletes in (False, True):
                for name in (reversed(order) if deletes else order):
                    if name in metas:
                        _apply_table(conn, metas[name], run_id, deletes, batch_size,
                                     parents, errors)
                if not deletes:
                    _retry_held(conn, metas, order, run_id, parents, errors)
        except ApplyBlocked:  # rows already written must not meet their keys again
            advance_sequences(conn, list(metas.values()))
            raise
        errors.update({k: v for k, v in parents.blocked.items() if k not in errors})
        _keep_new(conn, run_id)
        res.sequences_advanced = sorted(set(moved) | set(
            advance_sequences(conn, list(metas.values()))))
        _tally(conn, run_id, res, before, set(metas))
        if res.rekeyed:
            res.mapping_file = mapping_file or _beside(path, run_id)
            write_key_mapping(conn, run_id, res.mapping_file)
            res.rekeyed_sample = _mapping_sample(conn, run_id)
        if path and (res.manual_pending or res.stale or res.errors):
            res.in_conflict_file = write_conflict_file(
                conn, run_id, [metas[n] for n in order if n in metas], sens, path,
                errors=errors)
            res.conflict_file = path
    return res


def _parents_first(order: list[str], metas: dict[str, TableMeta]) -> list[str]:
    """``order`` with every table after the tables its foreign keys name (stable; a cycle
    or a self-reference keeps the given order)."""
    out: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name in path:
            return
        meta = metas.get(name)
        for _col, parent in meta.references if meta else ():
            if parent in order and parent != name:
                visit(parent, (*path, name))
        if name not in seen:
            seen.add(name)
            out.append(name)

    for name in order:
        visit(name, ())
    return out


def _beside(conflict_file: str | None, run_id: str) -> str:
    """``<conflict file's stem>.rekeyed.csv``; without a conflict file, the working
    directory's ``rekeyed-<database>.csv``."""
    if conflict_file:
        p = Path(conflict_file)
        return str(p.with_name(p.stem + ".rekeyed.csv"))
    return f"rekeyed-{run_id.split('@', 1)[0]}.csv"


def _reason(ch: store.StoredChange, error: str | None = None) -> str:
    if error is not None and error.startswith(_HELD):
        return (f"not written: {error[len(_HELD):]}; resolve that row first, then choose "
                "'old' here (or 'new' to keep the new primary's) and apply this file")
    if error is not None:
        return (f"the new primary refused the old primary's row ({error}); fix the cause "
                "(or choose 'new' to keep the new primary's), then apply this file")
    if ch.kind == "collision":
        return ("both primaries inserted this key after the split: these are two different "
                "rows, and this table's are not re-keyed automatically (its key is not one "
                "column fed by a sequence, or the runbook sets collisions: manual). 'old' "
                "replaces the new primary's row with the old one, 'new' keeps the new "
                "primary's; to keep both, insert the old row under a new key yourself, "
                "then choose 'new'")
    if ch.kind == "unkeyed":
        return ("table without primary key: this row is on the old primary only; "
                "'old' inserts it on the new primary")
    if ch.outcome == "stale":
        return "the new primary changed this row after it was captured"
    if ch.undetermined:
        return "could not tell which side changed it (WAL not available)"
    if ch.kind == "conflict" and ch.action == "manual" and ch.new_op == "insert":
        return ("both primaries changed it, and the row did not exist at the split on "
                "both sides: no policy chooses between them")
    return "both primaries changed it; the table's policy is manual"


def _carried(carry: str | None) -> str:
    moved = json.loads(carry) if carry else {}
    if not moved:
        return ""
    cols = ", ".join(f"{c} = {v}" for c, v in sorted(moved.items()))
    return (f" (its {cols}: the old primary's parent row was inserted under that new key; "
            "shown and applied with it)")


def _conflict_rows(conn: Conn, run_id: str, meta: TableMeta) -> Iterator[tuple[Any, ...]]:
    """The table's changes for a human, with both rows, streamed from a server cursor."""
    new_row = compared = sql.SQL("NULL::text")
    join = sql.SQL("")
    if meta.pk:
        new_row = sql.SQL("to_jsonb(t.*)::text")
        compared = sql.SQL("(to_jsonb(t.*) - %(hidden)s::text[])::text")
        join = sql.SQL("LEFT JOIN {tbl} t ON {m}").format(
            tbl=meta.ident, m=sql.SQL(" AND ").join(
                sql.SQL("t.{c} = (jsonb_populate_record(NULL::{tbl}, c.key)).{c}").format(
                    c=sql.Identifier(c), tbl=meta.ident) for c in meta.pk))
    q = sql.SQL(
        "SELECT c.change_id, c.key::text, c.kind, c.action, c.columns, c.old_op, c.new_op, "
        "c.undetermined, a.outcome, (c.old_row || k.carry)::text, {new_row}, k.carry::text, "
        "{compared} "
        "FROM drorch_reconcile.changes c CROSS JOIN {carry} CROSS JOIN LATERAL "
        f"(SELECT {store.outcome_of()} AS outcome OFFSET 0) a "
        "{join} WHERE c.run_id = %(run)s AND c.tbl = %(tbl)s "
        "AND c.action <> 'keep-new' AND (a.outcome IS NULL OR a.outcome = 'stale') "
        "ORDER BY c.seq").format(new_row=new_row, compared=compared, join=join, carry=_CARRY)
    with conn.transaction(), conn.cursor(name="drorch_conflicts") as cur:
        cur.itersize = 2000
        cur.execute(q, {"run": run_id, "tbl": meta.name, "hidden": list(meta.hidden),
                        **_ref_params(meta)})
        yield from cur


def write_conflict_file(conn: Conn, run_id: str, metas: list[TableMeta],
                        sens: dict[str, set[str]], path: str,
                        reset: frozenset[str] = frozenset(),
                        errors: dict[str, str] | None = None) -> int:
    """The human-facing file for every pending change of the run (manual, stale, refused):
    both rows, sensitive values masked, one entry per line. ``errors``: change id -> the
    database's error for rows the new primary refused. Returns entries written."""
    database = str(conn.execute("SELECT current_database()").fetchone()[0])  # type: ignore[index]

    def entries() -> Iterator[dict[str, Any]]:
        for meta in metas:
            s = sens.get(meta.name, set())
            for (cid, key, kind, action, columns, old_op, new_op, undetermined, outcome,
                 old_text, new_text, carry, compared) in _conflict_rows(conn, run_id, meta):
                ch = store.StoredChange(cid, meta.name, json.loads(key), kind, action,
                                        list(columns), old_op, new_op, bool(undetermined),
                                        old_text is None, new_text, outcome)
                yield {"change_id": cid, "table": meta.name,
                       "key": {c: ("***" if c in s else v) for c, v in ch.key.items()},
                       "kind": kind,
                       "reason": _reason(ch, (errors or {}).get(cid)) + _carried(carry),
                       "columns": ch.columns, "old_op": old_op, "new_op": new_op,
                       "old": mask(parse_row(old_text) if old_text else None, s),
                       "new": mask(parse_row(new_text) if new_text else None, s),
                       # over the compared columns: a column added on the new primary
                       # (its value is never written) does not make a choice stale
                       "new_fingerprint": fingerprint(compared), "resolution": None}

    return conflicts.write_stream(path, run_id, database, entries(), reset)
