"""Hostile schemas and traffic for the set path (``reconcile.bulk``), from a review that
tried to break it: every row region-a acknowledged is on region-b afterwards exactly as
region-a had it (or held for a human), whatever the column types, partitions, foreign
keys, generated columns and concurrent writes on region-b. Where a case concerns both
paths it runs twice: as sets (``MIN_ROWS`` lowered) and row by row."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drorch.reconcile import (
    ReconcileSpec,
    apply_reconciliation,
    bulk,
    divergence_point,
    find_divergence,
    wait_caught_up,
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


def _all(dsn: str, table: str, key: str = "id", drop: tuple[str, ...] = ()) -> dict[Any, Any]:
    minus = "".join(f" - '{c}'" for c in drop)
    return {r[0][key]: r[0] for r in _q(dsn, f"SELECT to_jsonb(zz){minus} FROM {table} zz")}


def _run(split: Split, cf: Path, promoted_at: datetime | None = None,
         spec: ReconcileSpec | None = None) -> tuple[Any, Any, Any]:
    spec = spec or ReconcileSpec(conflict_file=str(cf), default_policy="old-wins")
    report = find_divergence(split.a.dsn(), split.b.dsn(), spec,
                             divergence_point(split.b.dsn()), promoted_at=promoted_at)
    assert not blocked(report), (report.problems, report.unconfigured_tables)
    applied = apply_reconciliation(report, split.b.dsn(), spec)
    return report, applied, account(report.to_dict(), applied.to_dict())


HOSTILE = r"""
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (x int, y text);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE h (id int GENERATED ALWAYS AS IDENTITY (INCREMENT BY -1 START WITH -1
                   MAXVALUE -1) PRIMARY KEY,
                e mood, c pair, arr int[], ta text[], b bytea, j jsonb, js json, t text,
                big text, d posint, n numeric, f float8,
                g int GENERATED ALWAYS AS (length(t)) STORED,
                code text UNIQUE);
INSERT INTO h (e, c, arr, ta, b, j, js, t, big, d, n, f, code)
  SELECT 'ok', ROW(g, ('p' || g)::text)::pair, ARRAY[g, g + 1], ARRAY['a' || g, NULL],
         '\x00ff'::bytea, jsonb_build_object('k', g), '{"z": 1,  "a": 2}', 'base ' || g,
         NULL, g, 1.50, 0.1, 'code-' || g
  FROM generate_series(1, 40) g;
CREATE TABLE parent (id bigint PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE parent_lo PARTITION OF parent FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE parent_hi PARTITION OF parent FOR VALUES FROM (1000) TO (MAXVALUE);
INSERT INTO parent SELECT g, 'base ' || g FROM generate_series(1, 40) g;
CREATE TABLE kid (id bigserial PRIMARY KEY, parent_id bigint REFERENCES parent, v text);
CREATE TABLE kc (id bigint PRIMARY KEY, v text);
INSERT INTO kc SELECT g, 'base ' || g FROM generate_series(1, 40) g;
CREATE TABLE rr (id bigint PRIMARY KEY, v text);
INSERT INTO rr SELECT g, 'base ' || g FROM generate_series(1, 10) g;
"""

NASTY = ["tab\there", "back\\slash", "\\N", "new\nline", "quote\"'", "\\.", "", "uni \u00e9\u4e2d"]


def _hostile_old(s: Split) -> None:
    _q(s.a.dsn(), HOSTILE)
    wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
    s.b.stop()
    big = "".join(f"{i:08x}" for i in range(40_000))  # ~320 kB, TOASTed
    with psycopg.connect(s.a.dsn()) as c:
        for i in range(30):
            c.execute("INSERT INTO h (e, c, arr, ta, b, j, js, t, big, d, n, f, code) VALUES "
                      "(%s, ROW(%s, %s)::pair, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                      ("happy", i, NASTY[i % len(NASTY)], [i, None], [NASTY[i % 8], None],
                       bytes(range(256)), json.dumps({"t": NASTY[i % 8]}),
                       '{"dup": 1, "dup": 2}', NASTY[i % len(NASTY)], big if i % 5 == 0 else
                       None, i + 1, "12345678901234567890.000100", float("nan") if i == 3
                       else -0.0, f"a-{i}"))
        # HOT updates of base rows (no indexed column changes) and a non-HOT one
        c.execute("UPDATE h SET t = 'a-upd\t' || id, e = 'sad' WHERE id BETWEEN -15 AND -1")
        c.execute("UPDATE h SET code = 'a-code ' || id WHERE id BETWEEN -20 AND -16")
        c.execute("UPDATE h SET big = %s WHERE id = -21", (big,))
        c.execute("DELETE FROM h WHERE id BETWEEN -30 AND -25")
        # partitioned, referenced by kid: inserts in both partitions, updates, deletes
        c.execute("INSERT INTO parent SELECT g, 'a-ins ' || g FROM generate_series(500, 515) g")
        c.execute("INSERT INTO parent SELECT g, 'a-ins ' || g FROM generate_series(2000, 2015) g")
        c.execute("UPDATE parent SET v = 'a-upd ' || id WHERE id <= 12")
        c.execute("DELETE FROM parent WHERE id BETWEEN 30 AND 40")
        # key-changing updates
        c.execute("UPDATE kc SET id = id + 1000, v = 'moved' WHERE id <= 25")
        # insert, delete, re-insert the same keys
        c.execute("INSERT INTO rr SELECT g, 'first ' || g FROM generate_series(100, 129) g")
        c.commit()
        c.execute("DELETE FROM rr WHERE id BETWEEN 100 AND 129")
        c.commit()
        c.execute("INSERT INTO rr SELECT g, 'second ' || g FROM generate_series(100, 129) g")
        c.execute("DELETE FROM rr WHERE id BETWEEN 1 AND 10")
        c.commit()
        c.execute("INSERT INTO rr SELECT g, 'again ' || g FROM generate_series(1, 10) g")
        c.commit()


def _hostile_new(s: Split) -> None:
    # region-b's schema moved on: a NOT NULL column with a default, a check every old row
    # meets, a trigger that must not fire on drorch's writes, a child naming parent 35
    _q(s.b.dsn(), "ALTER TABLE h ADD COLUMN extra int NOT NULL DEFAULT 7; "
                  "ALTER TABLE h ADD CONSTRAINT d_small CHECK (d < 1000); "
                  "CREATE FUNCTION nope() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN RAISE EXCEPTION 'trigger fired on %', TG_TABLE_NAME; END$$; "
                  "CREATE TRIGGER nope BEFORE INSERT OR UPDATE OR DELETE ON kc "
                  "FOR EACH ROW EXECUTE FUNCTION nope(); "
                  "INSERT INTO kid (parent_id, v) VALUES (35, 'b child of 35')")


def test_hostile_schema_sets(workdir: Path, cleanup: list[Split],  # noqa: F811
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", 5)
    split = _split(workdir, _hostile_old, _hostile_new, cut=False)
    cleanup.append(split)
    cf = workdir / "conflicts.jsonl"
    report, applied, accounting = _run(split, cf)
    assert accounting.holds, accounting.problem()
    a, b = split.a.dsn(), split.b.dsn()
    assert _all(b, "h", drop=("extra",)) == _all(a, "h")
    assert {r["extra"] for r in _all(b, "h").values()} == {7}
    assert _all(b, "kc") == _all(a, "kc")
    assert _all(b, "rr") == _all(a, "rr")
    pa, pb = _all(a, "parent"), _all(b, "parent")
    assert 35 in pb  # held: region-b's kid names it
    pb.pop(35)
    assert pb == pa
    # sets were really taken (h's key is an identity column, descending and negative)
    ops = {(t, o) for t, o in _q(b, "SELECT tbl, op FROM drorch_reconcile.bulk_sets")}
    assert {("public.h", "insert"), ("public.h", "update"), ("public.h", "delete"),
            ("public.parent", "insert")} <= ops, ops


def test_in_time_with_lanes(workdir: Path, cleanup: list[Split],  # noqa: F811
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the mark: 20 updates, 30 inserts, 5 deletes of notes; after: 20 updates of
    other rows, 25 inserts, 6 deletes. Every row is one old-side change."""
    monkeypatch.setattr(bulk, "MIN_ROWS", 5)
    marks: dict[str, datetime] = {}

    def on_old(s: Split) -> None:
        _q(s.a.dsn(), "INSERT INTO notes (body) SELECT 'more ' || g FROM generate_series(1, 60) g")
        wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
        s.b.stop()
        _q(s.a.dsn(), "UPDATE notes SET body = 'before ' || id WHERE id <= 20")
        _q(s.a.dsn(), "INSERT INTO notes (id, body) SELECT g, 'ins before' "
                      "FROM generate_series(1000, 1029) g")
        _q(s.a.dsn(), "DELETE FROM notes WHERE id BETWEEN 61 AND 65")
        marks["p"] = datetime.now(UTC)
        _q(s.a.dsn(), "UPDATE notes SET body = 'after ' || id WHERE id BETWEEN 21 AND 40")
        _q(s.a.dsn(), "INSERT INTO notes (id, body) SELECT g, 'ins after' "
                      "FROM generate_series(2000, 2024) g")
        _q(s.a.dsn(), "DELETE FROM notes WHERE id BETWEEN 66 AND 71")

    split = _split(workdir, on_old, lambda s: None, cut=False)
    cleanup.append(split)
    report, applied, accounting = _run(split, workdir / "c.jsonl", promoted_at=marks["p"])
    assert accounting.holds, accounting.problem()
    assert _all(split.b.dsn(), "notes") == _all(split.a.dsn(), "notes")
    assert report.table("public.notes").counts()["rows_diverged"] == 106
    assert report.in_time["before"]["rows"] == 55
    assert report.in_time["after"]["rows"] == 51


def _with_keys(s: Split) -> None:
    _q(s.a.dsn(), "INSERT INTO notes (body) SELECT 'more ' || g FROM generate_series(1, 60) g")
    wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
    s.b.stop()
    _q(s.a.dsn(), "UPDATE notes SET body = 'a-upd ' || id WHERE id <= 30")
    _q(s.a.dsn(), "INSERT INTO notes (id, body) SELECT g, 'a-ins ' || g "
                  "FROM generate_series(1000, 1039) g")


def test_app_inserts_a_set_key_and_deletes_a_lane_row_during_reconcile(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(bulk, "MIN_ROWS", 5)
    split = _split(workdir, _with_keys, lambda s: None, cut=False)
    cleanup.append(split)
    real_set, real_changed = bulk.apply_set, bulk.apply_changed

    def app_inserts(*a: Any, **k: Any) -> Any:
        _q(split.b.dsn(), "INSERT INTO notes (id, body) VALUES (1005, 'app on b')")
        return real_set(*a, **k)

    def app_deletes(*a: Any, **k: Any) -> Any:
        _q(split.b.dsn(), "DELETE FROM notes WHERE id = 7")
        return real_changed(*a, **k)

    monkeypatch.setattr(bulk, "apply_set", app_inserts)
    monkeypatch.setattr(bulk, "apply_changed", app_deletes)
    cf = workdir / "c.jsonl"
    report, applied, accounting = _run(split, cf, spec=ReconcileSpec(conflict_file=str(cf)))
    conflicts = load_conflicts(cf).conflicts if cf.exists() else []
    assert accounting.holds, accounting.problem()
    b, a = _all(split.b.dsn(), "notes"), _all(split.a.dsn(), "notes")
    assert b[1005]["body"] == "app on b"
    assert 7 not in b
    shown = {e.key["id"] for e in conflicts}
    assert {1005, 7} <= shown
    for k, row in a.items():
        if k not in (1005, 7):
            assert b.get(k) == row, k


REFS = """
CREATE TABLE p1 (id bigint PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE p1_lo PARTITION OF p1 FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE p1_hi PARTITION OF p1 FOR VALUES FROM (1000) TO (MAXVALUE);
INSERT INTO p1 SELECT g, 'base' FROM generate_series(1, 30) g;
CREATE TABLE k1 (id bigserial PRIMARY KEY, p bigint REFERENCES p1_lo (id));
CREATE TABLE p2 (id bigint PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE p2_lo PARTITION OF p2 FOR VALUES FROM (MINVALUE) TO (1000);
CREATE TABLE p2_hi PARTITION OF p2 FOR VALUES FROM (1000) TO (MAXVALUE);
INSERT INTO p2 SELECT g, 'base' FROM generate_series(1, 30) g;
CREATE TABLE k2 (id bigserial PRIMARY KEY, p bigint REFERENCES p2 (id));
CREATE TABLE u (id bigint PRIMARY KEY, code text UNIQUE NOT NULL);
INSERT INTO u SELECT g, 'code-' || g FROM generate_series(1, 30) g;
CREATE TABLE ku (id bigserial PRIMARY KEY, code text REFERENCES u (code));
CREATE TABLE u2 (id bigint PRIMARY KEY, code text UNIQUE NOT NULL);
INSERT INTO u2 SELECT g, 'code-' || g FROM generate_series(1, 30) g;
CREATE TABLE ku2 (id bigserial PRIMARY KEY, code text REFERENCES u2 (code));
CREATE TABLE big8 (id bigint PRIMARY KEY, v text);
CREATE TABLE small2 (id smallint PRIMARY KEY, v text);
"""


def _refs_old(s: Split) -> None:
    _q(s.a.dsn(), REFS)
    wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
    s.b.stop()
    _q(s.a.dsn(), "DELETE FROM p1 WHERE id <= 10; DELETE FROM p2 WHERE id <= 10; "
                  "UPDATE u SET code = 'renamed-' || id WHERE id <= 10; "
                  "UPDATE u2 SET code = 'renamed-' || id WHERE id = 5; "
                  "INSERT INTO big8 SELECT 9223372036854775807 - g, 'near max' "
                  "FROM generate_series(0, 9) g; "
                  "INSERT INTO small2 SELECT g, 'x' FROM generate_series(32750, 32767) g; "
                  "INSERT INTO small2 SELECT g, 'x' FROM generate_series(-32768, -32760) g")


def _refs_new(s: Split) -> None:
    _q(s.b.dsn(), "INSERT INTO k1 (p) VALUES (5); INSERT INTO k2 (p) VALUES (5); "
                  "INSERT INTO ku (code) VALUES ('code-5'); "
                  "INSERT INTO ku2 (code) VALUES ('code-5')")


@pytest.mark.parametrize("min_rows", [5, 1_000_000], ids=["sets", "rows"])
def test_foreign_keys_to_partitions_and_unique_columns(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    split = _split(workdir, _refs_old, _refs_new, cut=False)
    cleanup.append(split)
    cf = workdir / "c.jsonl"
    from drorch.reconcile import ReconcileTable
    spec = ReconcileSpec(conflict_file=str(cf), default_policy="old-wins",
                         tables=[ReconcileTable(name="public.p2_lo", policy="old-wins")])
    report, applied, accounting = _run(split, cf, spec=spec)
    assert accounting.holds, accounting.problem()
    shown = {(e.table, e.key["id"]) for e in load_conflicts(cf).conflicts}
    # held for a human: deletes of parents region-b's children name (a partition, or the
    # root), renames of a unique code region-b's children name
    assert {("public.p1", 5), ("public.p2_lo", 5), ("public.u", 5), ("public.u2", 5)} <= shown
    b = split.b.dsn()
    orphans = {t: _q(b, q) for t, q in {
        "k1": "SELECT k.p FROM k1 k WHERE NOT EXISTS (SELECT 1 FROM p1_lo p WHERE p.id = k.p)",
        "k2": "SELECT k.p FROM k2 k WHERE NOT EXISTS (SELECT 1 FROM p2 p WHERE p.id = k.p)",
        "ku": "SELECT k.code FROM ku k WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.code = k.code)",
        "ku2": "SELECT k.code FROM ku2 k WHERE NOT EXISTS "
               "(SELECT 1 FROM u2 WHERE u2.code = k.code)"}.items()}
    assert _all(b, "big8") == _all(split.a.dsn(), "big8")
    if min_rows == 5:  # keys up to the largest bigint went as a set (ranges open above)
        assert ("public.big8", "insert") in {
            (t, o) for t, o in _q(b, "SELECT tbl, op FROM drorch_reconcile.bulk_sets")}
    assert _all(b, "small2") == _all(split.a.dsn(), "small2")
    assert not any(orphans.values()), orphans


def _gen_old(s: Split) -> None:
    _q(s.a.dsn(), "CREATE TABLE gt (id bigint PRIMARY KEY, body text, "
                  "g int GENERATED ALWAYS AS (length(body)) STORED); "
                  "INSERT INTO gt (id, body) SELECT g, 'base' FROM generate_series(1, 20) g")
    wait_caught_up(s.b.dsn(), s.a.dsn(), 60)
    s.b.stop()
    _q(s.a.dsn(), "INSERT INTO gt (id, body) SELECT g, repeat('x', g) "
                  "FROM generate_series(100, 119) g; "
                  "UPDATE gt SET body = repeat('y', (id + 10)::int) WHERE id <= 10")


@pytest.mark.parametrize("min_rows", [5, 1_000_000], ids=["sets", "rows"])
def test_generated_column_made_plain_on_region_b(
        workdir: Path, cleanup: list[Split], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        min_rows: int) -> None:
    monkeypatch.setattr(bulk, "MIN_ROWS", min_rows)
    split = _split(workdir, _gen_old, lambda s: _q(
        s.b.dsn(), "ALTER TABLE gt ALTER COLUMN g DROP EXPRESSION"), cut=False)
    cleanup.append(split)
    cf = workdir / "c.jsonl"
    report, applied, accounting = _run(split, cf)
    a, b = _all(split.a.dsn(), "gt"), _all(split.b.dsn(), "gt")
    bad = {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
    assert not bad
