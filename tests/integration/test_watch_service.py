"""`drorch watch` as a service on the real lab: it survives its failover, fences the old
primary when it comes back (a writer on it as the application role gets nothing more
in), lets a human's failback undo that fence, refuses a second automatic failover until
`drorch ack`, then fails over again, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from drorch.adapters import flags
from drorch.adapters import postgres as pg
from drorch.adapters.aws import AwsClients
from drorch.audit import iter_entries, verify
from drorch.store.sqlite import SqliteStore
from drorch.watch_state import from_json
from tests.conftest import LAB_RUNBOOK, ROOT, Lab

pytestmark = pytest.mark.postgres

MARK = "fence-test"


def _store(lab: Lab) -> SqliteStore:
    return SqliteStore(lab.state_dir / "journal.db")


def _incidents(lab: Lab) -> list[Any]:
    if not (lab.state_dir / "journal.db").exists():
        return []
    store = _store(lab)
    try:
        return store.incidents()
    finally:
        store.close()


def _fact(lab: Lab, incident: str, key: str) -> Any:
    store = _store(lab)
    try:
        return store.fact(incident, key)
    finally:
        store.close()


def _audited(lab: Lab, action: str) -> list[dict[str, Any]]:
    path = lab.state_dir / "audit.jsonl"
    return [e for e in iter_entries(path) if e["action"] == action] if path.exists() else []


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _until(what: str, check: Callable[[], Any], timeout_s: float, log: Path) -> Any:
    """Poll ``check`` until it returns something true; fail with the watcher's log tail."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout_s:g}s; the watcher's log ends:\n"
                + log.read_text()[-6000:])


def _dsn(lab: Lab, region: str, user: str | None = None) -> str:
    endpoint = lab.runbook.database("main").endpoints[region]
    return endpoint.dsn(user=user) if user else endpoint.dsn()


@dataclass
class Writer:
    """The application role writing to region-a, as a client with a stale address would:
    one connection, reconnecting after any error. ``acked`` holds the ids whose COMMIT
    returned; ``errors`` the last error of each failed attempt."""

    dsn: str
    acked: list[int] = field(default_factory=list)
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self.stop.is_set():
            self.attempts += 1
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                row = conn.execute("INSERT INTO orders(user_id, amount_cents, region) "
                                   "VALUES (1, 1, %s) RETURNING id", (MARK,)).fetchone()
                assert row is not None
                self.acked.append(int(row[0]))
            except psycopg.Error as exc:
                self.errors.append(str(exc).strip().splitlines()[0] if str(exc) else "")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()


def _rows_on_a(lab: Lab) -> set[int]:
    """The writer's rows on region-a, read by drorch's own (superuser) session."""
    with pg.connect(_dsn(lab, "region-a")) as c:
        return {int(r[0]) for r in c.execute("SELECT id FROM orders WHERE region = %s",
                                             (MARK,))}


def test_watcher_survives_failover_fences_old_primary_holds_until_ack_stops_on_sigterm(
        lab: Lab, tmp_path: Path) -> None:
    """The whole service story in one lab; each stage is asserted as it ends."""
    rb_path = tmp_path / "lab-service.yaml"  # only the ack holds (no recovery period)
    rb_path.write_text(LAB_RUNBOOK.read_text().replace(
        "\nhealth:\n", "\nhealth:\n  recovery_period_s: 0\n", 1))
    env = {**os.environ, **lab.env, "DRORCH_RUNBOOK": str(rb_path)}
    log = tmp_path / "watch.log"
    _ok(lab.cli("lab", "fail", "region-a", "--mode", "stop"))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "drorch.cli", "watch"], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    writer = Writer(_dsn(lab, "region-a", user="app"))
    thread = threading.Thread(target=writer.run, daemon=True)
    try:
        # 1. It fails over by itself and keeps running.
        first = _until("the automatic failover", lambda: next(
            (i for i in _incidents(lab) if i.state == "failed_over"), None), 60, log)
        assert first.actor == "auto" and first.kind == "failover"
        assert proc.poll() is None, log.read_text()

        # 2. region-a comes back writable, a writer on it as the application role; the
        # watcher fences it, and from then on nothing the writer sends lands there.
        thread.start()
        _ok(lab.cli("lab", "heal", "region-a"))
        fenced = _until("the fence on return", lambda: (
            f if (f := _fact(lab, first.id, "fenced_on_return:main")) else None), 30, log)
        assert fenced["state"] == "fenced" and fenced["region"] == "region-a"
        assert fenced["roles_locked"] == ["app"]
        assert pg.is_frozen(_dsn(lab, "region-a"), ["app"])
        acked_at_fence, rows_at_fence = len(writer.acked), _rows_on_a(lab)
        attempts = writer.attempts
        _until("20 more writer attempts", lambda: writer.attempts >= attempts + 20, 30, log)
        writer.stop.set()
        thread.join(timeout=10)
        assert len(writer.acked) == acked_at_fence, "a write was acknowledged after the fence"
        assert _rows_on_a(lab) == rows_at_fence  # nothing landed after the fence
        assert set(writer.acked) <= rows_at_fence  # every acknowledged write is there
        assert 'role "app" is not permitted to log in' in writer.errors[-1]
        # Recorded as the failover's freeze of region-a would have been: failback's format.
        freeze = _fact(lab, first.id, "freeze:main")
        assert freeze["phase"] == "done" and freeze["roles_locked"] == ["app"]
        (audited,) = _audited(lab, "watch.old_primary_fenced")
        assert audited["incident"] == first.id and audited["outcome"] == "ok"
        # The old region's write flag is raised (the failover's freeze raised it already).
        flag = _until("the write flag recorded", lambda: _fact(
            lab, first.id, "write_flag_on_return:region-a"), 30, log)
        assert flag["state"] in ("raised", "already_raised")
        ssm = AwsClients(lab.runbook.aws.endpoint_url)("ssm", "us-east-1")
        assert flags.is_frozen(ssm, "/drorch/lab/writes-frozen")

        # 3. A human fails back while the watcher runs: the failback fences, reconciles
        # (the writer's acknowledged rows come back) and reopens region-a.
        _ok(lab.cli("failback", "--yes", "--reason", "region-a is back", "--actor", "oncall",
                    extra_env={"DRORCH_RUNBOOK": str(rb_path)}, timeout=300))
        back = _incidents(lab)[-1]
        assert back.kind == "failback" and back.state == "monitoring"
        assert pg.writes_open(_dsn(lab, "region-a"), ["app"])
        with psycopg.connect(_dsn(lab, "region-a", user="app"), autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM orders WHERE region = %s",
                             (MARK,)).fetchone()[0] == len(rows_at_fence)
            c.execute("INSERT INTO orders(user_id, amount_cents, region) "
                      "VALUES (1, 1, 'after-failback')")

        # 4. region-a dies again: the watcher refuses (not acknowledged), once.
        _ok(lab.cli("lab", "fail", "region-a", "--mode", "stop"))

        def refused() -> Any:
            store = _store(lab)
            try:
                d = from_json(store.get("watch:lab")).decision
            finally:
                store.close()
            return d if d is not None and d.guard == "recovery_hold" else None

        decision = _until("the recovery hold refusal", refused, 60, log)
        assert f"drorch ack {first.id}" in decision.reason
        status = _ok(lab.cli("status", extra_env={"DRORCH_RUNBOOK": str(rb_path)}))
        assert "automatic failover held" in status.stdout and "recovery_hold" in status.stdout
        assert len(_incidents(lab)) == 2
        refusals = [e for e in _audited(lab, "watch.refused")
                    if e["inputs"]["guard"] == "recovery_hold"]
        assert len(refusals) == 1

        # 5. A human acknowledges; the watcher fails over again by itself.
        _ok(lab.cli("ack", first.id, "--reason", "root cause understood", "--actor", "alice",
                    extra_env={"DRORCH_RUNBOOK": str(rb_path)}))
        second = _until("the second automatic failover", lambda: next(
            (i for i in _incidents(lab)[2:] if i.state == "failed_over"), None), 60, log)
        assert second.actor == "auto" and second.id != first.id
        (acked,) = _audited(lab, "incident.acknowledged")
        assert acked["actor"] == "alice" and acked["incident"] == first.id
        assert len([e for e in _audited(lab, "watch.refused")
                    if e["inputs"]["guard"] == "recovery_hold"]) == 1

        # 6. SIGTERM: a clean stop that says so.
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        _until("the watcher's exit", lambda: proc.poll() is not None, 30, log)
        assert proc.returncode == 0, log.read_text()
    finally:
        writer.stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "watch stopped (SIGTERM)" in output and "2 failover(s) driven" in output
    store = _store(lab)
    try:
        assert from_json(store.get("watch:lab")).state == "stopped"
    finally:
        store.close()
    (stopped,) = _audited(lab, "watch.stopped")
    assert stopped["reason"] == "stop requested"
    assert verify(lab.state_dir / "audit.jsonl").ok
