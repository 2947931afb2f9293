"""Failback of a kind-rds database on the lab, through the RDS API (the lab's moto,
whose instances are bound to the lab's real clusters): the old primary comes back as a
standalone writable instance, drorch fences it over SQL, keeps a snapshot, reconciles its
divergent writes by a full comparison (the master user may not read the WAL), renames it
and keeps it, makes a fresh cross-region read replica under its identifier, switches back
planned, and gives the region it leaves a new replica too.

Traffic is ordinary: default ids from the sequences on both sides, a table the runbook
does not list. Every row acknowledged on either side is present afterwards, counted
here, not taken from drorch's report."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from drorch.adapters import postgres as pg
from drorch.adapters import rds
from drorch.adapters.aws import AwsClients
from drorch.lab import lab as lab_mod
from tests.conftest import Lab

pytestmark = pytest.mark.postgres

def _admin(lab: Lab, region: str) -> str:
    """The lab's superuser on the cluster behind ``region``'s instance identifier now."""
    ep = lab.runbook.database("main").endpoints[region]
    return f"host=127.0.0.1 port={ep.port} user=postgres dbname=app connect_timeout=5"


def _rds(lab: Lab, region: str) -> Any:
    return AwsClients.for_runbook(lab.runbook)("rds", lab.runbook.region(region).aws_region)


def _notes(dsn: str, bodies: list[str]) -> list[int]:
    """One row per transaction, default id; the ids whose COMMIT returned."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return [c.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id",
                          (body,)).fetchone()[0] for body in bodies]


def _orders(dsn: str, n: int, tag: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return [c.execute("INSERT INTO orders (user_id, amount_cents, region) VALUES "
                          "(1, %s, %s) RETURNING id", (i + 1, tag)).fetchone()[0]
                for i in range(n)]


def _diverge(lab: Lab) -> dict[str, list[int]]:
    """Region-a writes after replication to region-b stopped, then dies; the failover;
    region-b takes writes; region-a comes back. Returns the acknowledged ids."""
    a, b = _admin(lab, "region-a"), _admin(lab, "region-b")
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)")
        c.execute("ALTER TABLE notes OWNER TO rds_master")  # as RDS's master user made it
    assert pg.wait_replayed(b, pg.write_barrier(a), 30)
    # region-b receives these but has not replayed them when region-a dies (replay lag):
    # the promotion replays them, so they are rows both sides had at the split
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("SELECT pg_wal_replay_pause()")
    lagged = _notes(a, ["lag0", "lag1", "lag2"])
    flushed = pg.status(a).lsn
    with psycopg.connect(b, autocommit=True) as c:
        deadline = time.monotonic() + 10
        while not c.execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn",
                            (flushed,)).fetchone()[0]:
            assert time.monotonic() < deadline, "region-b did not receive region-a's WAL"
            time.sleep(0.05)
    # the link goes: region-a's walsender ends, and a paused replica does not reconnect
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
    with psycopg.connect(b, autocommit=True) as c:
        deadline = time.monotonic() + 10
        while c.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0]:
            assert time.monotonic() < deadline, "the walreceiver did not stop"
            time.sleep(0.05)
    acked = {"orders_a": _orders(a, 40, "a-div"),
             "notes_a": _notes(a, [f"a{i}" for i in range(5)]), "lagged": lagged}
    failed = lab.cli("lab", "fail", "region-a", "--mode", "stop")
    assert failed.returncode == 0, failed.stdout + failed.stderr
    over = lab.cli("failover", "--yes", "--reason", "region-a down", "--actor", "alice")
    assert over.returncode == 0, over.stdout + over.stderr
    acked["orders_b"] = _orders(b, 40, "b-new")
    acked["notes_b"] = _notes(b, ["b0", "b1"])
    # region-b changes rows the old side wrote, that it replayed only at its promotion
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("DELETE FROM notes WHERE id = %s", (lagged[0],))
        c.execute("UPDATE notes SET body = 'lag1-new' WHERE id = %s", (lagged[1],))
    healed = lab.cli("lab", "heal", "region-a")
    assert healed.returncode == 0, healed.stdout + healed.stderr
    return acked


def _step(report: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["id"] == step_id)


def test_rds_failback_reconciles_keeps_the_old_primary_and_rebuilds_both_replicas(
        rds_lab: Lab) -> None:
    acked = _diverge(rds_lab)
    # drorch's sequence gap at promotion: region-b's default ids start past region-a's
    assert min(acked["orders_b"]) > max(acked["orders_a"])
    back = rds_lab.cli("failback", "--yes", "--reason", "region-a is back", "--actor", "bob")
    assert back.returncode == 0, back.stdout + back.stderr

    # every acknowledged row, from either side, is on the primary (region-a again)
    a = _admin(rds_lab, "region-a")
    assert not pg.in_recovery(a)
    with psycopg.connect(a) as c:
        orders = {r[0] for r in c.execute("SELECT id FROM orders")}
        notes = {r[0]: r[1] for r in c.execute("SELECT id, body FROM notes")}
    lost = [i for k in ("orders_a", "orders_b") for i in acked[k] if i not in orders]
    lost += [i for k in ("notes_a", "notes_b") for i in acked[k] if i not in notes]
    assert lost == []
    assert [notes[i] for i in acked["notes_a"]] == [f"a{i}" for i in range(5)]
    # region-b's delete and update of the rows it replayed at its promotion stand: no row
    # brought back, none duplicated under a new key
    lag0, lag1, lag2 = acked["lagged"]
    assert lag0 not in notes and notes[lag1] == "lag1-new" and notes[lag2] == "lag2"
    assert sorted(notes.values()).count("lag1") == 0

    report = json.loads(rds_lab.cli("report", "--output", "json").stdout)
    section = report["reconcile"]["main"]
    assert section["method"] == "full" and "permission denied" in section["method_reason"]
    assert section["acknowledged_rows_lost"] == 0
    by_table = {t["table"]: t for t in section["tables"]}
    assert by_table["public.notes"]["applied"] == 5  # a table the runbook does not list
    assert by_table["public.orders"]["applied"] == 40
    assert by_table["public.orders"]["pending"] == 0

    # evidence: the snapshot, and the old primary kept (renamed, tagged) with its rows
    east = _rds(rds_lab, "region-a")
    snap_id = _step(report, "evidence:main")["detail"]["snapshot"]
    snaps = east.describe_db_snapshots(DBSnapshotIdentifier=snap_id)["DBSnapshots"]
    assert [s["Status"] for s in snaps] == ["available"]
    assert snap_id in section["evidence"]
    kept = rds.describe(east, _step(report, "resync:main")["detail"]["kept"])
    assert kept.identifier in section["evidence"]
    tags = {t["Key"]: t["Value"] for t in east.list_tags_for_resource(
        ResourceName=kept.arn)["TagList"]}
    assert tags["drorch:kept-by"] == report["incident_id"]
    with psycopg.connect(f"host=127.0.0.1 port={kept.port} user=postgres dbname=app") as c:
        assert not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        assert c.execute("SELECT count(*) FROM orders WHERE region = 'a-div'"
                         ).fetchone() == (40,)
        # fenced: the application role may not log in
        assert c.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'app'"
                         ).fetchone() == (False,)

    # fenced by security group too (the lab's moto records it; on AWS it closes the path)
    assert kept.security_groups == ("sg-0d0f0fence00000a1",)

    # the estate is a primary and its cross-region replica again, under the same names
    main_a = rds.describe(east, "drorch-main-a")
    main_b = rds.describe(_rds(rds_lab, "region-b"), "drorch-main-b")
    assert not main_a.is_replica and main_b.source == main_a.arn
    assert pg.in_recovery(_admin(rds_lab, "region-b"))
    calls = lab_mod.moto_actions(rds_lab.runbook)
    assert calls[("rds", "us-east-1", "CreateDBSnapshot")] == 1
    assert calls[("rds", "us-east-1", "CreateDBInstanceReadReplica")] == 1
    assert calls[("rds", "us-west-2", "CreateDBInstanceReadReplica")] == 2  # lab up + rejoin
    assert calls[("rds", "us-east-1", "PromoteReadReplica")] == 1
    # the new primary takes writes; its new replica replays them
    ids = _orders(a, 3, "after")
    assert pg.wait_replayed(_admin(rds_lab, "region-b"), pg.write_barrier(a), 30)
    with psycopg.connect(_admin(rds_lab, "region-b")) as c:
        assert c.execute("SELECT count(*) FROM orders WHERE id = ANY(%s)",
                         (ids,)).fetchone() == (3,)


KILL_POINTS = ("evidence:main:snapshot_requested", "resync:main:renamed",
               "resync:main:replica_requested", "rejoin:main:renamed",
               "rejoin:main:replica_requested")


def test_kill_9_at_each_rds_failback_request_then_resume_does_each_once(
        rds_lab: Lab) -> None:
    """The failback killed (SIGKILL) just after each RDS request in turn, resumed each
    time: one snapshot, one rename and one replica per region, one promotion, one secret
    version per region, counted from moto's request log."""
    acked = _diverge(rds_lab)
    before = lab_mod.moto_actions(rds_lab.runbook)
    run = rds_lab.cli("failback", "--yes", "--reason", "kill test", "--actor", "bob",
                      extra_env={"DRORCH_FAULT_KILL_AT": KILL_POINTS[0]})
    assert run.returncode == -9, run.stdout + run.stderr
    for point in KILL_POINTS[1:]:
        run = rds_lab.cli("resume", "--yes", extra_env={"DRORCH_FAULT_KILL_AT": point})
        assert run.returncode == -9, (point, run.stdout + run.stderr)
    done = rds_lab.cli("resume", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    calls = lab_mod.moto_actions(rds_lab.runbook)
    made = {k: calls[k] - before[k] for k in calls if calls[k] != before[k]}
    assert made[("rds", "us-east-1", "CreateDBSnapshot")] == 1
    assert made[("rds", "us-east-1", "CreateDBInstanceReadReplica")] == 1
    assert made[("rds", "us-west-2", "CreateDBInstanceReadReplica")] == 1
    # region-a: the fence's security groups, then the rename; region-b: the rename
    assert made[("rds", "us-east-1", "ModifyDBInstance")] == 2
    assert made[("rds", "us-west-2", "ModifyDBInstance")] == 1
    assert made[("rds", "us-east-1", "PromoteReadReplica")] == 1
    assert made[("secretsmanager", "us-east-1", "PutSecretValue")] == 1
    assert made[("secretsmanager", "us-west-2", "PutSecretValue")] == 1
    with psycopg.connect(_admin(rds_lab, "region-a")) as c:
        orders = {r[0] for r in c.execute("SELECT id FROM orders")}
        notes = {r[0] for r in c.execute("SELECT id FROM notes")}
    assert {i for k in ("orders_a", "orders_b") for i in acked[k]} <= orders
    assert {i for k in ("notes_a", "notes_b") for i in acked[k]} <= notes
    east, west = _rds(rds_lab, "region-a"), _rds(rds_lab, "region-b")
    assert rds.describe(west, "drorch-main-b").source == rds.describe(east, "drorch-main-a").arn
