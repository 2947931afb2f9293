"""`drorch plan`'s readiness checks against one lab (real PostgreSQL pair, the lab's
moto): healthy it is ready (exit 0); each test breaks exactly one thing, sees `plan`
name it with exit 2 (not ready) or 1 (warnings), and puts it back.

The lab runs from a copy of runbooks/lab.yaml with a lag limit small enough to cross;
its alarm chain (Route 53 health checks -> CloudWatch alarms -> SNS -> SQS) is the one
`drorch lab up` builds from the runbook's health section.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from drorch.cli import app
from drorch.config import Runbook, load_runbook
from drorch.exitcodes import ExitCode
from tests.conftest import LAB_RUNBOOK, ROOT, lab_env

pytestmark = pytest.mark.usefixtures("ready_lab")

LAG_LIMIT = 65536


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _runbook_copy(path: Path) -> None:
    raw = yaml.safe_load(LAB_RUNBOOK.read_text())
    raw["health"]["max_replica_lag_bytes"] = LAG_LIMIT
    path.write_text(yaml.dump(raw, Dumper=_NoAliases, sort_keys=False))


class ReadyLab:
    def __init__(self, runbook: Runbook, path: Path, env: dict[str, str]) -> None:
        self.runbook, self.path, self.env = runbook, path, env
        from drorch.adapters.aws import AwsClients

        self.aws = AwsClients(runbook.aws.endpoint_url)  # moto itself, past the relays

    def plan(self) -> tuple[int, dict[str, Any]]:
        """`drorch plan --output json` in this process: (exit code, document)."""
        result = CliRunner().invoke(app, ["plan", "-r", str(self.path), "--output", "json"])
        return result.exit_code, json.loads(result.stdout)

    def plan_text(self, *extra: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
        """`drorch plan` as its own process (its own AWS credentials from ``env``)."""
        return subprocess.run([sys.executable, "-m", "drorch.cli", "plan", "-r",
                               str(self.path), *extra], capture_output=True, text=True,
                              env={**os.environ, **(env or {}), "COLUMNS": "250"},
                              timeout=120, cwd=ROOT)

    def dsn(self, region: str) -> str:
        return self.runbook.database("main").endpoints[region].dsn()


def _rows(doc: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [r for r in doc["readiness"] if r["check"] == check]


def _not_passing(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in doc["readiness"] if r["status"] in ("warn", "fail")]


def _alarm_named(lab: ReadyLab, region: str) -> dict[str, Any]:
    """The lab's alarm about ``region``, as CloudWatch describes it."""
    assert lab.runbook.health is not None
    [name] = [a for a, r in lab.runbook.health.alarm_regions.items() if r == region]
    [alarm] = lab.aws("cloudwatch", "us-east-1").describe_alarms(AlarmNames=[name]
                                                                 )["MetricAlarms"]
    return dict(alarm)


_ALARM_FIELDS = ("AlarmName", "AlarmDescription", "Namespace", "MetricName", "Dimensions",
                 "Statistic", "Period", "EvaluationPeriods", "Threshold",
                 "ComparisonOperator", "AlarmActions", "OKActions", "TreatMissingData")


def _put_alarm(lab: ReadyLab, alarm: dict[str, Any], **change: Any) -> None:
    """Put ``alarm`` back as described, with ``change``."""
    fields = {k: alarm[k] for k in _ALARM_FIELDS if alarm.get(k) is not None}
    lab.aws("cloudwatch", "us-east-1").put_metric_alarm(**{**fields, **change})


@pytest.fixture(scope="module")
def ready_lab(tmp_path_factory: pytest.TempPathFactory,
              worker_moto: tuple[int, Path]) -> Iterator[ReadyLab]:
    """One lab for the module, from the runbook copy, on the worker's moto server."""
    from drorch.lab import lab as lab_mod
    from drorch.lab.postgres import pg_available

    if not pg_available():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    tmp = tmp_path_factory.mktemp("ready")
    mp = pytest.MonkeyPatch()
    env = {**lab_env(tmp), "DRORCH_LAB_MOTO_PORT": str(worker_moto[0]),
           lab_mod.REUSE_MOTO_ENV: str(worker_moto[1])}
    for key, value in env.items():
        mp.setenv(key, value)
    path = tmp / "lab-ready.yaml"
    _runbook_copy(path)
    runbook = load_runbook(path)
    lab_mod.up(runbook)
    try:
        yield ReadyLab(runbook, path, env)
    finally:
        lab_mod.down(runbook)
        mp.undo()


@pytest.fixture
def lab(ready_lab: ReadyLab) -> Iterator[ReadyLab]:
    """The module's lab, checked healthy after each test (a test that broke something
    and did not put it back fails here, not in the next test)."""
    yield ready_lab
    code, doc = ready_lab.plan()
    assert code == ExitCode.OK, _not_passing(doc)


def test_the_healthy_lab_is_ready(lab: ReadyLab) -> None:
    """Every check passes or does not apply: exit 0, the table says ready."""
    code, doc = lab.plan()
    assert code == ExitCode.OK, _not_passing(doc)
    assert doc["ready"] == "ready"
    checks = {r["check"] for r in doc["readiness"]}
    assert {"database.replica", "database.lag", "secret", "dns.records", "dns.ttl",
            "alarms", "write_flag", "wal", "journal", "iam"} <= checks
    statuses = {r["check"]: r["status"] for r in doc["readiness"]}
    assert statuses["alarms"] == statuses["database.replica"] == "pass"
    assert statuses["database.lag"] == "pass"
    text = lab.plan_text()
    assert text.returncode == 0, text.stdout + text.stderr
    assert "readiness" in text.stdout and "ready: every check passed" in text.stdout
    # moto's caller is no IAM role: said plainly, not counted either way
    assert statuses["iam"] == "skip" and "not checked" in _rows(doc, "iam")[0]["reason"]


def test_a_replica_that_is_down_is_not_ready(lab: ReadyLab) -> None:
    """The standby stopped: a failover would fail at the promotion (exit 2)."""
    from drorch.lab.lab import node_for

    node = node_for(lab.runbook, "main", "region-b")
    node.stop()
    try:
        code, doc = lab.plan()
    finally:
        node.start()
    assert code == ExitCode.NOT_READY
    [row] = _rows(doc, "database.replica")
    assert row["status"] == "fail" and "main in region-b does not answer" in row["reason"]
    _wait_streaming(lab)


def _wait_streaming(lab: ReadyLab) -> None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(lab.dsn("region-b"), autocommit=True) as c:
            row = c.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
        if row and row[0] == "streaming":
            return
        time.sleep(0.1)
    raise AssertionError("region-b did not stream again within 30 s")


def test_a_replica_past_the_lag_limit_is_not_ready(lab: ReadyLab) -> None:
    """Replay paused on the standby while the primary writes past the limit: the watcher
    would refuse, so plan says not ready and names the lag."""
    with psycopg.connect(lab.dsn("region-b"), autocommit=True) as b, \
            psycopg.connect(lab.dsn("region-a"), autocommit=True) as a:
        b.execute("SELECT pg_wal_replay_pause()")
        try:
            a.execute("CREATE TABLE ready_lag AS SELECT g, repeat('x', 200) AS pad "
                      "FROM generate_series(1, 2000) g")
            code, doc = lab.plan()
        finally:
            b.execute("SELECT pg_wal_replay_resume()")
            a.execute("DROP TABLE IF EXISTS ready_lag")
    assert code == ExitCode.NOT_READY
    [row] = _rows(doc, "database.lag")
    assert row["status"] == "fail" and f"over the limit of {LAG_LIMIT:,}" in row["reason"]


def test_a_rotation_in_flight_is_not_ready(lab: ReadyLab) -> None:
    """A rotation in flight on region-b's copy: its createSecret step has put the new
    version as AWSPENDING (what a rotation Lambda does first; moto's own RotateSecret
    without a Lambda finishes at once), and a failover's new version would be undone by
    the rotation's last step."""
    sm = lab.aws("secretsmanager", "us-west-2")
    value = sm.get_secret_value(SecretId="lab/main/db")["SecretString"]
    pending = sm.put_secret_value(SecretId="lab/main/db", SecretString=value,
                                  VersionStages=["AWSPENDING"])["VersionId"]
    try:
        code, doc = lab.plan()
    finally:
        sm.update_secret_version_stage(SecretId="lab/main/db", VersionStage="AWSPENDING",
                                       RemoveFromVersionId=pending)
    assert code == ExitCode.NOT_READY
    bad = [r for r in _rows(doc, "secret") if r["status"] == "fail"]
    assert [r["target"] for r in bad] == ["lab/main/db in region-b"]
    assert "rotation is in flight" in bad[0]["reason"] and pending in bad[0]["reason"]


def test_a_secret_missing_in_one_region_is_not_ready(lab: ReadyLab) -> None:
    """region-b's copy deleted: applications there cannot read where to connect."""
    sm = lab.aws("secretsmanager", "us-west-2")
    value = sm.get_secret_value(SecretId="lab/main/db")["SecretString"]
    sm.delete_secret(SecretId="lab/main/db", ForceDeleteWithoutRecovery=True)
    try:
        code, doc = lab.plan()
    finally:
        sm.create_secret(Name="lab/main/db", SecretString=value)
    assert code == ExitCode.NOT_READY
    bad = [r for r in _rows(doc, "secret") if r["status"] == "fail"]
    assert [r["target"] for r in bad] == ["lab/main/db in region-b"]
    assert "does not exist in region-b" in bad[0]["reason"]


def _record(lab: ReadyLab, set_id: str) -> tuple[Any, str, dict[str, Any]]:
    from drorch.adapters import route53 as r53

    client = lab.aws("route53", "us-east-1")
    zone = r53.zone_id(client, "lab.drorch.test.")
    [rec] = [w for w in r53.weighted_records(client, zone, "app.lab.drorch.test.", "A")
             if w.set_identifier == set_id]
    return client, zone, dict(rec.raw)


def test_a_ttl_longer_than_the_rto_target_is_not_ready(lab: ReadyLab) -> None:
    """region-b's record at TTL 300 against the lab's 30 s RTO target: exit 2."""
    client, zone, raw = _record(lab, "region-b")

    def upsert(ttl: int) -> None:
        client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
            {"Action": "UPSERT", "ResourceRecordSet": {**raw, "TTL": ttl}}]})

    upsert(300)
    try:
        code, doc = lab.plan()
    finally:
        upsert(int(raw["TTL"]))
    assert code == ExitCode.NOT_READY
    [row] = _rows(doc, "dns.ttl")
    assert row["status"] == "fail" and "TTL 300s is longer than the whole RTO target (30s)" \
        in row["reason"]


def test_a_missing_weighted_record_and_health_check_are_not_ready(lab: ReadyLab) -> None:
    """region-b's weighted record gone: the flip could not move traffic there. Then the
    record back with a health check that is deleted: the health check is named."""
    client, zone, raw = _record(lab, "region-b")
    alarm = _alarm_named(lab, "region-b")
    client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
        {"Action": "DELETE", "ResourceRecordSet": raw}]})
    try:
        code, doc = lab.plan()
        assert code == ExitCode.NOT_READY
        [row] = _rows(doc, "dns.records")
        assert row["status"] == "fail" and "region-b (region-b)" in row["reason"]
        hc = client.create_health_check(CallerReference="drorch-ready", HealthCheckConfig={
            "Type": "TCP", "IPAddress": "127.0.2.1", "Port": 80})["HealthCheck"]["Id"]
        client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
            {"Action": "UPSERT", "ResourceRecordSet": {**raw, "HealthCheckId": hc}}]})
        # region-b's alarm still watches the old health check: it would never fire
        code, doc = lab.plan()
        assert code == ExitCode.NOT_READY
        [row] = [r for r in _rows(doc, "alarms") if r["status"] == "fail"]
        assert "one the runbook does not name" in row["reason"]
        _put_alarm(lab, alarm, Dimensions=[{"Name": "HealthCheckId", "Value": hc}])
        code, doc = lab.plan()
        assert code == ExitCode.OK, _not_passing(doc)
        [mine] = [r for r in _rows(doc, "dns.health_checks") if r["target"].startswith(hc)]
        assert mine["status"] == "pass"
        client.delete_health_check(HealthCheckId=hc)
        code, doc = lab.plan()
        assert code == ExitCode.NOT_READY
        [row] = [r for r in _rows(doc, "dns.health_checks") if r["status"] != "pass"]
        assert row["status"] == "fail" and f"health check {hc} does not exist" in row["reason"]
    finally:
        client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
            {"Action": "UPSERT", "ResourceRecordSet": raw}]})
        _put_alarm(lab, alarm)


def test_an_alarm_without_its_action_is_not_ready(lab: ReadyLab) -> None:
    """region-a's alarm with its SNS action detached: the watcher would never hear it."""
    alarm = _alarm_named(lab, "region-a")
    _put_alarm(lab, alarm, AlarmActions=[])
    try:
        code, doc = lab.plan()
    finally:
        _put_alarm(lab, alarm)
    assert code == ExitCode.NOT_READY
    bad = [r for r in _rows(doc, "alarms") if r["status"] == "fail"]
    assert [r["target"] for r in bad] == [alarm["AlarmName"]]
    assert "has no SNS action" in bad[0]["reason"]


def test_a_topic_that_does_not_deliver_to_the_queue_is_not_ready(lab: ReadyLab) -> None:
    """The queue's subscription removed from the topic: the alarm fires into nothing."""
    sns = lab.aws("sns", "us-east-1")
    [topic] = _alarm_named(lab, "region-a")["AlarmActions"]
    [sub] = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
    try:
        code, doc = lab.plan()
    finally:
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sub["Endpoint"],
                      Attributes={"RawMessageDelivery": "false"})
    assert code == ExitCode.NOT_READY
    [row] = [r for r in _rows(doc, "alarms") if r["status"] == "fail"]
    assert "does not deliver to the queue" in row["reason"]


def test_a_write_flag_missing_in_one_region_is_not_ready(lab: ReadyLab) -> None:
    """The SSM parameter deleted in region-b only."""
    ssm = lab.aws("ssm", "us-west-2")
    ssm.delete_parameter(Name="/drorch/lab/writes-frozen")
    try:
        code, doc = lab.plan()
    finally:
        ssm.put_parameter(Name="/drorch/lab/writes-frozen", Value="false", Type="String")
    assert code == ExitCode.NOT_READY
    bad = [r for r in _rows(doc, "write_flag") if r["status"] == "fail"]
    assert [r["target"] for r in bad] == ["/drorch/lab/writes-frozen in region-b"]


def test_a_write_flag_neither_true_nor_false_is_a_warning(lab: ReadyLab) -> None:
    """A flag someone set to 'banana' in region-b: drorch writes only true and false."""
    ssm = lab.aws("ssm", "us-west-2")
    ssm.put_parameter(Name="/drorch/lab/writes-frozen", Value="banana", Type="String",
                      Overwrite=True)
    try:
        code, doc = lab.plan()
    finally:
        ssm.put_parameter(Name="/drorch/lab/writes-frozen", Value="false", Type="String",
                          Overwrite=True)
    assert code == ExitCode.WARNINGS, _not_passing(doc)
    [row] = [r for r in _rows(doc, "write_flag") if r["status"] == "warn"]
    assert row["target"] == "/drorch/lab/writes-frozen in region-b"
    assert "'banana', neither true nor false" in row["reason"]


def test_wal_not_kept_is_a_warning(lab: ReadyLab) -> None:
    """wal_keep_size 0 on the primary: a failover works, an exact reconcile would not
    (exit 1, warnings only)."""
    with psycopg.connect(lab.dsn("region-a"), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET wal_keep_size = 0")
        c.execute("SELECT pg_reload_conf()")
        try:
            code, doc = lab.plan()
        finally:
            c.execute("ALTER SYSTEM RESET wal_keep_size")
            c.execute("SELECT pg_reload_conf()")
    assert code == ExitCode.WARNINGS, _not_passing(doc)
    assert [(r["check"], r["status"]) for r in _not_passing(doc)] == [("wal", "warn")]
    assert "wal_keep_size" in _rows(doc, "wal")[0]["reason"]


def test_a_region_whose_aws_api_does_not_answer_is_a_warning_naming_it(lab: ReadyLab) -> None:
    """region-b's AWS API frozen (lab fault aws-down): every check aimed at it says
    region-b did not answer, as a warning (exit 1), and the plan still prints."""
    from drorch.lab import faults

    faults.fail(lab.runbook, "region-b", "aws-down")
    try:
        code, doc = lab.plan()
    finally:
        faults.heal(lab.runbook, "region-b")
    assert code == ExitCode.WARNINGS, _not_passing(doc)
    warned = _not_passing(doc)
    assert {r["status"] for r in warned} == {"warn"}
    assert {r["check"] for r in warned} >= {"secret", "write_flag"}
    for row in warned:
        assert "region-b's" in row["reason"] and "did not answer" in row["reason"], row


def _drorch_role(lab: ReadyLab, drop: str | None) -> dict[str, str]:
    """A role in moto with a policy of every action the iam module grants (but
    ``drop``), on every resource; credentials of a session of it, as the environment
    drorch would get them."""
    import re

    text = (ROOT / "terraform" / "modules" / "iam" / "main.tf").read_text()
    code = re.sub(r"#.*|variable\s*=.*", "", text)
    actions = sorted(set(re.findall(
        r'"((?:ssm|secretsmanager|route53|sqs|sns|rds|cloudwatch|s3):[A-Za-z]+)"', code)))
    assert drop is None or drop in actions
    iam = lab.aws("iam", "us-east-1")
    name = f"drorch-ready-{drop.replace(':', '-') if drop else 'all'}"
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"AWS": "*"}}]}))["Role"]
    iam.put_role_policy(RoleName=name, PolicyName="drorch", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                                "Action": [a for a in actions if a != drop]}]}))
    creds = lab.aws("sts", "us-east-1").assume_role(RoleArn=role["Arn"],
                                                    RoleSessionName="plan")["Credentials"]
    return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"]}


def test_iam_a_role_missing_one_action_is_not_ready(lab: ReadyLab) -> None:
    """drorch runs as a role (moto tracks the assumed role's keys): with every action
    the iam module grants it is ready; without ssm:PutParameter plan names that action
    (its policies evaluated by drorch: moto offers no SimulatePrincipalPolicy)."""
    whole = lab.plan_text("--output", "json", env=_drorch_role(lab, None))
    doc = json.loads(whole.stdout)
    assert whole.returncode == 0, json.dumps(_not_passing(doc), indent=1)
    [row] = _rows(doc, "iam")
    assert row["status"] == "pass" and "role/drorch-ready-all" in row["target"]
    assert "evaluated by drorch" in row["reason"], row

    short = lab.plan_text(env=_drorch_role(lab, "ssm:PutParameter"))
    assert short.returncode == ExitCode.NOT_READY, short.stdout + short.stderr
    flat = " ".join(short.stdout.replace("│", " ").split())
    assert "may not call ssm:PutParameter" in flat, short.stdout


def _drift_entries(tmp_path: Path) -> list[dict[str, Any]]:
    from drorch.audit import iter_entries

    return [e for e in iter_entries(tmp_path / "audit.jsonl")
            if e["action"] == "watch.readiness_drift"]


def test_watch_journals_readiness_drift_only_when_a_result_changes(lab: ReadyLab,
                                                                   tmp_path: Path) -> None:
    """The watcher's readiness runs: the first is journaled (every result is news), a
    second with nothing changed writes nothing, and the write flag removed in region-b
    is journaled and audited as drift naming it."""
    from drorch.adapters.aws import AwsClients
    from drorch.audit import AuditLog
    from drorch.readiness.drift import ReadinessWatch, record_key
    from drorch.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "journal.db")
    audit = AuditLog(tmp_path / "audit.jsonl")
    now = [0.0]
    rw = ReadinessWatch(lab.runbook, store, audit, AwsClients.for_runbook(lab.runbook),
                        every_s=60, clock=lambda: now[0])

    def one_run() -> list[dict[str, Any]]:
        assert rw.poll(lambda: "region-a", lambda: False) == []  # started, nothing yet
        assert rw._thread is not None
        rw._thread.join(30)
        now[0] += 60
        return rw.poll(lambda: "region-a", lambda: True)  # collected; busy: no new run

    first = one_run()
    assert first and {d["was"] for d in first} == {"unknown"}
    assert store.get(record_key(lab.runbook))["ready"] == "ready"
    assert one_run() == []
    entries = _drift_entries(tmp_path)
    assert len(entries) == 1

    ssm = lab.aws("ssm", "us-west-2")
    ssm.delete_parameter(Name="/drorch/lab/writes-frozen")
    try:
        drift = one_run()
    finally:
        ssm.put_parameter(Name="/drorch/lab/writes-frozen", Value="false", Type="String")
    assert [(d["check"], d["target"], d["was"], d["now"]) for d in drift] == [
        ("write_flag", "/drorch/lab/writes-frozen in region-b", "pass", "fail")]
    saved = store.get(record_key(lab.runbook))
    assert saved["ready"] == "not_ready"
    entries = _drift_entries(tmp_path)
    assert len(entries) == 2 and entries[-1]["outcome"] == "not_ready"
    assert "write_flag /drorch/lab/writes-frozen in region-b: pass -> fail" in \
        entries[-1]["reason"]


def test_the_watcher_runs_readiness_and_journals_it(lab: ReadyLab) -> None:
    """`drorch watch`'s loop with readiness on: within a few ticks of a healthy lab the
    first results are journaled (readiness:<runbook>) and audited as drift once; the
    watcher fails nothing over."""
    import threading

    from drorch.audit import iter_entries
    from drorch.cli_common import open_context
    from drorch.readiness.drift import record_key
    from drorch.watch import serve

    store, audit, aws = open_context(lab.runbook)
    before = sum(1 for e in iter_entries(audit.path) if e["action"] == "watch.readiness_drift") \
        if audit.path.exists() else 0
    driven = serve(lab.runbook, store, audit, aws, stop=threading.Event(), max_seconds=6,
                   readiness_every_s=600)
    assert driven == []
    saved = store.get(record_key(lab.runbook))
    assert saved is not None and saved["ready"] == "ready" and saved["serving"] == "region-a"
    drift = [e for e in iter_entries(audit.path) if e["action"] == "watch.readiness_drift"]
    assert len(drift) - before == 1 and drift[-1]["outcome"] == "ready"


def test_an_alarm_watching_another_regions_health_check_is_not_ready(lab: ReadyLab) -> None:
    """region-b's alarm pointed at region-a's health check (then at one that does not
    exist): it would never fire when region-b fails."""
    alarm = _alarm_named(lab, "region-b")
    other = _alarm_named(lab, "region-a")
    theirs = [d for d in other["Dimensions"] if d["Name"] == "HealthCheckId"]
    try:
        for dims, whose in ((theirs, "region-a's"),
                            ([{"Name": "HealthCheckId", "Value": "00000000-dead-beef"}],
                             "one the runbook does not name")):
            _put_alarm(lab, alarm, Dimensions=dims)
            code, doc = lab.plan()
            assert code == ExitCode.NOT_READY
            [row] = [r for r in _rows(doc, "alarms") if r["status"] == "fail"]
            assert row["target"] == alarm["AlarmName"] and whose in row["reason"]
    finally:
        _put_alarm(lab, alarm)


def test_a_secret_whose_replication_stopped_is_not_ready(lab: ReadyLab,
                                                         tmp_path: Path) -> None:
    """A runbook whose secret is one Secrets Manager secret replicated to region-b (listed
    in region-a only): ready while the replica is there; replication to us-west-2
    stopped (RemoveRegionsFromReplication) and the plan names it, exit 2."""
    sm = lab.aws("secretsmanager", "us-east-1")
    name = "lab/main/replicated"
    sm.create_secret(Name=name, SecretString='{"host": "127.0.0.1"}',
                     AddReplicaRegions=[{"Region": "us-west-2"}])
    raw = yaml.safe_load(lab.path.read_text())
    raw["secrets"] = [{"secret_id": name, "region": "region-a", "database": "main"}]
    path = tmp_path / "replicated.yaml"
    path.write_text(yaml.dump(raw, Dumper=_NoAliases, sort_keys=False))

    def plan() -> tuple[int, list[dict[str, Any]]]:
        result = CliRunner().invoke(app, ["plan", "-r", str(path), "--output", "json"])
        return result.exit_code, _rows(json.loads(result.stdout), "secret")

    try:
        code, rows = plan()
        assert [r["status"] for r in rows if r["status"] != "pass"] == [], rows
        sm.remove_regions_from_replication(SecretId=name, RemoveReplicaRegions=["us-west-2"])
        code, rows = plan()
        assert code == ExitCode.NOT_READY
        bad = [r for r in rows if r["status"] == "fail"]
        assert bad and any("us-west-2" in r["reason"] or "region-b" in r["reason"]
                           for r in bad), rows
    finally:
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        for region in ("us-west-2",):
            with contextlib.suppress(Exception):
                lab.aws("secretsmanager", region).delete_secret(
                    SecretId=name, ForceDeleteWithoutRecovery=True)
