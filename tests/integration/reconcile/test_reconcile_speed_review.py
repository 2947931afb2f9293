"""A review that tried to break the reconcile's speed-ups (server-side WAL fields, WAL
decoded in pieces, candidates read by TID range, keys-only bulk reads, the update set
named by xmin, the fast paths in ``touched_keys``), with ordinary traffic and hostile
input on the old primary. Each case checks the promise: every row the old primary
committed is on the new primary afterwards exactly as the old primary had it (the new
primary writes nothing of its own here unless said), and the accounting holds. Most
cases run twice: as sets (``bulk.MIN_ROWS`` lowered) and row by row."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drorch.reconcile import (
    ReconcileSpec,
    apply_reconciliation,
    bulk,
    divergence_point,
    find_divergence,
    wait_caught_up,
    walread,
)
from drorch.reconcile.accounting import account
from drorch.reconcile.conflicts import load as load_conflicts
from drorch.reconcile.find import blocked
from tests.integration.reconcile.test_reconcile_accounting import (
    Split,
    _q,
    _split,
    cleanup,  # noqa: F401 - fixture
    workdir,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.postgres

SETS = pytest.mark.parametrize("min_rows", [5, 1_000_000], ids=["sets", "rows"])

Step = str | Callable[[str], None]


def _table(dsn: str, table: str) -> list[str]:
    """Every row of ``table`` as ``to_jsonb`` text, sorted (works for any key)."""
    return sorted(str(r[0]) for r in _q(dsn, f"SELECT to_jsonb(zz)::text FROM {table} zz"))


def _run_steps(dsn: str, steps: list[Step]) -> None:
    for s in steps:
        if isinstance(s, str):
            _q(dsn, s)
        else:
            s(dsn)


def _case(workdir: Path, cleanup: list[Split], schema: str, old: list[Step],  # noqa: F811
          new: list[Step] | None = None) -> tuple[Split, Any, Any, Any]:
    """``schema`` replicated; the replica cut off; ``old`` on the old primary; split;
    ``new`` on the new primary; find, apply (old-wins), account."""
    def on_old(s: Split) -> None:
        _q(s.a.dsn(), schema)
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        _run_steps(s.a.dsn(), old)

    split = _split(workdir, on_old, lambda s: _run_steps(s.b.dsn(), new or []), cut=False)
    cleanup.append(split)
    cf = workdir / "conflicts.jsonl"
    spec = ReconcileSpec(conflict_file=str(cf), default_policy="old-wins")
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec,
                             divergence_point(split.b.dsn()))
    assert not blocked(report), (report.problems, report.unconfigured_tables)
    assert report.method == "wal", (report.problems, report.to_dict()["method_reason"])
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    return split, report, applied, account(report.to_dict(), applied.to_dict())


def _same(split: Split, *tables: str) -> None:
    for t in tables:
        a, b = _table(split.a.dsn(), t), _table(split.b.dsn(), t)
        assert b == a, (t, sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5])


def _holds_and_same(workdir: Path, cleanup: list[Split], schema: str,  # noqa: F811
                    old: list[Step], *tables: str) -> Split:
    """:func:`_case` without writes on the new primary: the accounting holds and each
    table is on the new primary exactly as on the old one."""
    split, _report, _applied, accounting = _case(workdir, cleanup, schema, old)
    assert accounting.holds, accounting.problem()
    _same(split, *tables)
    return split


def _set_ops(split: Split) -> set[tuple[str, str]]:
    return {(str(t), str(o)) for t, o in _q(
        split.b.dsn(), "SELECT tbl, op FROM drorch_reconcile.bulk_sets")}


def _pieces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Spy: the (start, end) of every piece of WAL decoded with the records query."""
    seen: list[tuple[str, str]] = []
    real = walread._query

    def spy(conn: Any, q: str, params: Any) -> Any:
        if q is walread._RECORDS_SQL:
            seen.append((params["start"], params["end"]))
        return real(conn, q, params)

    monkeypatch.setattr(walread, "_query", spy)
    return seen


# ---------------------------------------------------------------------------------------
# WAL decoded in pieces: a huge record across the cuts, full-page images, many pieces

T = "CREATE TABLE t (id bigint PRIMARY KEY, v text NOT NULL); " \
    "INSERT INTO t SELECT g, 'base ' || g FROM generate_series(1, 400) g;"


def _big_message(dsn: str) -> None:
    # one ~300 kB WAL record (pg_logical_emit_message, transactional) between inserts of
    # the same transaction: several cuts fall inside it
    _q(dsn, "BEGIN; INSERT INTO t SELECT g, 'before msg' FROM generate_series(3000, 3049) g; "
            "SELECT pg_logical_emit_message(true, 'drorch-test', repeat('m', 300000)); "
            "INSERT INTO t SELECT g, 'after msg' FROM generate_series(3050, 3099) g; COMMIT")


PIECES_OLD: list[Step] = [
    "INSERT INTO t SELECT g, 'a-ins ' || g FROM generate_series(1000, 1299) g",
    "CHECKPOINT",  # the next changes carry full-page images
    "UPDATE t SET v = 'a-upd ' || id WHERE id <= 150",
    _big_message,
    "DELETE FROM t WHERE id BETWEEN 151 AND 200",
    "CHECKPOINT",
    *[f"INSERT INTO t SELECT g, 'a-late ' || g FROM generate_series({lo}, {lo + 39}) g"
      for lo in range(5000, 5400, 40)],
    "UPDATE t SET v = 'a-upd2 ' || id WHERE id BETWEEN 1000 AND 1050",
    "DELETE FROM t WHERE id BETWEEN 1100 AND 1120",
]


@SETS
def test_wal_in_many_pieces_with_a_huge_record_across_cuts(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    monkeypatch.setattr(walread, "CHUNK_BYTES", 24 << 10)
    pieces = _pieces(monkeypatch)
    split, report, applied, accounting = _case(workdir, cleanup, T, PIECES_OLD)
    assert len(pieces) >= 4, pieces  # the old side really was read in pieces
    assert accounting.holds, accounting.problem()
    _same(split, "t")
    tr = report.table("public.t").counts()
    assert tr["rows_diverged"] == 300 + 100 + 150 + 50 + 400 - 21, tr


# ---------------------------------------------------------------------------------------
# Line pointers reused (VACUUM, HOT pruning), HOT updates inside candidate blocks

LP = "CREATE TABLE lp (id bigint PRIMARY KEY, v text NOT NULL) WITH (fillfactor = 100); " \
     "INSERT INTO lp SELECT g, 'base ' || g FROM generate_series(1, 600) g;"


def _hot_churn(dsn: str) -> None:
    # many HOT updates of the same rows, one transaction each: each page access may prune
    # the chains, freeing heap-only slots that the next inserts on the page can take
    for i in range(6):
        _q(dsn, f"UPDATE lp SET v = 'hot {i} ' || id WHERE id BETWEEN 300 AND 310")
        _q(dsn, f"INSERT INTO lp SELECT g, 'mid {i}' FROM generate_series({7000 + 10 * i}, "
                f"{7009 + 10 * i}) g")


LP_OLD: list[Step] = [
    "DELETE FROM lp WHERE id BETWEEN 1 AND 80",
    "VACUUM lp",  # frees their line pointers: the inserts below reuse them
    "INSERT INTO lp SELECT g, 'reuse ' || g FROM generate_series(1000, 1149) g",
    _hot_churn,
    "DELETE FROM lp WHERE id BETWEEN 1000 AND 1019",
    "VACUUM lp",
    "INSERT INTO lp SELECT g, 'reuse2 ' || g FROM generate_series(2000, 2059) g",
    "UPDATE lp SET v = 'in-block ' || id WHERE id BETWEEN 1030 AND 1040",
]


@SETS
def test_line_pointers_reused_after_vacuum_and_hot_pruning(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    split = _holds_and_same(workdir, cleanup, LP, LP_OLD, "lp")
    if min_rows == 5:
        assert ("public.lp", "insert") in _set_ops(split)


# ---------------------------------------------------------------------------------------
# Aborted transactions, subtransactions, INSERT ON CONFLICT in the same blocks as bulk
# inserts; a non-HOT update whose new version lands among bulk inserts

AB = "CREATE TABLE ab (id bigint PRIMARY KEY, v text NOT NULL, pad text) " \
     "WITH (fillfactor = 100); " \
     "INSERT INTO ab SELECT g, 'base ' || g, repeat('p', 40) FROM generate_series(1, 300) g;"

AB_OLD: list[Step] = [
    "BEGIN; INSERT INTO ab SELECT g, 'sub-kept ' || g FROM generate_series(1000, 1049) g; "
    "SAVEPOINT s1; INSERT INTO ab SELECT g, 'sub-undone ' || g FROM generate_series(1050, 1099) g; "
    "UPDATE ab SET v = 'undone upd' WHERE id <= 20; ROLLBACK TO SAVEPOINT s1; "
    "INSERT INTO ab SELECT g, 'sub-after ' || g FROM generate_series(1100, 1149) g; "
    "SAVEPOINT s2; INSERT INTO ab SELECT g, 'sub-released ' || g "
    "FROM generate_series(1150, 1199) g; UPDATE ab SET v = 'sub upd ' || id WHERE id <= 10; "
    "RELEASE SAVEPOINT s2; COMMIT",
    "BEGIN; INSERT INTO ab SELECT g, 'aborted ' || g FROM generate_series(1200, 1399) g; "
    "DELETE FROM ab WHERE id BETWEEN 100 AND 120; ROLLBACK",
    "INSERT INTO ab SELECT g, 'after abort ' || g FROM generate_series(1400, 1499) g",
    # non-HOT updates (base blocks are full): the new versions land among the inserts
    "BEGIN; INSERT INTO ab SELECT g, 'mix ' || g FROM generate_series(1500, 1529) g; "
    "UPDATE ab SET v = 'moved ' || id, pad = repeat('q', 60) WHERE id BETWEEN 200 AND 215; "
    "INSERT INTO ab SELECT g, 'mix ' || g FROM generate_series(1530, 1559) g; COMMIT",
    "INSERT INTO ab SELECT g, 'upsert new ' || g FROM generate_series(1590, 1610) g "
    "ON CONFLICT (id) DO UPDATE SET v = 'upsert hit ' || excluded.id",
    "INSERT INTO ab SELECT g, 'nothing' FROM generate_series(1, 5) g ON CONFLICT DO NOTHING",
    "INSERT INTO ab SELECT g, 'upsert base ' || g FROM generate_series(250, 260) g "
    "ON CONFLICT (id) DO UPDATE SET v = 'upsert base hit ' || excluded.id",
    "DELETE FROM ab WHERE id BETWEEN 1400 AND 1410",
]


@SETS
def test_aborts_subtransactions_upserts_and_updates_among_bulk_inserts(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    split = _holds_and_same(workdir, cleanup, AB, AB_OLD, "ab")
    if min_rows == 5:
        assert ("public.ab", "insert") in _set_ops(split)
    b = {r[0]: r[1] for r in _q(split.b.dsn(), "SELECT id, v FROM ab")}
    assert not set(range(1050, 1100)) & set(b) and not set(range(1200, 1400)) & set(b)
    assert b[5] == "sub upd 5" and b[15] == "base 15"


# ---------------------------------------------------------------------------------------
# Partitions and two tables; rows moved between partitions (a key change)

PT = """
CREATE TABLE pt (id bigint PRIMARY KEY, v text NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE pt_lo PARTITION OF pt FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE pt_hi PARTITION OF pt FOR VALUES FROM (1000) TO (MAXVALUE);
INSERT INTO pt SELECT g, 'base ' || g FROM generate_series(1, 200) g;
INSERT INTO pt SELECT g, 'base ' || g FROM generate_series(1001, 1200) g;
CREATE TABLE other (id bigint PRIMARY KEY, v text NOT NULL);
INSERT INTO other SELECT g, 'base ' || g FROM generate_series(1, 200) g;
"""

PT_OLD: list[Step] = [
    "BEGIN; INSERT INTO pt SELECT g, 'a lo ' || g FROM generate_series(300, 399) g; "
    "INSERT INTO other SELECT g, 'a other ' || g FROM generate_series(300, 399) g; "
    "INSERT INTO pt SELECT g, 'a hi ' || g FROM generate_series(1300, 1399) g; COMMIT",
    "UPDATE pt SET id = id + 5000, v = 'moved' WHERE id BETWEEN 1 AND 15",
    "UPDATE pt SET v = 'a upd' WHERE id BETWEEN 1001 AND 1040 OR id BETWEEN 20 AND 60",
    "UPDATE other SET v = 'a upd' WHERE id BETWEEN 20 AND 60",
    "DELETE FROM pt WHERE id BETWEEN 1100 AND 1120 OR id BETWEEN 100 AND 110",
    "DELETE FROM other WHERE id BETWEEN 100 AND 110",
]


@SETS
def test_partitions_two_tables_and_rows_moved_between_partitions(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    split = _holds_and_same(workdir, cleanup, PT, PT_OLD, "pt", "other")
    if min_rows == 5:
        assert {("public.pt", "update"), ("public.pt", "delete"),
                ("public.pt", "insert")} <= _set_ops(split)


# ---------------------------------------------------------------------------------------
# Keys: REPLICA IDENTITY FULL (key change logged as an old tuple, not an old key), a key
# stored not first, a dropped column before it, smallint, composite and text keys, NULLs

KEYS = """
CREATE TABLE rif (id bigint PRIMARY KEY, v text);
ALTER TABLE rif REPLICA IDENTITY FULL;
INSERT INTO rif SELECT g, 'base ' || g FROM generate_series(1, 60) g;
CREATE TABLE nf (v text, n int, id int PRIMARY KEY);
INSERT INTO nf SELECT CASE WHEN g % 3 = 0 THEN NULL ELSE 'base ' || g END, g, g
  FROM generate_series(1, 60) g;
CREATE TABLE dc (junk text, id bigint PRIMARY KEY, v text);
INSERT INTO dc SELECT 'junk', g, 'base ' || g FROM generate_series(1, 60) g;
ALTER TABLE dc DROP COLUMN junk;
CREATE TABLE s2 (id smallint PRIMARY KEY, v text);
INSERT INTO s2 SELECT g, CASE WHEN g % 2 = 0 THEN NULL ELSE 'base' END
  FROM generate_series(-30, 30) g;
CREATE TABLE ck (a int, b text, v text, PRIMARY KEY (a, b));
INSERT INTO ck SELECT g % 7, 'k' || g, 'base' FROM generate_series(1, 60) g;
CREATE TABLE tk (id text PRIMARY KEY, v text);
INSERT INTO tk SELECT 'key ' || g, 'base' FROM generate_series(1, 60) g;
"""

KEYS_OLD: list[Step] = [
    "UPDATE rif SET id = id + 1000, v = 'moved' WHERE id <= 15",
    "UPDATE rif SET v = 'a upd' WHERE id BETWEEN 20 AND 35",
    "DELETE FROM rif WHERE id BETWEEN 40 AND 50",
    "INSERT INTO rif SELECT g, NULL FROM generate_series(2000, 2020) g",
    "UPDATE nf SET v = NULL WHERE id BETWEEN 1 AND 12",
    "DELETE FROM nf WHERE id BETWEEN 20 AND 35",
    "INSERT INTO nf SELECT NULL, g, g FROM generate_series(100, 130) g",
    "UPDATE nf SET id = id + 500 WHERE id BETWEEN 40 AND 45",
    "DELETE FROM dc WHERE id BETWEEN 1 AND 20",
    "UPDATE dc SET v = 'a upd' WHERE id BETWEEN 30 AND 45",
    "INSERT INTO dc SELECT g, NULL FROM generate_series(100, 125) g",
    "UPDATE dc SET id = -id WHERE id BETWEEN 50 AND 55",
    "DELETE FROM s2 WHERE id BETWEEN -30 AND -15",
    "UPDATE s2 SET v = 'a upd' WHERE id BETWEEN 0 AND 20",
    "INSERT INTO s2 SELECT g, NULL FROM generate_series(100, 130) g",
    "DELETE FROM ck WHERE a = 3",
    "UPDATE ck SET v = 'a upd' WHERE a = 4",
    "UPDATE ck SET b = b || '-moved' WHERE a = 5",
    "INSERT INTO ck SELECT 100, 'n' || g, NULL FROM generate_series(1, 20) g",
    "DELETE FROM tk WHERE id LIKE 'key 1%'",
    "UPDATE tk SET v = 'a upd' WHERE id LIKE 'key 2%'",
    "INSERT INTO tk SELECT 'new ' || g, NULL FROM generate_series(1, 20) g",
]


@SETS
def test_keys_not_first_dropped_before_smallint_composite_text_and_replica_identity_full(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    _holds_and_same(workdir, cleanup, KEYS, KEYS_OLD, "nf", "dc", "s2", "ck", "tk", "rif")


# ---------------------------------------------------------------------------------------
# The fast paths of touched_keys: a pre-split tuple deleted and its key taken again, by an
# insert or by another row's key change; a lone update then a delete

FP = "CREATE TABLE fp (id bigint PRIMARY KEY, v text NOT NULL); " \
     "INSERT INTO fp SELECT g, 'base ' || g FROM generate_series(1, 100) g;"

FP_OLD: list[Step] = [
    "DELETE FROM fp WHERE id BETWEEN 1 AND 10",
    "INSERT INTO fp SELECT g, 'again ' || g FROM generate_series(1, 5) g",
    "UPDATE fp SET id = id - 14, v = 'took a freed key' WHERE id BETWEEN 20 AND 24",
    "UPDATE fp SET v = 'lone upd' WHERE id BETWEEN 30 AND 45",
    "DELETE FROM fp WHERE id BETWEEN 40 AND 45",
    "DELETE FROM fp WHERE id BETWEEN 1 AND 3",
    "INSERT INTO fp SELECT g, 'third ' || g FROM generate_series(1, 2) g",
    "UPDATE fp SET id = id + 1000 WHERE id BETWEEN 50 AND 60",
    "UPDATE fp SET id = id - 1000 + 200 WHERE id BETWEEN 1050 AND 1055",
    "DELETE FROM fp WHERE id BETWEEN 61 AND 80",
]


@SETS
def test_deleted_keys_taken_again_and_lone_updates(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    _holds_and_same(workdir, cleanup, FP, FP_OLD, "fp")


# ---------------------------------------------------------------------------------------
# The update set against application writes on the new primary after it was read

UPD = "CREATE TABLE us (id bigint PRIMARY KEY, v text NOT NULL); " \
      "INSERT INTO us SELECT g, 'base ' || g FROM generate_series(1, 100) g;"

UPD_OLD: list[Step] = ["UPDATE us SET v = 'a upd ' || id WHERE id <= 40",
                       "DELETE FROM us WHERE id BETWEEN 41 AND 60"]


@pytest.mark.parametrize("app", ["same-value", "other-value", "delete-reinsert",
                                 "touch-deleted"])
def test_update_set_against_application_writes_after_the_read(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        app: str) -> None:
    """Between the read of the new primary's versions and the set's writes, the
    application writes a lane row: the same value the old side has, another value, a
    delete and re-insert of the same row, or an update of a row the old side deleted.
    No application write may be overwritten or dropped unseen."""
    monkeypatch.setattr(bulk, "MIN_ROWS", 5)
    holder: dict[str, Split] = {}
    real = bulk.apply_changed
    sql_of = {
        "same-value": "UPDATE us SET v = 'a upd 7' WHERE id = 7",
        "other-value": "UPDATE us SET v = 'app on b' WHERE id = 7",
        "delete-reinsert": "DELETE FROM us WHERE id = 7; "
                           "INSERT INTO us VALUES (7, 'app on b')",
        "touch-deleted": "UPDATE us SET v = 'app on b' WHERE id = 50",
    }

    def app_writes(*a: Any, **k: Any) -> Any:
        _q(holder["s"].b.dsn(), sql_of[app])
        return real(*a, **k)

    monkeypatch.setattr(bulk, "apply_changed", app_writes)

    def on_old(s: Split) -> None:
        holder["s"] = s
        _q(s.a.dsn(), UPD)
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        _run_steps(s.a.dsn(), UPD_OLD)

    split = _split(workdir, on_old, lambda s: None, cut=False)
    cleanup.append(split)
    cf = workdir / "c.jsonl"
    spec = ReconcileSpec(conflict_file=str(cf))  # manual: a conflict is held for a human
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec,
                             divergence_point(split.b.dsn()))
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    accounting = account(report.to_dict(), applied.to_dict())
    assert accounting.holds, accounting.problem()
    b = {r[0]: r[1] for r in _q(split.b.dsn(), "SELECT id, v FROM us")}
    a = {r[0]: r[1] for r in _q(split.a.dsn(), "SELECT id, v FROM us")}
    held = {e.key["id"] for e in load_conflicts(cf).conflicts} if cf.exists() else set()
    hit = 50 if app == "touch-deleted" else 7
    if app != "same-value":
        # the application's write stands, and the old side's version is held for a human
        assert b.get(hit) == "app on b", b.get(hit)
        assert hit in held, held
    for k in set(a) | set(b) | set(range(41, 61)):
        if k != hit:
            assert b.get(k) == a.get(k), (k, a.get(k), b.get(k))


# ---------------------------------------------------------------------------------------
# Transactions open across the split (their early records before it: the lookback), with
# COPY (multi-insert records), and a partition whose columns lie in another order

LB = """
CREATE TABLE lb (id bigint PRIMARY KEY, v text NOT NULL);
INSERT INTO lb SELECT g, 'base ' || g FROM generate_series(1, 200) g;
CREATE TABLE lpp (id bigint NOT NULL, v text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
CREATE TABLE lpp_a PARTITION OF lpp FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE lpp_b (junk int, v text, id bigint NOT NULL);
ALTER TABLE lpp_b DROP COLUMN junk;
ALTER TABLE lpp ATTACH PARTITION lpp_b FOR VALUES FROM (1000) TO (MAXVALUE);
INSERT INTO lpp SELECT g, 'base ' || g FROM generate_series(1, 100) g;
INSERT INTO lpp SELECT g, 'base ' || g FROM generate_series(1001, 1100) g;
"""


@SETS
def test_transactions_open_across_the_split_copy_and_reordered_partition(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    import psycopg
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)

    def on_old(s: Split) -> None:
        a = s.a.dsn()
        _q(a, LB)
        wait_caught_up(s.b.dsn(), a, 60)
        early = psycopg.connect(a)
        only_before = psycopg.connect(a)
        try:
            early.execute("INSERT INTO lb SELECT g, 'early ' || g FROM generate_series(500, 579) g")
            early.execute("UPDATE lb SET v = 'early upd' WHERE id <= 30")
            early.execute("DELETE FROM lb WHERE id BETWEEN 31 AND 40")
            early.execute("DELETE FROM lpp WHERE id BETWEEN 1001 AND 1010")
            with early.cursor().copy("COPY lb (id, v) FROM STDIN") as cp:
                for i in range(600, 700):
                    cp.write_row((i, f"early copy {i}"))
            only_before.execute("INSERT INTO lpp SELECT g, 'only before ' || g "
                                "FROM generate_series(1200, 1260) g")
            only_before.execute("UPDATE lpp SET v = 'only before upd' WHERE id BETWEEN 1020 "
                                "AND 1040 OR id BETWEEN 1 AND 10")
            _q(a, "INSERT INTO lb VALUES (9999, 'barrier')")  # a commit b receives
            wait_caught_up(s.b.dsn(), a, 60)
            s.b.stop()
            early.execute("INSERT INTO lb SELECT g, 'late ' || g FROM generate_series(800, 879) g")
            early.execute("UPDATE lb SET v = 'late upd' WHERE id BETWEEN 500 AND 520 "
                          "OR id BETWEEN 20 AND 50")
            with early.cursor().copy("COPY lpp (id, v) FROM STDIN") as cp:
                for i in range(1500, 1600):
                    cp.write_row((i, f"late copy {i}"))
            early.commit()
            only_before.commit()
        finally:
            early.close()
            only_before.close()
        _q(a, "DELETE FROM lpp WHERE id BETWEEN 1550 AND 1560 OR id BETWEEN 50 AND 60")

    split = _split(workdir, on_old, lambda s: None, cut=False)
    cleanup.append(split)
    cf = workdir / "conflicts.jsonl"
    spec = ReconcileSpec(conflict_file=str(cf), default_policy="old-wins")
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec,
                             divergence_point(split.b.dsn()))
    assert not blocked(report), (report.problems, report.unconfigured_tables)
    assert report.method == "wal", (report.problems, report.to_dict()["method_reason"])
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    accounting = account(report.to_dict(), applied.to_dict())
    assert accounting.holds, accounting.problem()
    _same(split, "lb", "lpp")


# ---------------------------------------------------------------------------------------
# A trigger enabled ALWAYS (fires under session_replication_role = replica) that skips the
# row (RETURN NULL): on a partition (not on the partitioned table the writes go through)
# or on a plain table


def _skip_trigger(table: str) -> str:
    return ("CREATE FUNCTION skip_row() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RETURN NULL; END$$; "
            f"CREATE TRIGGER skip_row BEFORE UPDATE OR DELETE ON {table} FOR EACH ROW "
            f"EXECUTE FUNCTION skip_row(); ALTER TABLE {table} ENABLE ALWAYS TRIGGER skip_row")


@pytest.mark.parametrize("where", ["partition", "table"])
@SETS
def test_always_trigger_that_skips_rows_does_not_silently_lose_updates(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int, where: str) -> None:
    """A BEFORE UPDATE/DELETE trigger enabled ALWAYS (it fires under
    session_replication_role = replica) that returns NULL, on the table or one partition:
    no set is taken (bulk.ineligible looks at every partition), and the row path counts
    what each statement wrote, so the skipped rows go to a human with the reason."""
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    table, trig = ("pt", "pt_lo") if where == "partition" else ("other", "other")
    old: list[Step] = [f"UPDATE {table} SET v = 'a upd ' || id WHERE id BETWEEN 20 AND 60",
                       f"DELETE FROM {table} WHERE id BETWEEN 100 AND 110"]
    split, report, applied, accounting = _case(workdir, cleanup, PT, old, [_skip_trigger(trig)])
    a = {r[0]: r[1] for r in _q(split.a.dsn(), f"SELECT id, v FROM {table}")}
    b = {r[0]: r[1] for r in _q(split.b.dsn(), f"SELECT id, v FROM {table}")}
    cf = workdir / "conflicts.jsonl"
    held = {e.key["id"] for e in load_conflicts(cf).conflicts} if cf.exists() else set()
    errors = applied.to_dict()["errors"]
    lost = {k for k in set(range(20, 61)) | set(range(100, 111))
            if b.get(k) != a.get(k) and k not in held}
    # every write either there, held for a human, or reported as an error
    assert not lost or errors, (sorted(lost), applied.to_dict()["outcomes"])
    assert accounting.holds, accounting.problem()


@SETS
def test_update_set_through_a_partition_with_an_always_update_trigger(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    """Only updates on the old side; the partition's ALWAYS trigger skips updates alone.
    The update set names the version read: a row the trigger kept as it was still holds
    that version, so the count afterwards takes it for a row that needed no change."""
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    trig = _skip_trigger("pt_lo").replace("BEFORE UPDATE OR DELETE", "BEFORE UPDATE")
    split, report, applied, accounting = _case(
        workdir, cleanup, PT, ["UPDATE pt SET v = 'a upd ' || id WHERE id BETWEEN 20 AND 60"],
        [trig])
    a = {r[0]: r[1] for r in _q(split.a.dsn(), "SELECT id, v FROM pt")}
    b = {r[0]: r[1] for r in _q(split.b.dsn(), "SELECT id, v FROM pt")}
    cf = workdir / "conflicts.jsonl"
    held = {e.key["id"] for e in load_conflicts(cf).conflicts} if cf.exists() else set()
    lost = {k for k in range(20, 61) if b.get(k) != a.get(k) and k not in held}
    assert not lost or applied.to_dict()["errors"], sorted(lost)
    assert accounting.holds, accounting.problem()


# ---------------------------------------------------------------------------------------
# Candidates scattered over many blocks (free space made before the split), more runs of
# blocks than MAX_RANGES: some read by range, the rest listed by TID

SC = "CREATE TABLE sc (id bigint PRIMARY KEY, v text NOT NULL) WITH (fillfactor = 100); " \
     "INSERT INTO sc SELECT g, 'base ' || g FROM generate_series(1, 3000) g; " \
     "DELETE FROM sc WHERE (id / 150) % 2 = 1 AND id % 150 < 40;"


@SETS
def test_scattered_candidate_blocks_beyond_max_ranges(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    from drorch.reconcile import tidfetch
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    monkeypatch.setattr(tidfetch, "MAX_RANGES", 2)

    def vacuum_then_insert(dsn: str) -> None:
        _q(dsn, "VACUUM sc")  # before the split: the freed space is in the FSM

    def on_old(s: Split) -> None:
        _q(s.a.dsn(), SC)
        vacuum_then_insert(s.a.dsn())
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        for i in range(12):  # one transaction each: free space in many scattered blocks
            _q(s.a.dsn(), f"INSERT INTO sc SELECT g, 'scatter {i}' "
                          f"FROM generate_series({5000 + 60 * i}, {5059 + 60 * i}) g")
        _q(s.a.dsn(), "UPDATE sc SET v = 'a upd' WHERE id BETWEEN 1000 AND 1020")
        _q(s.a.dsn(), "DELETE FROM sc WHERE id BETWEEN 5100 AND 5110")

    split = _split(workdir, on_old, lambda s: None, cut=False)
    cleanup.append(split)
    cf = workdir / "conflicts.jsonl"
    spec = ReconcileSpec(conflict_file=str(cf), default_policy="old-wins")
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec,
                             divergence_point(split.b.dsn()))
    assert report.method == "wal" and not blocked(report), report.problems
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    accounting = account(report.to_dict(), applied.to_dict())
    assert accounting.holds, accounting.problem()
    blocks = _q(split.a.dsn(), "SELECT count(DISTINCT (ctid::text::point)[0]) FROM sc "
                               "WHERE id >= 5000")
    assert blocks[0][0] > 4, blocks  # really scattered
    _same(split, "sc")


# ---------------------------------------------------------------------------------------
# A foreign key declared on a partition only (not on the partitioned table): the writes
# run under session_replication_role = replica, where PostgreSQL checks no foreign key

FKP = """
CREATE TABLE par (id bigint PRIMARY KEY, v text);
INSERT INTO par SELECT g, 'p' FROM generate_series(1, 50) g;
CREATE TABLE ch (id bigint PRIMARY KEY, par_id bigint NOT NULL, v text) PARTITION BY RANGE (id);
CREATE TABLE ch_lo PARTITION OF ch FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE ch_hi PARTITION OF ch FOR VALUES FROM (1000) TO (MAXVALUE);
ALTER TABLE ch_lo ADD FOREIGN KEY (par_id) REFERENCES par (id);
"""


@SETS
def test_foreign_key_on_a_partition_only_leaves_no_orphan(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    """A foreign key declared on one partition only binds that partition's rows: children
    whose parent region-b deleted are held for a human, never written pointing at nothing
    (also when the held rows are tried again together)."""
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    split, report, applied, accounting = _case(
        workdir, cleanup, FKP,
        ["INSERT INTO ch SELECT g, (g % 10) + 1, 'a' FROM generate_series(1, 100) g"],
        ["DELETE FROM par WHERE id BETWEEN 1 AND 5"])
    assert accounting.holds, accounting.problem()
    orphans = _q(split.b.dsn(), "SELECT c.id FROM ch_lo c WHERE NOT EXISTS "
                                "(SELECT 1 FROM par p WHERE p.id = c.par_id)")
    assert not orphans, (len(orphans), sorted(_set_ops(split)))


# ---------------------------------------------------------------------------------------
# A WAL segment switched after the split (archive_timeout, pg_switch_wal): the rest of
# that segment holds no records, and a cut for the pieces may fall in it

SW = "CREATE TABLE sw (id bigint PRIMARY KEY, v text NOT NULL); " \
     "INSERT INTO sw SELECT g, 'base ' || g FROM generate_series(1, 200) g;"


@pytest.mark.parametrize("chunk", [
    pytest.param(walread.CHUNK_BYTES, id="pieces"),
    pytest.param(1 << 40, id="one-piece")])
@SETS
def test_wal_switched_after_the_split_read_in_pieces(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int, chunk: int) -> None:
    """Segments switched after the split (pg_switch_wal, archive_timeout): a cut that falls
    in a segment's unused rest finds no record and is dropped; the pieces still meet at
    record starts and the WAL method reads everything (one piece as the control)."""
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    monkeypatch.setattr(walread, "CHUNK_BYTES", chunk)
    pieces = _pieces(monkeypatch)
    split, report, applied, accounting = _case(workdir, cleanup, SW, [
        "INSERT INTO sw SELECT g, 'a1 ' || g FROM generate_series(1000, 1099) g",
        "UPDATE sw SET v = 'a upd' WHERE id <= 50",
        "SELECT pg_switch_wal()",
        "INSERT INTO sw SELECT g, 'a2 ' || g FROM generate_series(2000, 2099) g",
        "DELETE FROM sw WHERE id BETWEEN 60 AND 80",
        "SELECT pg_switch_wal()",
        "INSERT INTO sw SELECT g, 'a3 ' || g FROM generate_series(3000, 3099) g"])
    assert len(pieces) >= (2 if chunk == walread.CHUNK_BYTES else 1), pieces
    assert accounting.holds, accounting.problem()
    _same(split, "sw")


@SETS
def test_always_insert_trigger_on_a_partition_does_not_silently_drop_inserts(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    """An ALWAYS BEFORE INSERT trigger on a partition that returns NULL: the row path's
    INSERT writes fewer rows than staged, and those rows go to a human."""
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    trig = _skip_trigger("pt_lo").replace("BEFORE UPDATE OR DELETE", "BEFORE INSERT")
    split, report, applied, accounting = _case(
        workdir, cleanup, PT,
        ["INSERT INTO pt SELECT g, 'a lo ' || g FROM generate_series(300, 399) g"], [trig])
    b = {r[0] for r in _q(split.b.dsn(), "SELECT id FROM pt")}
    cf = workdir / "conflicts.jsonl"
    held = {e.key["id"] for e in load_conflicts(cf).conflicts} if cf.exists() else set()
    lost = set(range(300, 400)) - b - held
    assert not lost or applied.to_dict()["errors"], (
        len(lost), applied.to_dict()["outcomes"], sorted(_set_ops(split)))
    assert accounting.holds, accounting.problem()
