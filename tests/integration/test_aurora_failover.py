"""Failover of a kind-aurora-global database on the lab: the secondary regional cluster
becomes the writer through the Aurora API (the lab's moto, whose clusters are bound to
the lab's real PostgreSQL clusters): a switchover when region-a answers, a managed
failover with data loss or a detach when it does not; the secrets get the writer
endpoint Aurora describes; a kill -9 after the request, then `drorch resume`, asks once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drorch.adapters import aurora, secrets
from drorch.adapters import postgres as pg
from drorch.adapters.aws import AwsClients
from drorch.lab import lab as lab_mod
from tests.conftest import ROOT, Lab, running_lab

pytestmark = pytest.mark.postgres

AURORA_RUNBOOK = ROOT / "runbooks" / "aws-aurora-global.yaml"


def _lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto: tuple[int, Path],
         unplanned: str = "failover") -> Any:
    path = AURORA_RUNBOOK
    if unplanned != "failover":
        path = tmp_path / "aurora.yaml"
        path.write_text(AURORA_RUNBOOK.read_text().replace(
            "aurora_unplanned: failover", f"aurora_unplanned: {unplanned}"))
    return running_lab(tmp_path, monkeypatch, path, moto)


@pytest.fixture
def aurora_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               worker_moto: tuple[int, Path]) -> Iterator[Lab]:
    with _lab(tmp_path, monkeypatch, worker_moto) as running:
        yield running


def _dsn(lab: Lab, region: str) -> str:
    return lab.runbook.database("main").endpoints[region].dsn()


def _rds(lab: Lab, region: str) -> Any:
    return AwsClients.for_runbook(lab.runbook)("rds", lab.runbook.region(region).aws_region)


def _cluster(lab: Lab, region: str) -> aurora.Cluster:
    return aurora.describe_cluster(
        _rds(lab, region), str(lab.runbook.database("main").endpoints[region].cluster_id))


def _writer(lab: Lab) -> str | None:
    return aurora.describe_global(_rds(lab, "region-b"), "drorch-main").writer()


def _actions(lab: Lab, action: str) -> int:
    return sum(n for (svc, _region, act), n in lab_mod.moto_actions(lab.runbook).items()
               if svc == "rds" and act == action)


def _audit(lab: Lab, action: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(line) for line in
                        (lab.state_dir / "audit.jsonl").read_text().splitlines())
            if e["action"] == action]


def _secrets_point_at(lab: Lab, cluster: aurora.Cluster) -> None:
    aws = AwsClients.for_runbook(lab.runbook)
    for spec in lab.runbook.secrets:
        value = secrets.get_value(
            aws("secretsmanager", lab.runbook.region(spec.region).aws_region), spec.secret_id)
        assert (value["host"], value["port"]) == (cluster.endpoint, cluster.port)


def _replicated_orders(lab: Lab) -> list[int]:
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        ids = [c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES "
                         "(1, %s, 'a') RETURNING id", (n,)).fetchone()[0] for n in range(3)]
    pg.wait_replayed(_dsn(lab, "region-b"), pg.status(_dsn(lab, "region-a")).lsn, 30)
    return ids


def _kill_region_a(lab: Lab) -> list[int]:
    ids = _replicated_orders(lab)
    lab_mod.node_for(lab.runbook, "main", "region-a").kill()
    return ids


def test_switchover_when_region_a_answers(aurora_lab: Lab) -> None:
    a, b = _cluster(aurora_lab, "region-a"), _cluster(aurora_lab, "region-b")
    eps = aurora_lab.runbook.database("main").endpoints
    assert (b.endpoint, b.port) == ("127.0.0.1", eps["region-b"].port)  # the lab's binding
    assert _writer(aurora_lab) == a.arn
    result = aurora_lab.cli("failover", "--yes", "--reason", "aurora", "--actor", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _writer(aurora_lab) == b.arn
    assert not pg.in_recovery(_dsn(aurora_lab, "region-b"))
    _secrets_point_at(aurora_lab, b)
    [call] = _audit(aurora_lab, "aws.aurora.make_writer")
    assert call["inputs"]["path"] == "switchover" and call["inputs"]["request_id"]
    assert _actions(aurora_lab, "SwitchoverGlobalCluster") == 1
    assert _actions(aurora_lab, "FailoverGlobalCluster") == 0
    assert _actions(aurora_lab, "CopyDBClusterSnapshot") == 0  # a switchover loses nothing
    # as Aurora does, the switchover made the old writer a secondary of the new one
    assert pg.in_recovery(_dsn(aurora_lab, "region-a"))

    # writes taken in region-b go back with the failback: another switchover, no fence,
    # no reconcile (nothing diverged), and region-b becomes the secondary again
    with psycopg.connect(_dsn(aurora_lab, "region-b"), autocommit=True) as c:
        ids = [c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES "
                         "(1, %s, 'b') RETURNING id", (n,)).fetchone()[0] for n in range(5)]
    # a failback is planned only: with region-b (serving) down it promotes nothing, so
    # region-b's writes are never left behind by a failover with data loss
    node_b = lab_mod.node_for(aurora_lab.runbook, "main", "region-b")
    node_b.stop()
    try:
        refused = aurora_lab.cli("failback", "--yes", "--reason", "b is down")
        assert refused.returncode == 4, refused.stdout + refused.stderr  # rolled back
        assert "planned only" in refused.stdout + refused.stderr
        assert _actions(aurora_lab, "FailoverGlobalCluster") == 0
        assert _writer(aurora_lab) == b.arn
    finally:
        node_b.start()
    back = aurora_lab.cli("failback", "--yes", "--reason", "aurora back", "--actor", "alice")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "fence:" not in back.stdout and "reconcile:" not in back.stdout, back.stdout
    assert _writer(aurora_lab) == a.arn
    assert not pg.in_recovery(_dsn(aurora_lab, "region-a"))
    assert pg.in_recovery(_dsn(aurora_lab, "region-b"))
    with psycopg.connect(_dsn(aurora_lab, "region-a"), autocommit=True) as c:
        assert [r[0] for r in c.execute("SELECT id FROM orders WHERE id = ANY(%s) "
                                        "ORDER BY id", (ids,))] == ids
    _secrets_point_at(aurora_lab, _cluster(aurora_lab, "region-a"))
    assert _actions(aurora_lab, "SwitchoverGlobalCluster") == 2

    # and a drill (planned failover, then failback) runs the whole cycle unattended
    drill = aurora_lab.cli("drill", "--yes", "--reason", "aurora drill")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert _writer(aurora_lab) == a.arn and pg.in_recovery(_dsn(aurora_lab, "region-b"))
    assert _actions(aurora_lab, "SwitchoverGlobalCluster") == 4
    assert _actions(aurora_lab, "FailoverGlobalCluster") == 0


def _diverge_then_kill_region_a(lab: Lab) -> tuple[list[int], list[int]]:
    """Orders region-b replays, then orders it never receives (its link cut), then
    region-a dies: (replicated ids, lost-at-failover ids), each acknowledged."""
    ids = _replicated_orders(lab)
    admin_b = lab_mod.node_for(lab.runbook, "main", "region-b").dsn()
    with psycopg.connect(admin_b, autocommit=True) as c:
        c.execute("ALTER SYSTEM SET primary_conninfo = ''")
        c.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while c.execute("SELECT count(*) FROM pg_stat_wal_receiver").fetchone()[0]:
            assert time.monotonic() < deadline, "region-b's walreceiver did not stop"
            time.sleep(0.05)
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        lost = [c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES "
                          "(1, %s, 'a-lost') RETURNING id", (n,)).fetchone()[0]
                for n in range(5)]
    lab_mod.node_for(lab.runbook, "main", "region-a").kill()
    return ids, lost


def test_unplanned_failover_killed_after_the_request_asks_once(aurora_lab: Lab) -> None:
    ids, lost = _diverge_then_kill_region_a(aurora_lab)
    # a drill's failover is planned only: with region-a dead nothing is promoted
    drill = aurora_lab.cli("drill", "--yes", "--reason", "drill into an outage")
    assert drill.returncode == 4, drill.stdout + drill.stderr  # rolled back
    assert "planned only" in drill.stdout + drill.stderr
    assert _writer(aurora_lab) == _cluster(aurora_lab, "region-a").arn
    assert pg.in_recovery(_dsn(aurora_lab, "region-b"))
    assert _actions(aurora_lab, "FailoverGlobalCluster") == 0
    killed = aurora_lab.cli("failover", "--yes", "--reason", "aurora", "--actor", "bob",
                            extra_env={"DRORCH_FAULT_KILL_AT": "promote:main:after_apply"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = aurora_lab.cli("resume", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # region-a was dead: RPO unknown until the failback compares Aurora's snapshot
    assert "RPO: not measurable at promotion" in resumed.stdout, resumed.stdout
    b = _cluster(aurora_lab, "region-b")
    assert _writer(aurora_lab) == b.arn
    assert _actions(aurora_lab, "FailoverGlobalCluster") == 1
    assert _actions(aurora_lab, "SwitchoverGlobalCluster") == 0
    [call] = _audit(aurora_lab, "aws.aurora.make_writer")
    assert call["inputs"]["path"] == "failover"
    with psycopg.connect(_dsn(aurora_lab, "region-b"), autocommit=True) as c:
        assert [r[0] for r in c.execute("SELECT id FROM orders WHERE id = ANY(%s) "
                                        "ORDER BY id", (ids,))] == ids
    _secrets_point_at(aurora_lab, b)
    # Aurora keeps the old writer's volume as a snapshot after an unplanned failover;
    # drorch copies it at once (once, though the run was killed) to one it names
    snaps = _rds(aurora_lab, "region-a").describe_db_cluster_snapshots()["DBClusterSnapshots"]
    names = [s["DBClusterSnapshotIdentifier"] for s in snaps]
    assert any(n.startswith("rds:unplanned-global-failover-") for n in names)
    [evidence] = _audit(aurora_lab, "step.evidence.applied")
    assert evidence["detail"]["copy"] in names
    assert evidence["detail"]["source"].startswith("rds:unplanned-global-failover-")
    assert _actions(aurora_lab, "CopyDBClusterSnapshot") == 1
    # while region-a is still down the way back cannot end (it switches over to it):
    # nothing is restored, the run rolls back at once
    early = aurora_lab.cli("failback", "--yes", "--reason", "region-a not back yet")
    assert early.returncode == 4, early.stdout + early.stderr
    assert "does not answer" in early.stdout + early.stderr
    assert _actions(aurora_lab, "RestoreDBClusterFromSnapshot") == 0
    # region-a comes back: Aurora makes its cluster a secondary again, the writes it
    # never replicated gone from it (the snapshot keeps them)
    healed = aurora_lab.cli("lab", "heal", "region-a")
    assert "rejoined as an Aurora secondary" in healed.stdout, healed.stdout + healed.stderr
    assert pg.in_recovery(_dsn(aurora_lab, "region-a"))
    # the failback restores the copy to a temporary cluster, reconciles it, deletes that
    # cluster only, and switches over back: every acknowledged order is there
    # killed (SIGKILL) just after the restore was requested, then resumed: one restore
    killed = aurora_lab.cli("failback", "--yes", "--reason", "region-a is back",
                            extra_env={"DRORCH_FAULT_KILL_AT": "restore:main:restore_requested"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    back = aurora_lab.cli("resume", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    assert _writer(aurora_lab) == _cluster(aurora_lab, "region-a").arn
    with psycopg.connect(_dsn(aurora_lab, "region-a"), autocommit=True) as c:
        assert sorted(r[0] for r in c.execute(
            "SELECT id FROM orders WHERE id = ANY(%s)", (ids + lost,))) == sorted(ids + lost)
    assert _actions(aurora_lab, "RestoreDBClusterFromSnapshot") == 1
    assert _actions(aurora_lab, "DeleteDBCluster") == 1
    assert _actions(aurora_lab, "SwitchoverGlobalCluster") == 1
    clusters = [c["DBClusterIdentifier"] for c in
                _rds(aurora_lab, "region-a").describe_db_clusters()["DBClusters"]]
    assert clusters == ["drorch-main-a"]  # the temporary one is gone, nothing else
    report = json.loads(aurora_lab.cli("report", "--output", "json").stdout)
    section = report["reconcile"]["main"]
    assert section["acknowledged_rows_lost"] == 0
    assert evidence["detail"]["copy"] in section["evidence"]
    assert {t["table"]: t["applied"] for t in section["tables"]}["public.orders"] == 5


def test_detach_and_promote_when_managed_failover_is_not_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        worker_moto: tuple[int, Path]) -> None:
    with _lab(tmp_path, monkeypatch, worker_moto, "detach") as lab:
        _kill_region_a(lab)
        result = lab.cli("failover", "--yes", "--reason", "aurora", "--actor", "carol")
        assert result.returncode == 0, result.stdout + result.stderr
        b = _cluster(lab, "region-b")
        assert b.global_cluster is None
        assert b.arn not in [m.arn for m in aurora.describe_global(
            _rds(lab, "region-b"), "drorch-main").members]
        assert _actions(lab, "RemoveFromGlobalCluster") == 1
        assert not pg.in_recovery(_dsn(lab, "region-b"))
        _secrets_point_at(lab, b)
        # the old writer is a standalone writer now: no failback drorch can do, said
        # before anything is done
        refused = lab.cli("failback", "--yes", "--reason", "after a detach")
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "detach" in refused.stdout + refused.stderr
