"""Failover on the real lab: PostgreSQL streaming replication, moto playing AWS."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drorch.adapters import flags, route53, secrets
from drorch.adapters import postgres as pg
from drorch.adapters.aws import AwsClients
from drorch.exitcodes import ExitCode
from drorch.lab import lab as lab_mod
from tests.conftest import Lab

pytestmark = pytest.mark.postgres


def _aws(lab: Lab) -> AwsClients:
    return AwsClients.for_runbook(lab.runbook)


def _weights(lab: Lab) -> dict[str, int]:
    client = _aws(lab)("route53", "us-east-1")
    zone = route53.zone_id(client, "lab.drorch.test.")
    recs = route53.weighted_records(client, zone, "app.lab.drorch.test.", "A")
    return {r.set_identifier: r.weight for r in recs}


def _dsn(lab: Lab, region: str) -> str:
    return lab.runbook.database("main").endpoints[region].dsn()


def _promote_requests(lab: Lab) -> int:
    log = lab_mod.node_for(lab.runbook, "main", "region-b").logfile
    return len(re.findall("received promote request", log.read_text()))


def _rrset_changes(lab: Lab) -> int:
    log = lab_mod.moto_log(lab.runbook)
    return len(re.findall(r"POST /2013-04-01/hostedzone/\S+/rrset", log.read_text()))


def _secret_versions(lab: Lab) -> dict[str, int]:
    aws = _aws(lab)
    return {s.region: secrets.version_count(
        aws("secretsmanager", lab.runbook.region(s.region).aws_region), s.secret_id)
        for s in lab.runbook.secrets}


def _incident_state(lab: Lab) -> str:
    from drorch.store.sqlite import SqliteStore

    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        return store.incidents()[-1].state
    finally:
        store.close()


def _last_incident_facts(lab: Lab) -> dict[str, Any]:
    from drorch.store.sqlite import SqliteStore

    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        return store.facts(store.incidents()[-1].id)
    finally:
        store.close()


def _step_events(lab: Lab, step: str) -> list[tuple[str, dict[str, Any]]]:
    """(status, detail) of each journal entry of ``step`` in the last incident."""
    from drorch.store.sqlite import SqliteStore

    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        return [(e.status, e.detail) for e in store.events(store.incidents()[-1].id)
                if e.kind == "step" and e.name == step]
    finally:
        store.close()


def _audit(lab: Lab, action: str) -> list[dict[str, Any]]:
    entries = [json.loads(line)
               for line in (lab.state_dir / "audit.jsonl").read_text().splitlines()]
    return [e for e in entries if e["action"] == action]


def _app_can_log_in(lab: Lab, region: str) -> bool:
    app_dsn = lab.runbook.database("main").endpoints[region].dsn(user="app")
    try:
        psycopg.connect(app_dsn).close()
    except psycopg.OperationalError as exc:
        assert "not permitted to log in" in str(exc), exc
        return False
    return True


def _auto_conf_read_only(lab: Lab, region: str) -> str | None:
    """region's postgresql.auto.conf entry for default_transaction_read_only, as a
    plain superuser session reads it (pg_file_settings reads the file itself)."""
    with psycopg.connect(_dsn(lab, region), autocommit=True) as c:
        row = c.execute("SELECT setting FROM pg_file_settings WHERE name = "
                        "'default_transaction_read_only' AND sourcefile LIKE "
                        "'%postgresql.auto.conf' ORDER BY seqno DESC LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def _freeze_record(lab: Lab) -> dict[str, Any]:
    """The journaled freeze record of region-a without the session count (the lab
    app's pool decides that)."""
    fact = dict(_last_incident_facts(lab)["freeze:main"])
    fact.pop("sessions_ended")
    return fact


ORIGINAL_FREEZE = {"phase": "done", "roles_locked": ["app"], "auto_conf_read_only": None}
"""What the lab's region-a had before any freeze: app could log in, no ALTER SYSTEM entry."""
RETURNING = "step.promote.froze_returning_primary"


def test_failover_moves_writes_secrets_and_dns(lab: Lab) -> None:
    """After failover region-b is a writable primary, region-a refuses writes, the
    secret points at region-b with the old value as AWSPREVIOUS, weights are 0/100."""
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 100, 'a')")
    result = lab.cli("failover", "--yes", "--reason", "test", "--actor", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RTO:" in result.stdout and "RPO:" in result.stdout

    new, old = _dsn(lab, "region-b"), _dsn(lab, "region-a")
    assert not pg.in_recovery(new)
    with psycopg.connect(new, autocommit=True) as c:
        c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 200, 'b')")
        assert c.execute("SELECT count(*) FROM orders WHERE region='a'").fetchone()[0] == 1
    app_dsn = lab.runbook.database("main").endpoints["region-a"].dsn(user="app")
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(app_dsn)
    with psycopg.connect(old, autocommit=True) as c, pytest.raises(
            psycopg.errors.ReadOnlySqlTransaction):
        c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 300, 'a')")

    aws = _aws(lab)
    for spec in lab.runbook.secrets:
        client = aws("secretsmanager", lab.runbook.region(spec.region).aws_region)
        current = secrets.get_value(client, spec.secret_id)
        previous = secrets.get_value(client, spec.secret_id, "AWSPREVIOUS")
        assert current["port"] == lab.runbook.database("main").endpoints["region-b"].port
        assert previous["port"] == lab.runbook.database("main").endpoints["region-a"].port
        assert current["password"] == previous["password"]
    assert _weights(lab) == {"region-a": 0, "region-b": 100}
    assert flags.is_frozen(aws("ssm", "us-east-1"), "/drorch/lab/writes-frozen")
    assert not flags.is_frozen(aws("ssm", "us-west-2"), "/drorch/lab/writes-frozen")
    assert _promote_requests(lab) == 1
    assert _incident_state(lab) == "failed_over"


KILL_POINTS = [
    "freeze:write-flag@region-a:after_apply",
    "freeze:main:roles_locked",  # inside the freeze: app is NOLOGIN, nothing else done
    "freeze:main:after_apply",
    "promote:main:before_apply",
    "promote:main:after_apply",
    "open:main:after_apply",
    "secrets:lab/main/db@region-a:after_apply",
    "secrets:lab/main/db@region-b:after_apply",
    "dns:lab.drorch.test.:after_apply",
    "validate:main:after_apply",
]


AFTER_PROMOTION = {"promote:main:after_apply", "open:main:after_apply"}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_then_resume_applies_each_step_once(lab: Lab, point: str) -> None:
    """A kill -9 at any step (and inside the freeze), then `drorch resume`, finishes the
    failover with exactly one promotion, one new secret version per secret and one DNS
    change. Region-a answered throughout: it ends frozen, the journal's freeze record
    is the one taken before the first change (app was let in, no ALTER SYSTEM entry),
    and no "returning primary" was frozen again. Killed after the promotion, rows
    written to region-b before the resume are still there afterwards, next to the
    application's own."""
    before_versions = _secret_versions(lab)
    before_changes = _rrset_changes(lab)
    killed = lab.cli("failover", "--yes", "--reason", "kill test", "--actor", "bob",
                     extra_env={"DRORCH_FAULT_KILL_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert _incident_state(lab) == "failing_over"
    between: list[int] = []
    if point in AFTER_PROMOTION:
        with psycopg.connect(_dsn(lab, "region-b"), autocommit=True) as c:
            between = [c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES "
                                 "(1, %s, 'between') RETURNING id", (n,)).fetchone()[0]
                       for n in (1, 2, 3)]

    resumed = lab.cli("resume", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _incident_state(lab) == "failed_over"
    assert _promote_requests(lab) == 1
    assert _secret_versions(lab) == {r: n + 1 for r, n in before_versions.items()}
    assert _rrset_changes(lab) == before_changes + 1
    assert _weights(lab) == {"region-a": 0, "region-b": 100}
    assert lab.cli("audit", "verify", str(lab.state_dir / "audit.jsonl")).returncode == 0

    assert pg.is_frozen(_dsn(lab, "region-a"), ["app"])
    assert not _app_can_log_in(lab, "region-a")
    assert _freeze_record(lab) == ORIGINAL_FREEZE
    assert _audit(lab, RETURNING) == []
    if point == "freeze:main:after_apply":
        # The freeze was finished when killed: the resume saw it, did not redo it.
        assert _step_events(lab, "freeze:main")[-1] == (
            "done", {"observed": "already done; not applied again"})
    if point in AFTER_PROMOTION:
        with psycopg.connect(_dsn(lab, "region-b"), autocommit=True) as c:
            assert [r[0] for r in c.execute(
                "SELECT id FROM orders WHERE region = 'between' ORDER BY id")] == between
        app_b = lab.runbook.database("main").endpoints["region-b"].dsn(user="app")
        with psycopg.connect(app_b, autocommit=True) as c:
            new_id = c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES "
                               "(1, 4, 'after') RETURNING id").fetchone()[0]
        assert new_id not in between


@pytest.mark.parametrize("killed_inside_freeze", [False, True])
def test_failure_before_promotion_rolls_back_the_freeze(lab: Lab,
                                                        killed_inside_freeze: bool) -> None:
    """When the replica cannot be promoted, the freeze is undone exactly and the incident
    says so: region-a, whose default was read-only before the failover (ALTER SYSTEM),
    keeps that default, and app may log in again. Also when the first run was killed
    inside the freeze (app already NOLOGIN, the freeze unfinished) and the resume met
    the failure."""
    region_a = _dsn(lab, "region-a")
    with psycopg.connect(region_a, autocommit=True) as c:
        c.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        c.execute("SELECT pg_reload_conf()")
    if killed_inside_freeze:
        killed = lab.cli("failover", "--yes", "--reason", "kill in freeze", "--actor", "carol",
                         extra_env={"DRORCH_FAULT_KILL_AT": "freeze:main:roles_locked"})
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert not _app_can_log_in(lab, "region-a")
    lab_mod.node_for(lab.runbook, "main", "region-b").stop("immediate")
    result = (lab.cli("resume", "--yes") if killed_inside_freeze
              else lab.cli("failover", "--yes", "--reason", "replica down", "--actor", "carol"))
    assert result.returncode == ExitCode.ROLLED_BACK, result.stdout + result.stderr
    assert "failed before promotion" in result.stderr
    assert _incident_state(lab) == "monitoring"
    assert _auto_conf_read_only(lab, "region-a") == "on"
    app_dsn = lab.runbook.database("main").endpoints["region-a"].dsn(user="app")
    with psycopg.connect(app_dsn, autocommit=True) as c:
        assert c.execute("SHOW default_transaction_read_only").fetchone()[0] == "on"
        with c.transaction():
            c.execute("SET TRANSACTION READ WRITE")
            c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 1, 'a')")
    assert not flags.is_frozen(_aws(lab)("ssm", "us-east-1"), "/drorch/lab/writes-frozen")
    assert _weights(lab) == {"region-a": 100, "region-b": 0}


def test_failure_after_promotion_halts_then_resume_finishes(lab: Lab) -> None:
    """A failure after promotion halts with the reason journaled; no rollback. Once the
    cause is fixed, `drorch resume` finishes without promoting again."""
    client = _aws(lab)("secretsmanager", "us-west-2")
    saved = client.get_secret_value(SecretId="lab/main/db")["SecretString"]
    client.delete_secret(SecretId="lab/main/db", ForceDeleteWithoutRecovery=True)
    result = lab.cli("failover", "--yes", "--reason", "halt test", "--actor", "dave")
    assert result.returncode == ExitCode.HALTED
    assert "halted" in result.stderr and "after promotion" in result.stderr
    assert _incident_state(lab) == "halted"
    assert not pg.in_recovery(_dsn(lab, "region-b"))

    client.create_secret(Name="lab/main/db", SecretString=saved)
    resumed = lab.cli("resume", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _incident_state(lab) == "failed_over"
    assert _promote_requests(lab) == 1
    second = lab.cli("failover", "--yes", "--reason", "again", "--actor", "dave")
    assert second.returncode == ExitCode.REFUSED and "drorch failback" in second.stderr


def test_dry_run_changes_nothing(lab: Lab) -> None:
    """`--dry-run` prints every step and leaves databases, secrets and DNS alone."""
    result = lab.cli("failover", "--dry-run")
    assert result.returncode == 0, result.stderr
    for step in ("freeze:main", "promote:main", "secrets:lab/main/db@region-b",
                 "dns:lab.drorch.test.", "validate:main"):
        assert step in result.stdout
    assert pg.in_recovery(_dsn(lab, "region-b"))
    assert _weights(lab) == {"region-a": 100, "region-b": 0}
    assert set(_secret_versions(lab).values()) == {1}
    assert not (lab.state_dir / "journal.db").exists() or _no_incidents(lab.state_dir)


def _no_incidents(state_dir: Path) -> bool:
    from drorch.store.sqlite import SqliteStore

    return SqliteStore(state_dir / "journal.db").incidents() == []


def test_audit_log_has_no_secret_and_detects_tampering(lab: Lab) -> None:
    """The audit log of a failover never holds the database password, and an edited
    entry makes `drorch audit verify` exit 1 naming its line."""
    assert lab.cli("failover", "--yes", "--reason", "audit", "--actor", "erin").returncode == 0
    password = secrets.get_value(_aws(lab)("secretsmanager", "us-east-1"),
                                 "lab/main/db")["password"]
    log = lab.state_dir / "audit.jsonl"
    for path in (log, lab.state_dir / "journal.db"):
        assert password.encode() not in path.read_bytes()
    ok = lab.cli("audit", "verify", str(log))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = log.read_text().splitlines()
    entry = json.loads(lines[3])
    entry["actor"] = "mallory"
    lines[3] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    bad = lab.cli("audit", "verify", str(log))
    assert bad.returncode == 1
    assert "line 4" in (bad.stdout + bad.stderr)


def test_plan_warns_when_wal_would_not_be_kept(lab: Lab) -> None:
    """`drorch plan` is silent when the primary keeps enough WAL for exact
    reconciliation, and warns, naming the database, when it does not."""
    quiet = lab.cli("plan")
    assert quiet.returncode == 0 and "warning" not in quiet.stdout
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        c.execute("ALTER SYSTEM SET wal_keep_size = 0")
        c.execute("SELECT pg_reload_conf()")
    loud = lab.cli("plan")
    assert "warning main in region-a" in loud.stdout and "wal_keep_size" in loud.stdout


@pytest.mark.parametrize("kill_at", ["freeze:main:after_apply", "promote:main:before_apply"])
def test_old_primary_back_before_promotion_is_frozen_then_caught_up(lab: Lab,
                                                                    kill_at: str) -> None:
    """Region-a down at freeze time but back before promotion: it is frozen before the
    barrier, and the promotion waits until region-b replayed past that barrier (RPO 0),
    so a write that region-a took while back is on region-b and none can slip in after.

    Two paths, told apart by the journal: killed before the freeze step was journaled
    done, the resume runs that step again and it freezes region-a (the promotion then
    finds it frozen and does nothing more); killed after it was journaled done (as
    "unreachable"), the promotion freezes the returning primary itself. Either way the
    record is the one read before the first change, which a rollback would restore."""
    node_a = lab_mod.node_for(lab.runbook, "main", "region-a")
    node_a.stop("fast")
    killed = lab.cli("failover", "--yes", "--reason", "flap", "--actor", "ops",
                     extra_env={"DRORCH_FAULT_KILL_AT": kill_at})
    assert killed.returncode == -9
    assert _last_incident_facts(lab)["freeze:main"]["unreachable"] is True
    node_a.start()
    assert _app_can_log_in(lab, "region-a")  # nothing was frozen there
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        c.execute("INSERT INTO orders(user_id, amount_cents, region) VALUES (1, 5, 'late')")
    resumed = lab.cli("resume", "--yes")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    assert not _app_can_log_in(lab, "region-a")
    assert pg.is_frozen(_dsn(lab, "region-a"), ["app"])
    assert _auto_conf_read_only(lab, "region-a") == "on"
    with psycopg.connect(_dsn(lab, "region-b")) as c:
        assert c.execute("SELECT count(*) FROM orders WHERE region='late'").fetchone()[0] == 1
    assert _promote_requests(lab) == 1
    assert _freeze_record(lab) == ORIGINAL_FREEZE
    freeze_done = [d for status, d in _step_events(lab, "freeze:main") if status == "done"]
    froze_returning = _audit(lab, RETURNING)
    if kill_at == "freeze:main:after_apply":
        assert [d["reachable"] for d in freeze_done] == [True]
        assert freeze_done[0]["roles_locked"] == ["app"]
        assert froze_returning == []
    else:
        assert [d["reachable"] for d in freeze_done] == [False]
        assert len(froze_returning) == 1
        assert froze_returning[0]["inputs"]["roles_locked"] == ["app"]
