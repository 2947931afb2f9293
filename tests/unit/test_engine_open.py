"""Opening an incident is acting: it needs the lease, and refusals give it back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from drorch.audit import AuditLog
from drorch.config import load_runbook
from drorch.engine import Engine, IncidentHalted
from drorch.store.sqlite import SqliteStore
from tests.conftest import LAB_RUNBOOK

HOLD = """
import sys, time
from pathlib import Path
from drorch.store.sqlite import SqliteStore, this_holder
SqliteStore(Path(sys.argv[1])).acquire_lease("runbook:lab", this_holder(), 60)
print("held", flush=True)
time.sleep(60)
"""


def _engine(tmp_path: Path) -> tuple[Engine, SqliteStore]:
    store = SqliteStore(tmp_path / "journal.db")
    runbook = load_runbook(LAB_RUNBOOK)
    return Engine(runbook, store, AuditLog(tmp_path / "audit.jsonl"), lambda *_: None), store


def test_another_live_orchestrator_holding_the_lease_blocks_opening(tmp_path: Path) -> None:
    """While another live process holds the runbook's lease, no incident is opened."""
    engine, store = _engine(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "journal.db")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(IncidentHalted, match="another orchestrator is acting"):
            engine.start_failover(actor="auto", reason="r", trigger={"kind": "health"})
        assert store.incidents() == []
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    incident = engine.start_failover(actor="auto", reason="r", trigger={"kind": "health"})
    assert [i.id for i in store.incidents()] == [incident]


def test_refusal_gives_the_lease_back(tmp_path: Path) -> None:
    """A refused failback releases the lease, so the next command is not blocked."""
    engine, store = _engine(tmp_path)
    with pytest.raises(IncidentHalted, match="nothing to fail back from"):
        engine.start_failback(actor="alice", reason="r", trigger={"kind": "manual"})
    assert store.acquire_lease("runbook:lab", "elsewhere:1", 30) >= 1
