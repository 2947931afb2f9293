"""Opening an incident is acting: it needs the lease, and refusals give it back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from drorch.audit import AuditLog
from drorch.config import load_runbook
from drorch.engine import Engine, IncidentHalted, IncidentRefused
from drorch.store.sqlite import Incident, SqliteStore
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


def test_refusals_say_why_and_whether_there_is_nothing_to_do(tmp_path: Path) -> None:
    """`refusal()` reads only: before any failover a failback has nothing to do; after
    one, a second failover is refused, and a failback without node control is refused
    (not "nothing to do") naming what is missing."""
    engine, store = _engine(tmp_path)
    assert engine.refusal("failover") is None
    before = engine.refusal("failback")
    assert isinstance(before, IncidentRefused) and before.nothing_to_do
    now = time.time()
    store.create_incident(Incident("lab-1", "failover", "lab", "alice", "r",
                                   {"kind": "manual"}, "failed_over", now, now))
    store.set_fact("lab-1", "to_region", "region-b")
    store.set_fact("lab-1", "completed", now)
    again = engine.refusal("failover")
    assert again is not None and "already failed over to region-b" in str(again)
    no_nodes = engine.refusal("failback")
    assert no_nodes is not None and not no_nodes.nothing_to_do
    assert "node control" in str(no_nodes)
    with_nodes = Engine(engine.runbook, store, engine.audit, engine.aws,
                        nodes=lambda db, region: None)
    assert with_nodes.refusal("failback") is None
