"""The alarm path on the lab: ``drorch lab drill --trigger alarm`` fails over on region-a's
CloudWatch alarm confirmed by the probes, and its report names both; an alarm the probes
do not confirm fails nothing over while ``alarm_may_trigger_alone`` is false."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from drorch import logs
from drorch.adapters.aws import AwsClients
from drorch.audit import AuditLog, iter_entries
from drorch.lab import faults
from drorch.lab import lab as lab_mod
from drorch.lab.alarms import chain_for
from drorch.lab.postgres import pg_available
from drorch.store.sqlite import SqliteStore
from drorch.watch import watch
from drorch.watch_state import from_json
from tests.conftest import ROOT, Lab, lab_env

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not pg_available(),
                                                  reason="PostgreSQL 15 not installed")]

ALARM = "drorch-lab-region-a-unhealthy"
WINDOW_S = 6.0  # runbooks/lab.yaml: fail_after_s


def test_alarm_triggered_drill_names_the_alarm_and_the_confirming_probes(
        tmp_path: Path, worker_moto: tuple[int, Path]) -> None:
    """region-a is stopped and its alarm fires through SNS -> SQS; the watcher reads it,
    its probes confirm, it fails over; the report's detection names the alarm (CloudWatch's
    reason and state change time, before the probes' count began) and the probes that
    confirmed it, and the decision was the probes' window (not the alarm alone)."""
    env = {**lab_env(tmp_path), "DRORCH_LAB_MOTO_PORT": str(worker_moto[0]),
           lab_mod.REUSE_MOTO_ENV: str(worker_moto[1])}
    result = subprocess.run(
        [sys.executable, "-m", "drorch.cli", "lab", "drill", "--trigger", "alarm"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"alarm {ALARM} OK -> ALARM" in result.stdout
    assert f"detection: alarm {ALARM} fired first; probes db, db-port, app" in result.stdout

    state = Path(env["DRORCH_STATE_DIR"])
    (path,) = [p for p in (state / "reports").glob("*.json") if "-checkouts" not in p.name]
    report = json.loads(path.read_text())
    assert report["outcome"] == "completed" and report["decided_by"]["actor"] == "auto"
    detection = report["detection"]
    assert detection["region"] == "region-a" and detection["first_signal"] == "alarm"
    assert detection["alarm_alone"] is False
    (alarm,) = detection["alarms"]
    assert alarm["name"] == ALARM and alarm["state"] == "ALARM"
    assert alarm["reason"].startswith("Threshold Crossed: 2 out of the last 2 datapoints")
    confirmed = detection["confirmed_by"]
    assert confirmed["probes_down"] == ["db", "db-port", "app"]  # stopped: all refused
    assert (confirmed["probes"], confirmed["quorum"]) == (3, 2)
    assert alarm["changed_at"] <= confirmed["failing_since"]
    assert alarm["received_at"] >= alarm["changed_at"]
    assert report["decided_by"]["trigger"]["kind"] == "health"  # the probes' window decided
    assert report["times"]["decided_at"]["at"] - confirmed["failing_since"] >= WINDOW_S
    md = path.with_suffix(".md").read_text()
    assert f"**Detection:** alarm {ALARM} fired first; probes db, db-port, app failing" in md
    injected = [e for e in iter_entries(state / "audit.jsonl")
                if e["action"] == "lab.fault.injected"]
    assert [e["detail"]["alarms"] for e in injected] == [[f"alarm {ALARM} OK -> ALARM"]]

    # The drill's audit log and report, shipped to the lab's Object Lock bucket (still in
    # the worker's moto: its region relay went with the lab, so straight to moto).
    direct = {**os.environ, **env, "DRORCH_LAB_AWS_A_PORT": str(worker_moto[0])}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "drorch.cli", *args], env=direct,
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    shipped = cli("audit", "ship")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    incident = report["incident_id"]
    assert f"incidents/{incident}/" in shipped.stdout and "COMPLIANCE" in shipped.stdout
    verified = cli("audit", "verify", "s3://drorch-lab-audit/lab",
                   "--expected-head", report["audit"]["head"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "archive intact" in verified.stdout and "1 incident report(s)" in verified.stdout
    again = cli("audit", "ship")
    assert again.returncode == 0 and "nothing new to ship" in again.stdout, again.stdout


def test_an_alarm_alone_fails_nothing_over_while_the_probes_are_healthy(lab: Lab) -> None:
    """A false alarm on region-a (no fault) reaches the watcher: region-a is marked
    suspect and probed, its probes pass, and no failover starts within more than the
    window; the notification is consumed, not left to come back."""
    runbook = lab.runbook
    assert runbook.health is not None and not runbook.health.alarm_may_trigger_alone
    audit = AuditLog(lab.state_dir / "audit.jsonl", redactor=logs.REDACTOR)
    said = faults.set_alarm(runbook, "region-a", "ALARM", audit=audit, actor="test")
    assert said == f"region-a: alarm {ALARM} OK -> ALARM (notified through SNS)"
    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        driven = watch(runbook, store, audit, AwsClients.for_runbook(runbook),
                       stop=threading.Event(), max_seconds=WINDOW_S + 3)
        assert driven is None and store.incidents() == []
        record = from_json(store.get("watch:lab"))
    finally:
        store.close()
    verdict = record.windows["region-a"].verdict
    assert verdict.status == "healthy" and verdict.alarms == (ALARM,)
    assert f"suspect, alarm in ALARM: {ALARM}" in verdict.reason
    assert [r.ok for r in record.probes["region-a"]] == [True, True, True]
    chain = chain_for(runbook)
    assert chain is not None
    sqs = AwsClients.for_runbook(runbook)("sqs", chain.queue_region)
    attrs = sqs.get_queue_attributes(QueueUrl=chain.queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    assert set(attrs["Attributes"].values()) == {"0"}
    assert faults.set_alarm(runbook, "region-a", "OK") == (
        f"region-a: alarm {ALARM} ALARM -> OK (notified through SNS)")
