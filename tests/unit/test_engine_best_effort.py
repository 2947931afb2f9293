"""Best-effort steps in the failed region (cases found by review): a late answer after
a rollback, retries of a rolled-back failover, and a required step's failure wording.

The steps' world is replaced where a real one cannot be made to answer late on cue
(``_rigged``); the engine, the journal and the runbook are real.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from drorch.audit import AuditLog
from drorch.config import load_runbook
from drorch.engine import Engine, IncidentHalted, IncidentRolledBack
from drorch.steps import freeze as freeze_steps
from drorch.steps import promote as promote_steps
from drorch.steps.base import StepFailed
from drorch.store.sqlite import SqliteStore
from tests.conftest import LAB_RUNBOOK

LATE_S = 1.0  # region-a's SSM answers this long after the request (deadline: 0.2 s)


def _rigged(monkeypatch: pytest.MonkeyPatch, flag: dict[str, Any]) -> None:
    """Fake world: region-a's SSM answers late; the freeze is a no-op; promotion fails
    before it is requested (e.g. region-b's replica unreachable)."""
    lock = threading.Lock()

    def flag_check(self: Any, ctx: Any) -> bool:
        return bool(flag["frozen"])

    def flag_apply(self: Any, ctx: Any) -> dict[str, Any]:
        time.sleep(LATE_S)  # the request is in flight; the API answers late
        with lock:
            flag["frozen"] = True
            flag["history"].append(("raised", time.monotonic()))
        return {"region": self.target, "value": "true"}

    def flag_undo(self: Any, ctx: Any) -> dict[str, Any]:
        with lock:
            flag["frozen"] = False
            flag["history"].append(("lowered", time.monotonic()))
        return {"value": "false"}

    monkeypatch.setattr(freeze_steps.RaiseWriteFlag, "check", flag_check)
    monkeypatch.setattr(freeze_steps.RaiseWriteFlag, "apply", flag_apply)
    monkeypatch.setattr(freeze_steps.RaiseWriteFlag, "undo", flag_undo)
    monkeypatch.setattr(freeze_steps.FreezeDatabase, "check", lambda self, ctx: False)
    monkeypatch.setattr(freeze_steps.FreezeDatabase, "apply", lambda self, ctx: {"ok": 1})
    monkeypatch.setattr(freeze_steps.FreezeDatabase, "undo",
                        lambda self, ctx: {"restored": {}})

    def promote_apply(self: Any, ctx: Any) -> dict[str, Any]:
        raise StepFailed("main in region-b is unreachable")

    monkeypatch.setattr(promote_steps.PromoteDatabase, "check", lambda self, ctx: False)
    monkeypatch.setattr(promote_steps.PromoteDatabase, "apply", promote_apply)


def _engine(tmp_path: Path) -> tuple[Engine, SqliteStore]:
    """The lab runbook with a 0.2 s failed-region deadline, on a journal of its own."""
    runbook = load_runbook(LAB_RUNBOOK)
    runbook = runbook.model_copy(update={"aws": runbook.aws.model_copy(
        update={"failed_region_deadline_s": 0.2})})
    store = SqliteStore(tmp_path / "journal.db")
    return Engine(runbook, store, AuditLog(tmp_path / "audit.jsonl"), lambda *_: None), store


def test_a_late_write_flag_never_lands_after_the_rollback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """region-a's SSM answers after the deadline, and the failover then rolls back: the
    rollback waits for the call in flight, and the late flag is undone with the rest,
    never left frozen in the region that serves writes again."""
    flag: dict[str, Any] = {"frozen": False, "history": []}
    _rigged(monkeypatch, flag)
    engine, store = _engine(tmp_path)
    incident = engine.start_failover(actor="alice", reason="r", trigger={"kind": "manual"})
    with pytest.raises(IncidentRolledBack):
        engine.run(incident)
    assert store.incident(incident).state == "monitoring"  # rolled back: region-a serves
    time.sleep(LATE_S + 0.5)  # region-a's SSM answers the request made before the rollback

    # region-a serves writes again: its write flag must not say frozen.
    assert flag["frozen"] is False, (
        f"the write flag landed in region-a after the rollback: {flag['history']}")
    statuses = [e.status for e in store.events(incident)
                if e.name == "freeze:write-flag@region-a"]
    assert statuses[-1] != "done", f"journal of a rolled-back incident: {statuses}"


def test_retry_deferred_refuses_a_rolled_back_incident(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolled-back failover gave the region back: it lists no deferred steps, and
    retrying them does nothing (it would raise the write flag of the serving region)."""
    flag: dict[str, Any] = {"frozen": False, "history": []}
    _rigged(monkeypatch, flag)
    engine, store = _engine(tmp_path)
    monkeypatch.setattr(freeze_steps.RaiseWriteFlag, "apply",
                        lambda self, ctx: (_ for _ in ()).throw(RuntimeError("aws down")))
    incident = engine.start_failover(actor="alice", reason="r", trigger={"kind": "manual"})
    with pytest.raises(IncidentRolledBack):
        engine.run(incident)
    assert store.incident(incident).state == "monitoring"
    monkeypatch.setattr(freeze_steps.RaiseWriteFlag, "apply",
                        lambda self, ctx: flag.update(frozen=True) or {"value": "true"})
    assert [s.id for s in engine.deferred_steps(incident)] == [], (
        "a rolled-back incident still lists deferred steps")
    engine.retry_deferred(incident)
    assert flag["frozen"] is False


def test_a_required_aws_step_says_which_regions_api_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """region-b (the region we move to) has its AWS API down: clearing its write flag is
    required, so it fails (never deferred), and the journal says which region's API,
    not only botocore's words (found by review)."""
    from drorch.adapters.aws import AwsClients
    from drorch.lab.ports import free_port
    from drorch.steps import secrets as secret_steps

    for cls in (freeze_steps.FreezeDatabase, promote_steps.PromoteDatabase,
                promote_steps.OpenWrites, secret_steps.RewriteSecret):
        monkeypatch.setattr(cls, "check", lambda self, ctx: False)
        monkeypatch.setattr(cls, "apply", lambda self, ctx: {"ok": 1})
        monkeypatch.setattr(cls, "undo", lambda self, ctx: None)
    runbook = load_runbook(LAB_RUNBOOK)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused at once
    runbook = runbook.model_copy(update={"aws": runbook.aws.model_copy(update={
        "failed_region_deadline_s": 2.0,
        "region_endpoints": {"us-east-1": dead, "us-west-2": dead}})})
    store = SqliteStore(tmp_path / "journal.db")
    aws = AwsClients.for_runbook(runbook)
    engine = Engine(runbook, store, AuditLog(tmp_path / "audit.jsonl"), aws)
    incident = engine.start_failover(actor="alice", reason="r", trigger={"kind": "manual"})
    with pytest.raises(IncidentHalted, match="could not reach region-b's SSM API"):
        engine.run(incident)  # after the promotion: forward or halt
    events = {(e.name, e.status): e.detail for e in store.events(incident)}
    assert ("freeze:write-flag@region-a", "deferred") in events  # the failed region's
    failed = events[("open:write-flag@region-b", "failed")]
    assert failed["error"].startswith("could not reach region-b's SSM API")
