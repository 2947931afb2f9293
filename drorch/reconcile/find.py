"""Find every divergent write, classify it, capture it on the new primary.

Order of work, each an early return or a stop:

1. The old primary must be fenced (a writable one is an alarm, not a warning),
   belong to the same cluster (system identifier) and sit on the timeline the
   split left. A run already captured is returned as stored: after apply has
   begun, the new primary's own WAL holds drorch's writes and a recount would
   be wrong.
2. ``wal`` method: each node's WAL from the split names the keys it touched
   (exact). ``auto`` falls back to ``full`` when either node's WAL cannot answer,
   and the report says why.
3. ``full`` method: a sorted COPY diff of each table gives the keys that differ;
   which side changed them comes from any WAL side that could be read, else
   from commit timestamps against the divergence time (a clock heuristic; what
   stays unknown becomes a conflict).
4. Rows of every differing key are read on both nodes, classified (old-only,
   new-only, conflict), decided by the table's policy, and captured with the
   report in one transaction on the new primary.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from drorch.reconcile import bulk, store, walread
from drorch.reconcile._db import Conn, connect, open_conn, scalar
from drorch.reconcile.catalog import (
    TableMeta,
    db_info,
    load_table,
    partition_leaves,
    partition_root,
    user_tables,
)
from drorch.reconcile.classify import (
    attribute,
    change_ids,
    classify,
    decide,
    differing_columns,
    key_from_array,
    key_values,
    parse_row,
    side_op,
)
from drorch.reconcile.config import ReconcileSpec, ReconcileTable, masked_columns
from drorch.reconcile.fence import FenceError, verify_fenced, verify_locked_out, wait_replay_idle
from drorch.reconcile.fullcompare import compare_table
from drorch.reconcile.model import Change, Divergence, DivergenceReport, TableReport
from drorch.reconcile.tidfetch import number_array
from drorch.reconcile.unkeyed import unkeyed_table
from drorch.reconcile.walchanges import Touch
from drorch.reconcile.walread import SideTable, WalSide, WalUnavailable, read_side

T = TypeVar("T")


class ReconcileError(RuntimeError):
    """Reconciliation cannot proceed safely; the message says what a human must check."""


def run_id_for(database: str, divergence: Divergence) -> str:
    return f"{database}@{divergence.timeline}:{divergence.lsn}"


def _rows_by_key(conn: Conn, meta: TableMeta, keys: list[str], with_ts: bool,
                 known: dict[str, str] | None) -> tuple[dict[str, tuple[str, datetime | None]],
                                                       int]:
    """Rows (``to_jsonb`` text and commit time) of the given keys, by canonical key, and
    how many rows were read here (shipped to drorch).

    ``keys``: each key's values as a JSON array (canonical keys are). ``known``: rows this
    node already gave by TID (live, so current): not asked again. The server builds the
    key records and renders each row's key apart (``jsonb_build_array``), so drorch
    neither encodes nor parses a row per key."""
    out: dict[str, tuple[str, datetime | None]] = {}
    if known and not with_ts:
        out = {k: (v, None) for k, v in known.items()}
        keys = [k for k in keys if k not in out]
    if not keys:
        return out, 0
    shipped = 0
    t_cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in meta.pk)
    ts = sql.SQL("pg_xact_commit_timestamp(t.xmin)" if with_ts else "NULL::timestamptz")
    ints = _int_key_array(meta, keys)
    if ints is not None:  # one integer column: one index scan over a plain array
        q = sql.SQL("SELECT jsonb_build_array({t})::text, (to_jsonb(t.*) - %s::text[])::text, "
                    "{ts} FROM {tbl} AS t WHERE {t} = ANY(%s::bigint[])").format(
            ts=ts, tbl=meta.ident, t=t_cols)
        arg = ints
    else:
        k_cols = sql.SQL(", ").join(sql.SQL("k.{}").format(sql.Identifier(c)) for c in meta.pk)
        fields = sql.SQL(", ").join(sql.SQL("{}, a.v -> {}").format(sql.Literal(c),
                                                                    sql.Literal(i))
                                    for i, c in enumerate(meta.pk))
        q = sql.SQL("SELECT jsonb_build_array({t})::text, (to_jsonb(t.*) - %s::text[])::text, "
                    "{ts} FROM {tbl} AS t JOIN jsonb_populate_recordset(NULL::{tbl}, "
                    "(SELECT jsonb_agg(jsonb_build_object({fields})) "
                    "FROM jsonb_array_elements(%s::jsonb) AS a(v))) AS k ON ({t}) = ({k})"
                    ).format(ts=ts, tbl=meta.ident, t=t_cols, k=k_cols, fields=fields)
        arg = "[" + ",".join(keys) + "]"
    with conn.transaction():
        conn.execute("SET LOCAL enable_hashjoin = off")
        conn.execute("SET LOCAL enable_mergejoin = off")
        for key_text, text, at in conn.execute(q, (list(meta.hidden), arg)).fetchall():
            out[key_from_array(key_text)] = (text, at)
            shipped += 1
    return out, shipped


_INT_KEYS = re.compile(r"\[-?[0-9]+\](?:,\[-?[0-9]+\])*")


def _int_key_array(meta: TableMeta, keys: list[str]) -> str | None:
    """The keys as a ``bigint[]`` literal when the key is one integer column (canonical
    keys are then ``[123]``: checked by one match over them all), else None. The server
    parses the plain array far faster than a JSON document of key records."""
    if not meta.int_key:
        return None
    joined = ",".join(keys)
    if not _INT_KEYS.fullmatch(joined):
        return None
    return "{" + joined.replace("[", "").replace("]", "") + "}"


def _both(on_old: Callable[[], T], on_new: Callable[[], T]) -> tuple[T, T]:
    """Run the old node's and the new node's half at once: separate servers and
    connections, and each half mostly waits on its server."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(on_old), pool.submit(on_new)
        return a.result(), b.result()


def _key_above(key: str, split_max: int) -> bool:
    """A canonical one-column integer key (``[123]``) above ``split_max``."""
    try:
        return int(key[1:-1]) > split_max
    except ValueError:
        return False


def _key_dict(meta: TableMeta, key: str) -> dict[str, Any]:
    """The key as column -> value. A one-column integer key (the usual case, once per
    divergent row) is read without the general parser: a canonical key is compact JSON,
    so ``[123]`` holds nothing ``int`` could read differently."""
    if len(meta.pk) == 1:
        try:
            return {meta.pk[0]: int(key[1:-1])}
        except ValueError:
            pass
    return dict(zip(meta.pk, key_values(key), strict=True))


def _base(a: Any, b: Any, ot: bool | None, nt: bool | None, obase: bool | None,
          nbase: bool | None) -> bool | None:
    """Did the key exist at the split? An untouched side still shows it."""
    if nt is False:
        return b is not None
    if ot is False:
        return a is not None
    return obase if obase is not None else nbase


def _classify_table(old: Conn, new: Conn, metas: tuple[TableMeta, TableMeta],
                    cfg: ReconcileTable, run_id: str,
                    wal_old: SideTable | None, wal_new: SideTable | None,
                    lookup: list[str], keys: set[str] | None, at: datetime | None,
                    report: DivergenceReport, emit: Emit | None = None,
                    split_max: int | None = None,
                    new_rows: tuple[Rows, list[str]] | None = None) -> TableReport:
    """Read both rows of every key in ``lookup``, classify, decide.

    ``metas``: the old and the new node's table (the new one may hide columns it alone
    has: rows are compared on the columns both share). ``keys``: the canonical keys to
    judge (WAL method: every touched key); None means every key found on either side
    (full method: the diff's keys). ``new_rows``: the new primary's rows read before its
    WAL end was fixed (a key missing there had no row) and the keys to read now instead
    of ``lookup``."""
    meta, new_meta = metas
    with_ts = (wal_old is None or wal_new is None) and at is not None \
        and report.commit_timestamps
    # rows read by TID answer the WAL method's lookups; the full method judges only its
    # diff. The new node's whole rows cannot stand for rows without its hidden columns.
    a_known = wal_old.rows if wal_old is not None and keys is not None else None
    b_known = wal_new.rows if wal_new is not None and keys is not None \
        and not new_meta.hidden else None
    b_lookup = new_rows[1] if new_rows is not None else lookup
    (a_rows, a_shipped), (b_rows, b_shipped) = _both(
        lambda: _rows_by_key(old, meta, lookup, with_ts, a_known),
        lambda: _rows_by_key(new, new_meta, b_lookup, with_ts, b_known))
    if new_rows is not None:
        b_rows = {**new_rows[0], **b_rows}
    report.rows_shipped += a_shipped + b_shipped
    tr = TableReport(cfg.name, meta.pk, cfg.policy, masked_columns(cfg.sensitive_columns,
                                                               new_meta.columns + meta.columns),
                     new_only_columns=list(new_meta.hidden))
    if wal_old is not None:
        tr.old_touched, tr.old_transactions = len(wal_old.touched), len(wal_old.transactions)
    if wal_new is not None:
        tr.new_touched, tr.new_transactions = len(wal_new.touched), len(wal_new.transactions)
    _judge(tr, meta, cfg, run_id, (wal_old, wal_new), (a_rows, b_rows), keys, at, emit,
           split_max if meta.int_key else None)
    return tr


Rows = dict[str, tuple[str, datetime | None]]
_PRESENT = object()
"""Stands for a row whose values are not needed (only that it exists)."""
Emit = Callable[[str, list[Change]], None]
"""Receives a table's changes as they are found (the capture), in report order."""
EMIT_EVERY = 5_000


def _judge(tr: TableReport, meta: TableMeta, cfg: ReconcileTable, run_id: str,
           wal: tuple[SideTable | None, SideTable | None], rows: tuple[Rows, Rows],
           keys: set[str] | None, at: datetime | None, emit: Emit | None = None,
           split_max: int | None = None) -> None:
    """Classify and decide every key (``keys``; None: every key with a row on either side)
    into ``tr``, handing every ``EMIT_EVERY`` new changes to ``emit``. Runs once per
    divergent key, so it does only what the key needs: rows with the same text are the
    same row and are never parsed."""
    wal_old, wal_new = wal
    a_rows, b_rows = rows
    rekey = cfg.collisions == "rekey" and meta.key_sequence is not None
    iso = _iso_cached()
    cid = change_ids(run_id, cfg.name)
    sent = len(tr.changes)
    # A row only the old side has differs in all its columns: those of the old table (the
    # fenced node's catalog cannot change), checked against the first such row parsed
    # (None: not checked yet; empty: they differed, every row is parsed).
    old_columns: list[str] | None = None
    for key in sorted(keys if keys is not None else set(a_rows) | set(b_rows)):
        a_ent, b_ent = a_rows.get(key), b_rows.get(key)
        o_touch = wal_old.touched.get(key) if wal_old is not None else None
        n_touch = wal_new.touched.get(key) if wal_new is not None else None
        a_text = a_ent[0] if a_ent else None
        b_text = b_ent[0] if b_ent else None
        if a_text == b_text:  # the same text parses to the same row: nothing diverged
            if o_touch is not None and n_touch is not None:
                tr.converged += 1
            continue
        if b_text is None and old_columns and o_touch is not None \
                and o_touch.base_had is False and n_touch is None and wal_new is not None:
            # the bulk case (a row the old side inserted, the new side never touched): what
            # attribute, _base, classify, decide and side_op conclude, without asking them
            tr.changes.append(Change(
                cid(key), cfg.name, _key_dict(meta, key), "old-only", "apply-old",
                list(old_columns), "insert", None, False, a_text, None,
                iso(wal_old.last_commit.get(key)) if wal_old is not None else None))
            if emit is not None and len(tr.changes) - sent >= EMIT_EVERY:
                emit(tr.table, tr.changes[sent:])
                sent = len(tr.changes)
            continue
        if b_text is None and old_columns:
            a: Any = _PRESENT  # its columns are known; only its presence is judged below
        else:
            a = parse_row(a_text) if a_text is not None else None
            if b_text is None and old_columns is None:
                old_columns = sorted(a) if sorted(a) == sorted(meta.columns) else []
        b = parse_row(b_text) if b_text is not None else None
        ot = (o_touch is not None) if wal_old is not None else _after(a_ent, at)
        nt = (n_touch is not None) if wal_new is not None else _after(b_ent, at)
        obase = o_touch.base_had if o_touch else None
        nbase = n_touch.base_had if n_touch else None
        if split_max is not None and obase is None and nbase is None \
                and _key_above(key, split_max):
            # absent at the split on both: a side that has the row inserted it, a side
            # without it has (net) not touched it: exact, whatever the clocks say
            obase = nbase = False
            ot, nt = a is not None, b is not None
        ot, nt = attribute(a, b, ot, nt, obase, nbase)
        base = _base(a, b, ot, nt, obase, nbase)
        kind, undetermined = classify(a, b, ot, nt, base)
        if kind is None:
            if o_touch is not None and n_touch is not None:
                tr.converged += 1
            continue
        tr.changes.append(Change(
            cid(key), cfg.name, _key_dict(meta, key), kind,
            decide(kind, cfg.policy, undetermined, base, rekey=rekey),
            list(old_columns) if a is _PRESENT else differing_columns(a, b),
            side_op(base, a) if ot is not False else None,
            side_op(base, b) if nt is not False else None, undetermined, a_text, b_text,
            iso(wal_old.last_commit.get(key)) if wal_old is not None and ot else None))
        if emit is not None and len(tr.changes) - sent >= EMIT_EVERY:
            emit(tr.table, tr.changes[sent:])
            sent = len(tr.changes)
    if emit is not None and len(tr.changes) > sent:
        emit(tr.table, tr.changes[sent:])


def _iso_cached() -> Callable[[datetime | None], str | None]:
    """``_iso`` remembered per moment: a side's keys share few commit times (one per
    transaction), and formatting one per key was a visible cost."""
    seen: dict[datetime, str] = {}

    def iso(at: datetime | None) -> str | None:
        if at is None:
            return None
        text = seen.get(at)
        if text is None:
            text = seen[at] = at.isoformat()
        return text
    return iso


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def split_in_time(report: DivergenceReport, commit_times: dict[int, datetime],
                  promoted_at: datetime) -> dict[str, Any]:
    """The old side's divergent writes before and after the failover's promotion.

    ``commit_times``: the old primary's commits after the split that wrote the
    reconciled tables (its clock), by top-level xid;
    ``promoted_at``: when the failover's promotion was requested (drorch's clock: skew
    between the two shows as writes on the wrong side of the line, so the window is
    reported too). Rows are keys whose last old-side change committed then."""
    def block(times: list[datetime], rows: int) -> dict[str, Any]:
        return {"transactions": len(times), "rows": rows,
                "first": _iso(min(times)) if times else None,
                "last": _iso(max(times)) if times else None}

    rows = {"before": 0, "after": 0, "unknown": 0}
    for t in report.tables:
        for xid, n in t.bulk_commits.items():
            at = commit_times.get(xid)
            rows["unknown" if at is None else "before" if at <= promoted_at else "after"] += n
        for c in t.changes:
            if c.old_op is None:
                continue
            if c.old_committed_at is None:
                rows["unknown"] += 1
            else:
                at = datetime.fromisoformat(c.old_committed_at)
                rows["before" if at <= promoted_at else "after"] += 1
    before = [at for at in commit_times.values() if at <= promoted_at]
    after = [at for at in commit_times.values() if at > promoted_at]
    return {"promoted_at": _iso(promoted_at), "before": block(before, rows["before"]),
            "after": block(after, rows["after"]), "rows_unknown": rows["unknown"]}


def _after(entry: tuple[str, datetime | None] | None, at: datetime | None) -> bool | None:
    """Commit-time heuristic: was this row written after the split? None if unknowable."""
    if entry is None or at is None or entry[1] is None:
        return None  # no row, no split time, or no commit time kept for it: unknown
    return entry[1] > at


def effective_tables(old: Conn, new: Conn, spec: ReconcileSpec) -> list[ReconcileTable]:
    """The listed tables in their order, then every other table found on either node, by
    name, with the spec's default policy: a table nobody listed still holds acknowledged
    writes."""
    found = user_tables(old) | user_tables(new)
    # A listed partition is reconciled on its own; its partitioned table then stands for
    # its other partitions only (each with the table's policy), never for all of them
    # again: a key would be counted, and applied, twice.
    split_roots: set[str] = set()
    for t in spec.tables:
        root = partition_root(new, t.name) or partition_root(old, t.name)
        if root is not None:
            split_roots.add(root)
    out = [t for t in spec.tables if t.name not in split_roots]
    for root in sorted(split_roots):
        cfg = spec.table(root)
        leaves = partition_leaves(new, root) | partition_leaves(old, root)
        out += [cfg.model_copy(update={"name": leaf}) for leaf in sorted(leaves)
                if not spec.listed(leaf)]
    return out + [spec.unlisted(n) for n in sorted(found)
                  if not spec.listed(n) and n not in split_roots]


def _load_metas(old: Conn, new: Conn, tables: list[ReconcileTable], problems: list[str]
                ) -> dict[str, tuple[TableMeta, TableMeta]]:
    """Both nodes' metadata per table that can be compared. A column only the new primary
    has (added after the split) is left out of the comparison (the new node's meta hides
    it); anything else that differs blocks the table, named in ``problems``."""
    out = {}
    for t in tables:
        mo, mn = load_table(old, t.name), load_table(new, t.name)
        if mo is not None and mn is None:
            problems.append(f"{t.name}: on the old primary only (dropped or renamed on the "
                            "new one?); its rows are not compared")
            continue
        if mo is None or mn is None:
            continue  # created on the new primary only: the old one wrote nothing there
        only_old = [c for c in mo.columns if c not in mn.columns]
        only_new = [c for c in mn.columns if c not in mo.columns]
        if mo.pk != mn.pk:
            problems.append(f"{t.name}: primary keys differ between nodes ({mo.pk} / "
                            f"{mn.pk}); not compared")
        elif only_old:
            problems.append(
                f"{t.name}: column(s) {', '.join(only_old)} exist on the old primary only "
                "(added there, or dropped on the new primary, after the split): their values "
                "cannot be applied. Add them on the new primary (ALTER TABLE ... ADD COLUMN), "
                "then run the failback again")
        elif only_new and not mo.pk:
            problems.append(f"{t.name}: no primary key, and column(s) {', '.join(only_new)} "
                            "exist on the new primary only: rows cannot be matched")
        else:
            out[t.name] = (mo, mn.without(only_new))
    return out


def _read_wal(old: Conn, old_dsn: str, new: Conn, divergence: Divergence, old_end: str,
              metas: dict[str, tuple[TableMeta, TableMeta]], dboids: tuple[int, int],
              why: list[str], bulk_tables: frozenset[str],
              before_new_end: Callable[[WalSide | None], None]
              ) -> tuple[WalSide | None, WalSide | None, str]:
    """Both nodes' WAL from the split, and the new primary's WAL end used.

    The old side first; then ``before_new_end`` reads what the new primary holds for the
    keys the old side changed; only then is the new primary's end fixed and its WAL read.
    A key the application changes there after that read is in that WAL (touched), never
    judged on a row the new primary no longer has."""
    def side(name: str, read: Callable[[], WalSide]) -> WalSide | None:
        try:
            return read()
        except WalUnavailable as e:
            why.append(f"{name}'s WAL: {e}")
            return None

    with _spare_connection(old_dsn) as helper:
        wal_old = side("old primary", lambda: read_side(
            old, divergence.lsn, old_end, {n: m[0] for n, m in metas.items()}, dboids[0],
            lookback=True, max_tli=divergence.parent_timeline, bulk_tables=bulk_tables,
            helper=helper))
    before_new_end(wal_old)
    new_end = flushed_now(new)
    wal_new = side("new primary", lambda: read_side(
        new, divergence.lsn, new_end, {n: m[1] for n, m in metas.items()}, dboids[1],
        lookback=False, max_tli=None))
    return wal_old, wal_new, new_end


def flushed_now(conn: Conn) -> str:
    """A flushed LSN at or after every commit record written so far
    (``pg_get_wal_records_info`` reads flushed WAL only; a commit already visible may not
    be flushed yet under ``synchronous_commit = off``). An empty transaction that takes
    an xid commits with a local flush: WAL is flushed in order, so everything before its
    commit record is flushed too (PostgreSQL 15, "WAL Configuration")."""
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = local")
        conn.execute("SELECT txid_current()")
    return str(scalar(conn, "SELECT pg_current_wal_flush_lsn()::text"))


def _other_tables(conn: Conn, side: WalSide | None) -> list[str]:
    """Tables the old primary's WAL shows written after the split that were not compared
    (missing on one node, or their columns differ): their writes are not accounted for."""
    names = set()
    for rel in side.other_rels if side else {}:
        spc, _db, filenode = rel.split("/")
        row = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE c.oid = pg_filenode_relation(%s, %s) "
            "AND c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE "
            "d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')",
            (0 if spc == _default_spc(conn) else int(spc), int(filenode))).fetchone()
        if row and row[0] not in ("pg_catalog", "pg_toast", "information_schema",
                                  "drorch_reconcile"):
            names.add(f"{row[0]}.{row[1]}")
    return sorted(names)


def _vanished(conn: Conn, side: WalSide) -> list[tuple[str, int]]:
    """Relation files of this database that took committed row changes after the split,
    existed at the split (not created since) and belong to no relation now: a table the
    old primary dropped. (A table it truncated or rewrote keeps a relation, and its
    changes stop the WAL method; temporary tables write no WAL.)"""
    out = []
    for rel, n in sorted(side.other_rels.items()):
        spc, _db, filenode = rel.split("/")
        if int(filenode) in side.created_filenodes:
            continue  # created after the split and dropped again: it held nothing at the split
        oid = scalar(conn, "SELECT pg_filenode_relation(%s, %s)",
                     (0 if spc == _default_spc(conn) else int(spc), int(filenode)))
        if oid is None:
            out.append((rel, n))
    return out


def _default_spc(conn: Conn) -> str:
    return str(scalar(conn, "SELECT dattablespace FROM pg_database "
                            "WHERE datname = current_database()"))


def find_divergence(old_dsn: str, new_dsn: str, spec: ReconcileSpec, divergence: Divergence,
                    *, capture: bool = True,
                    promoted_at: datetime | None = None,
                    locked_out_roles: list[str] | None = None,
                    split_max_keys: dict[str, int] | None = None) -> DivergenceReport:
    """Every divergent write of ``spec``'s tables, classified; captured on the new primary.

    Idempotent: a run already captured is returned as stored. ``capture=False``
    only reports (benchmarks, dry runs). ``promoted_at``: when the failover's promotion
    was requested, to split the old side's writes in time (``report.in_time``).
    ``locked_out_roles``: the old primary is a primary fenced by locking these application
    roles out (RDS, where it cannot be made a standby: :func:`verify_locked_out`), not a
    standby with no upstream. ``split_max_keys``: each one-integer-key table's largest key
    at the split (``schema.table`` -> key), read on the replica before an unplanned
    promotion: where a side's WAL cannot be read, a key above it did not exist at the
    split, so a row one side has and the other lacks is that side's insert. Raises
    :class:`FenceError` when the old primary is not fenced, :class:`ReconcileError` when
    the nodes do not belong together, :class:`WalUnavailable` when ``method='wal'`` and the WAL
    cannot answer. Read-only on the old primary.
    """
    t0 = time.monotonic()
    fence = verify_fenced(old_dsn) if locked_out_roles is None else \
        verify_locked_out(old_dsn, locked_out_roles)
    if not fence.fenced or fence.state not in ("fenced", "locked-out"):
        raise FenceError(f"old primary not fenced ({fence.state}): {fence.reason}")
    with connect(old_dsn) as old, connect(new_dsn) as new, \
            _meanwhile(lambda: _store_ready(new_dsn) if capture else None) as store_ready:
        oi, ni = db_info(old), db_info(new)
        if oi.system_identifier != ni.system_identifier:
            raise ReconcileError("the two nodes are different clusters (system identifiers "
                                 f"{oi.system_identifier} and {ni.system_identifier})")
        run_id = run_id_for(ni.name, divergence)
        if capture:
            stored = store.load_report(new, run_id)
            if stored is not None:
                return stored
        old_tli = int(scalar(old, "SELECT timeline_id FROM pg_control_checkpoint()"))
        if old_tli != divergence.parent_timeline:
            raise ReconcileError(f"old primary is on timeline {old_tli}, the split left "
                                 f"timeline {divergence.parent_timeline}")
        old_end = wait_replay_idle(old) if fence.state == "fenced" else \
            str(scalar(old, "SELECT pg_current_wal_flush_lsn()::text"))
        report = DivergenceReport(run_id, ni.name, spec.method, "", divergence,
                                  old_end_lsn=old_end)
        tables = effective_tables(old, new, spec)
        report.unlisted_tables = [t.name for t in tables if not spec.listed(t.name)]
        report.default_policy = spec.default_policy
        metas = _load_metas(old, new, tables, report.problems)
        why: list[str] = []
        sets = frozenset(n for n, (mo, mn) in metas.items()
                         if capture and spec.method != "full" and mo.pk
                         and bulk.ineligible(old, new, mo, mn) is None)
        pre: dict[str, PreRead] = {}

        def before_new_end(wal_old: WalSide | None) -> None:
            for name, (_mo, mn) in metas.items():
                st = wal_old.tables.get(name) if wal_old is not None else None
                if st is not None and mn.pk:
                    pre[name] = _pre_read(new, mn, st, name in sets)

        wal_old, wal_new, new_end = _read_wal(old, old_dsn, new, divergence, old_end, metas,
                                              (oi.oid, ni.oid), why, sets, before_new_end)
        report.new_end_lsn = new_end
        if spec.method == "wal" and why:
            raise WalUnavailable("; ".join(why))
        if spec.method == "full":
            report.method, report.method_reason = "full", "method 'full' configured"
            if why:
                report.method_reason += "; WAL not usable to tell sides apart: " + "; ".join(why)
        elif why:
            report.method = "full"
            report.method_reason = "fell back to a full comparison: " + "; ".join(why)
        else:
            report.method = "wal"
            report.method_reason = "both nodes' WAL from the split was read"
        at = datetime.fromisoformat(divergence.at) if divergence.at else None
        off = [name for name, conn in (("old", old), ("new", new))
               if str(scalar(conn, "SELECT current_setting('track_commit_timestamp')")) != "on"]
        if off and (wal_old is None or wal_new is None):
            report.commit_timestamps = False
            report.notes.append(
                f"track_commit_timestamp is off on the {' and '.join(off)} primary: which "
                "side changed a row that existed at the split cannot be told by commit "
                "time; such rows go to a human (rows inserted after the split are told "
                "apart by the split's largest keys). Turn it on (a parameter group setting "
                "on RDS and Aurora) before the next incident")
        report.attribution = {
            side: ("wal" if w is not None else "commit-ts"
                   if at is not None and report.commit_timestamps else "none")
            for side, w in (("old", wal_old), ("new", wal_new))}
        for w in (wal_old, wal_new):
            report.rows_shipped += w.rows_shipped if w else 0
        store_ready.result()
        with _capturing(new_dsn, run_id, capture) as cap:
            old_xids = _find_tables(old, new, tables, metas, report, (wal_old, wal_new), at,
                                    cap, split_max_keys or {}, pre, ni.oid)
            _conclude(old, report, wal_old, wal_new, old_xids, promoted_at)
            report.seconds = time.monotonic() - t0
            if cap is not None and not blocked(report):
                cap.finish(report)  # a blocked run is not kept: a retry finds afresh
    return report


@contextmanager
def _spare_connection(dsn: str) -> Iterator[Conn | None]:
    """A second connection to a node, to read with two at once; None when the node will
    not give one (its connection limit reached): then one connection reads it all."""
    try:
        conn = open_conn(dsn)
    except psycopg.Error:
        yield None
        return
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _meanwhile(work: Callable[[], None]) -> Iterator[Future[None]]:
    """``work`` on a thread of its own while the block runs (waited for at its end)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(work)


def _store_ready(new_dsn: str) -> None:
    """The capture's tables on the new primary, made while the WAL is read (creating
    them took ~40 ms of a 100,000-row reconcile)."""
    with connect(new_dsn) as conn:
        store.ensure_schema(conn)


@contextmanager
def _capturing(new_dsn: str, run_id: str, capture: bool) -> Iterator[store.Capture | None]:
    """The run's capture on a connection of its own (the new node's other connection
    keeps reading rows while the changes already found are written); None when not
    capturing or already captured."""
    if not capture:
        yield None
        return
    with connect(new_dsn) as conn, store.capturing(conn, run_id) as cap:
        yield cap


def _find_tables(old: Conn, new: Conn, tables: list[ReconcileTable],
                 metas: dict[str, tuple[TableMeta, TableMeta]], report: DivergenceReport,
                 wal: tuple[WalSide | None, WalSide | None], at: datetime | None,
                 cap: store.Capture | None, split_max_keys: dict[str, int],
                 pre: dict[str, PreRead], new_dboid: int) -> set[int]:
    """Every table's changes into ``report`` (and to the capture as found, in report
    order); the old side's transactions that touched them."""
    wal_old, wal_new = wal
    emit = cap.add if cap is not None else None
    run_id = report.run_id
    old_xids: set[int] = set()
    for cfg in tables:
        if cfg.name not in metas:
            continue
        mo, mn = metas[cfg.name]
        so = wal_old.tables.get(cfg.name) if wal_old else None
        sn = wal_new.tables.get(cfg.name) if wal_new else None
        if not mo.pk:
            entry, utr = unkeyed_table(old, new, cfg, mo, run_id, report, wal_old, wal_new)
            report.tables_without_pk.append(entry)
            report.tables.append(utr)
            if emit is not None and utr.changes:
                emit(utr.table, utr.changes)
            continue
        if report.method == "wal":
            assert so is not None and sn is not None
            p = pre[cfg.name]
            as_set, per_xid = _apply_as_set(old, cap, (mo, mn), so, sn, report, p)
            old_touched = len(so.touched) + as_set
            changed, changed_xid = _apply_changes_as_set(
                old, new, cap, (mo, mn), (so, sn), report, p,
                lambda mn=mn: _touched_since(new, report.new_end_lsn or "", mn, new_dboid))
            keys = set(so.touched) | set(sn.touched)
            lookup = list(keys)
            # the new primary's rows as read before its WAL end (a key it changed since is
            # touched there and read afresh, as is every key only it changed)
            now = [k for k in keys if k in sn.touched or (k not in p.rows and k not in p.absent)]
            tr = _classify_table(old, new, (mo, mn), cfg, run_id, so, sn, lookup, keys, at,
                                 report, emit, new_rows=(
                                     {k: v for k, v in p.rows.items() if k not in sn.touched},
                                     now))
            tr.bulk_applied = as_set + changed
            tr.bulk_commits = dict(Counter(per_xid) + Counter(changed_xid))
            tr.old_touched = old_touched
        else:
            if so is not None and so.bulk is not None:
                # the old side's WAL still says which keys it changed: its inserts set
                # aside for a set path that the new side's WAL cannot support go back
                walread.demote(old, mo, so, so.bulk.all_keys())
            diff = compare_table(old, new, mo, mn.columns if mn.hidden else None)
            report.rows_shipped += diff.rows_shipped
            lookup = [json.dumps([kd[c] for c in mo.pk], default=str) for kd in diff.keys]
            tr = _classify_table(old, new, (mo, mn), cfg, run_id, so, sn, lookup, None,
                                 at, report, emit, split_max_keys.get(cfg.name))
        if mn.hidden:
            report.notes.append(
                f"{cfg.name}: column(s) {', '.join(mn.hidden)} exist on the new primary "
                "only (added after the split): compared on the columns both share; the "
                "old primary's rows take their default")
        old_xids |= so.transactions if so else set()
        report.tables.append(tr)
    return old_xids


@dataclass
class PreRead:
    """What the new primary held, before its WAL end was fixed, for keys the old side
    changed: rows (canonical key -> ``to_jsonb`` text), keys it had no row for, bulk
    candidates it had (collisions) and, for update/delete set candidates, each row's
    ``xmin`` (the version the set may overwrite)."""

    rows: Rows = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)
    present: set[int] = field(default_factory=set)
    xmin: dict[int, int] = field(default_factory=dict)
    lane: set[str] = field(default_factory=set)


def _pre_read(new: Conn, mn: TableMeta, so: SideTable, sets: bool) -> PreRead:
    p = PreRead()
    if so.bulk is not None and so.bulk.count():
        # the candidates' keys come in runs (a sequence's): one index range scan per run
        # instead of a probe per key
        first, last = bulk.key_runs(sorted(so.bulk.all_keys()))
        k = sql.Identifier(mn.pk[0])
        for key_text, text in new.execute(sql.SQL(
                "SELECT jsonb_build_array(t.{k})::text, (to_jsonb(t.*) - %s::text[])::text "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi) JOIN {t} AS t "
                "ON t.{k} BETWEEN r.lo AND r.hi").format(k=k, t=mn.ident),
                (list(mn.hidden), number_array(first), number_array(last))).fetchall():
            ck = key_from_array(key_text)
            p.rows[ck] = (text, None)
            p.present.add(int(ck[1:-1]))
    # a delete of a row a child may name stays on the row path (it is held there), as
    # does every change of a table whose other unique columns children name (a table
    # that takes sets has a one-integer key: every canonical key is ``[n]``)
    renames = any(list(pc) != list(mn.pk) for _c, _cc, pc in mn.referenced_by)
    lane = [k for k, t in so.touched.items() if t.base_had is True
            and (k in so.live or not mn.referenced_by)] if sets and not renames else []
    if len(lane) >= bulk.MIN_ROWS:
        p.lane = set(lane)
        p.xmin = dict(new.execute(sql.SQL(
            "SELECT {k}::bigint, xmin::text::bigint FROM {t} WHERE {k} = ANY(%s::bigint[])"
        ).format(k=sql.Identifier(mn.pk[0]), t=mn.ident),
            ("{" + ",".join(k[1:-1] for k in lane) + "}",)).fetchall())
    regular = [k for k in so.touched if k not in p.lane]
    got, _n = _rows_by_key(new, mn, regular, False, None)
    p.rows.update(got)
    p.absent = {k for k in regular if k not in got}
    return p


def _touched_since(new: Conn, start: str, mn: TableMeta, dboid: int) -> dict[str, Touch]:
    """Keys of ``mn`` committed transactions changed on the new primary after ``start``."""
    end = flushed_now(new)
    side = read_side(new, start, end, {mn.name: mn}, dboid, lookback=False, max_tli=None)
    st = side.tables.get(mn.name)
    return st.touched if st is not None else {}


def _apply_as_set(old: Conn, cap: store.Capture | None,
                  metas: tuple[TableMeta, TableMeta], so: SideTable, sn: SideTable,
                  report: DivergenceReport, p: PreRead) -> tuple[int, dict[int, int]]:
    """Apply the table's plain old-side inserts as one set (:mod:`drorch.reconcile.bulk`)
    where nothing on the new primary can make them anything but *old-only, apply*; hand
    every other one back to the row path (:func:`walread.demote`). Returns the rows
    applied and their count per old-side top-level xid."""
    mo, mn = metas
    rows = so.bulk
    if rows is None or not rows.count():
        return 0, {}
    keys = rows.all_keys()
    back = keys & {int(k[1:-1]) for k in sn.touched if walread.int_key_text(k)}
    if len(keys) != rows.count():  # one key in two tuples: let the row path say why
        seen: set[int] = set()
        back |= {k for by in rows.keys.values() for ks in by.values() for k in ks
                 if k in seen or seen.add(k)}  # type: ignore[func-returns-value]
    back |= p.present  # collisions: the new primary's row stands beside the old one
    applied = 0
    if cap is not None and len(keys - back) >= bulk.MIN_ROWS:
        cap.close_copy()
        try:
            applied, _digest = bulk.apply_set(old, cap.conn, cap.run_id, mo, mn, rows, back)
        except bulk.BulkRefused as e:
            report.notes.append(
                f"{mn.name}: {len(keys - back)} rows the old primary inserted went row by "
                f"row: the new primary refused them as one set ({e})")
    if not applied:
        back = keys
    report.rows_shipped += applied
    walread.demote(old, mo, so, back)
    p.absent |= {f"[{k}]" for k in back - p.present}
    per_xid: Counter[int] = Counter()
    assert so.parts is not None
    top_of = so.parts.top_of
    for by_xmin in rows.keys.values():
        for xmin, ks in by_xmin.items():
            per_xid[top_of.get(xmin, xmin)] += len(ks)
    return applied, dict(per_xid)


def _apply_changes_as_set(old: Conn, new: Conn, cap: store.Capture | None,
                          metas: tuple[TableMeta, TableMeta], sides: tuple[SideTable, SideTable],
                          report: DivergenceReport, p: PreRead,
                          touched_since: Callable[[], dict[str, Touch]]
                          ) -> tuple[int, dict[int, int]]:
    """Apply the table's old-side updates and deletes of rows both nodes had at the split
    and the new primary never touched as one set each (:func:`bulk.apply_changed`): the
    classification can only say *old-only, apply* for them. Keys applied leave ``so``'s
    touched keys (the row path skips them). Keys handed back to the row path (too few, or
    a refused set) are read now, and the new primary's WAL since its end says which of
    them it changed meanwhile (touched). Returns the rows changed and their count per
    old-side top-level xid."""
    mo, mn = metas
    so, sn = sides
    if not p.lane:
        return 0, {}
    # key -> its integer (a table that takes sets has a one-integer key: ``[n]``)
    live = so.live if mn.referenced_by else None  # None: deleted keys may go too
    lane = {k: n for k in p.lane if k not in sn.touched
            and (n := int(k[1:-1])) in p.xmin and (live is None or k in live)}
    updated: dict[str, list[tuple[int, int]]] = {}
    assert so.parts is not None
    for (rel, tid), k in so.parts.live.items():
        if k in lane:  # live on the old side: updated
            updated.setdefault(rel, []).append(tid)
    deleted = [n for k, n in lane.items() if k not in so.live]
    if sum(map(len, updated.values())) != len(lane) - len(deleted):
        lane = {}  # a key live in two tuples: the row path says why
    done: set[int] = set()
    if cap is not None and len(lane) >= bulk.MIN_ROWS:
        cap.close_copy()
        try:
            upd, gone = bulk.apply_changed(old, cap.conn, cap.run_id, mo, mn, updated,
                                           deleted, {n: p.xmin[n] for n in lane.values()})
            done = set(upd) | set(gone)
            report.rows_shipped += sum(map(len, updated.values()))
        except bulk.BulkRefused as e:
            report.notes.append(
                f"{mn.name}: {len(lane)} rows the old primary updated or deleted went row "
                f"by row: the new primary refused them as one set ({e})")
            lane = {}
    back = [k for k in p.lane if k not in lane and k not in sn.touched]
    if back:  # read after the WAL end: what the new primary changed since is touched
        got, _n = _rows_by_key(new, mn, back, False, None)
        late = touched_since()
        for k in back:
            if k in late:
                sn.touched[k] = late[k]
            elif k in got:
                p.rows[k] = got[k]
            else:
                p.absent.add(k)
    top_of = so.parts.top_of
    per_xid: Counter[int] = Counter()
    touched = so.touched
    per_xid.update(top_of.get(t.last_xid, t.last_xid)
                   for k, n in lane.items() if (t := touched.pop(k)) and n in done)
    so.live -= lane.keys()
    if so.rows:
        for k in lane:
            so.rows.pop(k, None)
    return len(done), dict(per_xid)


def _conclude(old: Conn, report: DivergenceReport, wal_old: WalSide | None,
              wal_new: WalSide | None, old_xids: set[int], promoted_at: datetime | None) -> None:
    """Transactions, tables and problems the table loop does not see, and the time split."""
    old_xids |= wal_old.no_pk_transactions if wal_old else set()
    report.transactions = {
        "old_committed": wal_old.committed_top if wal_old else None,
        "old_touching_tables": len(old_xids) if wal_old else None,
        "new_committed": wal_new.committed_top if wal_new else None}
    report.unconfigured_tables = _other_tables(old, wal_old)
    report.problems += _unaccountable(old, report, wal_old)
    if wal_old is None:
        others = [r[0] for r in old.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "AND datname <> current_database() ORDER BY 1")]
        if others:
            report.notes.append(
                f"other databases of the old primary ({', '.join(others)}) were not "
                "compared: a full comparison reads this database only, and without the old "
                "primary's WAL drorch cannot tell whether they took writes after the split; "
                "whatever they did stays in the evidence (the kept instance or snapshot, or "
                "the data directory archive)")
    if promoted_at is not None and wal_old is not None:
        # only commits that wrote the database's tables: one that wrote nothing here
        # (a temporary table, another database, a bare sequence) lost nothing
        report.in_time = split_in_time(
            report, {x: at for x, at in wal_old.commit_times.items() if x in old_xids},
            promoted_at)


def blocked(report: DivergenceReport) -> bool:
    """Something the old primary wrote cannot be reconciled: nothing may rewind it."""
    return bool(report.problems or report.unconfigured_tables)


def _unaccountable(old: Conn, report: DivergenceReport, wal_old: WalSide | None) -> list[str]:
    """Old-side writes no change can stand for: other databases of the cluster (pg_rewind
    rewinds all of them) and deletes or updates in tables without a key."""
    out = []
    if wal_old is not None:
        for oid, n in sorted(wal_old.other_db_records.items()):
            row = old.execute("SELECT datname FROM pg_database WHERE oid = %s", (oid,)
                              ).fetchone()
            name = row[0] if row else f"oid {oid}"
            out.append(f"database {name}: {n} row changes committed on the old primary after "
                       f"the split; only {report.database} is reconciled and a rewind "
                       "erases the whole cluster's divergence")
        for rel, n in _vanished(old, wal_old):
            out.append(
                f"relation file {rel}: {n} row changes committed on the old primary after "
                "the split to a table that is no longer there (dropped there after the "
                "split): drorch cannot apply them, nor carry the drop. The old primary was "
                "not rewound and keeps them; recover what is needed from it (read-only), "
                "then drop the table on the new primary too or accept the loss with the "
                "data owner, and run the failback again")
        for table, n in sorted(wal_old.no_pk_removed.items()):
            if n:
                out.append(f"{table}: no primary key, and the old primary deleted or updated "
                           f"{n} rows after the split (they cannot be matched)")
    else:
        for entry in report.tables_without_pk:
            if entry.get("rows_only_on_new"):
                out.append(f"{entry['table']}: no primary key and no old-side WAL: "
                           f"{entry['rows_only_on_new']} rows only on the new primary may be "
                           "the old primary's deletes")
    return out

