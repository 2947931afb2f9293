"""Failover while the replica lags: replay paused on region-b (``pg_wal_replay_pause()``)
while region-a takes writes. The promote step must wait for the replica to replay
region-a's last write (RPO 0), and refuse, rolling everything back, when it does not
within the database's ``promote_timeout_s``."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drorch.adapters import flags, route53, secrets
from drorch.adapters import postgres as pg
from drorch.adapters.aws import AwsClients
from drorch.config import load_runbook
from drorch.exitcodes import ExitCode
from drorch.lab import lab as lab_mod
from drorch.store.sqlite import SqliteStore
from tests.conftest import LAB_RUNBOOK, Lab

pytestmark = pytest.mark.postgres

WRITES = 20
DEADLINE_S = 60


def _dsn(lab: Lab, region: str, user: str | None = None) -> str:
    endpoint = lab.runbook.database("main").endpoints[region]
    return endpoint.dsn(user=user) if user else endpoint.dsn()


def _aws(lab: Lab) -> AwsClients:
    return AwsClients.for_runbook(lab.runbook)


def _weights(lab: Lab) -> dict[str, int]:
    client = _aws(lab)("route53", "us-east-1")
    zone = route53.zone_id(client, "lab.drorch.test.")
    return {r.set_identifier: r.weight
            for r in route53.weighted_records(client, zone, "app.lab.drorch.test.", "A")}


def _secret_versions(lab: Lab) -> dict[str, int]:
    aws = _aws(lab)
    return {s.region: secrets.version_count(
        aws("secretsmanager", lab.runbook.region(s.region).aws_region), s.secret_id)
        for s in lab.runbook.secrets}


def _promote_requests(lab: Lab) -> int:
    log = lab_mod.node_for(lab.runbook, "main", "region-b").logfile
    return len(re.findall("received promote request", log.read_text()))


def _orders(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn) as c:
        return {r[0]["id"]: r[0] for r in c.execute("SELECT to_jsonb(o) FROM orders o")}


def _pause_replay(lab: Lab) -> None:
    """Replay paused on region-b (it keeps receiving WAL, it applies none)."""
    with psycopg.connect(_dsn(lab, "region-b"), autocommit=True) as c:
        c.execute("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + DEADLINE_S
        while c.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
            assert time.monotonic() < deadline, "region-b did not pause replay"
            time.sleep(0.01)


def _write_on_a(lab: Lab) -> tuple[dict[int, dict[str, Any]], str]:
    """Ordinary inserts (default ids), each acknowledged alone; the acknowledged rows and
    region-a's WAL position after the last of them."""
    acked: dict[int, dict[str, Any]] = {}
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        for i in range(WRITES):
            row = c.execute("INSERT INTO orders(user_id, amount_cents, region) "
                            "VALUES (1, %s, 'lag') RETURNING to_jsonb(orders)",
                            (1000 + i,)).fetchone()[0]
            acked[row["id"]] = row
        lsn = c.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
    return acked, lsn


def _replica(lab: Lab, lsn: str) -> dict[str, Any]:
    """Region-b as it is now: standby or not, paused or not, replayed past ``lsn`` or not."""
    with psycopg.connect(_dsn(lab, "region-b"), autocommit=True) as c:
        in_recovery = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        if not in_recovery:
            return {"in_recovery": False}
        state, replayed = c.execute(
            "SELECT pg_get_wal_replay_pause_state(), pg_last_wal_replay_lsn() >= %s::pg_lsn",
            (lsn,)).fetchone()
    return {"in_recovery": True, "pause_state": state, "replayed_writes": replayed}


def _wait_replayed(lab: Lab, lsn: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not _replica(lab, lsn).get("replayed_writes"):
        assert time.monotonic() < deadline, f"region-b did not replay {lsn}"
        time.sleep(0.01)


def _step_status(journal: Path, step: str) -> str | None:
    if not journal.exists():
        return None
    store = SqliteStore(journal)
    try:
        incidents = store.incidents()
        return store.step_status(incidents[-1].id, step) if incidents else None
    finally:
        store.close()


class ResumeReplayWhenPromoting(threading.Thread):
    """Waits until the failover's promote step is running, looks at region-b (it must
    still be a paused standby that lacks region-a's writes), waits ``delay_s`` more,
    looks again and resumes replay. What it saw is kept for the test to assert."""

    def __init__(self, lab: Lab, writes_lsn: str, delay_s: float) -> None:
        super().__init__(name="resume-replay", daemon=True)
        self.lab, self.writes_lsn, self.delay_s = lab, writes_lsn, delay_s
        self.seen: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            journal = self.lab.state_dir / "journal.db"
            deadline = time.monotonic() + DEADLINE_S
            while _step_status(journal, "promote:main") != "started":
                if time.monotonic() > deadline:
                    raise TimeoutError("the failover never started promote:main")
                time.sleep(0.02)
            self.seen.append(_replica(self.lab, self.writes_lsn))
            time.sleep(self.delay_s)
            self.seen.append(_replica(self.lab, self.writes_lsn))
            if not self.seen[-1]["in_recovery"]:
                return  # promoted behind region-a's writes: the test says so
            with psycopg.connect(_dsn(self.lab, "region-b"), autocommit=True) as c:
                c.execute("SELECT pg_wal_replay_resume()")
        except BaseException as exc:  # noqa: BLE001 (re-raised by the test)
            self.error = exc


def test_lagging_replica_is_waited_for_then_promoted_with_nothing_lost(lab: Lab) -> None:
    """Replay paused on region-b, writes on region-a, `drorch failover`: the promote step
    waits (region-b is still a paused standby short of the writes while it runs), replay
    resumes well inside promote_timeout_s, region-b is promoted with RPO 0 measured, and
    every row region-a acknowledged is on region-b, exactly."""
    _pause_replay(lab)
    acked, writes_lsn = _write_on_a(lab)
    assert _replica(lab, writes_lsn) == {"in_recovery": True, "pause_state": "paused",
                                         "replayed_writes": False}  # the lag is real
    timeout_s = lab.runbook.database("main").promote_timeout_s
    resumer = ResumeReplayWhenPromoting(lab, writes_lsn, delay_s=min(1.0, timeout_s / 10))
    resumer.start()
    result = lab.cli("failover", "--yes", "--reason", "lagging replica", "--actor", "alice")
    resumer.join(DEADLINE_S)
    assert not resumer.is_alive()
    if resumer.error is not None:
        raise resumer.error
    assert result.returncode == 0, result.stdout + result.stderr

    # While promote:main ran, region-b was still a paused standby without the writes:
    # drorch did not promote it before it had replayed them.
    paused = {"in_recovery": True, "pause_state": "paused", "replayed_writes": False}
    assert resumer.seen == [paused, paused]
    assert not pg.in_recovery(_dsn(lab, "region-b"))
    assert _promote_requests(lab) == 1

    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        inc = store.incidents()[-1]
        assert inc.state == "failed_over"
        measured = store.fact(inc.id, "promote:main:measured")
    finally:
        store.close()
    assert measured["old_reachable"] is True and measured["rpo_exact"] is True
    assert measured["caught_up"] is True
    assert measured["rpo_bytes"] == 0 and measured["rpo_seconds"] == 0
    assert measured["catch_up_wait_s"] > 0
    assert pg.lsn_to_int(measured["replica_lsn"]) > pg.lsn_to_int(measured["barrier_lsn"]) \
        > pg.lsn_to_int(writes_lsn)

    # Every row region-a acknowledged is on region-b, column for column.
    on_b = _orders(_dsn(lab, "region-b"))
    assert {k: on_b.get(k) for k in acked} == acked


def test_replica_that_never_catches_up_is_not_promoted_and_all_is_rolled_back(
        lab: Lab, tmp_path: Path) -> None:
    """Replay paused on region-b and never resumed, promote_timeout_s 2: the failover is
    refused ("not promoting") and rolled back (exit 4): region-b still a standby, region-a
    unfrozen (the app role logs in and writes), the write flag lowered, DNS and secrets
    untouched, the incident journaled as rolled back and audited. Region-b is still
    region-a's replica: once replay resumes it has everything."""
    text = LAB_RUNBOOK.read_text()
    anchor = "    replication_role: postgres\n"
    assert text.count(anchor) == 1
    runbook_path = tmp_path / "lab-promote-timeout.yaml"
    runbook_path.write_text(text.replace(anchor, anchor + "    promote_timeout_s: 2\n"))
    assert load_runbook(runbook_path).database("main").promote_timeout_s == 2

    versions, weights = _secret_versions(lab), _weights(lab)
    assert weights == {"region-a": 100, "region-b": 0}
    _pause_replay(lab)
    acked, writes_lsn = _write_on_a(lab)
    result = lab.cli("failover", "--yes", "--reason", "lagging replica", "--actor", "carol",
                     extra_env={"DRORCH_RUNBOOK": str(runbook_path)})
    stderr = " ".join(result.stderr.split())
    assert result.returncode == ExitCode.ROLLED_BACK, result.stdout + result.stderr
    assert "not promoting" in stderr and "failed before promotion" in stderr, stderr

    # Region-b was never promoted; it is the same paused standby.
    assert _replica(lab, writes_lsn) == {"in_recovery": True, "pause_state": "paused",
                                         "replayed_writes": False}
    assert _promote_requests(lab) == 0
    # Region-a is open again: the application role logs in and writes by default.
    with psycopg.connect(_dsn(lab, "region-a", user="app"), autocommit=True) as c:
        assert c.execute("SHOW default_transaction_read_only").fetchone()[0] == "off"
        after = c.execute("INSERT INTO orders(user_id, amount_cents, region) "
                          "VALUES (1, 5, 'after') RETURNING to_jsonb(orders)").fetchone()[0]
    aws = _aws(lab)
    assert not flags.is_frozen(aws("ssm", "us-east-1"), "/drorch/lab/writes-frozen")
    assert _weights(lab) == weights
    assert _secret_versions(lab) == versions

    store = SqliteStore(lab.state_dir / "journal.db")
    try:
        inc = store.incidents()[-1]
        events = store.events(inc.id)
    finally:
        store.close()
    assert inc.state == "monitoring"
    steps = {(e.name, e.status): e.detail for e in events if e.kind == "step"}
    assert "not promoting" in steps[("promote:main", "failed")]["error"]
    assert ("promote:main", "done") not in steps
    for step in ("freeze:main", "freeze:write-flag@region-a"):
        assert (step, "rolled_back") in steps, sorted(steps)
    rolled_back = [e for e in events if e.kind == "transition" and e.name == "roll_back"]
    assert len(rolled_back) == 1 and rolled_back[0].status == "monitoring"
    assert "not promoting" in rolled_back[0].detail["reason"]

    audit = [json.loads(line) for line in
             (lab.state_dir / "audit.jsonl").read_text().splitlines()]
    actions = [(e["action"], e["outcome"]) for e in audit if e.get("incident") == inc.id]
    assert ("step.promote.failed", "failed") in actions
    assert ("step.freeze.rolled_back", "ok") in actions
    assert ("machine.roll_back", "ok") in actions
    verified = lab.cli("audit", "verify", str(lab.state_dir / "audit.jsonl"))
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # Still region-a's replica: replay resumed, it has every acknowledged row.
    with psycopg.connect(_dsn(lab, "region-b"), autocommit=True) as c:
        c.execute("SELECT pg_wal_replay_resume()")
    with psycopg.connect(_dsn(lab, "region-a"), autocommit=True) as c:
        last = c.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
    _wait_replayed(lab, last)
    assert pg.in_recovery(_dsn(lab, "region-b"))
    on_b = _orders(_dsn(lab, "region-b"))
    assert {k: on_b.get(k) for k in [*acked, after["id"]]} == {**acked, after["id"]: after}
