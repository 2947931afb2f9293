"""The issue's story on real PostgreSQL: region-a takes writes its replica never sees, dies,
region-b is promoted and takes its own writes, region-a comes back fenced.

A :class:`Writer` keeps its own list of every key whose COMMIT it saw
acknowledged (``synchronous_commit=on`` in its session, so an acknowledged
commit is in region-a's WAL when it is killed). Expected classifications are
computed from those lists, never hard-coded from what drorch finds.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from drorch.lab.postgres import PgNode, make_pair
from drorch.reconcile import (
    Divergence,
    ReconcileSpec,
    ReconcileTable,
    divergence_point,
    fence_as_standby,
    wait_caught_up,
)

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,
                       secret_token text, note text);
CREATE TABLE orders (id bigint PRIMARY KEY, account_id bigint, amount int, status text);
CREATE TABLE events (id int PRIMARY KEY, payload text);
CREATE TABLE audit_log (ts timestamptz DEFAULT now(), msg text);
INSERT INTO accounts (owner, balance, secret_token, note)
  SELECT 'owner' || g, g * 10, 'tok-seed-' || g, 'seed' FROM generate_series(1, 200) g;
INSERT INTO orders SELECT g, g % 200 + 1, g, 'new' FROM generate_series(1, 500) g;
INSERT INTO events SELECT g, 'ev' || g FROM generate_series(1, 100) g;
INSERT INTO audit_log (msg) SELECT 'seed' || g FROM generate_series(1, 10) g;
CREATE TABLE ledger (id bigint, region text, amount int, PRIMARY KEY (id, region))
  PARTITION BY LIST (region);
CREATE TABLE ledger_a PARTITION OF ledger FOR VALUES IN ('eu-west');
CREATE TABLE ledger_b PARTITION OF ledger FOR VALUES IN ('us-east');
INSERT INTO ledger SELECT g, CASE WHEN g % 2 = 0 THEN 'eu-west' ELSE 'us-east' END, g
  FROM generate_series(1, 100) g;
"""

SECRET_MARK = "tok-DIVERGENT-"


def spec(conflict_file: Path, method: str = "auto") -> ReconcileSpec:
    return ReconcileSpec(tables=[
        ReconcileTable(name="public.accounts", policy="manual", sensitive_columns=["secret_token"]),
        ReconcileTable(name="public.orders", policy="old-wins"),
        ReconcileTable(name="public.events", policy="new-wins"),
        ReconcileTable(name="public.audit_log", policy="manual"),
        ReconcileTable(name="public.ledger", policy="old-wins"),
    ], conflict_file=str(conflict_file), method=method)  # type: ignore[arg-type]


@dataclass
class Writer:
    """Runs transactions on one node and remembers the keys of each acknowledged commit."""

    dsn: str
    acked: dict[str, set[Any]] = field(default_factory=dict)
    transactions: int = 0

    def txn(self, steps: list[tuple[str, Any, str, tuple[Any, ...]]]) -> None:
        with psycopg.connect(self.dsn) as c:
            c.execute("SET synchronous_commit = on")
            for _table, _key, q, params in steps:
                c.execute(q, params)
            c.commit()  # acknowledged: only now are the keys recorded
        self.transactions += 1
        for table, key, _q, _p in steps:
            self.acked.setdefault(table, set()).add(key)

    def keys(self, table: str) -> set[Any]:
        return self.acked.get(table, set())


@dataclass
class Story:
    a: PgNode
    b: PgNode
    wa: Writer
    wb: Writer
    divergence: Divergence
    workdir: Path
    base_keys: dict[str, set[Any]] = field(default_factory=dict)
    """Keys each table held at the split (both nodes had them)."""

    def rows(self, node: PgNode, table: str) -> dict[Any, dict[str, Any]]:
        with psycopg.connect(node.dsn(), options="-c TimeZone=UTC") as c:
            return {r[0]["id"]: r[0] for r in c.execute(f"SELECT to_jsonb(t) FROM {table} t")}

    def checksum(self, node: PgNode, table: str) -> tuple[int, str]:
        with psycopg.connect(node.dsn(), options="-c TimeZone=UTC") as c:
            row = c.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY "
                            f"t::text), '')) FROM {table} t").fetchone()
        assert row is not None
        return int(row[0]), str(row[1])

    def destroy(self) -> None:
        for n in (self.a, self.b):
            try:
                n.signal_all(signal.SIGCONT)
                n.destroy()
            except Exception:  # noqa: BLE001 - teardown must reach every node
                pass


def _q(node: PgNode, query: str, params: tuple[Any, ...] | None = None) -> Any:
    with psycopg.connect(node.dsn(), autocommit=True) as c:
        cur = c.execute(query, params)
        return cur.fetchall() if cur.description else None


def build(workdir: Path) -> Story:
    """Primary + replica, the replica cut off, divergent writes, crash, promotion, fence."""
    a, b = make_pair(workdir)
    try:
        return _play(a, b, workdir)
    except BaseException:
        for n in (a, b):
            n.destroy()
        raise


def _play(a: PgNode, b: PgNode, workdir: Path) -> Story:
    _q(a, SCHEMA)
    wait_caught_up(b.dsn(), a.dsn(), 60)
    wa, wb = Writer(a.dsn()), Writer(b.dsn())
    # A transaction that writes before the split and commits after it.
    straddle = psycopg.connect(a.dsn())
    straddle.execute("SET synchronous_commit = on")
    straddle.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 5")
    straddle.execute("INSERT INTO orders VALUES (9001, 5, 1, 'straddle')")
    _q(a, "SET synchronous_commit = on; INSERT INTO audit_log (msg) VALUES ('flush')")
    wait_caught_up(b.dsn(), a.dsn(), 60)
    base_keys = {t: {r[0] for r in _q(b, f"SELECT id FROM {t}")}
                 for t in ("accounts", "orders", "events", "ledger")}
    b.stop()  # the replica misses everything from here on

    # Divergent writes on region-a, each acknowledged commit recorded by the writer.
    wa.txn([("accounts", i, "UPDATE accounts SET balance = balance + 100, secret_token = %s "
             "WHERE id = %s", (f"{SECRET_MARK}{i}", i)) for i in range(10, 20)])
    wa.txn([("orders", i, "INSERT INTO orders VALUES (%s, 1, %s, 'a-new')", (i, i))
            for i in range(10001, 10021)])
    wa.txn([("orders", i, "UPDATE orders SET status = 'a-upd' WHERE id = %s", (i,))
            for i in range(30, 40)])
    wa.txn([("orders", i, "DELETE FROM orders WHERE id = %s", (i,)) for i in range(40, 45)])
    wa.txn([("accounts", i, "DELETE FROM accounts WHERE id = %s", (i,)) for i in (20, 21, 22)])
    # conflicts-to-be: A updates 60..64 (B updates 60..62), A updates orders 70..72 (B deletes),
    # A deletes orders 80..82 (B updates), both insert orders 20001; events 7 set the same.
    wa.txn([("accounts", i, "UPDATE accounts SET note = 'a-note' WHERE id = %s", (i,))
            for i in range(60, 65)])
    wa.txn([("orders", i, "UPDATE orders SET amount = -1 WHERE id = %s", (i,))
            for i in (70, 71, 72)])
    wa.txn([("orders", i, "DELETE FROM orders WHERE id = %s", (i,)) for i in (80, 81, 82)])
    wa.txn([("orders", 20001, "INSERT INTO orders VALUES (20001, 1, 1, 'from-a')", ())])
    wa.txn([("events", 7, "UPDATE events SET payload = 'same' WHERE id = 7", ())])
    wa.txn([("events", 8, "UPDATE events SET payload = 'a-8' WHERE id = 8", ())])
    # A partitioned table with a two-column key (bigint, text): rows live in the partitions.
    wa.txn([("ledger", i, "INSERT INTO ledger VALUES (%s, %s, 1)",
             (i, "eu-west" if i % 2 == 0 else "us-east")) for i in (201, 202, 203)])
    wa.txn([("ledger", i, "UPDATE ledger SET amount = -5 WHERE id = %s", (i,)) for i in (10, 11)])
    wa.txn([("ledger", i, "DELETE FROM ledger WHERE id = %s", (i,)) for i in (20, 21)])
    # A new account through the sequence, and a key change.
    new_id = _q(a, "SELECT nextval('accounts_id_seq')")[0][0]
    wa.txn([("accounts", new_id, "INSERT INTO accounts VALUES (%s, 'a-new', 1, %s, 'a')",
             (new_id, f"{SECRET_MARK}new"))])
    wa.txn([("accounts", 5000, "INSERT INTO accounts VALUES (5000, 'a-far', 1, %s, 'a')",
             (f"{SECRET_MARK}5000",))])
    wa.txn([("events", 9, "UPDATE events SET id = 9009 WHERE id = 9", ()),
            ("events", 9009, "SELECT 1", ())])
    # Savepoints: one released (kept), one rolled back (never happened).
    with psycopg.connect(a.dsn()) as c:
        c.execute("SET synchronous_commit = on")
        c.execute("SAVEPOINT s1")
        c.execute("INSERT INTO orders VALUES (11001, 1, 1, 'sp-kept')")
        c.execute("RELEASE SAVEPOINT s1")
        c.execute("SAVEPOINT s2")
        c.execute("INSERT INTO orders VALUES (11002, 1, 1, 'sp-rolled-back')")
        c.execute("ROLLBACK TO SAVEPOINT s2")
        c.execute("UPDATE orders SET status = 'in-sub' WHERE id = 50")
        c.commit()
    wa.transactions += 1
    wa.acked.setdefault("orders", set()).update({11001, 50})
    # A bulk insert (COPY -> MULTI_INSERT: no offsets in the WAL description).
    with psycopg.connect(a.dsn()) as c:
        c.execute("SET synchronous_commit = on")
        with c.cursor().copy("COPY events (id, payload) FROM STDIN") as cp:
            for i in range(1001, 1301):
                cp.write_row((i, f"copy{i}"))
        c.commit()
    wa.transactions += 1
    wa.acked.setdefault("events", set()).update(range(1001, 1301))
    # Aborted: never acknowledged, never found.
    with psycopg.connect(a.dsn()) as c:
        c.execute("INSERT INTO orders VALUES (12001, 1, 1, 'aborted')")
        c.rollback()
    wa.txn([("audit_log", None, "INSERT INTO audit_log (msg) VALUES ('a-1'), ('a-2')", ())])
    straddle.commit()
    straddle.close()
    wa.transactions += 1
    wa.acked.setdefault("accounts", set()).add(5)
    wa.acked.setdefault("orders", set()).add(9001)
    # In flight at the crash: never acknowledged.
    inflight = psycopg.connect(a.dsn())
    inflight.execute("INSERT INTO orders VALUES (13001, 1, 1, 'in-flight')")
    _q(a, "CHECKPOINT")  # its record reaches the WAL, its commit never does
    a.kill()
    inflight.close()

    b.start()
    _q(b, "SELECT pg_promote(true, 60)")
    wb.txn([("accounts", i, "UPDATE accounts SET note = 'b-note' WHERE id = %s", (i,))
            for i in (60, 61, 62)])
    wb.txn([("orders", i, "DELETE FROM orders WHERE id = %s", (i,)) for i in (70, 71, 72)])
    wb.txn([("orders", i, "UPDATE orders SET status = 'b-upd' WHERE id = %s", (i,))
            for i in (80, 81, 82)])
    wb.txn([("orders", 20001, "INSERT INTO orders VALUES (20001, 2, 2, 'from-b')", ())])
    wb.txn([("orders", i, "INSERT INTO orders VALUES (%s, 3, 3, 'b-new')", (i,))
            for i in range(30001, 30006)])
    wb.txn([("orders", i, "UPDATE orders SET status = 'b-upd' WHERE id = %s", (i,))
            for i in range(90, 95)])
    wb.txn([("orders", i, "DELETE FROM orders WHERE id = %s", (i,)) for i in (95, 96)])
    wb.txn([("ledger", 11, "UPDATE ledger SET amount = 99 WHERE id = 11", ()),
            ("ledger", 300, "INSERT INTO ledger VALUES (300, 'us-east', 3)", ())])
    wb.txn([("events", 7, "UPDATE events SET payload = 'same' WHERE id = 7", ())])
    wb.txn([("events", 8, "UPDATE events SET payload = 'b-8' WHERE id = 8", ())])
    wb.txn([("audit_log", None, "INSERT INTO audit_log (msg) VALUES ('b-1')", ())])

    fence_as_standby(a)
    div = divergence_point(b.dsn())
    return Story(a, b, wa, wb, div, workdir, base_keys)


def expected(story: Story, table: str) -> dict[str, set[Any]]:
    """Old-only, new-only, conflict and collision keys from the writers' lists, the keys
    at the split and the final rows (a collision: both sides inserted a key that did not
    exist at the split, and both rows are there)."""
    ra, rb = story.rows(story.a, table), story.rows(story.b, table)
    ka, kb = story.wa.keys(table), story.wb.keys(table)
    base = story.base_keys.get(table, set())
    out: dict[str, set[Any]] = {"old-only": set(), "new-only": set(), "conflict": set(),
                                "collision": set()}
    for k in ka | kb:
        if ra.get(k) == rb.get(k):
            continue
        if k in ka and k in kb:
            both_rows = ra.get(k) is not None and rb.get(k) is not None
            out["collision" if both_rows and k not in base else "conflict"].add(k)
        else:
            out["old-only" if k in ka else "new-only"].add(k)
    return out


def wait_for(predicate: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.02)
