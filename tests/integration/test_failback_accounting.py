"""`drorch failback` on the lab with ordinary traffic: default ids from the sequences on
both sides, a table the runbook does not list, a column added mid-incident. Every row
either side acknowledged is on region-a afterwards (a key both sides inserted re-keyed,
in the mapping) or in the conflict file with its reason, the old data directory is kept
as evidence before the rewind, and a table that cannot be compared stops the failback
before anything destructive."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drorch.exitcodes import ExitCode
from drorch.lab import lab as lab_mod
from drorch.store.sqlite import SqliteStore
from tests.conftest import LAB_RUNBOOK, Lab

pytestmark = pytest.mark.postgres

Rows = dict[int, dict[str, Any]]


def _dsn(lab: Lab, region: str) -> str:
    return lab.runbook.database("main").endpoints[region].dsn()


def _insert(dsn: str, table: str, columns: str, values: tuple[Any, ...]) -> tuple[int, Any]:
    """One row per transaction with its default id; returned only after COMMIT."""
    with psycopg.connect(dsn) as c:
        row = c.execute(f"INSERT INTO {table} ({columns}) VALUES "
                        f"({', '.join(['%s'] * len(values))}) RETURNING id, to_jsonb({table})",
                        values).fetchone()
        c.commit()
    assert row is not None
    return int(row[0]), row[1]


def _rows(dsn: str, table: str) -> Rows:
    with psycopg.connect(dsn) as c:
        return {int(r[0]["id"]): r[0] for r in c.execute(f"SELECT to_jsonb(t) FROM {table} t")}


def _wait_replayed(lab: Lab) -> None:
    from drorch.reconcile import wait_caught_up

    wait_caught_up(_dsn(lab, "region-b"), _dsn(lab, "region-a"), 30)


def _cut_replica(lab: Lab) -> None:
    """region-b stops (misses what follows); the caller writes on region-a, then fails
    over with ``_kill_a_and_fail_over``."""
    lab_mod.node_for(lab.runbook, "main", "region-b").stop("fast")


def _kill_a_and_fail_over(lab: Lab, env: dict[str, str] | None = None) -> None:
    lab_mod.node_for(lab.runbook, "main", "region-a").kill()
    lab_mod.node_for(lab.runbook, "main", "region-b").start()
    result = lab.cli("failover", "--yes", "--reason", "region-a lost", "--actor", "oncall",
                     extra_env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def _without_sequence_gap(lab: Lab) -> dict[str, str]:
    """runbooks/lab.yaml with ``sequence_gap: 0``: the promoted node's sequences go on
    from what it replayed, as a runbook that turned the gap off would (or an old primary
    that handed out more ids than the gap)."""
    text = LAB_RUNBOOK.read_text()
    anchor = "    replication_role: postgres\n"
    assert anchor in text
    path = lab.state_dir.parent / "lab-no-gap.yaml"
    path.write_text(text.replace(anchor, anchor + "    sequence_gap: 0\n", 1))
    return {"DRORCH_RUNBOOK": str(path)}


def test_default_id_traffic_and_an_unlisted_table_lose_nothing(lab: Lab) -> None:
    """Issue 14's cases 1 and 2 together: 40 emails, 5 orders and 30 notes (a table the
    runbook does not list) on region-a after the cut, 40 emails, 5 orders and 10 notes on
    region-b after the failover, every id from its sequence, the sequence gap off so the
    keys collide as they would past it."""
    env = _without_sequence_gap(lab)
    a, b = _dsn(lab, "region-a"), _dsn(lab, "region-b")
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)")
    _wait_replayed(lab)
    _cut_replica(lab)
    old: dict[str, Rows] = {"emails": {}, "orders": {}, "notes": {}}
    new: dict[str, Rows] = {"emails": {}, "orders": {}, "notes": {}}

    def write(side: dict[str, Rows], dsn: str, tag: str, notes: int) -> None:
        for i in range(40):
            k, r = _insert(dsn, "emails", "message_id, recipient", (f"{tag}-mail-{i}", tag))
            side["emails"][k] = r
        for i in range(5):
            k, r = _insert(dsn, "orders", "user_id, amount_cents, region", (1, 100 + i, tag))
            side["orders"][k] = r
        for i in range(notes):
            k, r = _insert(dsn, "notes", "body", (f"{tag}-note-{i}",))
            side["notes"][k] = r

    base = {t: _rows(a, t) for t in old}
    write(old, a, "region-a", 30)
    _kill_a_and_fail_over(lab, env)
    write(new, b, "region-b", 10)
    # Region-a comes back unfenced after the failover and takes 7 more notes before the
    # failback fences it: written after the promotion, not lost at the failover.
    lab_mod.node_for(lab.runbook, "main", "region-a").start()
    late = dict(_insert(a, "notes", "body", (f"region-a-late-{i}",)) for i in range(7))
    old["notes"].update(late)
    with psycopg.connect(a) as c:  # a commit that writes no table of the database
        c.execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (1)")
    # Region-b acknowledged more than this test wrote: the failover's validation flows
    # checked out and mailed. Everything new on region-b since the split counts.
    for t in new:
        new[t] = {k: r for k, r in _rows(b, t).items() if base[t].get(k) != r}

    result = lab.cli("failback", "--yes", "--reason", "region-a is back", "--actor", "oncall",
                     extra_env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    # Collisions arise by themselves: region-a's ids past the sequence's WAL-logged 32.
    collided = {(t, k) for t in old for k in old[t] if k in new[t]}
    assert ("emails", max(old["emails"])) in collided
    # Each is re-keyed: region-a's row under a fresh key from the sequence, region-b's
    # stays; the mapping CSV names every one. No conflict is left for a human.
    assert not (lab.state_dir / "conflicts-main.jsonl").exists()
    with (lab.state_dir / "rekeyed-main.csv").open(newline="") as f:
        mapping = {(r["table"].split(".")[1], int(r["old_key"])): int(r["new_key"])
                   for r in csv.DictReader(f)}
    assert set(mapping) == collided

    def where(t: str, k: int) -> int:
        return mapping.get((t, k), k)

    # Everything either side acknowledged is on region-a, primary again.
    for t in old:
        now = _rows(a, t)
        for k, row in new[t].items():
            assert now.get(k) == row, (t, k, "region-b's row")
        for k, row in old[t].items():
            assert now.get(where(t, k)) == {**row, "id": where(t, k)}, (t, k, "region-a's row")

    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        failback = store.incidents()[-1]
        store_ids = [i.id for i in store.incidents()]
        report = store.fact(failback.id, "reconcile:main:report")
        accounting = store.fact(failback.id, "reconcile:main:accounting")
        resync = next(e.detail for e in store.events(failback.id)
                      if (e.kind, e.name, e.status) == ("step", "resync:main", "done"))
    finally:
        store.close()
    assert "public.notes" in report["unlisted_tables"]
    assert accounting["holds"] and accounting["totals"]["unaccounted"] == 0
    notes = next(t for t in accounting["tables"] if t["table"] == "public.notes")
    assert notes["applied"] == len([k for k in old["notes"] if ("notes", k) not in collided])

    # The evidence: region-a's data directory as it was before the rewind, with its rows.
    archive = Path(resync["evidence"])
    assert archive.parent == lab.state_dir / "evidence" and archive.exists()
    raw = gzip.decompress(archive.read_bytes())
    for t, column in (("notes", "body"), ("emails", "message_id")):
        for row in old[t].values():
            assert row[column].startswith("region-a-") and row[column].encode() in raw, row
    # The failback's report says what the test computes: nothing acknowledged lost.
    final = {t: _rows(a, t) for t in old}
    lost = [(t, k) for t in old for k, row in old[t].items()
            if final[t].get(where(t, k)) != {**row, "id": where(t, k)}]
    lost += [(t, k) for t in new for k, row in new[t].items() if final[t].get(k) != row]
    assert lost == []
    shown = json.loads(lab.cli("report", failback.id, "--format", "json").stdout)["reconcile"]
    assert shown["main"]["acknowledged_rows_lost"] == len(lost) == 0
    assert shown["main"]["evidence"] == str(archive)
    assert shown["main"]["totals"]["pending"] == 0
    assert shown["main"]["totals"]["rekeyed"] == shown["main"]["rekeyed"] == len(collided)
    assert shown["main"]["key_mapping_file"] == str(lab.state_dir / "rekeyed-main.csv")
    # The failover's RPO, corrected by the failback: only what region-a committed before
    # the promotion; the 7 late notes are reported apart.
    failover = json.loads(lab.cli("report", store_ids[0], "--format", "json").stdout)
    before_rows = sum(len(r) for r in old.values()) - len(late)
    assert (failover["rpo"]["rows"], failover["rpo"]["transactions"]) == (before_rows,
                                                                          before_rows)
    assert (failover["rpo"]["after_failover"]["rows"],
            failover["rpo"]["after_failover"]["transactions"]) == (len(late), len(late))
    assert failover["rpo"]["seconds"]["value"] is not None
    assert failover["rpo"]["seconds"]["met"] is (failover["rpo"]["seconds"]["value"] <= 5)
    assert "written to the old primary after the failover" in failover["summary"]
    markdown = lab.cli("report", failback.id, "--format", "md").stdout
    assert "Acknowledged rows lost: 0." in markdown and "public.notes" in markdown
    assert f"Key collisions re-keyed (both rows kept, region-a's under a new key): " \
        f"{len(collided)}" in markdown
    audit = [json.loads(line) for line in (lab.state_dir / "audit.jsonl").read_text().splitlines()]
    kept = [e for e in audit if e["action"] == "resync.evidence_kept"]
    assert kept and kept[-1]["inputs"]["archive"] == str(archive)


def test_columns_added_mid_incident(lab: Lab) -> None:
    """Issue 14's case 3 and its neighbour. Region-a takes three orders after the cut and,
    after adding ``priority`` to emails, an email with a priority; region-b adds ``coupon``
    to orders after the failover. The coupon alone would be fine (compared on the shared
    columns, region-a's orders take its default), but the priority exists on region-a
    only: the failback refuses (exit non-zero) naming emails and the column; region-a is
    not rewound and region-b serves. Once region-b has the column too, a second failback
    brings everything over: the orders with the coupon's default, the email with its
    priority, and the report says orders were compared on the shared columns."""
    a, b = _dsn(lab, "region-a"), _dsn(lab, "region-b")
    _cut_replica(lab)
    mine = [_insert(a, "orders", "user_id, amount_cents, region", (1, 5001 + i, "a"))
            for i in range(3)]
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("ALTER TABLE emails ADD COLUMN priority int")
    email = _insert(a, "emails", "message_id, recipient, priority", ("a-urgent", "ops", 5))
    _kill_a_and_fail_over(lab)
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("ALTER TABLE orders ADD COLUMN coupon text")

    result = lab.cli("failback", "--yes", "--reason", "region-a is back", "--actor", "oncall")
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == ExitCode.ROLLED_BACK, out  # before anything destructive
    assert "public.emails" in out and "priority" in out and "cannot reconcile" in out
    assert "exist on the old primary only" in out
    node = lab_mod.node_for(lab.runbook, "main", "region-a")
    assert node.is_running()
    ids = [k for k, _r in mine]
    with psycopg.connect(node.dsn("app")) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # fenced, read-only
        held = {r[0] for r in c.execute("SELECT id FROM orders WHERE id = ANY(%s)", (ids,))}
    assert held == set(ids)
    assert not (lab.state_dir / "evidence").exists()  # nothing came near a rewind
    with psycopg.connect(b) as c:
        assert not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        # The failback that stopped released nothing: region-b's WAL from the split stays pinned.
        assert c.execute("SELECT count(*) FROM pg_replication_slots "
                         "WHERE slot_name = 'drorch_split_main'").fetchone()[0] == 1
    planned = lab.cli("plan")  # a failover now would be refused: still failed over
    assert planned.returncode == ExitCode.REFUSED and "already failed over" in planned.stdout
    assert "not pinned" not in planned.stdout, planned.stdout
    assert "the split's WAL pin holds" in planned.stdout and "at most 2,048 MB" in " ".join(
        planned.stdout.split()), planned.stdout
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("SELECT pg_drop_replication_slot('drorch_split_main')")
    warned = lab.cli("plan").stdout
    assert "main in region-b: its WAL from the split is not pinned" in " ".join(warned.split())

    # Nothing was captured or applied for the blocked run: once region-b can hold the
    # priority, the failback looks afresh and brings region-a's rows over.
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("ALTER TABLE emails ADD COLUMN priority int")
    again = lab.cli("failback", "--yes", "--reason", "region-b has the column", "--actor", "oncall")
    assert again.returncode == 0, again.stdout + again.stderr
    orders, emails = _rows(a, "orders"), _rows(a, "emails")
    for k, row in mine:
        assert orders[k] == {**row, "coupon": None}, k
    assert emails[email[0]] == email[1] and email[1]["priority"] == 5
    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        failback = store.incidents()[-1]
    finally:
        store.close()
    shown = json.loads(lab.cli("report", failback.id, "--format", "json").stdout)["reconcile"]
    assert any("public.orders" in n and "coupon" in n for n in shown["main"]["notes"])
    assert shown["main"]["acknowledged_rows_lost"] == 0


def test_a_large_divergence_goes_as_sets_and_loses_nothing(lab: Lab) -> None:
    """3,000 notes COPYed and 1,100 updated on region-a after the cut (more than
    ``reconcile.bulk.MIN_ROWS`` each, so both go as sets), 10 notes on region-b after the
    failover: after `drorch failback` every row either side acknowledged is on region-a,
    the report counts the sets among the applied rows, and says nothing was lost."""
    a, b = _dsn(lab, "region-a"), _dsn(lab, "region-b")
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)")
        c.execute("INSERT INTO notes (body) SELECT 'base ' || g FROM generate_series(1, 1200) g")
    _wait_replayed(lab)
    _cut_replica(lab)
    with psycopg.connect(a) as c:
        with c.cursor().copy("COPY notes (body) FROM STDIN") as cp:
            for i in range(3000):
                cp.write_row((f"region-a copied {i}",))
        c.execute("UPDATE notes SET body = 'region-a updated ' || id WHERE id <= 1100")
        c.commit()  # acknowledged only now
    old = _rows(a, "notes")
    _kill_a_and_fail_over(lab)
    new = dict(_insert(b, "notes", "body", (f"region-b {i}",)) for i in range(10))
    result = lab.cli("failback", "--yes", "--reason", "region-a is back", "--actor", "oncall")
    assert result.returncode == 0, result.stdout + result.stderr
    final = _rows(a, "notes")
    assert [k for k, row in old.items() if final.get(k) != row] == []
    assert [k for k, row in new.items() if final.get(k) != row] == []
    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        failback = store.incidents()[-1]
    finally:
        store.close()
    shown = json.loads(lab.cli("report", failback.id, "--format", "json").stdout)["reconcile"]
    assert shown["main"]["applied_as_set"] == 3000 + 1100
    assert shown["main"]["acknowledged_rows_lost"] == 0 and shown["main"]["invariant_holds"]
    notes = next(t for t in shown["main"]["tables"] if t["table"] == "public.notes")
    assert notes["applied"] == 3000 + 1100
