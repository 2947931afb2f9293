"""A fresh reviewer's attacks on apply and resolve (2026-12-01), kept as regression tests:
foreign keys the apply does not check (replica role), cycles, quoting, masking, two
appliers, a migration between finding and applying."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
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
    wait_caught_up,
)
from drorch.reconcile.find import blocked
from tests.integration.reconcile.conftest import pg_workdir

pytestmark = pytest.mark.postgres


def q(dsn: str, query: str, args: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(query, args)
        return cur.fetchall() if cur.description else []


def split(wd: Path, schema: str, on_old: Callable[[str], None], on_new: Callable[[str], None]
          ) -> tuple[PgNode, PgNode]:
    a, b = make_pair(wd)
    try:
        q(a.dsn(), "CREATE EXTENSION IF NOT EXISTS pg_walinspect;" + schema)
        wait_caught_up(b.dsn(), a.dsn(), 60)
        b.stop()
        on_old(a.dsn())
        a.kill()
        b.start()
        q(b.dsn(), "SELECT pg_promote(true, 60)")
        on_new(b.dsn())
        fence_as_standby(a)
    except BaseException:
        a.destroy()
        b.destroy()
        raise
    return a, b


@pytest.fixture
def wd() -> Iterator[Path]:
    with pg_workdir("review") as p:
        yield p


@pytest.fixture
def nodes() -> Iterator[list[PgNode]]:
    made: list[PgNode] = []
    yield made
    for n in made:
        n.destroy()


def run(a: PgNode, b: PgNode, spec: ReconcileSpec, **kw: Any) -> tuple[Any, Any]:
    report = find_divergence(a.dsn(), b.dsn(), spec, divergence_point(b.dsn()))
    assert not blocked(report), report.to_dict()
    applied = apply_reconciliation(report, b.dsn(), spec, **kw)
    return report, applied


def conflicts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- T1: self-referencing table, child before parent, collisions, batch_size=2 --------
SELF = """
CREATE TABLE nodes (id bigserial PRIMARY KEY, parent_id bigint REFERENCES nodes
                    DEFERRABLE INITIALLY DEFERRED, label text NOT NULL);
INSERT INTO nodes (label) SELECT 'base' || g FROM generate_series(1, 5) g;
"""


def test_self_ref_child_before_parent_rekeyed(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        with psycopg.connect(dsn) as c:  # child first, parent after (deferred FK)
            for i in range(6):
                n = c.execute("SELECT nextval('nodes_id_seq')").fetchone()[0]
                m = c.execute("SELECT nextval('nodes_id_seq')").fetchone()[0]
                c.execute("INSERT INTO nodes (id, parent_id, label) VALUES (%s, %s, %s)",
                          (n, m, f"a-child-{i}"))
                c.execute("INSERT INTO nodes (id, label) VALUES (%s, %s)", (m, f"a-parent-{i}"))
                c.commit()
        # also a grandchild chain: g3 -> g2 -> g1 inserted leaf first
        with psycopg.connect(dsn) as c:
            c.execute("INSERT INTO nodes (id, parent_id, label) VALUES (900, 901, 'a-leaf'),"
                      "(901, 902, 'a-mid'), (902, NULL, 'a-root')")
            c.commit()

    def on_new(dsn: str) -> None:
        for i in range(20):
            q(dsn, "INSERT INTO nodes (label) VALUES (%s)", (f"b-{i}",))

    a, b = split(wd, SELF, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.nodes", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec, batch_size=2)
    rows = {r[2]: (r[0], r[1]) for r in q(b.dsn(), "SELECT id, parent_id, label FROM nodes")}
    for i in range(6):
        assert f"a-child-{i}" in rows and f"a-parent-{i}" in rows
        assert rows[f"a-child-{i}"][1] == rows[f"a-parent-{i}"][0], (i, rows)
    assert rows["a-leaf"][1] == rows["a-mid"][0] and rows["a-mid"][1] == rows["a-root"][0]
    assert not conflicts(cf)


# --- T2: a FK cycle between two tables next to an unrelated held row ------------------
CYCLE = """
CREATE TABLE ta (id bigint PRIMARY KEY, b_id bigint, note text);
CREATE TABLE tb (id bigint PRIMARY KEY, a_id bigint REFERENCES ta DEFERRABLE INITIALLY DEFERRED);
ALTER TABLE ta ADD FOREIGN KEY (b_id) REFERENCES tb DEFERRABLE INITIALLY DEFERRED;
CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL);
CREATE TABLE lines (id bigint PRIMARY KEY, order_id bigint REFERENCES orders, sku text);
"""


def test_cycle_written_despite_unrelated_held_row(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        with psycopg.connect(dsn) as c:
            c.execute("INSERT INTO ta VALUES (1, 1, 'a-cycle')")
            c.execute("INSERT INTO tb VALUES (1, 1)")
            c.commit()
        q(dsn, "INSERT INTO orders VALUES (7, 5000)")
        q(dsn, "INSERT INTO lines VALUES (70, 7, 'x')")

    def on_new(dsn: str) -> None:  # the new primary refuses big orders
        q(dsn, "ALTER TABLE orders ADD CONSTRAINT small CHECK (amount < 1000)")

    a, b = split(wd, CYCLE, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name=f"public.{t}", policy="old-wins")
                                 for t in ("ta", "tb", "orders", "lines")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    assert q(b.dsn(), "SELECT count(*) FROM ta")[0][0] == 1, "cycle pair held with the line"
    assert q(b.dsn(), "SELECT count(*) FROM tb")[0][0] == 1


# --- T3: quoting everywhere, sequence by default from another table -------------------
QUOTE = """
CREATE SEQUENCE "Shared Seq";
CREATE TABLE "Weird Parent" ("My Id" bigint PRIMARY KEY DEFAULT nextval('"Shared Seq"'),
                             "Pass Word" text, password text, "Body" text);
CREATE TABLE "weird child" ("Kid Id" bigserial PRIMARY KEY,
                            "Parent Ref" bigint REFERENCES "Weird Parent", "Note" text);
INSERT INTO "Weird Parent" ("Body") SELECT 'base' FROM generate_series(1, 3);
"""


def test_quoted_names_rekey_and_mask(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        for i in range(40):
            pid = q(dsn, 'INSERT INTO "Weird Parent" ("Pass Word", password, "Body") '
                    "VALUES ('s3cret', 'pw', %s) RETURNING \"My Id\"", (f"a{i}",))[0][0]
            q(dsn, 'INSERT INTO "weird child" ("Parent Ref", "Note") VALUES (%s, %s)',
              (pid, f"a{i}"))

    def on_new(dsn: str) -> None:
        for i in range(40):
            q(dsn, 'INSERT INTO "Weird Parent" ("Body", password) VALUES (%s, %s)',
              (f"b{i}", "pw"))

    a, b = split(wd, QUOTE, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[], conflict_file=str(cf), default_policy="manual",
                         sensitive_everywhere=["Pass Word", "password"])
    report, applied = run(a, b, spec)
    text = cf.read_text() if cf.exists() else ""
    assert "s3cret" not in text
    assert '"pw"' not in text
    rows = q(b.dsn(), 'SELECT p."Body", c."Note" FROM "weird child" c JOIN "Weird Parent" p '
             'ON p."My Id" = c."Parent Ref" WHERE c."Note" LIKE \'a%\'')
    assert all(bb == n for bb, n in rows), rows


def test_cycle_alone_control(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        with psycopg.connect(dsn) as c:
            c.execute("INSERT INTO ta VALUES (1, 1, 'a-cycle')")
            c.execute("INSERT INTO tb VALUES (1, 1)")
            c.commit()

    a, b = split(wd, CYCLE, on_old, lambda dsn: None)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name=f"public.{t}", policy="old-wins")
                                 for t in ("ta", "tb", "orders", "lines")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    assert q(b.dsn(), "SELECT count(*) FROM ta")[0][0] == 1


def _resolve(cf: Path, choose: dict[Any, str]) -> None:
    out = []
    for line in cf.read_text().splitlines():
        e = json.loads(line)
        if "change_id" in e:
            k = (e["table"], json.dumps(e["key"], sort_keys=True))
            if k in choose:
                e["resolution"] = choose[k]
        out.append(json.dumps(e))
    cf.write_text("\n".join(out) + "\n")


def test_resolving_held_child_old_writes_dangling_fk(wd: Path, nodes: list[PgNode]) -> None:
    """The line was held for its refused order; the file tells the human to resolve
    the order first, but nothing stops 'old' on the line alone."""
    def on_old(dsn: str) -> None:
        q(dsn, "INSERT INTO orders VALUES (7, 5000)")
        q(dsn, "INSERT INTO lines VALUES (70, 7, 'x')")

    def on_new(dsn: str) -> None:
        q(dsn, "ALTER TABLE orders ADD CONSTRAINT small CHECK (amount < 1000)")

    a, b = split(wd, CYCLE, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name=f"public.{t}", policy="old-wins")
                                 for t in ("orders", "lines")], conflict_file=str(cf))
    run(a, b, spec)
    _resolve(cf, {("public.lines", json.dumps({"id": 70})): "old"})
    res = apply_conflict_file(cf, b.dsn())
    assert res.errors == 1 and res.applied == 0
    dangling = q(b.dsn(), "SELECT l.id FROM lines l LEFT JOIN orders o ON o.id = l.order_id "
                 "WHERE o.id IS NULL")
    assert not dangling, f"line written pointing at no order: {dangling}"
    line = next(e for e in conflicts(cf) if e.get("table") == "public.lines")
    assert "not on the new primary" in line["reason"]


NN = """
CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);
INSERT INTO items (name) SELECT 'base' FROM generate_series(1, 3);
"""


def test_not_null_column_added_between_find_and_apply(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        for i in range(5):
            q(dsn, "INSERT INTO items (name) VALUES (%s)", (f"a{i}",))

    a, b = split(wd, NN, on_old, lambda d: None)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.items", policy="old-wins")],
                         conflict_file=str(cf))
    report = find_divergence(a.dsn(), b.dsn(), spec, divergence_point(b.dsn()))
    q(b.dsn(), "ALTER TABLE items ADD COLUMN tenant int NOT NULL DEFAULT 1; "
               "ALTER TABLE items ALTER COLUMN tenant DROP DEFAULT")
    applied = apply_reconciliation(report, b.dsn(), spec)
    assert applied.errors == 5  # NOT NULL without a default: refused, shown
    # the human fixes the cause: a default, then resolves every entry 'old'
    q(b.dsn(), "ALTER TABLE items ALTER COLUMN tenant SET DEFAULT 9")
    lines = [json.loads(line) for line in cf.read_text().splitlines()]
    for e in lines:
        if "change_id" in e:
            e["resolution"] = "old"
    cf.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    res = apply_conflict_file(cf, b.dsn())
    assert res.applied == 5
    names = {r[0] for r in q(b.dsn(), "SELECT name FROM items")}
    assert {f"a{i}" for i in range(5)} <= names


DEL = """
CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL);
CREATE TABLE lines (id bigserial PRIMARY KEY, order_id bigint REFERENCES orders ON DELETE CASCADE,
                    sku text);
INSERT INTO orders SELECT g, g FROM generate_series(1, 5) g;
"""


def test_old_delete_orphans_new_primarys_child(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        q(dsn, "DELETE FROM orders WHERE id = 2")

    def on_new(dsn: str) -> None:  # acknowledged on region-b after the failover
        q(dsn, "INSERT INTO lines (order_id, sku) VALUES (2, 'b-acked')")

    a, b = split(wd, DEL, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.orders", policy="old-wins"),
                                 ReconcileTable(name="public.lines", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    rows = q(b.dsn(), "SELECT l.id, l.order_id, o.id FROM lines l LEFT JOIN orders o "
             "ON o.id = l.order_id")
    assert all(r[2] is not None for r in rows), f"region-b's acked line orphaned: {rows}"
    (entry,) = conflicts(cf)[1:]
    assert entry["table"] == "public.orders" and entry["key"] == {"id": 2}
    assert "still name it" in entry["reason"]


BULK = """
CREATE TABLE docs (id bigserial PRIMARY KEY, body text NOT NULL);
"""


def test_two_appliers_at_once(wd: Path, nodes: list[PgNode]) -> None:
    import threading

    def on_old(dsn: str) -> None:
        q(dsn, "INSERT INTO docs (id, body) SELECT g, 'a' || g FROM generate_series(1, 4000) g")

    def on_new(dsn: str) -> None:
        q(dsn, "INSERT INTO docs (id, body) SELECT g, 'b' || g FROM generate_series(1, 4000) g")

    a, b = split(wd, BULK, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.docs", policy="old-wins")],
                         conflict_file=str(cf))
    report = find_divergence(a.dsn(), b.dsn(), spec, divergence_point(b.dsn()))
    out: dict[int, Any] = {}

    def go(i: int) -> None:
        try:
            out[i] = apply_reconciliation(report, b.dsn(), spec).to_dict()
        except Exception as e:  # noqa: BLE001
            out[i] = f"{type(e).__name__}: {e}"

    ts = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    n = q(b.dsn(), "SELECT count(*), count(DISTINCT body) FROM docs")[0]
    assert n == (8000, 8000)
    assert all(isinstance(v, dict) for v in out.values()), out


CARDS = """
CREATE TABLE cards (card_number text PRIMARY KEY, holder text NOT NULL);
CREATE TABLE payments (id bigint PRIMARY KEY, card_number text REFERENCES cards, amount int);
"""


def test_held_reason_leaks_masked_fk_value(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        q(dsn, "INSERT INTO cards VALUES ('4111111111111111', 'x')")
        q(dsn, "INSERT INTO payments VALUES (1, '4111111111111111', 10)")

    def on_new(dsn: str) -> None:
        q(dsn, "ALTER TABLE cards ADD CONSTRAINT h CHECK (holder <> 'x')")

    a, b = split(wd, CARDS, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.cards", policy="old-wins"),
                                 ReconcileTable(name="public.payments", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    text = cf.read_text()
    assert "4111111111111111" not in text
    assert "4111111111111111" not in json.dumps(applied.to_dict())


PKFK = """
CREATE TABLE orders (id bigserial PRIMARY KEY, who text NOT NULL);
CREATE TABLE lines (order_id bigint REFERENCES orders, line_no int, sku text NOT NULL,
                    PRIMARY KEY (order_id, line_no));
INSERT INTO orders (who) VALUES ('base');
"""


def test_fk_in_pk_refused_line_resolved_old_lands_on_other_order(
        wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        oid = q(dsn, "INSERT INTO orders (id, who) VALUES (50, 'alice') RETURNING id")[0][0]
        q(dsn, "INSERT INTO lines VALUES (%s, 1, 'bad-sku')", (oid,))

    def on_new(dsn: str) -> None:
        q(dsn, "INSERT INTO orders (id, who) VALUES (50, 'bob')")
        q(dsn, "SELECT setval('orders_id_seq', 100)")
        q(dsn, "ALTER TABLE lines ADD CONSTRAINT nobad CHECK (sku NOT LIKE 'bad%')")

    a, b = split(wd, PKFK, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.orders", policy="old-wins"),
                                 ReconcileTable(name="public.lines", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    # the human fixes the cause and resolves the line 'old'
    q(b.dsn(), "ALTER TABLE lines DROP CONSTRAINT nobad")
    lines = [json.loads(line) for line in cf.read_text().splitlines()]
    for e in lines:
        if e.get("table") == "public.lines":
            e["resolution"] = "old"
    cf.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
    res = apply_conflict_file(cf, b.dsn())
    assert (res.applied, res.errors) == (0, 1)
    rows = q(b.dsn(), "SELECT o.who, l.order_id, l.sku FROM lines l JOIN orders o "
                      "ON o.id = l.order_id")
    assert rows == [], "alice's line must never land on bob's order 50"
    (entry,) = [e for e in conflicts(cf) if e.get("table") == "public.lines"]
    assert "re-keyed" in entry["reason"] and entry["resolution"] == "old"


PART = """
CREATE TABLE ev (id bigserial, region text NOT NULL, body text,
                 total int GENERATED ALWAYS AS (length(body)) STORED,
                 PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE ev_a PARTITION OF ev FOR VALUES IN ('a');
CREATE TABLE ev_b PARTITION OF ev FOR VALUES IN ('b');
CREATE TABLE flat (id bigint PRIMARY KEY DEFAULT nextval('ev_id_seq'), body text);
"""


def test_partitioned_default_ids(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        for i in range(40):
            q(dsn, "INSERT INTO ev_a (region, body) VALUES ('a', %s)", (f"old{i}",))
            q(dsn, "INSERT INTO flat (body) VALUES (%s)", (f"old{i}",))

    def on_new(dsn: str) -> None:
        for i in range(40):
            q(dsn, "INSERT INTO ev (region, body) VALUES ('a', %s)", (f"new{i}",))
            q(dsn, "INSERT INTO flat (body) VALUES (%s)", (f"new{i}",))

    a, b = split(wd, PART, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.ev", policy="old-wins"),
                                 ReconcileTable(name="public.flat", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    shown = {(e.get("old") or {}).get("body") for e in conflicts(cf)[1:]}
    here = {r[0] for r in q(b.dsn(), "SELECT body FROM ev")}
    assert {f"old{i}" for i in range(40)} <= here | shown  # a composite key: to a human
    fb = {r[0] for r in q(b.dsn(), "SELECT body FROM flat")}
    assert {f"old{i}" for i in range(40)} <= fb
    nxt = q(b.dsn(), "SELECT nextval('ev_id_seq')")[0][0]
    mx = q(b.dsn(), "SELECT greatest((SELECT max(id) FROM ev), (SELECT max(id) FROM flat))")[0][0]
    assert nxt > mx


RK = """
CREATE TABLE orders (id bigserial PRIMARY KEY, amount int NOT NULL);
CREATE TABLE lines (id bigserial PRIMARY KEY, order_id bigint REFERENCES orders, sku text);
INSERT INTO orders (amount) VALUES (1);
"""


def test_rekeyed_child_of_parent_resolved_old_never_applies(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        q(dsn, "INSERT INTO orders (id, amount) VALUES (7, 5000)")
        q(dsn, "INSERT INTO lines (id, order_id, sku) VALUES (70, 7, 'a-line')")

    def on_new(dsn: str) -> None:
        q(dsn, "INSERT INTO orders (id, amount) VALUES (2, 1)")
        q(dsn, "INSERT INTO lines (id, order_id, sku) VALUES (70, 2, 'b-line')")  # collides
        q(dsn, "ALTER TABLE orders ADD CONSTRAINT small CHECK (amount < 1000)")

    a, b = split(wd, RK, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.orders", policy="old-wins"),
                                 ReconcileTable(name="public.lines", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    q(b.dsn(), "ALTER TABLE orders DROP CONSTRAINT small")  # the human fixes the cause
    for _attempt in range(2):
        lines = [json.loads(line) for line in cf.read_text().splitlines()]
        for e in lines:
            if "change_id" in e:
                e["resolution"] = "old"
        cf.write_text("\n".join(json.dumps(e) for e in lines) + "\n")
        apply_conflict_file(cf, b.dsn())
    skus = {r[0] for r in q(b.dsn(), "SELECT sku FROM lines")}
    assert "a-line" in skus, skus


SELF2 = """
CREATE TABLE nodes (id bigint PRIMARY KEY, parent_id bigint REFERENCES nodes
                    DEFERRABLE INITIALLY DEFERRED, label text NOT NULL);
INSERT INTO nodes VALUES (1, NULL, 'base');
"""


def test_self_ref_cycle_one_refused_and_chain(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        with psycopg.connect(dsn) as c:
            c.execute("INSERT INTO nodes VALUES (10, 11, 'x'), (11, 10, 'bad-y')")
            # chain across batches: leaf first, root last, root refused
            c.execute("INSERT INTO nodes VALUES (20, 21, 'leaf'), (21, 22, 'mid'), "
                      "(22, 23, 'mid2'), (23, 24, 'mid3'), (24, NULL, 'bad-root')")
            # a good chain, leaf first, across batches
            c.execute("INSERT INTO nodes VALUES (30, 31, 'g-leaf'), (31, 32, 'g-mid'), "
                      "(32, 33, 'g-mid2'), (33, NULL, 'g-root')")
            # the base row updated to point at a new one
            c.execute("UPDATE nodes SET parent_id = 33 WHERE id = 1")
            c.commit()

    def on_new(dsn: str) -> None:
        q(dsn, "ALTER TABLE nodes ADD CONSTRAINT nobad CHECK (label NOT LIKE 'bad%')")

    a, b = split(wd, SELF2, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.nodes", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec, batch_size=2)
    rows = {r[0]: r[1] for r in q(b.dsn(), "SELECT id, parent_id FROM nodes")}
    dangling = [i for i, p in rows.items() if p is not None and p not in rows]
    assert not dangling, dangling
    assert {30, 31, 32, 33} <= set(rows) and rows[1] == 33


def test_old_child_of_parent_new_primary_deleted(wd: Path, nodes: list[PgNode]) -> None:
    def on_old(dsn: str) -> None:
        q(dsn, "INSERT INTO lines (order_id, sku) VALUES (3, 'a-acked')")

    def on_new(dsn: str) -> None:
        q(dsn, "DELETE FROM orders WHERE id = 3")

    a, b = split(wd, DEL, on_old, on_new)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.orders", policy="new-wins"),
                                 ReconcileTable(name="public.lines", policy="old-wins")],
                         conflict_file=str(cf))
    report, applied = run(a, b, spec)
    rows = q(b.dsn(), "SELECT l.id, l.order_id, o.id FROM lines l LEFT JOIN orders o "
             "ON o.id = l.order_id")
    assert all(r[2] is not None for r in rows), f"old primary's line written as an orphan: {rows}"
    (entry,) = conflicts(cf)[1:]
    assert entry["table"] == "public.lines" and "not on the new primary" in entry["reason"]


def test_a_chain_written_leaf_first_across_batches(wd: Path, nodes: list[PgNode]) -> None:
    """Each parent has a higher id (and comes later) than its child, 120 deep, applied in
    batches of 10: every row is written, none points at nothing, no human needed (the
    held rows go in one backward pass, not one row per pass)."""
    def on_old(dsn: str) -> None:
        q(dsn, "INSERT INTO nodes SELECT 1000 + g, CASE WHEN g < 120 THEN 1001 + g END, "
               "'c' || g FROM generate_series(0, 120) g")

    a, b = split(wd, SELF2, on_old, lambda d: None)
    nodes += [a, b]
    cf = wd / "c.jsonl"
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.nodes", policy="old-wins")],
                         conflict_file=str(cf))
    _report, applied = run(a, b, spec, batch_size=10)
    assert (applied.applied, applied.errors) == (121, 0) and not cf.exists()
    rows = {r[0]: r[1] for r in q(b.dsn(), "SELECT id, parent_id FROM nodes")}
    assert not [i for i, p in rows.items() if p is not None and p not in rows]
