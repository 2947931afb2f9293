"""Failback after an unplanned failover: every write region-a acknowledged but never
replicated is found in its WAL, brought back or put in the conflict file, and the
service returns to region-a with zero loss."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import psycopg
import pytest

from drorch.lab import lab as lab_mod
from drorch.store.sqlite import SqliteStore
from tests.conftest import Lab

pytestmark = pytest.mark.postgres

CHECKSUM = "SELECT count(*), md5(coalesce(string_agg(o::text, ',' ORDER BY id), '')) FROM orders o"


@dataclass
class Writer:
    """Keeps what region-a acknowledged: the final row it committed for each order id
    (None when it committed a delete)."""

    dsn: str
    acked: dict[int, tuple | None] = field(default_factory=dict)

    def commit(self, statements: list[tuple[str, tuple]], savepoint_rollback: bool = False) -> None:
        with psycopg.connect(self.dsn) as c:
            for sql, args in statements:
                c.execute(sql, args)
            if savepoint_rollback:  # a subtransaction that rolls back must never appear
                try:
                    with c.transaction():
                        c.execute("INSERT INTO orders(id, user_id, amount_cents, region) "
                                  "VALUES (999999, 1, 1, 'never')")
                        raise RuntimeError("roll back the savepoint")
                except RuntimeError:
                    pass
            with c.transaction():  # a committed subtransaction (savepoint)
                c.execute("UPDATE orders SET amount_cents = amount_cents + 1 WHERE id = %s",
                          (statements[0][1][0],))
        # COMMIT returned: acknowledged. Read back what we now hold for those ids.
        ids = [args[0] for _, args in statements]
        with psycopg.connect(self.dsn) as c:
            rows = {r[0]: r for r in c.execute(
                "SELECT id, user_id, amount_cents, region FROM orders WHERE id = ANY(%s)",
                (ids,))}
        for i in ids:
            self.acked[i] = rows.get(i)


def _dsn(lab: Lab, region: str) -> str:
    return lab.runbook.database("main").endpoints[region].dsn()


def _split_brain(lab: Lab) -> Writer:
    """Baseline replicated; region-b cut off; region-a commits inserts, updates,
    deletes, savepoints and a COPY; region-a dies; region-b is promoted."""
    a, b = _dsn(lab, "region-a"), _dsn(lab, "region-b")
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("INSERT INTO orders(id, user_id, amount_cents, region) "
                  "SELECT g, 1, g * 10, 'base' FROM generate_series(1, 200) g")
        c.execute("SELECT setval('orders_id_seq', 100000)")  # the app's ids stay clear of ours
        lsn = c.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
    with psycopg.connect(b, autocommit=True) as c:
        while c.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0] \
                is not True:
            pass
    lab_mod.node_for(lab.runbook, "main", "region-b").stop("fast")

    writer = Writer(a)
    writer.commit([("INSERT INTO orders(id, user_id, amount_cents, region) "
                    "VALUES (%s, 2, 500, 'a-new')", (i,)) for i in range(1001, 1011)],
                  savepoint_rollback=True)
    writer.commit([("UPDATE orders SET amount_cents = -1 WHERE id = %s", (i,))
                   for i in range(1, 11)])
    writer.commit([("DELETE FROM orders WHERE id = %s", (i,)) for i in range(50, 55)])
    with psycopg.connect(a, autocommit=True) as c:  # a users conflict with a sensitive column
        c.execute("UPDATE users SET email = 'bob@a.example', password_hash = 'A-SECRET-HASH' "
                  "WHERE email = 'bob@example.com'")
    with psycopg.connect(a) as c, c.cursor().copy(
            "COPY orders (id, user_id, amount_cents, region) FROM STDIN") as cp:
        for i in range(2001, 2021):
            cp.write_row((i, 3, 700, "a-copy"))
    writer.acked.update({i: (i, 3, 700, "a-copy") for i in range(2001, 2021)})

    lab_mod.node_for(lab.runbook, "main", "region-a").kill()
    lab_mod.node_for(lab.runbook, "main", "region-b").start()
    result = lab.cli("failover", "--reason", "region-a lost", "--actor", "oncall")
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("UPDATE orders SET amount_cents = -2 WHERE id IN (1, 2, 3)")  # conflicts
        c.execute("DELETE FROM orders WHERE id = 4")                             # conflict
        c.execute("UPDATE users SET password_hash = 'B-SECRET-HASH' "
                  "WHERE email = 'bob@example.com'")
        c.execute("UPDATE orders SET amount_cents = 1234 WHERE id IN (100, 101)")  # new-only
        c.execute("INSERT INTO orders(id, user_id, amount_cents, region) "
                  "VALUES (3001, 4, 900, 'b-new')")
    return writer


def _conflict_keys(lab: Lab) -> set[int]:
    path = lab.state_dir / "conflicts-main.json"
    if not path.exists():
        return set()
    doc = json.loads(path.read_text())
    keys = set()
    for entry in doc.get("conflicts", []):
        if entry["table"] != "public.orders":
            continue
        key = entry.get("key")
        keys.add(int(key["id"] if isinstance(key, dict) else json.loads(key)[0]))
    return keys


def _assert_zero_loss(lab: Lab, writer: Writer) -> None:
    a, b = _dsn(lab, "region-a"), _dsn(lab, "region-b")
    conflicts = _conflict_keys(lab)
    assert conflicts >= {1, 2, 3, 4}, conflicts
    with psycopg.connect(a) as c:
        rows = {r[0]: r for r in c.execute(
            "SELECT id, user_id, amount_cents, region FROM orders")}
        assert not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    for order_id, acked in writer.acked.items():
        if order_id in conflicts:
            continue
        assert rows.get(order_id) == acked, f"order {order_id}: acked {acked}, now " \
                                            f"{rows.get(order_id)}"
    assert 999999 not in rows
    assert rows[3001] == (3001, 4, 900, "b-new") and rows[100][2] == 1234
    with psycopg.connect(b) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        deadline_lsn = psycopg.connect(a).execute(
            "SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        while not c.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                            (deadline_lsn,)).fetchone()[0]:
            pass
        replica_sum = c.execute(CHECKSUM).fetchone()
    with psycopg.connect(a) as c:
        assert c.execute(CHECKSUM).fetchone() == replica_sum


def test_failback_finds_every_divergent_write_and_loses_none(lab: Lab) -> None:
    """The whole story: split brain, failover, region-a back, fence, exact reconcile,
    resync, switch back; every acknowledged row present or in the conflict file."""
    writer = _split_brain(lab)
    result = lab.cli("failback", "--reason", "region-a is back", "--actor", "oncall")
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_zero_loss(lab, writer)

    store = SqliteStore(lab.state_dir / "journal.db")
    failover, failback = store.incidents()[-2:]
    assert failback.state == "monitoring"
    report = store.fact(failback.id, "reconcile:main:report")
    assert report["method"] == "wal"
    totals = report["totals"]
    # orders: 10 inserts, 10 updates (+ savepoint updates), 5 deletes, 20 COPY rows = 45
    # keys; users: bob's row = 46
    assert totals["old_only"] + totals["conflicts"] == 46
    assert report["totals"]["conflicts"] == 5  # 4 orders + bob's user row
    record = lab.cli("report", failover.id, "--format", "json")
    rpo = json.loads(record.stdout)["rpo"]
    assert rpo["rows"] == 46 and rpo["transactions"] == 5
    for path in (lab.state_dir / "conflicts-main.json", lab.state_dir / "audit.jsonl",
                 lab.state_dir / "journal.db"):
        text = path.read_bytes()
        assert b"A-SECRET-HASH" not in text and b"B-SECRET-HASH" not in text, path

    # A human resolves two conflicts; `drorch reconcile apply` applies them, once.
    conflict_file = lab.state_dir / "conflicts-main.json"
    doc = json.loads(conflict_file.read_text())
    for entry in doc["conflicts"]:
        if entry["table"] == "public.orders" and entry["key"] == {"id": 1}:
            entry["resolution"] = "old"
        if entry["table"] == "public.orders" and entry["key"] == {"id": 2}:
            entry["resolution"] = "new"
    conflict_file.write_text(json.dumps(doc))
    for _ in range(2):
        applied = lab.cli("reconcile", "apply", str(conflict_file), "--actor", "dba")
        assert applied.returncode == 0, applied.stdout + applied.stderr
    with psycopg.connect(_dsn(lab, "region-a")) as c:
        rows = dict(c.execute("SELECT id, amount_cents FROM orders WHERE id IN (1, 2)"))
    assert rows == {1: writer.acked[1][2], 2: -2}


@pytest.mark.parametrize("point", ["reconcile:main:after_apply", "resync:main:before_apply",
                                   "promote:main:after_apply"])
def test_kill_during_failback_then_resume_applies_nothing_twice(lab: Lab, point: str) -> None:
    """A kill -9 during reconcile or the switch back, then `drorch resume`, finishes
    with the same zero-loss result and no row applied twice."""
    writer = _split_brain(lab)
    killed = lab.cli("failback", "--reason", "kill test", "--actor", "oncall",
                     extra_env={"DRORCH_FAULT_KILL_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = lab.cli("resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    _assert_zero_loss(lab, writer)
    with psycopg.connect(_dsn(lab, "region-a")) as c:
        twice = c.execute("SELECT count(*) FROM (SELECT id FROM orders GROUP BY id "
                          "HAVING count(*) > 1) d").fetchone()[0]
    assert twice == 0


def test_planned_drill_is_a_zero_loss_round_trip(lab: Lab) -> None:
    """`drorch drill` fails over and back with RPO 0 both ways (replay checked before each
    promotion), ends with region-a primary and region-b its replica, and writes reports."""
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 77, 'pre')")
    result = lab.cli("drill", "--actor", "sre", "--reason", "quarterly drill")
    assert result.returncode == 0, result.stdout + result.stderr
    store = SqliteStore(lab.state_dir / "journal.db")
    failover, failback = store.incidents()[-2:]
    assert (failover.kind, failover.state) == ("failover", "failed_over")
    assert (failback.kind, failback.state) == ("failback", "monitoring")
    for inc in (failover, failback):
        measured = store.fact(inc.id, "promote:main:measured")
        assert measured["caught_up"] is True and measured["rpo_bytes"] == 0
        assert (lab.state_dir / "reports" / f"{inc.id}.md").exists()
    with psycopg.connect(_dsn(lab, "region-b")) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    with psycopg.connect(_dsn(lab, "region-a")) as c:
        assert not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        assert c.execute("SELECT count(*) FROM orders WHERE region='pre'").fetchone()[0] == 1
