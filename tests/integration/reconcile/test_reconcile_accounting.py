"""Every divergent change ends with one outcome, with ordinary traffic on both sides.

Both primaries insert through their sequences (default ids, one row per transaction,
each id kept only after COMMIT returned), into listed tables and a table the runbook
does not list. PostgreSQL WAL-logs sequences 32 values ahead (``SEQ_LOG_VALS`` in
``src/backend/commands/sequence.c``), so after ~32 inserts on the old side its ids run
into the ones the promoted side hands out: collisions happen by themselves here, no
``setval`` arranges or avoids them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drorch.lab.postgres import PgNode, make_pair
from drorch.reconcile import (
    ReconcileSpec,
    ReconcileTable,
    apply_conflict_file,
    apply_reconciliation,
    divergence_point,
    fence_as_standby,
    find_divergence,
    load_report,
    wait_caught_up,
)
from drorch.reconcile.accounting import account
from drorch.reconcile.conflicts import load as load_conflicts
from drorch.reconcile.find import blocked
from tests.integration.reconcile.conftest import pg_workdir

pytestmark = pytest.mark.postgres

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
CREATE TABLE emails (id bigserial PRIMARY KEY, message_id text NOT NULL UNIQUE,
                     recipient text NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, amount int NOT NULL, region text NOT NULL);
CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);
CREATE TABLE order_lines (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders,
                          sku text NOT NULL);
INSERT INTO emails (message_id, recipient) SELECT 'base-' || g, 'r' || g
  FROM generate_series(1, 20) g;
INSERT INTO orders (amount, region) SELECT g, 'base' FROM generate_series(1, 20) g;
INSERT INTO notes (body) SELECT 'base-' || g FROM generate_series(1, 20) g;
"""


@dataclass
class Acked:
    """Rows whose COMMIT returned, per table: id -> the row as ``to_jsonb``."""

    rows: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def insert(self, dsn: str, table: str, columns: str, values: tuple[Any, ...]) -> int:
        with psycopg.connect(dsn) as c:
            marks = ", ".join(["%s"] * len(values))
            row = c.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks}) "
                            "RETURNING id, to_jsonb(" + table + ")", values).fetchone()
            c.commit()  # acknowledged only now
        assert row is not None
        self.rows.setdefault(table, {})[int(row[0])] = row[1]
        return int(row[0])


@dataclass
class Split:
    a: PgNode
    b: PgNode
    old: Acked
    new: Acked
    workdir: Path


def _q(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(query)
        return cur.fetchall() if cur.description else []


def _rows(dsn: str, table: str) -> dict[int, dict[str, Any]]:
    return {int(r[0]["id"]): r[0] for r in _q(dsn, f"SELECT to_jsonb(t) FROM {table} t")}


def _split(workdir: Path, on_old: Callable[[Split], None],
           on_new: Callable[[Split], None], cut: bool = True) -> Split:
    """Replicated base; replica cut off (by ``on_old`` itself when not ``cut``);
    ``on_old`` writes on the primary; the primary is killed; the replica promoted;
    ``on_new`` writes on it; the old primary fenced."""
    a, b = make_pair(workdir)
    split = Split(a, b, Acked(), Acked(), workdir)
    try:
        _q(a.dsn(), SCHEMA)
        wait_caught_up(b.dsn(), a.dsn(), 60)
        if cut:
            b.stop()
        on_old(split)
        a.kill()
        b.start()
        _q(b.dsn(), "SELECT pg_promote(true, 60)")
        on_new(split)
        fence_as_standby(a)
    except BaseException:
        for n in (a, b):
            n.destroy()
        raise
    return split


@pytest.fixture
def workdir() -> Iterator[Path]:
    with pg_workdir("accounting") as wd:
        yield wd


@pytest.fixture
def cleanup() -> Iterator[list[Split]]:
    made: list[Split] = []
    yield made
    for s in made:
        for n in (s.a, s.b):
            n.destroy()


def _spec(conflict_file: Path) -> ReconcileSpec:
    """The runbook lists emails (old-wins) and orders (manual); notes is not listed."""
    return ReconcileSpec(tables=[ReconcileTable(name="public.emails", policy="old-wins"),
                                 ReconcileTable(name="public.orders", policy="manual")],
                         conflict_file=str(conflict_file))


def _reconcile(split: Split, conflict_file: Path, spec: ReconcileSpec | None = None
               ) -> tuple[Any, Any, Any]:
    """find, apply, account, as the failback step does; a blocked run is neither captured
    nor applied (a retry looks afresh)."""
    spec = spec or _spec(conflict_file)
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec, divergence_point(split.b.dsn()))
    if blocked(report):
        assert load_report(split.b.dsn(), report.run_id) is None
        return report, None, account(report.to_dict(), {"decisions": [], "conflict_file": None})
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    return report, applied, account(report.to_dict(), applied.to_dict())


def _mapping(path: Path) -> dict[tuple[str, int], int]:
    """The key mapping CSV: (table, old key) -> new key."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["key_column"] == "id" for r in rows)
    return {(r["table"].split(".")[1], int(r["old_key"])): int(r["new_key"]) for r in rows}


def test_default_id_traffic_on_both_sides_loses_no_acknowledged_row(
        workdir: Path, cleanup: list[Split]) -> None:
    """40 emails, 40 orders with a line each, and 30 notes (a table
    nobody listed) on region-a; 40 emails, 5 orders and 10 notes on region-b, all through
    the sequences. Region-a rows whose key region-b also used are collisions: two rows,
    never one overwriting the other (not even under ``old-wins``). Each is re-keyed: the
    old primary's row goes in under a fresh key from the sequence, its order lines follow
    it to the new key, and the mapping CSV names every one. Afterwards every row either
    side acknowledged is on the new primary, exactly as acknowledged but for the key."""
    def on_old(s: Split) -> None:
        for i in range(40):
            s.old.insert(s.a.dsn(), "emails", "message_id, recipient", (f"a-{i}", "x@a"))
        for i in range(40):
            order = s.old.insert(s.a.dsn(), "orders", "amount, region", (100 + i, "a"))
            s.old.insert(s.a.dsn(), "order_lines", "order_id, sku", (order, f"a-sku-{i}"))
        for i in range(30):
            s.old.insert(s.a.dsn(), "notes", "body", (f"a-note-{i}",))

    def on_new(s: Split) -> None:
        for i in range(40):
            s.new.insert(s.b.dsn(), "emails", "message_id, recipient", (f"b-{i}", "x@b"))
        for i in range(5):
            s.new.insert(s.b.dsn(), "orders", "amount, region", (200 + i, "b"))
        for i in range(10):
            s.new.insert(s.b.dsn(), "notes", "body", (f"b-note-{i}",))

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    report, applied, accounting = _reconcile(split, conflict_file)
    assert report.method == "wal"
    assert report.unlisted_tables == ["public.notes", "public.order_lines"]
    assert accounting.holds, accounting.problem()

    collided = {(t, k) for t in split.old.rows for k in split.old.rows[t]
                if k in split.new.rows.get(t, {})}
    assert {t for t, _k in collided} == {"emails", "orders", "notes"}, \
        "default ids on both sides must collide past 32 old-side inserts"
    assert applied.mapping_file is not None and not conflict_file.exists()
    mapping = _mapping(Path(applied.mapping_file))
    assert set(mapping) == collided
    for t in ("emails", "orders", "notes"):  # a fresh key is one neither side used
        fresh = {n for (tt, _k), n in mapping.items() if tt == t}
        assert len(fresh) == sum(1 for tt, _k in mapping if tt == t), t
        assert not fresh & (set(split.new.rows.get(t, {})) | set(split.old.rows.get(t, {})))

    def moved(t: str, row: dict[str, Any]) -> dict[str, Any]:
        """The acknowledged row as it must be now: under its new key, its order too."""
        out = dict(row)
        if (t, row["id"]) in mapping:
            out["id"] = mapping[(t, row["id"])]
        if t == "order_lines" and ("orders", row["order_id"]) in mapping:
            out["order_id"] = mapping[("orders", row["order_id"])]
        return out

    lines_moved = [r for r in split.old.rows["order_lines"].values()
                   if ("orders", r["order_id"]) in mapping]
    assert lines_moved, "some order lines must belong to a re-keyed order"
    for t in ("emails", "orders", "order_lines", "notes"):
        now = _rows(split.b.dsn(), t)
        for key, row in split.new.rows.get(t, {}).items():
            assert now.get(key) == row, (t, key, "region-b's acknowledged row changed")
        for row in split.old.rows.get(t, {}).values():
            want = moved(t, row)
            assert now.get(want["id"]) == want, (t, row["id"], "region-a's row missing")
        assert len(now) == 20 * (t != "order_lines") + len(split.old.rows.get(t, {})) + len(
            split.new.rows.get(t, {})), t
    totals = accounting.totals()
    old_rows = sum(len(r) for r in split.old.rows.values())
    new_rows = sum(len(r) for r in split.new.rows.values())
    assert totals["applied"] == old_rows - len(collided)
    assert totals["rekeyed"] == len(collided) == applied.rekeyed
    assert totals["pending"] == 0
    assert totals["kept"] == new_rows - len(collided)
    assert applied.errors == 0
    again = apply_reconciliation(report.run_id, split.b.dsn(), _spec(conflict_file))
    assert (again.applied, again.rekeyed) == (0, len(collided))
    assert _mapping(Path(applied.mapping_file)) == mapping  # a rerun keeps the new keys
    assert nextval_after(split.b.dsn(), "orders_id_seq") > max(
        n for (t, _k), n in mapping.items() if t == "orders")


def nextval_after(dsn: str, seq: str) -> int:
    return int(_q(dsn, f"SELECT nextval('{seq}')")[0][0])


def test_collisions_manual_hands_both_rows_to_a_human(workdir: Path,
                                                       cleanup: list[Split]) -> None:
    """With ``collisions: manual`` a collision is not re-keyed: both rows wait in the
    conflict file, the new primary's row stands meanwhile."""
    def on_old(s: Split) -> None:
        for i in range(40):
            s.old.insert(s.a.dsn(), "emails", "message_id, recipient", (f"a-{i}", "x@a"))

    def on_new(s: Split) -> None:
        for i in range(40):
            s.new.insert(s.b.dsn(), "emails", "message_id, recipient", (f"b-{i}", "x@b"))

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.emails", policy="old-wins",
                                                collisions="manual")],
                         conflict_file=str(conflict_file))
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec,
                             divergence_point(split.b.dsn()))
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    accounting = account(report.to_dict(), applied.to_dict())
    assert accounting.holds and applied.rekeyed == 0 and applied.mapping_file is None
    collided = {k for k in split.old.rows["emails"] if k in split.new.rows["emails"]}
    entries = {int(e.key["id"]): e for e in load_conflicts(conflict_file).conflicts}
    assert collided and set(entries) == collided
    for key, entry in entries.items():
        assert entry.kind == "collision" and "two different rows" in entry.reason
        assert entry.old == split.old.rows["emails"][key]
        assert entry.new == split.new.rows["emails"][key]
    assert accounting.totals()["pending"] == len(collided)


def test_a_row_the_new_primary_refuses_is_pending_with_the_databases_error(
        workdir: Path, cleanup: list[Split]) -> None:
    """Both sides send an email with the same message id under different keys: the old
    side's row breaks the unique constraint on the new primary. It is not counted and
    dropped: it waits in the conflict file with PostgreSQL's error, and the invariant
    holds only because it is there."""
    def on_old(s: Split) -> None:
        s.old.insert(s.a.dsn(), "emails", "message_id, recipient", ("dup-1", "x@a"))
        s.old.insert(s.a.dsn(), "emails", "message_id, recipient", ("a-only", "x@a"))

    def on_new(s: Split) -> None:
        _q(s.b.dsn(), "SELECT setval('emails_id_seq', 500)")  # different keys on purpose
        s.new.insert(s.b.dsn(), "emails", "message_id, recipient", ("dup-1", "x@b"))

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.json"
    _report, applied, accounting = _reconcile(split, conflict_file)
    assert applied.errors == 1 and accounting.holds
    (entry,) = load_conflicts(conflict_file).conflicts
    dup_id = next(k for k, r in split.old.rows["emails"].items() if r["message_id"] == "dup-1")
    assert (entry.table, entry.key) == ("public.emails", {"id": dup_id})
    assert "refused" in entry.reason and "23505" in entry.reason
    assert "emails_message_id_key" in entry.reason
    now = _rows(split.b.dsn(), "emails")
    a_only = next(k for k, r in split.old.rows["emails"].items() if r["message_id"] == "a-only")
    assert now[a_only] == split.old.rows["emails"][a_only]
    # Without a conflict file the same change has no outcome: the invariant fails.
    spec = ReconcileSpec(tables=_spec(conflict_file).tables)
    again = apply_reconciliation(_report.run_id, split.b.dsn(), spec)
    assert not account(_report.to_dict(), again.to_dict()).holds


ODD = "tab\there, newline\nthere, back\\slash \\N, quote \" and 'single', ünïcödé, \r"


def test_a_large_batch_with_one_refused_row_applies_the_rest_set_based(
        workdir: Path, cleanup: list[Split]) -> None:
    """300 notes on region-a (a table nobody listed), bodies holding every character COPY's
    text format escapes; region-b adds a CHECK after the failover that one of them breaks.
    The batch is refused as a whole, split until the row is found: 299 land exactly as
    acknowledged, the one waits in the conflict file with PostgreSQL's error."""
    def on_old(s: Split) -> None:
        for i in range(300):
            s.old.insert(s.a.dsn(), "notes", "body", (f"{ODD} {i}" if i != 150 else "BAD",))

    def on_new(s: Split) -> None:
        _q(s.b.dsn(), "SELECT setval('notes_id_seq', 10000)")
        _q(s.b.dsn(), "ALTER TABLE notes ADD CONSTRAINT no_bad CHECK (body <> 'BAD')")

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    _report, applied, accounting = _reconcile(split, conflict_file)
    assert accounting.holds, accounting.problem()
    assert (applied.applied, applied.errors) == (299, 1)
    (entry,) = load_conflicts(conflict_file).conflicts
    bad = next(k for k, r in split.old.rows["notes"].items() if r["body"] == "BAD")
    assert entry.key == {"id": bad} and "23514" in entry.reason and "no_bad" in entry.reason
    now = _rows(split.b.dsn(), "notes")
    for key, row in split.old.rows["notes"].items():
        if key != bad:
            assert now[key] == row, key
    assert bad not in now


def test_a_column_added_on_the_new_primary_is_compared_on_the_shared_columns(
        workdir: Path, cleanup: list[Split]) -> None:
    """After the failover region-b adds ``coupon`` (default 'none') to orders and sets it
    on a row region-a never touched; region-a had inserted three orders and changed one.
    Rows are compared on the columns both share: region-a's orders land with the default,
    its change lands without touching ``coupon``, region-b's coupon stays, and the report
    says the table was compared on its shared columns."""
    def on_old(s: Split) -> None:
        for i in range(3):
            s.old.insert(s.a.dsn(), "orders", "amount, region", (5001 + i, "a"))
        _q(s.a.dsn(), "UPDATE orders SET amount = 999 WHERE id = 1")

    def on_new(s: Split) -> None:
        _q(s.b.dsn(), "ALTER TABLE orders ADD COLUMN coupon text DEFAULT 'none'")
        _q(s.b.dsn(), "UPDATE orders SET coupon = 'SPRING' WHERE id = 2")
        _q(s.b.dsn(), "SELECT setval('orders_id_seq', 1000)")

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    report, applied, accounting = _reconcile(split, workdir / "conflicts.jsonl")
    assert accounting.holds, accounting.problem()
    assert applied.applied == 4 and applied.errors == applied.stale == 0
    assert any("coupon" in n and "public.orders" in n for n in report.notes)
    now = _rows(split.b.dsn(), "orders")
    for key, row in split.old.rows["orders"].items():
        assert now[key] == {**row, "coupon": "none"}, key
    assert now[1]["amount"] == 999 and now[1]["coupon"] == "none"
    assert now[2]["coupon"] == "SPRING"


@pytest.mark.parametrize("when", ["before-apply", "before-resolve"])
def test_a_column_added_or_dropped_on_the_new_primary_after_finding(
        workdir: Path, cleanup: list[Split], when: str) -> None:
    """A migration lands on region-b between finding and applying (or resolving): ``tag``
    added with a default, and the application sets it on one row. Region-a's rows go in
    with the default, its changes leave region-b's ``tag`` alone, and nothing is called
    stale for a column the capture never saw. A captured column dropped instead stops the
    apply with SchemaChanged naming it, before anything is written."""
    from drorch.reconcile import SchemaChanged

    def on_old(s: Split) -> None:
        for i in range(3):
            s.old.insert(s.a.dsn(), "orders", "amount, region", (5001 + i, "a"))
        _q(s.a.dsn(), "UPDATE orders SET amount = 999 WHERE id = 1; "
                      "UPDATE orders SET amount = 998 WHERE id = 2")

    def on_new(s: Split) -> None:
        _q(s.b.dsn(), "SELECT setval('orders_id_seq', 1000); "
                      "UPDATE orders SET amount = 2002 WHERE id = 2")

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    spec = _spec(conflict_file)
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec, divergence_point(split.b.dsn()))
    if when == "before-resolve":
        applied = apply_reconciliation(report, split.b.dsn(), spec)
        assert applied.manual_pending == 1  # order 2: both changed it
        lines = [json.loads(line) for line in conflict_file.read_text().splitlines()]
        lines[1]["resolution"] = "old"
        conflict_file.write_text("".join(json.dumps(e) + "\n" for e in lines))
    _q(split.b.dsn(), "ALTER TABLE orders ADD COLUMN tag text NOT NULL DEFAULT 'none'; "
                      "UPDATE orders SET tag = 'B' WHERE id IN (1, 2)")
    if when == "before-apply":
        applied = apply_reconciliation(report, split.b.dsn(), spec)
        assert (applied.applied, applied.stale, applied.errors) == (4, 0, 0)
    else:
        res = apply_conflict_file(conflict_file, split.b.dsn())
        assert (res.applied, res.stale, res.errors) == (1, 0, 0)
    now = _rows(split.b.dsn(), "orders")
    for key, row in split.old.rows["orders"].items():
        assert now[key] == {**row, "tag": "none"}, key
    assert (now[1]["amount"], now[1]["tag"]) == (999, "B")
    if when == "before-resolve":
        assert (now[2]["amount"], now[2]["tag"]) == (998, "B")
    # a captured column dropped on region-b: stopped before writing, naming it
    _q(split.b.dsn(), "DELETE FROM drorch_reconcile.applied; "
                      "DELETE FROM drorch_reconcile.applied_batches; "
                      "ALTER TABLE orders DROP COLUMN region")
    before = _rows(split.b.dsn(), "orders")
    with pytest.raises(SchemaChanged, match=r"public\.orders: column\(s\) region"):
        if when == "before-apply":
            apply_reconciliation(report, split.b.dsn(), spec)
        else:
            apply_conflict_file(conflict_file, split.b.dsn())
    assert _rows(split.b.dsn(), "orders") == before


def test_a_column_only_the_old_primary_has_blocks_naming_it(
        workdir: Path, cleanup: list[Split]) -> None:
    """Region-a adds ``mood`` to notes after the cut and writes a note with it: region-b
    has nowhere to keep the value, so the invariant fails naming the table and the column:
    nothing may rewind region-a while that value exists only there."""
    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "ALTER TABLE notes ADD COLUMN mood text")
        _q(s.a.dsn(), "INSERT INTO notes (body, mood) VALUES ('a-note', 'glad')")

    split = _split(workdir, on_old, lambda s: None)
    cleanup.append(split)
    _report, _applied, accounting = _reconcile(split, workdir / "conflicts.jsonl")
    assert not accounting.holds
    problem = accounting.problem()
    assert "public.notes" in problem and "mood" in problem and "old primary only" in problem
    assert "Nothing was rewound" in problem


def test_writes_in_another_database_and_unkeyed_deletes_block_the_rewind(
        workdir: Path, cleanup: list[Split]) -> None:
    """pg_rewind rewinds the whole cluster: region-a's writes to a second database, and a
    delete in a table without a primary key (no key can name the row), cannot be
    reconciled, so the run blocks naming both instead of saying nothing was lost."""
    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "CREATE TABLE IF NOT EXISTS log (msg text)")
        _q(s.a.dsn(), "INSERT INTO log VALUES ('one'), ('two')")
        _q(s.a.dsn(), "CREATE DATABASE other")
        with psycopg.connect(s.a.dsn("other"), autocommit=True) as c:
            c.execute("CREATE TABLE t (id int PRIMARY KEY)")
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)  # the above exists on both sides
        s.b.stop()
        with psycopg.connect(s.a.dsn("other"), autocommit=True) as c:
            c.execute("INSERT INTO t VALUES (1), (2), (3)")
        _q(s.a.dsn(), "DELETE FROM log WHERE msg = 'one'")

    split = _split(workdir, on_old, lambda s: None, cut=False)
    cleanup.append(split)
    _report, _applied, accounting = _reconcile(split, workdir / "conflicts.json")
    assert not accounting.holds
    problem = accounting.problem()
    assert "database other: 3 row changes" in problem
    assert "public.log: no primary key" in problem and "deleted or updated 1 rows" in problem


def test_a_row_the_application_keeps_locked_is_retried_never_refused(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch) -> None:
    """Region-a updated five notes; on region-b the application holds one of them locked
    through every retry. Apply stops with ApplyBlocked naming the table, hands nothing to
    a human as "refused" and writes nothing of the batch; once the lock is gone a rerun
    applies all five."""
    from drorch.reconcile import ApplyBlocked
    from drorch.reconcile import _db as db_mod
    from drorch.reconcile import apply as apply_mod

    def on_old(s: Split) -> None:
        with psycopg.connect(s.a.dsn()) as c:
            c.execute("UPDATE notes SET body = 'a-' || id WHERE id <= 5")

    split = _split(workdir, on_old, lambda s: None)
    cleanup.append(split)
    monkeypatch.setattr(db_mod, "LOCK_TIMEOUT_MS", 100)
    monkeypatch.setattr(apply_mod, "RETRIES", 2)
    spec = _spec(workdir / "conflicts.jsonl")
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec, divergence_point(split.b.dsn()))
    with psycopg.connect(split.b.dsn()) as holder:
        holder.execute("SELECT 1 FROM notes WHERE id = 3 FOR UPDATE")
        with pytest.raises(ApplyBlocked, match=r"public\.notes.*55P03"):
            apply_reconciliation(report, split.b.dsn(), spec)
        assert _q(split.b.dsn(), "SELECT count(*) FROM drorch_reconcile.outcomes") == [(0,)]
        assert not (workdir / "conflicts.jsonl").exists()
        holder.rollback()
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    assert (applied.applied, applied.errors, applied.stale) == (5, 0, 0)
    assert {k: r["body"] for k, r in _rows(split.b.dsn(), "notes").items() if k <= 5} == {
        k: f"a-{k}" for k in range(1, 6)}
    assert account(report.to_dict(), applied.to_dict()).holds


def test_a_child_left_to_a_human_names_its_parents_new_key(
        workdir: Path, cleanup: list[Split]) -> None:
    """Orders collide and are re-keyed; order lines (``collisions: manual``) collide too and
    wait in the conflict file. A line whose order was re-keyed is shown with the order's
    new key (and says so), and resolving it ``old`` writes that key: never the old key,
    which on the new primary names region-b's different order."""
    def on_old(s: Split) -> None:
        for i in range(40):
            order = s.old.insert(s.a.dsn(), "orders", "amount, region", (100 + i, "a"))
            s.old.insert(s.a.dsn(), "order_lines", "order_id, sku", (order, f"a-sku-{i}"))

    def on_new(s: Split) -> None:
        first = min(s.new.insert(s.b.dsn(), "orders", "amount, region", (200 + i, "b"))
                    for i in range(5))
        for i in range(40):
            s.new.insert(s.b.dsn(), "order_lines", "order_id, sku", (first, f"b-sku-{i}"))

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    spec = ReconcileSpec(tables=[
        ReconcileTable(name="public.orders", policy="old-wins"),
        ReconcileTable(name="public.order_lines", policy="old-wins", collisions="manual")],
        conflict_file=str(conflict_file))
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec, divergence_point(split.b.dsn()))
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    assert account(report.to_dict(), applied.to_dict()).holds
    mapping = _mapping(Path(applied.mapping_file or ""))
    doc = load_conflicts(conflict_file)
    moved = [e for e in doc.conflicts if ("orders", split.old.rows["order_lines"][
        e.key["id"]]["order_id"]) in mapping]
    assert moved, "some colliding line must belong to a re-keyed order"
    for e in moved:
        old_order = split.old.rows["order_lines"][e.key["id"]]["order_id"]
        assert e.old is not None and e.old["order_id"] == mapping[("orders", old_order)]
        assert f"order_id = {mapping[('orders', old_order)]}" in e.reason
    pick = moved[0]
    lines = [json.loads(line) for line in conflict_file.read_text().splitlines()]
    for entry in lines:
        if entry.get("change_id") == pick.change_id:
            entry["resolution"] = "old"
    conflict_file.write_text("".join(json.dumps(e) + "\n" for e in lines))
    res = apply_conflict_file(conflict_file, split.b.dsn())
    assert res.applied == 1
    now = _rows(split.b.dsn(), "order_lines")[pick.key["id"]]
    assert now["order_id"] == pick.old["order_id"] != split.old.rows["order_lines"][
        pick.key["id"]]["order_id"]


def test_a_child_of_a_refused_parent_is_held_for_a_human_not_orphaned(
        workdir: Path, cleanup: list[Split]) -> None:
    """Region-a writes 40 orders with a line each; region-b writes 5 orders (so some of
    region-a's collide and are re-keyed) and adds a CHECK that refuses two of region-a's
    orders: one re-keyed, one not. Foreign keys are not checked while applying (replica
    role), so their lines would land pointing at nothing (or at region-b's own order under
    the old key): each is held and handed to a human with the reason, beside its order."""
    picked: dict[str, int] = {}

    def on_old(s: Split) -> None:
        for i in range(40):
            order = s.old.insert(s.a.dsn(), "orders", "amount, region", (100 + i, "a"))
            s.old.insert(s.a.dsn(), "order_lines", "order_id, sku", (order, f"a-sku-{i}"))

    def on_new(s: Split) -> None:
        b_ids = [s.new.insert(s.b.dsn(), "orders", "amount, region", (200 + i, "b"))
                 for i in range(5)]
        a_orders = s.old.rows["orders"]
        picked["rekeyed"] = next(k for k in b_ids if k in a_orders)
        picked["plain"] = min(k for k in a_orders if k not in b_ids)
        bad = [a_orders[k]["amount"] for k in picked.values()]
        _q(s.b.dsn(), f"ALTER TABLE orders ADD CONSTRAINT not_these CHECK (amount NOT IN "
                      f"({bad[0]}, {bad[1]}))")

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.order_lines", policy="old-wins"),
                                 ReconcileTable(name="public.orders", policy="old-wins")],
                         conflict_file=str(conflict_file))  # children listed first
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec, divergence_point(split.b.dsn()))
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    accounting = account(report.to_dict(), applied.to_dict())
    assert accounting.holds, accounting.problem()
    entries = {(e.table, int(e.key["id"])): e for e in load_conflicts(conflict_file).conflicts}
    held_lines = {k: r for k, r in split.old.rows["order_lines"].items()
                  if r["order_id"] in picked.values()}
    assert len(held_lines) == 2
    assert {("public.orders", k) for k in picked.values()} | {
        ("public.order_lines", k) for k in held_lines} == set(entries)
    for k in picked.values():
        assert "not_these" in entries[("public.orders", k)].reason
    now_lines = _rows(split.b.dsn(), "order_lines")
    orders_now = _rows(split.b.dsn(), "orders")
    for k in held_lines:
        assert "was not written here" in entries[("public.order_lines", k)].reason
        assert k not in now_lines or now_lines[k]["sku"].startswith("b-")
    for line in now_lines.values():  # nothing points at nothing
        assert line["order_id"] in orders_now, line
    assert applied.errors + applied.manual_pending == 4  # a re-keyed row not written: pending
    # The human drops the CHECK, as the reason says, and picks 'old' for the re-keyed
    # order: it goes in under its new key; region-b's order under the old key stays.
    _q(split.b.dsn(), "ALTER TABLE orders DROP CONSTRAINT not_these")
    rekeyed = picked["rekeyed"]
    lines = [json.loads(line) for line in conflict_file.read_text().splitlines()]
    for entry in lines:
        if entry.get("table") == "public.orders" and entry["key"]["id"] == rekeyed:
            entry["resolution"] = "old"
    conflict_file.write_text("".join(json.dumps(e) + "\n" for e in lines))
    res = apply_conflict_file(conflict_file, split.b.dsn())
    assert res.rekeyed == 1 and res.errors == 0
    (new_id,) = _q(split.b.dsn(), "SELECT new_id FROM drorch_reconcile.rekeyed "
                                  f"WHERE tbl = 'public.orders' AND old_id = {rekeyed}")[0]
    now = _rows(split.b.dsn(), "orders")
    assert now[rekeyed] == split.new.rows["orders"][rekeyed]  # region-b's order untouched
    assert now[new_id] == {**split.old.rows["orders"][rekeyed], "id": new_id}


def test_sequences_near_their_limit_or_descending_never_break_apply(
        workdir: Path, cleanup: list[Split]) -> None:
    """A smallserial near 32767 and a descending identity: apply moves the first no
    further than its MAXVALUE, leaves the second alone, and applies every row."""
    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "CREATE TABLE tiny (id smallserial PRIMARY KEY, v text); "
                      "SELECT setval('tiny_id_seq', 32700); "
                      "CREATE TABLE down (id int GENERATED BY DEFAULT AS IDENTITY "
                      "(INCREMENT BY -1 MAXVALUE -1 START WITH -1) PRIMARY KEY, v text)")
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        for i in range(5):
            s.old.insert(s.a.dsn(), "tiny", "v", (f"a-{i}",))
            s.old.insert(s.a.dsn(), "down", "v", (f"a-{i}",))

    split = _split(workdir, on_old, lambda s: None, cut=False)
    cleanup.append(split)
    report, applied, accounting = _reconcile(split, workdir / "conflicts.jsonl")
    assert accounting.holds, accounting.problem()
    assert applied.errors == 0
    for t in ("tiny", "down"):
        assert _rows(split.b.dsn(), t) == split.old.rows[t], t
    assert _q(split.b.dsn(), "SELECT last_value FROM pg_sequences WHERE sequencename = "
                             "'tiny_id_seq'") == [(32767,)]
    assert nextval_after(split.b.dsn(), "down_id_seq") < min(split.old.rows["down"])


def test_a_shared_sequence_and_a_listed_partitions_sequence_are_moved_past_old_keys(
        workdir: Path, cleanup: list[Split]) -> None:
    """``refunds`` takes its ids from ``orders_id_seq`` (a default naming another table's
    sequence); ``events`` is partitioned and the runbook lists one partition, so each
    partition is reconciled on its own while the sequence belongs to the parent. Both
    sides insert through the sequences: region-b's refunds collide and are re-keyed from
    the shared sequence, and afterwards neither sequence hands out a key either side used."""
    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "CREATE TABLE refunds (id bigint PRIMARY KEY "
                      "DEFAULT nextval('orders_id_seq'), note text NOT NULL); "
                      "CREATE TABLE events (id bigserial, k int NOT NULL, note text, "
                      "PRIMARY KEY (id, k)) PARTITION BY LIST (k); "
                      "CREATE TABLE events_0 PARTITION OF events FOR VALUES IN (0); "
                      "CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1)")
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        for i in range(40):
            s.old.insert(s.a.dsn(), "refunds", "note", (f"a-{i}",))
            s.old.insert(s.a.dsn(), "events", "k, note", (i % 2, f"a-{i}"))

    def on_new(s: Split) -> None:
        for i in range(3):
            s.new.insert(s.b.dsn(), "refunds", "note", (f"b-{i}",))

    split = _split(workdir, on_old, on_new, cut=False)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.events_0", policy="old-wins")],
                         conflict_file=str(conflict_file))
    report, applied, accounting = _reconcile(split, conflict_file, spec)
    assert accounting.holds, accounting.problem()
    assert applied.errors == 0 and applied.manual_pending == 0
    assert {"public.orders_id_seq", "public.events_id_seq"} <= set(applied.sequences_advanced)
    refunds = _rows(split.b.dsn(), "refunds")
    assert sorted(r["note"] for r in refunds.values()) == sorted(
        [f"a-{i}" for i in range(40)] + [f"b-{i}" for i in range(3)])
    assert applied.rekeyed == 3, "region-b's 3 refunds took keys region-a used"
    for b_id, row in split.new.rows["refunds"].items():
        assert refunds[b_id] == row
    assert _rows(split.b.dsn(), "events") == split.old.rows["events"]
    assert nextval_after(split.b.dsn(), "orders_id_seq") > max(refunds)
    assert nextval_after(split.b.dsn(), "events_id_seq") > max(split.old.rows["events"])


def test_a_resolution_on_a_locked_row_is_retried_never_refused(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch) -> None:
    """Both regions changed order 3 (policy manual); a human resolves it 'old' while the
    application holds the row. Applying the file stops with ApplyBlocked naming the file
    and records nothing; once the lock is gone, applying it again writes region-a's row.
    A resolution the new primary refuses is said in the file, with the database's error."""
    from drorch.reconcile import ApplyBlocked
    from drorch.reconcile import _db as db_mod
    from drorch.reconcile import apply as apply_mod

    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "UPDATE orders SET amount = 1003, region = 'a' WHERE id = 3; "
                      "UPDATE orders SET amount = 1004, region = 'a' WHERE id = 4")

    def on_new(s: Split) -> None:
        _q(s.b.dsn(), "UPDATE orders SET amount = 2003, region = 'b' WHERE id = 3; "
                      "UPDATE orders SET amount = 2004, region = 'b' WHERE id = 4")

    split = _split(workdir, on_old, on_new)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    report, applied, accounting = _reconcile(split, conflict_file)
    assert accounting.holds and applied.manual_pending == 2
    lines = [json.loads(line) for line in conflict_file.read_text().splitlines()]
    for entry in lines[1:]:
        entry["resolution"] = "old"
    conflict_file.write_text("".join(json.dumps(e) + "\n" for e in lines))
    monkeypatch.setattr(db_mod, "LOCK_TIMEOUT_MS", 100)
    monkeypatch.setattr(apply_mod, "RETRIES", 2)
    with psycopg.connect(split.b.dsn()) as holder:
        holder.execute("SELECT 1 FROM orders WHERE id = 3 FOR UPDATE")
        with pytest.raises(ApplyBlocked, match=r"conflicts\.jsonl.*55P03.*apply the file"):
            apply_conflict_file(conflict_file, split.b.dsn())
        holder.rollback()
    assert _q(split.b.dsn(), "SELECT count(*) FROM drorch_reconcile.outcomes "
                             "WHERE outcome LIKE 'resolved%'") == [(0,)]
    _q(split.b.dsn(), "ALTER TABLE orders ADD CONSTRAINT small CHECK (amount < 1004) NOT VALID")
    res = apply_conflict_file(conflict_file, split.b.dsn())
    assert (res.applied, res.errors) == (1, 1)
    assert _rows(split.b.dsn(), "orders")[3]["amount"] == 1003
    assert _rows(split.b.dsn(), "orders")[4]["amount"] == 2004
    (entry,) = load_conflicts(conflict_file).conflicts
    assert entry.key == {"id": 4} and entry.resolution == "old"
    assert "23514" in entry.reason and "small" in entry.reason


@pytest.mark.parametrize("refuse", [False, True], ids=["all-written", "one-boss-refused"])
def test_a_self_referencing_table_writes_parents_before_children_and_holds_a_refused_ones(
        workdir: Path, cleanup: list[Split], refuse: bool) -> None:
    """``staff.manager_id`` names another ``staff`` row. Region-a hires two managers and
    three reports under each (and one report under a report), all with default ids;
    region-b hires two (so region-a's first rows collide and are re-keyed) and adds a
    CHECK that refuses one of region-a's managers. The other manager's reports follow
    it to its new key and are written with it, in the same batch; the refused manager's
    reports (and theirs) are held for a human, never written pointing at nothing."""
    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "CREATE TABLE staff (id bigserial PRIMARY KEY, name text NOT NULL, "
                      "manager_id bigint REFERENCES staff)")
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        for m in ("kept", "refused"):
            boss = s.old.insert(s.a.dsn(), "staff", "name", (f"boss-{m}",))
            first = None
            for i in range(3):
                r = s.old.insert(s.a.dsn(), "staff", "name, manager_id", (f"{m}-{i}", boss))
                first = first or r
            s.old.insert(s.a.dsn(), "staff", "name, manager_id", (f"{m}-sub", first))

    def on_new(s: Split) -> None:
        for i in range(2):
            s.new.insert(s.b.dsn(), "staff", "name", (f"b-{i}",))
        if refuse:
            _q(s.b.dsn(), "ALTER TABLE staff ADD CONSTRAINT no_refused CHECK "
                          "(name <> 'boss-refused')")

    split = _split(workdir, on_old, on_new, cut=False)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    report, applied, accounting = _reconcile(split, conflict_file)
    assert accounting.holds, accounting.problem()
    mapping = _mapping(Path(applied.mapping_file or ""))
    assert len(mapping) == 2, "region-a's first two rows collide with region-b's"
    old = split.old.rows["staff"]
    by_name = {r["name"]: k for k, r in old.items()}
    refused = {by_name[n] for n in ("boss-refused", "refused-0", "refused-1", "refused-2",
                                    "refused-sub")} if refuse else set()
    assert conflict_file.exists() == refuse
    if refuse:
        entries = {int(e.key["id"]): e for e in load_conflicts(conflict_file).conflicts}
        assert set(entries) == refused
        assert "no_refused" in entries[by_name["boss-refused"]].reason
        for k in refused - {by_name["boss-refused"]}:
            assert "was not written here" in entries[k].reason, entries[k].reason
    now = _rows(split.b.dsn(), "staff")
    for k, row in old.items():
        if k in refused:
            continue
        want = {**row, "id": mapping.get(("staff", k), k)}
        if row["manager_id"] is not None:
            want["manager_id"] = mapping.get(("staff", row["manager_id"]), row["manager_id"])
        assert now.get(want["id"]) == want, (row, now.get(want["id"]))
    for row in now.values():  # nothing points at nothing
        assert row["manager_id"] is None or row["manager_id"] in now, row
    for k, row in split.new.rows["staff"].items():
        assert now[k] == row


def test_rows_that_name_each_other_across_tables_are_written_together(
        workdir: Path, cleanup: list[Split]) -> None:
    """``teams.lead_id`` names a person and ``people.team_id`` a team (a foreign-key
    cycle, the lead's key deferred). Region-a makes three teams, each with its lead, one
    transaction each; region-b makes one of each, so region-a's first rows collide and
    are re-keyed. Neither table can go first: the rows are written together in one
    transaction, keys carried, and nothing points at nothing."""
    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "CREATE TABLE teams (id bigserial PRIMARY KEY, name text NOT NULL, "
                      "lead_id bigint); CREATE TABLE people (id bigserial PRIMARY KEY, "
                      "name text NOT NULL, team_id bigint REFERENCES teams); "
                      "ALTER TABLE teams ADD FOREIGN KEY (lead_id) REFERENCES people "
                      "DEFERRABLE INITIALLY DEFERRED")
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        for i in range(3):
            with psycopg.connect(s.a.dsn()) as c:
                team = c.execute("INSERT INTO teams (name) VALUES (%s) RETURNING id",
                                 (f"a-team-{i}",)).fetchone()[0]  # type: ignore[index]
                lead = c.execute("INSERT INTO people (name, team_id) VALUES (%s, %s) "
                                 "RETURNING id", (f"a-lead-{i}", team)).fetchone()[0]  # type: ignore[index]
                c.execute("UPDATE teams SET lead_id = %s WHERE id = %s", (lead, team))
            s.old.rows.setdefault("teams", {})[team] = {"id": team, "name": f"a-team-{i}",
                                                         "lead_id": lead}
            s.old.rows.setdefault("people", {})[lead] = {"id": lead, "name": f"a-lead-{i}",
                                                          "team_id": team}

    def on_new(s: Split) -> None:
        s.new.insert(s.b.dsn(), "teams", "name", ("b-team",))
        s.new.insert(s.b.dsn(), "people", "name", ("b-person",))

    split = _split(workdir, on_old, on_new, cut=False)
    cleanup.append(split)
    conflict_file = workdir / "conflicts.jsonl"
    report, applied, accounting = _reconcile(split, conflict_file)
    assert accounting.holds, accounting.problem()
    assert not conflict_file.exists(), conflict_file.read_text()
    mapping = _mapping(Path(applied.mapping_file or ""))
    assert {("teams", 1), ("people", 1)} <= set(mapping)
    teams, people = _rows(split.b.dsn(), "teams"), _rows(split.b.dsn(), "people")
    for old_id, row in split.old.rows["teams"].items():
        new_id = mapping.get(("teams", old_id), old_id)
        lead = mapping.get(("people", row["lead_id"]), row["lead_id"])
        assert teams[new_id] == {**row, "id": new_id, "lead_id": lead}
        assert people[lead]["team_id"] == new_id and people[lead]["name"] == row[
            "name"].replace("team", "lead")
    for t in teams.values():
        assert t["lead_id"] is None or t["lead_id"] in people, t
    for person in people.values():
        assert person["team_id"] is None or person["team_id"] in teams, person
    assert teams[1]["name"] == "b-team" and people[1]["name"] == "b-person"


def test_a_table_the_old_primary_dropped_after_the_split_blocks_the_rewind(
        workdir: Path, cleanup: list[Split]) -> None:
    """Region-a writes three notes, then drops ``notes``; it also fills and drops a table
    it created after the split. The notes' writes cannot be applied (and the drop is not
    carried): the invariant fails naming them, so nothing rewinds region-a. The table
    made and dropped after the split alone would not block."""
    def on_old(s: Split) -> None:
        for i in range(3):
            s.old.insert(s.a.dsn(), "notes", "body", (f"a-{i}",))
        _q(s.a.dsn(), "CREATE TABLE scratch (id int PRIMARY KEY); "
                      "INSERT INTO scratch SELECT generate_series(1, 5)")
        _q(s.a.dsn(), "DROP TABLE scratch; DROP TABLE notes")

    split = _split(workdir, on_old, lambda s: None)
    cleanup.append(split)
    report, _applied, accounting = _reconcile(split, workdir / "conflicts.jsonl")
    assert report.method == "wal" and not accounting.holds
    (problem,) = [p for p in report.problems if "no longer there" in p]
    assert "3 row changes" in problem
    assert "Nothing was rewound" in accounting.problem()
