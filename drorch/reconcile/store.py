"""Where captured divergent rows live: schema ``drorch_reconcile`` on the new primary.

pg_rewind erases the old primary's divergent rows, so they are captured before
any resync, into the database that survives: ``runs`` (one report per run, as
``to_dict`` renders it: no values), ``changes`` (one row per differing key,
with both rows as jsonb), ``rekeyed`` (the new key of each re-keyed collision, assigned
once), ``applied_batches`` (one row per batch of ``apply-old`` changes written together:
its table, side (upserts or deletes) and ``seq`` range) and ``applied`` (one row per change
decided on its own: re-keyed, stale, kept, resolved by a human, or ``held`` for a parent,
which is not a decision). A change's outcome is its ``applied`` row, else (an ``apply-old``
change) the batch whose range holds it: :data:`UNDECIDED` and the ``outcomes`` view say
so in SQL. Recording a batch costs one row, not one per change (80,000 per-row records
cost as much as writing the rows they record); the records grow with batches and
exceptions, the audit with tables. ``bulk_sets``: the old primary's plain inserts applied
(and its updates and deletes of rows the new primary never touched) as one set per table
and operation while the run was captured (:mod:`drorch.reconcile.bulk`): every key
(as ranges: keys from a sequence run in long stretches), the row count and the digest of
the rows copied; their outcome is *applied*. The schema is readable by superusers only:
it holds the same values as the application tables, sensitive ones included, and they
never leave the database except masked.

A run is captured in one transaction: it exists completely or not at all. Its
changes are written while they are still being found (:func:`capturing`), on a
connection of its own; the report row is completed last.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import Copy
from psycopg.copy import QueuedLibpqWriter

from drorch.reconcile._db import Conn, scalar
from drorch.reconcile.model import Change, DivergenceReport

DDL = """
CREATE SCHEMA IF NOT EXISTS drorch_reconcile;
REVOKE ALL ON SCHEMA drorch_reconcile FROM PUBLIC;
CREATE TABLE IF NOT EXISTS drorch_reconcile.runs (
    run_id     text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    report     jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS drorch_reconcile.changes (
    run_id       text NOT NULL REFERENCES drorch_reconcile.runs ON DELETE CASCADE,
    change_id    text NOT NULL,
    seq          int NOT NULL,
    tbl          text NOT NULL,
    key          jsonb NOT NULL,
    kind         text NOT NULL,
    action       text NOT NULL,
    columns      text[] NOT NULL,
    old_op       text,
    new_op       text,
    undetermined boolean NOT NULL,
    old_row      jsonb,
    new_row      jsonb,
    PRIMARY KEY (run_id, change_id)
);
CREATE INDEX IF NOT EXISTS changes_by_table ON drorch_reconcile.changes (run_id, tbl, seq);
CREATE TABLE IF NOT EXISTS drorch_reconcile.rekeyed (
    run_id     text NOT NULL,
    change_id  text NOT NULL,
    tbl        text NOT NULL,
    key_column text NOT NULL,
    old_id     bigint NOT NULL,
    new_id     bigint NOT NULL,
    PRIMARY KEY (run_id, change_id)
);
CREATE INDEX IF NOT EXISTS rekeyed_by_old ON drorch_reconcile.rekeyed (run_id, tbl, old_id);
CREATE TABLE IF NOT EXISTS drorch_reconcile.applied (
    run_id     text NOT NULL,
    change_id  text NOT NULL,
    outcome    text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, change_id)
);
CREATE TABLE IF NOT EXISTS drorch_reconcile.applied_batches (
    run_id     text NOT NULL,
    tbl        text NOT NULL,
    deletes    boolean NOT NULL,
    lo         int NOT NULL,
    hi         int NOT NULL,
    rows       int NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, tbl, deletes, lo, hi)
);
CREATE TABLE IF NOT EXISTS drorch_reconcile.bulk_sets (
    run_id      text NOT NULL REFERENCES drorch_reconcile.runs ON DELETE CASCADE,
    tbl         text NOT NULL,
    op          text NOT NULL,
    rows        int NOT NULL,
    first_key   bigint NOT NULL,
    last_key    bigint NOT NULL,
    keys        int8multirange NOT NULL,
    rows_sha256 text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, tbl, op)
);
DO $$ BEGIN
    -- created once: replacing it at every start would wait on each reader of it
    IF to_regclass('drorch_reconcile.outcomes') IS NULL THEN
        CREATE VIEW drorch_reconcile.outcomes AS
        SELECT x.run_id, x.change_id, x.outcome FROM (
            SELECT c.run_id, c.change_id, %(outcome)s AS outcome
            FROM drorch_reconcile.changes c) x
        WHERE x.outcome IS NOT NULL;
    END IF;
END $$;
"""


def own_outcome(c: str = "c") -> str:
    """SQL: the ``applied`` row of the change ``c`` (an alias of
    ``drorch_reconcile.changes``), NULL when it has none."""
    return (f"(SELECT a.outcome FROM drorch_reconcile.applied a "
            f"WHERE a.run_id = {c}.run_id AND a.change_id = {c}.change_id)")


def in_batch(c: str = "c") -> str:
    """SQL: a recorded batch's range holds the change ``c`` (it is ``applied`` when it is
    an ``apply-old`` change without an ``applied`` row of its own)."""
    return (f"EXISTS (SELECT 1 FROM drorch_reconcile.applied_batches b "
            f"WHERE b.run_id = {c}.run_id AND b.tbl = {c}.tbl "
            f"AND b.deletes = ({c}.old_row IS NULL) AND {c}.seq BETWEEN b.lo AND b.hi)")


def outcome_of(c: str = "c") -> str:
    """SQL: the recorded outcome of the change ``c`` (an alias of
    ``drorch_reconcile.changes``), NULL while it has none. Its own ``applied`` row decides
    (``held`` is no decision), else the batch whose range holds it (``apply-old`` only).
    Written as a scalar subquery so that every use probes the two small tables by index
    per change: as a join, a planner without statistics on freshly written tables chose
    to scan every recorded row of the run once per change (seconds per batch)."""
    return (
        f"(SELECT CASE WHEN o.own IS NOT NULL THEN nullif(o.own, 'held') "
        f"WHEN {c}.action = 'apply-old' AND {in_batch(c)} THEN 'applied' END "
        f"FROM (SELECT {own_outcome(c)} AS own OFFSET 0) o)")


UNDECIDED = f"{outcome_of()} IS NULL"
"""SQL: the change ``c`` has no outcome yet (held for a parent counts as none)."""


def outcomes_joined(conn: Conn, run_id: str) -> tuple[str, str]:
    """SQL for reading the outcomes of many changes of run ``run_id`` at once: joins to
    add after ``drorch_reconcile.changes c`` (a run's changes), and the outcome
    expression over them (NULL: none yet), as :func:`outcome_of` decides it. The
    batches' changes are found by one index range scan per batch (``OFFSET 0`` keeps
    it so: flattened, the range became a filter over every pair of change and batch),
    then matched by hash: the caller sets ``enable_nestloop = off`` for the statement,
    as without statistics on the freshly written records a planner may otherwise scan
    them once per change. Overlapping batches (a rerun's) are counted once."""
    distinct = "DISTINCT" if batches_overlap(conn, run_id) else ""
    joins = (
        "LEFT JOIN drorch_reconcile.applied o ON o.run_id = c.run_id "
        "AND o.change_id = c.change_id "
        f"LEFT JOIN (SELECT {distinct} y.change_id FROM drorch_reconcile.applied_batches b "
        "CROSS JOIN LATERAL (SELECT b2.change_id FROM drorch_reconcile.changes b2 "
        "WHERE b2.run_id = b.run_id AND b2.tbl = b.tbl AND b2.seq BETWEEN b.lo AND b.hi "
        "AND (b2.old_row IS NULL) = b.deletes AND b2.action = 'apply-old' OFFSET 0) y "
        "WHERE b.run_id = %(run)s) cov ON cov.change_id = c.change_id")
    outcome = ("CASE WHEN o.outcome IS NOT NULL THEN nullif(o.outcome, 'held') "
               "WHEN cov.change_id IS NOT NULL THEN 'applied' END")
    return joins, outcome


def batches_overlap(conn: Conn, run_id: str) -> bool:
    """Two recorded batches of one table and side of the run share part of their range
    (a rerun's batch spanning rows an earlier one left held)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM drorch_reconcile.applied_batches a "
        "JOIN drorch_reconcile.applied_batches b ON b.run_id = a.run_id AND b.tbl = a.tbl "
        "AND b.deletes = a.deletes AND (b.lo, b.hi) <> (a.lo, a.hi) AND b.lo <= a.hi "
        "AND a.lo <= b.hi WHERE a.run_id = %s)", (run_id,)).fetchone() == (True,)


@dataclass(frozen=True)
class StoredChange:
    change_id: str
    table: str
    key: dict[str, Any]
    kind: str
    action: str
    columns: list[str]
    old_op: str | None
    new_op: str | None
    undetermined: bool
    old_absent: bool
    new_row: str | None
    outcome: str | None
    """What ``applied`` says about it (None: not decided yet)."""


def ensure_schema(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('drorch_reconcile.ddl'))")
        conn.execute(DDL.replace("%(outcome)s", outcome_of()))


def load_report(conn: Conn, run_id: str) -> DivergenceReport | None:
    """The captured run's report, or None when it was never captured."""
    exists = conn.execute("SELECT to_regclass('drorch_reconcile.runs') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT report::text FROM drorch_reconcile.runs WHERE run_id = %s",
                       (run_id,)).fetchone()
    return DivergenceReport.from_dict(json.loads(row[0])) if row else None


def capture(conn: Conn, report: DivergenceReport) -> bool:
    """Store the report and every change's rows; False if the run was already captured."""
    with capturing(conn, report.run_id) as cap:
        if cap is None:
            return False
        for t in report.tables:
            cap.add(t.table, t.changes)
        cap.finish(report)
    return True


_COPY_CHANGES = ("COPY drorch_reconcile.changes (run_id, change_id, seq, tbl, key, kind, "
                 "action, columns, old_op, new_op, undetermined, old_row, new_row) FROM STDIN")

COPY_CHUNK_LINES = 5_000
"""Lines handed to COPY per write: one write per line cost more than forming the line."""

_KEY_ENCODER = json.JSONEncoder(default=str)
"""``json.dumps(key, default=str)`` without building an encoder per change."""


def _key_json(key: dict[str, Any], names: dict[str, str]) -> str:
    """``json.dumps(key, default=str)``; a one-column integer key (the usual case, once per
    captured change) without the encoder. ``names``: column -> its JSON string, cached."""
    if len(key) == 1:
        ((col, v),) = key.items()
        if type(v) is int:
            name = names.get(col)
            if name is None:
                name = names[col] = json.dumps(col)
            return f"{{{name}: {v}}}"
    return _KEY_ENCODER.encode(key)


class Capture:
    """A run being captured: changes go to the new primary as they are found.

    Fed table by table in the report's order (``seq`` numbers them as :func:`changes`
    returns them). The COPY's writes are queued to a thread of psycopg's, so the server
    parses and indexes one batch while drorch classifies the next: capture no longer
    waits for the whole classification, nor classification for the server. The COPY
    opens at the first change and closes before a bulk set (:meth:`bulk`) uses the
    connection."""

    def __init__(self, conn: Conn, run_id: str) -> None:
        self.conn = conn
        self._stack: ExitStack | None = None
        self._copy: Copy | None = None
        self._run = _copy_text(run_id)
        self.run_id = run_id
        self._seq = 0
        self._columns: dict[tuple[str, ...], str] = {}  # a table's changes share a few lists
        self._names: dict[str, str] = {}
        self.report: str | None = None
        """The finished run's report (JSON, counts only)."""

    def add(self, table: str, changes: Sequence[Change]) -> None:
        """Capture these changes of ``table`` (after every change added before)."""
        if not changes:
            return
        if self._copy is None:
            self._stack = ExitStack()
            cur = self._stack.enter_context(self.conn.cursor())
            self._copy = self._stack.enter_context(
                cur.copy(_COPY_CHANGES, writer=QueuedLibpqWriter(cur)))
        for i in range(0, len(changes), COPY_CHUNK_LINES):
            self._copy.write(self._lines(table, changes[i:i + COPY_CHUNK_LINES]))

    def close_copy(self, exc: BaseException | None = None) -> None:
        """End the changes' COPY (the server has every line sent so far)."""
        stack, self._stack, self._copy = self._stack, None, None
        if stack is not None:
            if exc is None:
                stack.close()
            else:
                stack.__exit__(type(exc), exc, exc.__traceback__)

    def finish(self, report: DivergenceReport) -> None:
        """Keep the run, with ``report`` (counts only): it commits when the block ends.
        A capture left unfinished is rolled back. The report is rendered now, while the
        server still works through the changes queued before it."""
        self.report = json.dumps(report.to_dict(with_changes=False), default=str)

    def _lines(self, table: str, changes: Sequence[Change]) -> str:
        run, tbl = self._run, _copy_text(table)
        lines = []
        for c in changes:
            self._seq += 1
            cols = self._columns.get(tuple(c.columns))
            if cols is None:
                cols = self._columns[tuple(c.columns)] = _copy_text(_array_literal(c.columns))
            lines.append("\t".join((
                run, c.change_id, str(self._seq), tbl,
                _copy_text(_key_json(c.key, self._names)), c.kind, c.action, cols,
                _op(c.old_op), _op(c.new_op), "t" if c.undetermined else "f",
                _copy_text(c.old_row), _copy_text(c.new_row))))
        return "\n".join(lines) + "\n" if lines else ""


@contextmanager
def capturing(conn: Conn, run_id: str) -> Iterator[Capture | None]:
    """Capture run ``run_id`` in one transaction on ``conn`` (nothing else may use it
    meanwhile); None when the run is already captured. The run is kept only when
    :meth:`Capture.finish` was called and the block ends without an error: a run exists
    completely or not at all."""
    ensure_schema(conn)
    with conn.transaction() as tx:
        # the report is written last, when it is known; until the commit nobody sees the row
        if not conn.execute("INSERT INTO drorch_reconcile.runs (run_id, report) VALUES "
                            "(%s, '{}'::jsonb) ON CONFLICT (run_id) DO NOTHING RETURNING 1",
                            (run_id,)).fetchone():
            yield None
            return
        _skip_proven_reference_checks(conn)
        cap = Capture(conn, run_id)
        try:
            yield cap
        except BaseException as e:
            cap.close_copy(e)
            raise
        cap.close_copy()
        if cap.report is None:
            raise psycopg.Rollback(tx)
        conn.execute("UPDATE drorch_reconcile.runs SET report = %s::jsonb WHERE run_id = %s",
                     (cap.report, run_id))


def bulk_sets(conn: Conn, run_id: str) -> list[tuple[str, int, str]]:
    """(table, rows, digest) of each set the run applied at capture (inserts, updates,
    deletes: one set each)."""
    if conn.execute("SELECT to_regclass('drorch_reconcile.bulk_sets') IS NOT NULL"
                    ).fetchone() != (True,):
        return []
    return [(str(t), int(n), str(d)) for t, n, d in conn.execute(
        "SELECT tbl, rows, rows_sha256 FROM drorch_reconcile.bulk_sets WHERE run_id = %s "
        "ORDER BY tbl, op", (run_id,))]


def _skip_proven_reference_checks(conn: Conn) -> None:
    """Every change captured references the run row this transaction has just inserted
    (and holds, unseen by anyone else): their foreign-key check, a trigger per row and a
    quarter of the COPY's time on the server, cannot fail. A superuser's capture skips it
    for this transaction only (``SET LOCAL session_replication_role``, as bulk restores
    do); anyone else keeps the check."""
    if scalar(conn, "SELECT current_setting('is_superuser')") == "on":
        conn.execute("SET LOCAL session_replication_role = replica")


def _op(op: str | None) -> str:
    """A side's operation in COPY text: one of a few plain words (never escaped), or NULL."""
    return "\\N" if op is None else op


def _copy_text(value: str | None) -> str:
    """A value in COPY's text format (PostgreSQL docs, "COPY", File Formats: Text Format):
    backslash, tab, newline and carriage return escaped; ``\\N`` is NULL."""
    if value is None:
        return "\\N"
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _array_literal(items: list[str]) -> str:
    """A text[] literal with every element double-quoted (quotes and backslashes escaped)."""
    return "{" + ",".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for i in items) + "}"


def changes(conn: Conn, run_id: str, ids: list[str] | None = None) -> list[StoredChange]:
    """The changes of a run (only those in ``ids`` when given: a conflict file names a
    few of a run that may hold millions) in capture order, with what has been decided."""
    rows = conn.execute(
        "SELECT c.change_id, c.tbl, c.key::text, c.kind, c.action, c.columns, c.old_op, "
        f"c.new_op, c.undetermined, c.old_row IS NULL, c.new_row::text, {outcome_of()} "
        "FROM drorch_reconcile.changes c WHERE c.run_id = %s "
        "AND (%s::text[] IS NULL OR c.change_id = ANY(%s::text[])) ORDER BY c.seq",
        (run_id, ids, ids)).fetchall()
    return [StoredChange(r[0], r[1], json.loads(r[2]), r[3], r[4], list(r[5]), r[6], r[7],
                         bool(r[8]), bool(r[9]), r[10], r[11]) for r in rows]


def claim(conn: Conn, run_id: str, change_id: str, outcome: str,
          replace: tuple[str, ...] = ()) -> bool:
    """Record a decision unless one is recorded (on its own or by a batch); True when
    this call recorded it.

    Must run in the same transaction as the write it records, under the run's advisory
    lock (appliers take turns, so the check and the insert see the same records): a kill
    before commit undoes both, a rerun then finds nothing recorded and applies once.
    ``replace``: earlier outcomes this decision may overwrite (``stale`` when a human
    resolves it); ``held`` (not a decision) is always overwritten."""
    row = conn.execute(
        "INSERT INTO drorch_reconcile.applied AS a (run_id, change_id, outcome) "
        "SELECT %(run)s, %(cid)s, %(outcome)s WHERE NOT EXISTS (SELECT 1 FROM "
        "drorch_reconcile.outcomes o WHERE o.run_id = %(run)s AND o.change_id = %(cid)s "
        "AND o.outcome <> ALL(%(replace)s::text[])) ON CONFLICT (run_id, change_id) "
        "DO UPDATE SET outcome = EXCLUDED.outcome, decided_at = now() "
        "WHERE a.outcome = ANY(%(replace)s::text[] || '{held}') RETURNING 1",
        {"run": run_id, "cid": change_id, "outcome": outcome, "replace": list(replace)}
    ).fetchone()
    return row is not None
