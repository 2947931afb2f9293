"""`drorch watch` on the real lab: it fails over by itself on a stopped or hung primary,
ignores a flapping one, refuses a failover into a dead secondary, reads alarms from SQS.
It is a service: after its failover it keeps watching until SIGTERM (the story after
the failover is in test_watch_service.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drorch import logs
from drorch.adapters.aws import AwsClients
from drorch.audit import AuditLog, iter_entries, verify
from drorch.config import load_runbook
from drorch.lab import faults
from drorch.lab import lab as lab_mod
from drorch.lab.postgres import pg_available
from drorch.store.sqlite import SqliteStore
from drorch.watch import health_summary, watch
from drorch.watch_state import WatchRecord, from_json
from tests.conftest import LAB_RUNBOOK, ROOT, Lab, lab_env

pytestmark = pytest.mark.postgres

WINDOW_S = 6.0  # runbooks/lab.yaml: fail_after_s


# -- helpers -----------------------------------------------------------------------
def _open(state_dir: Path) -> SqliteStore:
    return SqliteStore(state_dir / "journal.db")


def _record(state_dir: Path) -> WatchRecord:
    store = _open(state_dir)
    try:
        return from_json(store.get("watch:lab"))
    finally:
        store.close()


def _incidents(state_dir: Path) -> list[Any]:
    if not (state_dir / "journal.db").exists():
        return []
    store = _open(state_dir)
    try:
        return store.incidents()
    finally:
        store.close()


def _audited(state_dir: Path, action: str) -> list[dict[str, Any]]:
    path = state_dir / "audit.jsonl"
    return [e for e in iter_entries(path) if e["action"] == action] if path.exists() else []


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _exit_code(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> int:
    """The watcher's exit code; a watcher still running after ``timeout`` fails the test
    with its log (the tail, where it says what it was waiting for)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"watcher still running after {timeout:g}s; its log ends:\n"
                    + log.read_text()[-6000:])


def _watch_until_failed_over(lab: Lab, log: Path, *args: str, timeout: float = 60) -> str:
    """Run `drorch watch` (a service: it keeps watching after its failover) until an
    incident is failed over, then SIGTERM it; returns its output once it exited 0."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "drorch.cli", "watch", *args],
                                env={**os.environ, **lab.env}, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not any(
                i.state == "failed_over" for i in _incidents(lab.state_dir)):
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()  # still watching after its failover
        proc.send_signal(signal.SIGTERM)
        assert _exit_code(proc, 30, log) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


def _variant(lab: Lab, path: Path, **health: Any) -> Path:
    """runbooks/lab.yaml with these keys of its health section set (replaced when the
    runbook sets them: a key given twice is a runbook error)."""
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in health.items())
    lines = [line for line in LAB_RUNBOOK.read_text().splitlines(keepends=True)
             if not any(line.startswith(f"  {k}:") for k in health)]
    path.write_text("".join(lines).replace("\nhealth:\n", f"\nhealth:\n{extra}", 1))
    return path


def _alarm_queue(lab: Lab, visibility_s: int = 30) -> tuple[Any, str]:
    """A queue in the lab's moto server, in the secondary's AWS region: the watcher's
    choice when the queue URL does not name one."""
    sqs = AwsClients.for_runbook(lab.runbook)("sqs", lab.runbook.secondary.aws_region)
    return sqs, sqs.create_queue(QueueName="drorch-alarms", Attributes={
        "VisibilityTimeout": str(visibility_s)})["QueueUrl"]


def _send_alarm(sqs: Any, url: str, name: str, changed_at: float) -> None:
    """The alarm document CloudWatch publishes, as raw SNS -> SQS delivery leaves it."""
    when = datetime.fromtimestamp(changed_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({
        "AlarmName": name, "NewStateValue": "ALARM", "OldStateValue": "OK",
        "NewStateReason": "Threshold Crossed: 1 datapoint [0.0] < 1.0",
        "StateChangeTime": when, "Region": "US East (N. Virginia)",
        "AlarmArn": f"arn:aws:cloudwatch:us-east-1:123456789012:alarm:{name}",
        "Trigger": {"MetricName": "HealthCheckStatus", "Namespace": "AWS/Route53"},
    }))


def _queue_empty(sqs: Any, url: str) -> bool:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return set(attrs.values()) == {"0"}


@contextmanager
def shared_lab(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Lab]:
    """A lab for a whole module of tests that never fail over: each heals what it broke.
    Leaves no fault behind (a flapper included) and stops everything it started."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    env = lab_env(tmp_path_factory.mktemp(name))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        runbook = load_runbook(LAB_RUNBOOK)
        lab_mod.up(runbook)
        try:
            yield Lab(runbook, LAB_RUNBOOK, env, Path(env["DRORCH_STATE_DIR"]))
            for region in runbook.regions:  # a test that leaves its region broken fails here
                faults.heal(runbook, region.name)
        finally:
            lab_mod.down(runbook)  # whatever happened above


@pytest.fixture(scope="module")
def calm_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab shared by this module's tests that must not fail over; each keeps its
    watcher's journal in its own state directory."""
    with shared_lab(tmp_path_factory, "calm") as lab:
        yield lab


# -- failing over --------------------------------------------------------------------
def test_stopped_primary_fails_over_and_restarts_pick_up_where_they_were(
        lab: Lab, tmp_path: Path) -> None:
    """With region-a stopped (and an alarm on the queue) the watcher enters degraded and
    journals it; restarted, it continues the same count and fails over by itself (trigger
    kind health, first_failure_at from the first run, the alarm named); killed in the
    middle of that failover and restarted, it finishes the same incident, promoting once."""
    sqs, url = _alarm_queue(lab)
    rb_path = _variant(lab, tmp_path / "lab-alarms.yaml", alarm_queue_url=url)
    # A restart continues the count only if its first round comes within the window's
    # max gap (3 intervals + the longest probe timeout: 4 s as shipped). Starting the
    # `drorch watch` process can take longer than that on a busy 2-core machine, which is
    # not what this test is about (tests/unit/health/test_health_window.py tests the gap):
    # longer probe timeouts widen the gap to 13 s; region-a's probes are refused at once.
    rb_path.write_text(rb_path.read_text().replace("timeout_s: 1}", "timeout_s: 10}"))
    _ok(lab.cli("lab", "fail", "region-a", "--mode", "stop"))
    _send_alarm(sqs, url, "region-a-db", time.time())

    runbook = load_runbook(rb_path)
    store = _open(lab.state_dir)
    audit = AuditLog(lab.state_dir / "audit.jsonl", redactor=logs.REDACTOR)
    aws = AwsClients.for_runbook(runbook)
    try:
        assert watch(runbook, store, audit, aws, stop=threading.Event(), max_seconds=3) is None
        assert store.incidents() == []
        first = from_json(store.get("watch:lab"))
        rows = {r["region"]: r for r in health_summary(runbook, store)}
    finally:
        store.close()
    region_a = first.windows["region-a"].verdict
    assert region_a.status == "degraded" and region_a.alarms == ("region-a-db",)
    first_failure = region_a.failing_since
    assert first_failure is not None
    assert any(c["region"] == "region-a" and c["to"] == "degraded" for c in first.changes)
    assert any(e["inputs"]["to"] == "degraded" for e in _audited(lab.state_dir, "watch.verdict"))
    assert _queue_empty(sqs, url)
    assert "failing for" in rows["region-a"]["progress"]
    assert "of 6s (3/3 probes down" in rows["region-a"]["progress"]
    assert [p["ok"] for p in rows["region-a"]["probes"]] == [False, False, False]

    killed = lab.cli("watch", "--runbook", str(rb_path), "--max-seconds", "40",
                     extra_env={"DRORCH_FAULT_KILL_AT": "promote:main:after_apply"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    (inc,) = _incidents(lab.state_dir)
    assert inc.state == "failing_over" and inc.actor == "auto"
    assert inc.trigger["kind"] == "health"
    assert inc.trigger["first_failure_at"] == first_failure
    assert inc.trigger["alarms"] == ["region-a-db"]
    assert inc.created_at - first_failure >= WINDOW_S

    resumed = _watch_until_failed_over(lab, tmp_path / "resumed.log", "--runbook", str(rb_path))
    assert "failed_over" in resumed
    (done,) = _incidents(lab.state_dir)
    assert (done.id, done.state) == (inc.id, "failed_over")
    log = lab_mod.node_for(lab.runbook, "main", "region-b").logfile.read_text()
    assert log.count("received promote request") == 1
    assert [e["incident"] for e in _audited(lab.state_dir, "watch.failover_started")] == [inc.id]
    assert [e["incident"] for e in _audited(lab.state_dir, "watch.failover_resumed")] == [inc.id]
    assert verify(lab.state_dir / "audit.jsonl").ok


def test_hung_primary_fails_over(lab: Lab, tmp_path: Path) -> None:
    """A frozen region-a (its port still accepts, nothing answers) is failed over by the
    `drorch watch` command on its own; the trigger names the probes that timed out."""
    _ok(lab.cli("lab", "fail", "region-a", "--mode", "hang"))
    try:
        result = _watch_until_failed_over(lab, tmp_path / "watch.log")
    finally:
        lab.cli("lab", "heal", "region-a")
    assert "failed_over" in result
    (inc,) = _incidents(lab.state_dir)
    assert inc.state == "failed_over" and inc.actor == "auto"
    assert inc.trigger["kind"] == "health"
    assert inc.trigger["down"] == ["db", "app"]  # db-port: the kernel still accepts
    assert inc.created_at - inc.trigger["first_failure_at"] >= WINDOW_S
    assert [e["inputs"]["mode"] for e in _audited(lab.state_dir, "lab.fault.injected")] == [
        "hang"]


def test_alarm_may_trigger_alone(lab: Lab, tmp_path: Path) -> None:
    """With alarm_may_trigger_alone an alarm read from SQS fails over a region whose probes
    pass, after the window counted from when the watcher read it (not the alarm's older
    StateChangeTime); the trigger kind is alarm. A watcher killed after reading the alarm
    but before journaling it has not consumed it: the next one reads it again."""
    sqs, url = _alarm_queue(lab, visibility_s=1)
    rb_path = _variant(lab, tmp_path / "lab-alarm-alone.yaml", alarm_queue_url=url,
                       alarm_may_trigger_alone=True)
    sent_at = time.time()
    _send_alarm(sqs, url, "region-a-latency", sent_at - 600)
    killed = lab.cli("watch", "--runbook", str(rb_path), "--max-seconds", "20",
                     extra_env={"DRORCH_FAULT_KILL_AT": "watch:alarms_read"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert not _queue_empty(sqs, url)
    result = _watch_until_failed_over(lab, tmp_path / "watch.log", "--runbook", str(rb_path))
    assert "failed_over" in result
    (inc,) = _incidents(lab.state_dir)
    assert inc.state == "failed_over"
    assert inc.trigger["kind"] == "alarm" and inc.trigger["alarms"] == ["region-a-latency"]
    assert inc.trigger["first_failure_at"] >= sent_at
    assert "replica lag" in inc.reason and "unknown" not in inc.reason  # region-a answers
    assert _queue_empty(sqs, url)


def test_primary_dying_under_a_strict_lag_limit_fails_over_on_the_last_reading(
        lab: Lab, tmp_path: Path) -> None:
    """With a lag limit and ``refuse_on_unknown_lag`` (the default), a primary that dies
    under a running watcher is still failed over: the lag read on the last round where
    its database answered stands in for the one it can no longer give, and the
    incident's reason says so."""
    rb_path = tmp_path / "lab-strict-lag.yaml"
    text = LAB_RUNBOOK.read_text()
    assert "refuse_on_unknown_lag: false" in text
    rb_path.write_text(text.replace("refuse_on_unknown_lag: false",
                                    "refuse_on_unknown_lag: true"))
    env = {**os.environ, **lab.env}
    with open(tmp_path / "watch.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drorch.cli", "watch", "--runbook", str(rb_path),
             "--max-seconds", "60"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                (lab.state_dir / "journal.db").exists() and _record(lab.state_dir).last_lag):
            time.sleep(0.2)
        assert _record(lab.state_dir).last_lag, (tmp_path / "watch.log").read_text()
        _ok(lab.cli("lab", "fail", "region-a", "--mode", "stop"))
        log_path = tmp_path / "watch.log"
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline and proc.poll() is None and not any(
                i.state == "failed_over" for i in _incidents(lab.state_dir)):
            time.sleep(0.2)
        assert proc.poll() is None, log_path.read_text()  # a service: still running
        proc.send_signal(signal.SIGTERM)
        assert _exit_code(proc, 30, log_path) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (inc,) = _incidents(lab.state_dir)
    assert inc.state == "failed_over" and inc.actor == "auto"
    assert "replica lag unknown now" in inc.reason and "when last read" in inc.reason


# -- not failing over ----------------------------------------------------------------
def _watch_proc(lab: Lab, state_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **lab.env, "DRORCH_STATE_DIR": str(state_dir)}
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "watch.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "drorch.cli", "watch"], env=env,
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def test_flapping_primary_is_not_failed_over_and_sigterm_stops_cleanly(
        calm_lab: Lab, tmp_path: Path) -> None:
    """region-a down for 2 s of every 4 s (a period shorter than the 6 s window) is seen
    degrading and recovering again and again for 2.5 windows, yet nothing fails over;
    SIGTERM then ends the watcher with exit 0 and its state journaled as stopped."""
    watcher_dir = tmp_path / "watcher"
    _ok(calm_lab.cli("lab", "fail", "region-a", "--mode", "flap", "--period", "4"))
    proc = _watch_proc(calm_lab, watcher_dir)

    def region_a_changes() -> list[str]:
        if not (watcher_dir / "journal.db").exists():
            return []
        return [c["to"] for c in _record(watcher_dir).changes if c["region"] == "region-a"]

    try:
        # Watch until the watcher has itself seen two cycles and 2.5 windows have passed
        # since its first verdict (not since the process started: a busy machine delays
        # its first round), the process still running.
        deadline = time.monotonic() + 90
        first_seen: float | None = None
        while time.monotonic() < deadline and proc.poll() is None:
            seen = region_a_changes()
            if seen and first_seen is None:
                first_seen = time.monotonic()
            if (first_seen is not None and time.monotonic() - first_seen >= 2.5 * WINDOW_S
                    and seen.count("degraded") >= 2 and seen.count("healthy") >= 2):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (watcher_dir / "watch.log").read_text()
        proc.send_signal(signal.SIGTERM)
        log_path = watcher_dir / "watch.log"
        assert _exit_code(proc, 15, log_path) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _ok(calm_lab.cli("lab", "heal", "region-a"))
    assert _incidents(watcher_dir) == []
    record = _record(watcher_dir)
    assert record.state == "stopped"
    seen = [c["to"] for c in record.changes if c["region"] == "region-a"]
    assert seen.count("degraded") >= 2 and seen.count("healthy") >= 2, seen
    assert "failed" not in seen
    assert _audited(watcher_dir, "watch.failover_started") == []


def test_dead_secondary_refuses_with_reason_journaled_and_audited(
        calm_lab: Lab, tmp_path: Path) -> None:
    """Both regions stopped: region-a fails its window, but the watcher refuses to fail
    over into an unhealthy region-b; the refusal is journaled and audited once."""
    watcher_dir = tmp_path / "watcher"
    _ok(calm_lab.cli("lab", "fail", "region-b", "--mode", "stop"))
    _ok(calm_lab.cli("lab", "fail", "region-a", "--mode", "stop"))
    try:
        _ok(calm_lab.cli("watch", "--max-seconds", str(WINDOW_S + 2),
                         extra_env={"DRORCH_STATE_DIR": str(watcher_dir)}))
    finally:
        faults.heal(calm_lab.runbook, "region-b")
        faults.heal(calm_lab.runbook, "region-a")
    assert _incidents(watcher_dir) == []
    record = _record(watcher_dir)
    assert record.decision is not None
    assert record.decision.action == "refuse" and record.decision.guard == "secondary_unhealthy"
    assert "secondary unhealthy: region-b" in record.decision.reason
    (refused,) = _audited(watcher_dir, "watch.refused")
    assert refused["outcome"] == "refused" and refused["actor"] == "auto"
    assert refused["inputs"]["guard"] == "secondary_unhealthy"
    assert "region-a failed" in refused["reason"]
