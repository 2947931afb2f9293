"""`drorch plan`'s readiness for the managed kinds through the lab (the lab's moto
plays RDS and Aurora, bound to real PostgreSQL clusters): healthy, each lab runbook is
ready (exit 0); with the replica gone (rds) or the secondary detached from the global
cluster (aurora-global), plan names database.replica and exits 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drorch.adapters.aws import AwsClients
from drorch.cli import app
from drorch.exitcodes import ExitCode
from tests.conftest import ROOT, running_lab


def _plan(path: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["plan", "-r", str(path), "--output", "json"])
    return result.exit_code, json.loads(result.stdout)


def _bad(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in doc["readiness"] if r["status"] in ("warn", "fail")]


def test_rds_lab_is_ready_until_its_replica_is_deleted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_moto: tuple[int, Path]) -> None:
    """kind rds: DescribeDBInstances shows region-b's instance a replicating read
    replica of region-a's (ready); deleted, there is nothing to promote (exit 2)."""
    path = ROOT / "runbooks" / "aws-rds.yaml"
    with running_lab(tmp_path, monkeypatch, path, moto=worker_moto) as lab:
        code, doc = _plan(path)
        assert code == ExitCode.OK, _bad(doc)
        [row] = [r for r in doc["readiness"] if r["check"] == "database.replica"]
        assert "RDS shows drorch-main-b as a read replica of drorch-main-a (available)" \
            in row["reason"], row
        rds = AwsClients(lab.runbook.aws.endpoint_url)("rds", "us-west-2")
        rds.delete_db_instance(DBInstanceIdentifier="drorch-main-b", SkipFinalSnapshot=True)
        code, doc = _plan(path)
    assert code == ExitCode.NOT_READY
    assert [(r["check"], r["status"]) for r in _bad(doc)] == [("database.replica", "fail")]
    assert "drorch-main-b" in _bad(doc)[0]["reason"] and "nothing to promote" in \
        _bad(doc)[0]["reason"]


def test_aurora_lab_is_ready_until_its_secondary_is_detached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_moto: tuple[int, Path]) -> None:
    """kind aurora-global: DescribeGlobalClusters lists region-b's cluster as a
    secondary (ready); removed from the global cluster, there is nothing to fail over
    to (exit 2)."""
    path = ROOT / "runbooks" / "aws-aurora-global.yaml"
    with running_lab(tmp_path, monkeypatch, path, moto=worker_moto) as lab:
        code, doc = _plan(path)
        assert code == ExitCode.OK, _bad(doc)
        db = lab.runbook.databases[0]
        rds = AwsClients(lab.runbook.aws.endpoint_url)("rds", "us-west-2")
        arn = rds.describe_db_clusters(DBClusterIdentifier=db.endpoints["region-b"].cluster_id
                                       )["DBClusters"][0]["DBClusterArn"]
        rds.remove_from_global_cluster(GlobalClusterIdentifier=db.global_cluster_id,
                                       DbClusterIdentifier=arn)
        code, doc = _plan(path)
    assert code == ExitCode.NOT_READY
    [row] = [r for r in _bad(doc) if r["check"] == "database.replica"]
    assert "is not a member of global cluster" in row["reason"], row
