"""`drorch plan` and `--dry-run` change nothing on disk: no state directory, no journal
entry, no audit entry; they read the journal when there is one."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drorch.store.sqlite import Incident, SqliteStore
from tests.conftest import LAB_RUNBOOK

COMMANDS = [["plan"], ["failover", "--dry-run"], ["failback", "--dry-run"]]
BEFORE_ANY = {"plan": 2, "failover": 0, "failback": 6}
"""Exit codes before any failover: a failback has nothing to fail back from; ``plan``
runs the readiness checks too, and with nothing answering (port 1) the estate is not
ready (exit 2), while ``failover --dry-run`` only says the run would be allowed."""


def _drorch(tmp_path: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on the lab runbook with its state in ``state``; port 1 refuses at once, so
    the plan's database checks fail fast and say so (no lab needed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRORCH_")}
    env.update(DRORCH_STATE_DIR=str(state), DRORCH_LAB_PG_A_PORT="1",
               DRORCH_LAB_PG_B_PORT="1", DRORCH_LAB_MOTO_PORT="1")
    return subprocess.run([sys.executable, "-m", "drorch.cli", *args, "-r", str(LAB_RUNBOOK)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_plan_without_state_creates_none(tmp_path: Path, command: list[str]) -> None:
    """Before any incident: the plan prints, and no state directory appears."""
    state = tmp_path / "state"
    result = _drorch(tmp_path, state, *command)
    assert result.returncode == BEFORE_ANY[command[0]], result.stderr
    assert "plan for runbook lab" in result.stdout
    assert not state.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_plan_reads_the_journal_and_writes_nothing(tmp_path: Path) -> None:
    """After a completed failover a second failover would be refused (exit 3) and the
    failback goes region-b -> region-a; the journal's bytes and the directory's files
    are what they were (SQLite's reader files aside)."""
    state = tmp_path / "state"
    store = SqliteStore(state / "journal.db")
    now = time.time()
    store.create_incident(Incident("lab-1", "failover", "lab", "alice", "drill",
                                   {"kind": "manual"}, "failed_over", now, now))
    store.set_fact("lab-1", "to_region", "region-b")
    store.set_fact("lab-1", "completed", True)
    store.close()
    before = _tree(state)
    for command in COMMANDS[:2]:
        result = _drorch(tmp_path, state, *command)
        assert result.returncode == 3, result.stderr
        assert "failover plan for runbook lab: region-b -> region-a" in result.stdout
        assert "would be refused: already failed over to region-b" in result.stdout
    back = _drorch(tmp_path, state, "failback", "--dry-run")
    assert back.returncode == 0, back.stderr
    assert "failback plan for runbook lab: region-b -> region-a" in back.stdout
    assert "fence:main" in back.stdout
    after = _tree(state)
    assert after["journal.db"] == before["journal.db"]
    assert set(after) - set(before) <= {"journal.db-wal", "journal.db-shm"}


def test_the_read_only_store_refuses_writes_and_creates_nothing(tmp_path: Path) -> None:
    """No journal: an empty one in memory, no directory made; a journal: writes refused."""
    missing = SqliteStore.read_only(tmp_path / "state" / "journal.db")
    assert missing.incidents() == []
    assert not (tmp_path / "state").exists()
    SqliteStore(tmp_path / "journal.db").close()
    store = SqliteStore.read_only(tmp_path / "journal.db")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.acquire_lease("runbook:lab", "me", 10)
    for ro in (missing, store):
        with pytest.raises(sqlite3.OperationalError):
            ro.set_fact("x", "k", 1)


def test_status_on_a_fresh_directory_creates_nothing(tmp_path: Path) -> None:
    """`drorch status` before anything happened says so and leaves no state behind
    (it created the state directory and a journal; found by review)."""
    state = tmp_path / "state"
    result = _drorch(tmp_path, state, "status")
    assert result.returncode == 0, result.stderr
    assert "no incidents recorded" in result.stdout
    assert not state.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
