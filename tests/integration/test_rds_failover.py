"""Failover of a kind-rds database on the lab: the replica is promoted through the RDS
API (the lab's moto, whose instances are bound to the lab's real clusters), the secret
gets the endpoint RDS describes, and a kill -9 around the promotion then `drorch resume`
promotes once."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from drorch.adapters import postgres as pg
from drorch.adapters import rds, secrets
from drorch.adapters.aws import AwsClients
from drorch.lab import lab as lab_mod
from tests.conftest import Lab

pytestmark = pytest.mark.postgres

def _dsn(lab: Lab, region: str) -> str:
    return lab.runbook.database("main").endpoints[region].dsn()


def _instance(lab: Lab, region: str) -> rds.Instance:
    ep = lab.runbook.database("main").endpoints[region]
    aws = AwsClients.for_runbook(lab.runbook)
    assert ep.instance_id is not None
    return rds.describe(aws("rds", lab.runbook.region(region).aws_region), ep.instance_id)


def _audit(lab: Lab, action: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(line) for line in
                        (lab.state_dir / "audit.jsonl").read_text().splitlines())
            if e["action"] == action]


def _rds_promotions(lab: Lab) -> int:
    """PromoteReadReplica calls moto answered (its request log)."""
    return lab_mod.moto_actions(lab.runbook)[("rds", "us-west-2", "PromoteReadReplica")]


def _promote_requests(lab: Lab) -> int:
    log = lab_mod.node_for(lab.runbook, "main", "region-b").logfile
    return len(re.findall("received promote request", log.read_text()))


def test_rds_failover_promotes_through_the_api_and_points_secrets_at_its_endpoint(
        rds_lab: Lab) -> None:
    a, b = _instance(rds_lab, "region-a"), _instance(rds_lab, "region-b")
    eps = rds_lab.runbook.database("main").endpoints
    # the lab binds each instance to its cluster
    assert (a.address, a.port) == ("127.0.0.1", eps["region-a"].port)
    assert (b.address, b.port) == ("127.0.0.1", eps["region-b"].port)
    assert not a.is_replica and b.source == a.arn and b.arn in a.replicas
    with psycopg.connect(_dsn(rds_lab, "region-a"), autocommit=True) as c:
        ids = [c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES "
                         "(1, %s, 'a') RETURNING id", (n,)).fetchone()[0] for n in range(5)]
    # a superuser's session (RDS's own rdsadmin) the master user may not end
    rdsadmin = psycopg.connect(lab_mod.node_for(rds_lab.runbook, "main", "region-a").dsn(),
                               autocommit=True)
    try:
        result = rds_lab.cli("failover", "--yes", "--reason", "rds test", "--actor", "alice")
        assert rdsadmin.execute("SELECT 1").fetchone() == (1,)  # left open
    finally:
        rdsadmin.close()
    assert result.returncode == 0, result.stdout + result.stderr

    b = _instance(rds_lab, "region-b")
    assert not b.is_replica and b.status == "available"
    assert not pg.in_recovery(_dsn(rds_lab, "region-b"))
    with psycopg.connect(_dsn(rds_lab, "region-b"), autocommit=True) as c:
        assert [r[0] for r in c.execute(
            "SELECT id FROM orders WHERE id = ANY(%s) ORDER BY id", (ids,))] == ids
    aws = AwsClients.for_runbook(rds_lab.runbook)
    for spec in rds_lab.runbook.secrets:
        value = secrets.get_value(
            aws("secretsmanager", rds_lab.runbook.region(spec.region).aws_region),
            spec.secret_id)
        assert (value["host"], value["port"]) == (b.address, b.port)
    calls = _audit(rds_lab, "aws.rds.promote_read_replica")
    assert len(calls) == 1 and calls[0]["inputs"]["instance"] == "drorch-main-b"
    assert calls[0]["inputs"]["request_id"]
    # every AWS call of the step is in its audit entry, with AWS's request id
    [applied] = _audit(rds_lab, "step.promote.applied")
    ops = [(c["service"], c["operation"]) for c in applied["inputs"]["aws_calls"]]
    assert ("rds", "PromoteReadReplica") in ops and ("rds", "DescribeDBInstances") in ops
    assert all(c["request_id"] for c in applied["inputs"]["aws_calls"])
    assert _rds_promotions(rds_lab) == 1
    assert _promote_requests(rds_lab) == 1
    # drorch connected as RDS's master user (not a superuser): the read-only default was
    # set per database, and what that role may not do is in the report's summary
    report = json.loads(rds_lab.cli("report", "--output", "json").stdout)
    [freeze] = [s for s in report["steps"] if s["id"] == "freeze:main"]
    assert freeze["detail"]["database_read_only"] == {"app": None}
    assert freeze["detail"]["auto_conf_read_only"] is None
    assert "Not possible for the role drorch connects as: freeze:main: database postgres" \
        in report["summary"]
    # the barrier cannot vouch for that session: the RPO says so
    [caveat] = report["rpo"]["caveats"]
    assert "superuser sessions left open" in caveat and "postgres x1" in caveat
    with psycopg.connect(_dsn(rds_lab, "region-b"), autocommit=True) as c:
        assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                         ).fetchone() == (False,)
        assert c.execute("SELECT count(*) FROM pg_db_role_setting").fetchone() == (0,)


@pytest.mark.parametrize("point", ["promote:main:before_apply", "promote:main:after_apply"])
def test_kill_around_the_rds_promotion_then_resume_promotes_once(rds_lab: Lab,
                                                                   point: str) -> None:
    killed = rds_lab.cli("failover", "--yes", "--reason", "kill test", "--actor", "bob",
                         extra_env={"DRORCH_FAULT_KILL_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    resumed = rds_lab.cli("resume", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not _instance(rds_lab, "region-b").is_replica
    assert len(_audit(rds_lab, "aws.rds.promote_read_replica")) == 1
    assert _rds_promotions(rds_lab) == 1
    assert _promote_requests(rds_lab) == 1
    # the audit says the promotion happened, whichever run saw it done
    applied = _audit(rds_lab, "step.promote.applied")
    confirmed = _audit(rds_lab, "step.promote.confirmed")
    assert (len(applied), len(confirmed)) == ((0, 1) if point.endswith("after_apply")
                                              else (1, 0))
    # region-a answered: the RPO measured before the request stands, whichever run
    assert "RPO: 0.000 s, 0 bytes (lsn-at-promotion)" in resumed.stdout, resumed.stdout
