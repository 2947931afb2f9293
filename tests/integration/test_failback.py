"""Failback after an unplanned failover: every write region-a acknowledged but never
replicated is found in its WAL, brought back or put in the conflict file, and the
service returns to region-a with zero loss."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg import sql

from drorch.lab import lab as lab_mod
from drorch.reconcile.conflicts import load as load_conflicts
from drorch.store.sqlite import SqliteStore
from tests import report_doc
from tests.conftest import Lab

pytestmark = pytest.mark.postgres

# Every application table (the runbook reconciles exactly these) and its sensitive columns.
TABLES = {"public.users": {"password_hash"}, "public.orders": set(), "public.emails": set()}
Rows = dict[int, dict[str, Any]]
"""A table's full content: id -> the row as JSON (``to_jsonb``), every column."""
Key = tuple[str, int]
"""(table, id)"""


def _table(conn: psycopg.Connection, table: str, ids: list[int] | None = None) -> Rows:
    query = sql.SQL("SELECT to_jsonb(t) FROM {} AS t").format(
        sql.Identifier(*table.split(".")))
    if ids is not None:
        query = query + sql.SQL(" WHERE id = ANY(%s)")
    return {r[0]["id"]: r[0] for r in conn.execute(query, (ids,) if ids is not None else None)}


def _content(dsn: str) -> dict[str, Rows]:
    with psycopg.connect(dsn) as c:
        return {t: _table(c, t) for t in TABLES}


def _masked(table: str, row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {c: ("***" if c in TABLES[table] else v) for c, v in row.items()}


@dataclass
class World:
    """What each side acknowledged, row by row, to say exactly what region-a must hold
    after the failback: the tables at the split, the final row region-a acknowledged for
    every key it changed after it (None: deleted) and the same for region-b's changes
    after the failover."""

    base: dict[str, Rows]
    old: dict[str, dict[int, dict[str, Any] | None]] = field(
        default_factory=lambda: {t: {} for t in TABLES})
    new: dict[str, dict[int, dict[str, Any] | None]] = field(
        default_factory=lambda: {t: {} for t in TABLES})

    def read_back(self, side: str, dsn: str, table: str, ids: list[int]) -> None:
        """COMMIT returned: acknowledged. Keep what the side now holds for those ids."""
        with psycopg.connect(dsn) as c:
            rows = _table(c, table, ids)
        getattr(self, side)[table].update({i: rows.get(i) for i in ids})

    @property
    def conflicts(self) -> set[Key]:
        return {(t, k) for t in TABLES for k in self.old[t] if k in self.new[t]}

    @property
    def old_only(self) -> set[Key]:
        return {(t, k) for t in TABLES for k in self.old[t]} - self.conflicts

    @property
    def new_only(self) -> set[Key]:
        return {(t, k) for t in TABLES for k in self.new[t]} - self.conflicts

    def expected(self, resolved_old: frozenset[Key] = frozenset()) -> dict[str, Rows]:
        """After the failback: region-a's acknowledged changes applied once, region-b's
        kept, and each conflict as region-b has it (unless a human chose region-a's)."""
        rows = copy.deepcopy(self.base)
        for side, keep in (("old", lambda t, k: (t, k) not in self.conflicts),
                           ("new", lambda t, k: (t, k) not in resolved_old)):
            for t, changed in getattr(self, side).items():
                for k, row in changed.items():
                    if not keep(t, k):
                        continue
                    if row is None:
                        rows[t].pop(k, None)
                    else:
                        rows[t][k] = row
        for t, k in resolved_old:
            if self.old[t][k] is None:
                rows[t].pop(k, None)
            else:
                rows[t][k] = self.old[t][k]
        return rows


def _dsn(lab: Lab, region: str) -> str:
    return lab.runbook.database("main").endpoints[region].dsn()


def _wait_replayed(lab: Lab, replica: str, primary: str, timeout_s: float = 30) -> None:
    with psycopg.connect(_dsn(lab, primary), autocommit=True) as c:
        lsn = c.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(_dsn(lab, replica), autocommit=True) as c:
        while c.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0] \
                is not True:
            assert time.monotonic() < deadline, f"{replica} did not replay {lsn} in {timeout_s}s"
            time.sleep(0.01)


def _split_brain(lab: Lab) -> World:
    """Baseline replicated; region-b cut off; region-a commits inserts, updates,
    deletes, savepoints and a COPY; region-a dies; region-b is promoted."""
    a, b = _dsn(lab, "region-a"), _dsn(lab, "region-b")
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("INSERT INTO orders(id, user_id, amount_cents, region) "
                  "SELECT g, 1, g * 10, 'base' FROM generate_series(1, 200) g")
        c.execute("SELECT setval('orders_id_seq', 100000)")  # the app's ids stay clear of ours
    _wait_replayed(lab, "region-b", "region-a")
    world = World(_content(a))
    bob = next(k for k, r in world.base["public.users"].items() if r["email"] == "bob@example.com")
    lab_mod.node_for(lab.runbook, "main", "region-b").stop("fast")

    def commit(statements: list[tuple[str, tuple]], savepoint_rollback: bool = False) -> None:
        with psycopg.connect(a) as c:
            for query, args in statements:
                c.execute(query, args)
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
        world.read_back("old", a, "public.orders", [args[0] for _, args in statements])

    commit([("INSERT INTO orders(id, user_id, amount_cents, region) "
             "VALUES (%s, 2, 500, 'a-new')", (i,)) for i in range(1001, 1011)],
           savepoint_rollback=True)
    commit([("UPDATE orders SET amount_cents = -1 WHERE id = %s", (i,)) for i in range(1, 11)])
    commit([("DELETE FROM orders WHERE id = %s", (i,)) for i in range(50, 55)])
    with psycopg.connect(a, autocommit=True) as c:  # a users conflict with a sensitive column
        c.execute("UPDATE users SET email = 'bob@a.example', password_hash = 'A-SECRET-HASH' "
                  "WHERE id = %s", (bob,))
    world.read_back("old", a, "public.users", [bob])
    with psycopg.connect(a) as c, c.cursor().copy(
            "COPY orders (id, user_id, amount_cents, region) FROM STDIN") as cp:
        for i in range(2001, 2021):
            cp.write_row((i, 3, 700, "a-copy"))
    world.read_back("old", a, "public.orders", list(range(2001, 2021)))

    lab_mod.node_for(lab.runbook, "main", "region-a").kill()
    lab_mod.node_for(lab.runbook, "main", "region-b").start()
    result = lab.cli("failover", "--yes", "--reason", "region-a lost", "--actor", "oncall")
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("UPDATE orders SET amount_cents = -2 WHERE id IN (1, 2, 3)")  # conflicts
        c.execute("DELETE FROM orders WHERE id = 4")                             # conflict
        c.execute("UPDATE users SET password_hash = 'B-SECRET-HASH' WHERE id = %s", (bob,))
        c.execute("UPDATE orders SET amount_cents = 1234 WHERE id IN (100, 101)")  # new-only
        c.execute("INSERT INTO orders(id, user_id, amount_cents, region) "
                  "VALUES (3001, 4, 900, 'b-new')")
    world.read_back("new", b, "public.orders", [1, 2, 3, 4, 100, 101, 3001])
    world.read_back("new", b, "public.users", [bob])
    # The arrangement itself: these and only these keys were changed on both sides.
    assert world.conflicts == {("public.orders", i) for i in (1, 2, 3, 4)} | {
        ("public.users", bob)}
    assert 999999 not in world.old["public.orders"]
    return world


def _conflict_entries(lab: Lab) -> dict[Key, dict[str, Any]]:
    path = lab.state_dir / "conflicts-main.jsonl"
    entries: dict[Key, dict[str, Any]] = {}
    for entry in (e.model_dump() for e in load_conflicts(path).conflicts):
        key = (entry["table"], int(entry["key"]["id"]))
        assert key not in entries, f"{key} twice in the conflict file"
        entries[key] = entry
    return entries


def _flow_orders(store: SqliteStore, incident_id: str) -> list[tuple[int, str, int]]:
    """(order id, region, attempts) of the login-checkout flow a step of this incident ran."""
    found = []
    for flow in store.fact(incident_id, "flows") or []:
        for step in flow["steps"]:
            body = step.get("response_body")
            if step["name"] == "checkout" and isinstance(body, dict) and "order_id" in body:
                found.append((int(body["order_id"]), body["region"], flow["attempts"]))
    return found


def _assert_tables(lab: Lab, world: World, flows: dict[str, list[tuple[int, str, int]]],
                   resolved_old: frozenset[Key] = frozenset()) -> dict[str, Rows]:
    """Every table on region-a, row for row, is what ``world`` says plus the checkouts of
    the validation flows (``flows``: per incident, as the flow was answered)."""
    content = _content(_dsn(lab, "region-a"))
    expected = world.expected(resolved_old)
    alice = next(k for k, r in world.base["public.users"].items()
                 if r["email"] == "alice@example.com")
    retries = 0
    for incident_flows in flows.values():
        for oid, region, attempts in incident_flows:
            row = content["public.orders"].get(oid)
            assert row is not None and (row["user_id"], row["amount_cents"], row["region"]) \
                == (alice, 4200, region), (oid, row)
            expected["public.orders"][oid] = row
            retries += attempts - 1
    extra = {k: r for k, r in content["public.orders"].items()
             if k not in expected["public.orders"]}
    # An earlier attempt of a retried flow may have checked out too; nothing else may.
    assert len(extra) <= retries and all(
        (r["user_id"], r["amount_cents"]) == (alice, 4200) for r in extra.values()), \
        f"orders on region-a that no one acknowledged ({retries} flow retries): {extra}"
    expected["public.orders"].update(extra)
    for t in TABLES:
        wrong = {k: (expected[t].get(k), content[t].get(k))
                 for k in expected[t].keys() | content[t].keys()
                 if expected[t].get(k) != content[t].get(k)}
        assert not wrong, f"{t}: key -> (expected, on region-a): {wrong}"
        assert len(content[t]) == len(expected[t])
    return content


def _assert_zero_loss(lab: Lab, world: World) -> dict[str, list[tuple[int, str, int]]]:
    """Region-a, primary again, holds exactly what was acknowledged: every table row for
    row (region-a's changes once, region-b's kept, conflicts as region-b has them, plus
    the validation flows' own checkouts); the conflict file holds exactly the conflicts
    with both sides' acknowledged rows; the journal's reconcile outcome says the same;
    region-b is its replica with the same content."""
    a = _dsn(lab, "region-a")
    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        failover, failback = store.incidents()[-2:]
        assert (failover.kind, failback.kind) == ("failover", "failback")
        applied = store.fact(failback.id, "reconcile:main:applied")
        flows = {inc.id: _flow_orders(store, inc.id) for inc in (failover, failback)}
    finally:
        store.close()

    # The conflict file: exactly the keys both sides changed, each with region-a's
    # acknowledged row (sensitive columns masked) and region-b's.
    entries = _conflict_entries(lab)
    assert set(entries) == world.conflicts
    for (t, k), entry in entries.items():
        assert entry["kind"] == "conflict" and entry["resolution"] is None, entry
        assert entry["old"] == _masked(t, world.old[t][k]), (t, k)
        assert entry["new"] == _masked(t, world.new[t][k]), (t, k)

    # The outcome of every change, as the new primary records it (the journal keeps
    # counts per table and outcome, never one entry per row).
    outcomes: dict[str, set[Key]] = {}
    with psycopg.connect(a) as c:
        for table, key, outcome in c.execute(
                "SELECT c.tbl, (c.key->>'id')::bigint, coalesce(a.outcome, 'pending') "
                "FROM drorch_reconcile.changes c LEFT JOIN drorch_reconcile.outcomes a "
                "USING (run_id, change_id) WHERE c.run_id = %s", (applied["run_id"],)):
            outcomes.setdefault(outcome, set()).add((table, key))
    journaled: dict[str, int] = {}
    for o in applied["outcomes"]:
        journaled[o["outcome"]] = journaled.get(o["outcome"], 0) + o["rows"]
    assert journaled == {k: len(v) for k, v in outcomes.items()}
    failover_flow_orders = {("public.orders", oid) for oid, _, _ in flows[failover.id]}
    assert outcomes.pop("pending") == world.conflicts
    assert outcomes.pop("applied", set()) | outcomes.pop("already-applied", set()) \
        == world.old_only
    assert outcomes.pop("kept-new") == world.new_only | failover_flow_orders
    assert outcomes == {}
    assert applied["applied"] + applied["already_applied"] == len(world.old_only)
    assert (applied["manual_pending"], applied["errors"], applied["stale"]) == (
        len(world.conflicts), 0, 0)

    _assert_tables(lab, world, flows)
    with psycopg.connect(a) as c:
        assert not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        markers = {r[0] for r in c.execute("SELECT marker FROM drorch.canary")}
    assert markers == {failover.id, failback.id}

    # Region-b is region-a's replica again and holds the same.
    with psycopg.connect(_dsn(lab, "region-b")) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    _wait_replayed(lab, "region-b", "region-a")
    assert _content(_dsn(lab, "region-b")) == _content(a)
    return flows


def test_failback_finds_every_divergent_write_and_loses_none(lab: Lab) -> None:
    """The whole story: split brain, failover, region-a back, fence, exact reconcile,
    resync, switch back; every table row for row as acknowledged, exactly the conflicts
    in the conflict file; a human's resolution applied once."""
    world = _split_brain(lab)
    result = lab.cli("failback", "--yes", "--reason", "region-a is back", "--actor", "oncall")
    assert result.returncode == 0, result.stdout + result.stderr
    flows = _assert_zero_loss(lab, world)

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
    # The promotion could not wait for region-a: every sequence skipped the runbook's gap
    # before anyone wrote, so region-b's own inserts (the failover's checkout) did not
    # reuse ids region-a may have handed out.
    gap = store.fact(failover.id, "sequences:main:gap")
    assert gap["done"] and gap["gap"] == 1_000_000
    assert gap["targets"]["public.orders_id_seq"] == gap["before"]["public.orders_id_seq"] \
        + 1_000_000 >= 100000 + 1_000_000
    assert all(oid > gap["targets"]["public.orders_id_seq"] for oid, _, _ in flows[failover.id])
    # The promoted region-b kept its WAL from the split (a slot) until the failback had
    # read it; now neither node holds a drorch slot.
    pinned = store.fact(failover.id, "split:main:pinned")
    assert pinned["slot"] == "drorch_split_main" and pinned["restart_lsn"]
    # ... at most the runbook's split_wal_max_mb (max_slot_wal_keep_size was unlimited:
    # drorch set it for the failover, the failback put it back)
    assert pinned["cap_mb"] == 2048 and pinned["cap_set_by_drorch"]
    assert store.fact(failover.id, "split:main:cap") == {
        "cap_mb": 2048, "previous_mb": -1, "previous_by_alter_system": False}
    with psycopg.connect(_dsn(lab, "region-b")) as c:
        assert c.execute("SHOW max_slot_wal_keep_size").fetchone()[0] == "-1"
    for region in ("region-a", "region-b"):
        with psycopg.connect(_dsn(lab, region)) as c:
            assert c.execute("SELECT count(*) FROM pg_replication_slots "
                             "WHERE slot_name LIKE 'drorch%'").fetchone()[0] == 0, region
    record = lab.cli("report", failover.id, "--output", "json")
    rpo = json.loads(record.stdout)["rpo"]
    assert rpo["rows"] == 46 and rpo["transactions"] == 5
    # docs/report-json.md names exactly what a real failback's report holds (the parts
    # tests/unit/test_report_doc.py cannot produce without one), and nothing these two
    # reports hold is undocumented.
    reports = [json.loads(record.stdout),
               json.loads(lab.cli("report", failback.id, "--output", "json").stdout)]
    assert report_doc.differences(
        reports, both_ways=["reconcile.*", "reconcile.*.divergence", "reconcile.*.tables[]"],
        values_both_ways=[]) == []
    assert rpo["method"].startswith("exact: old primary's WAL read at failback (")
    for path in (lab.state_dir / "conflicts-main.jsonl", lab.state_dir / "audit.jsonl",
                 lab.state_dir / "journal.db"):
        text = path.read_bytes()
        assert b"A-SECRET-HASH" not in text and b"B-SECRET-HASH" not in text, path

    # A human resolves two conflicts; `drorch reconcile apply` applies them, once.
    conflict_file = lab.state_dir / "conflicts-main.jsonl"
    lines = conflict_file.read_text().splitlines()  # one entry per line, as a human edits it
    for i, line in enumerate(lines[1:], start=1):
        entry = json.loads(line)
        if entry["table"] == "public.orders" and entry["key"] == {"id": 1}:
            lines[i] = json.dumps({**entry, "resolution": "old"})
        if entry["table"] == "public.orders" and entry["key"] == {"id": 2}:
            lines[i] = json.dumps({**entry, "resolution": "new"})
    conflict_file.write_text("\n".join(lines) + "\n")
    for _ in range(2):
        applied = lab.cli("reconcile", "apply", str(conflict_file), "--actor", "dba")
        assert applied.returncode == 0, applied.stdout + applied.stderr
    # Order 1 is region-a's acknowledged row again, everything else is as it was.
    _assert_tables(lab, world, flows, resolved_old=frozenset({("public.orders", 1)}))


@pytest.mark.parametrize("point", ["reconcile:main:after_apply", "resync:main:before_apply",
                                   "promote:main:after_apply"])
def test_kill_during_failback_then_resume_applies_nothing_twice(lab: Lab, point: str) -> None:
    """A kill -9 during reconcile or the switch back, then `drorch resume`, finishes
    with the same zero-loss result: every table on region-a row for row as acknowledged,
    the same conflict file and the same journaled reconcile outcome, no row applied twice."""
    world = _split_brain(lab)
    killed = lab.cli("failback", "--yes", "--reason", "kill test", "--actor", "oncall",
                     extra_env={"DRORCH_FAULT_KILL_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = lab.cli("resume", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # Applied twice would show: an extra row (a re-insert under another id), a value
    # changed again (an increment applied twice), a count off, a journal outcome off.
    _assert_zero_loss(lab, world)


def test_planned_drill_is_a_zero_loss_round_trip(lab: Lab) -> None:
    """`drorch drill` fails over and back with RPO 0 both ways (replay checked before each
    promotion), ends with region-a primary and region-b its replica, and writes reports."""
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 77, 'pre')")
    result = lab.cli("drill", "--yes", "--actor", "sre", "--reason", "quarterly drill")
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
