"""A regional outage as it happens: the failed region's AWS API down with its database.

Steps aimed at the failed region (its write flag, its copy of the secret) are best
effort: the failover completes without them, says so, and they are done later.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError

from drorch.adapters import flags, route53, secrets
from drorch.adapters import postgres as pg
from drorch.adapters.aws import AwsClients
from drorch.audit import AuditLog
from drorch.engine import Engine
from drorch.exitcodes import ExitCode
from drorch.lab import lab as lab_mod
from drorch.store.sqlite import SqliteStore
from tests.conftest import Lab
from tests.integration.test_failover import _incident_state

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
    _aws_down_hangs_only_that_api(lab, aws)
    assert lab.cli("lab", "fail", "region-a", "--mode", "stop").returncode == 0

    result = lab.cli("failover", "--yes", "--reason", "region-a gone", "--actor", "alice")
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
        watcher = subprocess.Popen(
            [sys.executable, "-m", "drorch.cli", "watch", "--max-seconds", "120"],
            env={**os.environ, **lab.env}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:  # the watcher does the deferred steps once region-a's API answers
            _until(lambda: not engine.deferred_steps(incident), 60)
            _until(lambda: store.fact(incident, "fenced_on_return:main") is not None, 60)
        finally:
            watcher.send_signal(signal.SIGTERM)
            watcher.wait(30)
        statuses = {e.name: e.status for e in store.events(incident) if e.kind == "step"}
        assert {statuses[s] for s in NOT_DONE} == {"done"}
        assert engine.retry_deferred(incident) == {}  # nothing left: nothing journaled
    finally:
        store.close()
    assert flags.is_frozen(aws("ssm", "us-east-1"), FLAG)  # region-a's API answers again
    assert _secret_port(aws, lab, "region-a") == b_port
    after = _report(lab)
    assert after["not_done"] == []
    seen = after["old_region"]["databases"]["main"]
    assert seen["reachable_at_freeze"] is False and seen["fenced_on_return"]["by"] == "watch"


def _aws_down_hangs_only_that_api(lab: Lab, aws: AwsClients) -> None:
    """aws-down hangs only region-a's AWS API (its database still answers, region-b's
    API too) and refuses to be injected twice."""
    probe = boto3.client("ssm", region_name="us-east-1",
                         endpoint_url=aws.endpoint_for("ssm", "us-east-1"),
                         config=Config(connect_timeout=1, read_timeout=1,
                                       retries={"max_attempts": 1}))
    down = lab.cli("lab", "fail", "region-a", "--mode", "aws-down")
    assert down.returncode == 0, down.stdout + down.stderr
    again = lab.cli("lab", "fail", "region-a", "--mode", "aws-down")
    assert again.returncode == 1 and "already has a aws-down fault" in again.stderr
    assert "Traceback" not in again.stderr
    assert pg.reachable(lab.runbook.database("main").endpoints["region-a"].dsn())
    assert not flags.is_frozen(aws("ssm", "us-west-2"), FLAG)
    with pytest.raises(ReadTimeoutError):
        probe.get_parameter(Name=FLAG)


def _runbook_with(lab: Lab, tmp_path: Path, line_after: str, extra: str) -> Path:
    """The lab runbook with ``extra`` (already indented) inserted after the line holding
    ``line_after``."""
    lines = lab.runbook_path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line_after in line)
    path = tmp_path / "runbook.yaml"
    path.write_text("\n".join([*lines[:at + 1], extra, *lines[at + 1:]]) + "\n")
    return path


def _journal(lab: Lab) -> list[tuple[str, str, str, dict[str, Any]]]:
    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        return [(e.kind, e.name, e.status, e.detail)
                for e in store.events(store.incidents()[-1].id)]
    finally:
        store.close()


def test_a_promotion_that_outlives_its_timeout_halts_and_resume_completes_it(
        lab: Lab, tmp_path: Path) -> None:
    """Replay on region-b held back by a recovery conflict (a query there, standby delay
    -1): the promotion is requested, not confirmed within promote_timeout_s. The failover
    halts (never rolls back: the flag stays raised, nothing is undone) saying when it was
    requested; once the query ends the promotion completes by itself, and `drorch resume`
    finds region-b promoted and finishes the failover without a second request."""
    rb = _runbook_with(lab, tmp_path, "replication_role:", "    promote_timeout_s: 3")
    env = {"DRORCH_RUNBOOK": str(rb)}
    a = lab.runbook.database("main").endpoints["region-a"].dsn()
    b = lab.runbook.database("main").endpoints["region-b"].dsn()
    with psycopg.connect(b, autocommit=True) as c:
        for name in ("max_standby_streaming_delay", "max_standby_archive_delay"):
            c.execute(f"ALTER SYSTEM SET {name} = -1")
        c.execute("SELECT pg_reload_conf()")
    blocker = psycopg.connect(b)
    try:
        blocker.execute("SELECT count(*) FROM orders")  # holds a lock in an open transaction
        with psycopg.connect(a, autocommit=True) as c:
            c.execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; COMMIT")
            lsn = c.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        wait_received(b, lsn)
        assert lab.cli("lab", "fail", "region-a", "--mode", "stop").returncode == 0

        halted = lab.cli("failover", "--yes", "--reason", "blocked promotion", extra_env=env)
        assert halted.returncode == ExitCode.HALTED, halted.stdout
        assert _incident_state(lab) == "halted"
        journal = _journal(lab)
        assert not [e for e in journal if e[2] in ("rolled_back", "undo_failed")]
        failed = [e for e in journal if e[1] == "promote:main" and e[2] == "failed"]
        assert failed and "requested at" in failed[-1][3]["error"]
        assert failed[-1][3]["promotion_requested_at"]
        halt = [e for e in journal if e[0] == "transition" and e[1] == "halt"]
        assert halt and "promotion was requested" in halt[-1][3]["reason"]
        assert flags.is_frozen(AwsClients.for_runbook(lab.runbook)("ssm", "us-east-1"), FLAG)
    finally:
        blocker.close()
    _until(lambda: not pg.in_recovery(b), 60)  # the request completes once replay goes on

    resumed = lab.cli("resume", "--yes", extra_env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _incident_state(lab) == "failed_over"
    log = lab_mod.node_for(lab.runbook, "main", "region-b").logfile.read_text()
    assert log.count("received promote request") == 1
    promote = [e for e in _journal(lab) if e[1] == "promote:main"]
    assert promote[-1][2] == "done"
    assert promote[-1][3].get("observed") == "already done; not applied again"


def wait_received(dsn: str, lsn: str) -> None:
    """Until the standby has received (not necessarily replayed) ``lsn``."""
    with psycopg.connect(dsn, autocommit=True) as c:
        _until(lambda: c.execute("SELECT pg_last_wal_receive_lsn() >= %s::pg_lsn",
                                 (lsn,)).fetchone()[0], 30)


def _until(ok: Callable[[], Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.1)


def _sync_names(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as c:
        return str(c.execute("SHOW synchronous_standby_names").fetchone()[0])


def _app_commit_returns(lab: Lab, region: str) -> None:
    """An application insert on ``region`` commits and is acknowledged: no commit left
    waiting for a standby (a 5 s statement_timeout turns such a wait into a warning)."""
    notices: list[str] = []
    dsn = lab.runbook.database("main").endpoints[region].dsn()
    with psycopg.connect(dsn, autocommit=True, options="-c statement_timeout=5000") as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("SET ROLE app")
        c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 1, %s)",
                  (region,))
    assert not [n for n in notices if "synchronous" in n], notices


def test_synchronous_replication_on_both_nodes_does_not_hang_the_failover(lab: Lab) -> None:
    """synchronous_standby_names = '*' on both nodes (zero-loss inside a region) and
    region-a killed: the promoted region-b has no standby, so drorch empties the setting
    there (journaled first), the failover completes and the application's commits on
    region-b return. The failback puts '*' back on region-b once region-a streams from
    it, and on region-a once region-b streams again."""
    a = lab.runbook.database("main").endpoints["region-a"].dsn()
    b = lab.runbook.database("main").endpoints["region-b"].dsn()
    for dsn in (a, b):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            c.execute("SELECT pg_reload_conf()")
    _until(lambda: _sync_names(a) == "*", 10)
    _app_commit_returns(lab, "region-a")  # region-b streams: the setting is satisfied
    assert lab.cli("lab", "fail", "region-a", "--mode", "stop").returncode == 0

    result = lab.cli("failover", "--yes", "--reason", "region-a gone")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _sync_names(b) == ""
    _app_commit_returns(lab, "region-b")
    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        failover = store.incidents()[-1].id
        assert store.fact(failover, "sync:main") == {
            "previous": "*", "previous_by_alter_system": True, "set": ""}
    finally:
        store.close()

    assert lab.cli("lab", "heal", "region-a").returncode == 0
    back = lab.cli("failback", "--yes", "--reason", "region-a is back", timeout=300)
    assert back.returncode == 0, back.stdout + back.stderr
    assert _sync_names(a) == "*" and _sync_names(b) == "*"
    _app_commit_returns(lab, "region-a")


def test_writers_of_every_role_are_stopped_or_found(lab: Lab) -> None:
    """1. A superuser's transaction open on region-a when the failover freezes it (an
    ETL job, an operator's session): the freeze ends that session, so its insert never
    commits after the barrier, on either node; the journal names the role it ended.
    2. Failback killed just before region-b (the node it leaves) is rebuilt as a
    replica; meanwhile a superuser writes on region-b, frozen but still a primary. The
    resumed failback finds that write in region-b's WAL after region-a's promotion and
    halts instead of rewinding it away: the row is still there and region-b is left as
    it is. 3. A transaction prepared on region-a before the failover is named for a
    human on the new primary."""
    a = lab.runbook.database("main").endpoints["region-a"].dsn()
    b = lab.runbook.database("main").endpoints["region-b"].dsn()
    _prepare_a_transaction(lab, a)
    etl = psycopg.connect(a)
    try:
        etl.execute("INSERT INTO orders(user_id, amount_cents, region) "
                    "VALUES (1, 777, 'etl-open-at-freeze')")
        result = lab.cli("failover", "--yes", "--reason", "drill with an open ETL transaction")
        assert result.returncode == 0, result.stdout + result.stderr
        with pytest.raises(psycopg.OperationalError):
            etl.commit()
    finally:
        etl.close()
    for dsn in (a, b):
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT count(*) FROM orders WHERE region = "
                             "'etl-open-at-freeze'").fetchone()[0] == 0
    freeze = [e for e in _journal(lab) if e[1] == "freeze:main" and e[2] == "done"]
    assert freeze[-1][3]["other_sessions_ended"].get("postgres", 0) >= 1
    _prepared_transaction_named_for_a_human(lab, b)

    killed = lab.cli("failback", "--yes", "--reason", "back", timeout=300,
                     extra_env={"DRORCH_FAULT_KILL_AT": "rejoin:main:before_apply"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    b = lab.runbook.database("main").endpoints["region-b"].dsn()
    with psycopg.connect(b, autocommit=True) as c:
        c.execute("SET default_transaction_read_only = off")
        c.execute("INSERT INTO orders(user_id, amount_cents, region) "
                  "VALUES (1, 999, 'late-superuser')")
    resumed = lab.cli("resume", "--yes", timeout=300)
    assert resumed.returncode == ExitCode.HALTED, resumed.stdout
    assert _incident_state(lab) == "halted"
    failed = [e for e in _journal(lab) if e[1] == "rejoin:main" and e[2] == "failed"]
    assert failed and failed[-1][3]["transactions"] == 1, failed
    assert "a rewind would erase" in failed[-1][3]["error"]
    with psycopg.connect(b) as c:
        assert not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        assert c.execute("SELECT count(*) FROM orders WHERE region = 'late-superuser'"
                         ).fetchone()[0] == 1


def _prepare_a_transaction(lab: Lab, a: str) -> None:
    """region-a holds a transaction prepared for two-phase commit (both nodes restarted
    with max_prepared_transactions, the standby first: it needs at least as many)."""
    for region in ("region-a", "region-b"):
        with psycopg.connect(lab.runbook.database("main").endpoints[region].dsn(),
                             autocommit=True) as c:
            c.execute("ALTER SYSTEM SET max_prepared_transactions = 5")
    for region in ("region-b", "region-a"):
        node = lab_mod.node_for(lab.runbook, "main", region)
        node.stop()
        node.start()
    with psycopg.connect(a, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS review_pt (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO review_pt VALUES (1, 'before')")
        c.execute("BEGIN")
        c.execute("UPDATE review_pt SET v = 'prepared' WHERE id = 1")
        c.execute("PREPARE TRANSACTION 'etl-42'")


def _prepared_transaction_named_for_a_human(lab: Lab, b: str) -> None:
    """Ending sessions does not end a prepared transaction: it replicated and sits on
    the promoted region-b with its row locks. Whether it commits is its coordinator's
    decision, not drorch's: the freeze journals it and the promotion names it on the new
    primary, in the report's summary, for a human (found by review)."""
    report = _report(lab)
    with psycopg.connect(b, autocommit=True) as c:
        assert [r[0] for r in c.execute("SELECT gid FROM pg_prepared_xacts")] == ["etl-42"]
    assert "etl-42 (main)" in report["summary"] and "need a human" in report["summary"]
    for step in ("freeze:main", "promote:main"):
        detail = next(s for s in report["steps"] if s["id"] == step)["detail"]
        assert [p["gid"] for p in detail["prepared_transactions"]] == ["etl-42"]
    with psycopg.connect(b, autocommit=True) as c:  # the human's decision, for this test
        c.execute("ROLLBACK PREPARED 'etl-42'")
