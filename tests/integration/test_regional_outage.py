"""A regional outage as it happens: the failed region's AWS API down with its database.

Steps aimed at the failed region (its write flag, its copy of the secret) are best
effort: the failover completes without them, says so, and they are done later.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError

from drorch.adapters import flags, route53, secrets
from drorch.adapters import postgres as pg
from drorch.adapters.aws import AwsClients
from drorch.audit import AuditLog
from drorch.engine import Engine
from drorch.store.sqlite import SqliteStore
from tests.conftest import Lab

pytestmark = pytest.mark.postgres

FLAG = "/drorch/lab/writes-frozen"
NOT_DONE = {"freeze:write-flag@region-a", "secrets:lab/main/db@region-a"}


def _weights(aws: AwsClients) -> dict[str, int]:
    client = aws("route53", "us-east-1")
    zone = route53.zone_id(client, "lab.drorch.test.")
    return {r.set_identifier: r.weight
            for r in route53.weighted_records(client, zone, "app.lab.drorch.test.", "A")}


def _secret_port(aws: AwsClients, lab: Lab, region: str) -> int:
    spec = next(s for s in lab.runbook.secrets if s.region == region)
    value = secrets.get_value(aws("secretsmanager", lab.runbook.region(region).aws_region),
                              spec.secret_id)
    return int(value["port"])


def _report(lab: Lab) -> dict[str, Any]:
    shown = lab.cli("report", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def test_failover_completes_with_the_failed_regions_aws_api_down(lab: Lab) -> None:
    """region-a's database killed and its AWS API hung: the failover completes (exit 0,
    failed_over, writes open on region-b, its secret and DNS moved), the report lists
    region-a's write flag and secret as not done, and once region-a's API answers the
    deferred steps are done (flag frozen there, secret pointing at region-b)."""
    aws = AwsClients.for_runbook(lab.runbook)
    b_port = lab.runbook.database("main").endpoints["region-b"].port
    assert lab.cli("lab", "fail", "region-a", "--mode", "stop").returncode == 0
    down = lab.cli("lab", "fail", "region-a", "--mode", "aws-down")
    assert down.returncode == 0, down.stdout + down.stderr

    result = lab.cli("failover", "--reason", "region-a gone", "--actor", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "could not reach region-a's SSM API" in result.stdout
    assert not pg.in_recovery(lab.runbook.database("main").endpoints["region-b"].dsn())
    assert _weights(aws) == {"region-a": 0, "region-b": 100}
    assert _secret_port(aws, lab, "region-b") == b_port
    assert not flags.is_frozen(aws("ssm", "us-west-2"), FLAG)

    report = _report(lab)
    assert report["state"] == "failed_over" and report["outcome"] == "completed"
    assert {d["step"] for d in report["not_done"]} == NOT_DONE
    assert all(d["region"] == "region-a" for d in report["not_done"])
    assert "Not done" in report["summary"]
    statuses = {s["id"]: s["status"] for s in report["steps"]}
    assert {s for s, st in statuses.items() if st == "deferred"} == NOT_DONE
    assert "failed" not in statuses.values()

    healed = lab.cli("lab", "heal", "region-a")
    assert healed.returncode == 0, healed.stderr
    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        engine = Engine(lab.runbook, store, AuditLog(lab.state_dir / "audit.jsonl"), aws)
        incident = store.incidents()[-1].id
        assert {s.id for s in engine.deferred_steps(incident)} == NOT_DONE
        assert engine.retry_deferred(incident) == dict.fromkeys(NOT_DONE, "done")
        assert engine.deferred_steps(incident) == []
        assert engine.retry_deferred(incident) == {}  # nothing left: nothing journaled
    finally:
        store.close()
    assert flags.is_frozen(aws("ssm", "us-east-1"), FLAG)
    assert _secret_port(aws, lab, "region-a") == b_port
    assert _report(lab)["not_done"] == []


def test_aws_down_is_a_fault_of_its_own(lab: Lab) -> None:
    """aws-down hangs only the region's AWS API (its database still answers, the other
    region's API too), refuses to be injected twice, and heal brings the API back."""
    aws = AwsClients.for_runbook(lab.runbook)
    probe = boto3.client("ssm", region_name="us-east-1",
                         endpoint_url=aws.endpoint_for("ssm", "us-east-1"),
                         config=Config(connect_timeout=1, read_timeout=1,
                                       retries={"max_attempts": 1}))
    assert lab.cli("lab", "fail", "region-a", "--mode", "aws-down").returncode == 0
    again = lab.cli("lab", "fail", "region-a", "--mode", "aws-down")
    assert again.returncode == 1 and "already has a aws-down fault" in again.stderr
    assert "Traceback" not in again.stderr
    assert pg.reachable(lab.runbook.database("main").endpoints["region-a"].dsn())
    assert not flags.is_frozen(aws("ssm", "us-west-2"), FLAG)
    with pytest.raises(ReadTimeoutError):
        probe.get_parameter(Name=FLAG)
    assert lab.cli("lab", "heal", "region-a").returncode == 0
    assert probe.get_parameter(Name=FLAG)["Parameter"]["Value"] == "false"
