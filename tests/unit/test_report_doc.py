"""``docs/report-json.md`` against real reports: fails when the page names a key or a
listed value that no report produces, or a report produces one the page does not name.

The reports come from the real CLI, engine, journal, validation runner and report
code, in every outcome (completed with flows, completed without flows, deferred,
rolled back, halted by a failed flow, halted by a failed undo, in progress after a
crash, a failback, health and alarm triggers, RPO exact, estimated, missed). Only the
world is replaced (``tests.unit.cli_rig``; the flows' HTTP answers, database rows and
mailbox). The failback's ``reconcile`` section and the RPO a failback corrects
(``rpo.after_failover``, method ``exact: ...``) need a real failback: they are
checked the same way in ``tests/integration/test_failback.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from drorch.adapters import dns as dns_adapter
from drorch.adapters import postgres as pg_adapter
from drorch.cli_common import engine_for
from drorch.config import load_runbook
from drorch.incident import incident_record
from drorch.report import build_report
from drorch.steps import validate
from drorch.validate.transport import HttpResponse
from tests import report_doc
from tests.conftest import LAB_RUNBOOK
from tests.unit.cli_rig import REAL_APPLY, Crash, Rig, rig

LAB_ONLY_SECTIONS = {"reconcile.*", "reconcile.*.divergence", "reconcile.*.tables[]",
                     "rpo.after_failover"}
LAB_ONLY_VALUES = {"rpo.method": "exact: *"}


class _Shop:
    """The lab app's answers to the runbook's flows; ``bad_login`` refuses the login.
    A test e-mail lands in the mailbox store, as the lab's SMTP sink writes it."""

    def __init__(self, mail: Path, bad_login: bool = False) -> None:
        self.mail, self.bad_login = mail, bad_login

    def request(self, method: str, url: str, *, headers: dict[str, str], json_body: Any,
                timeout: float, server_hostname: str | None = None) -> HttpResponse:
        path = url.split("/", 3)[-1]
        if path == "login":
            return HttpResponse(401, {}, b'{"error": "bad credentials"}') if self.bad_login \
                else HttpResponse(200, {}, b'{"token": "t0k"}')
        if path == "checkout":
            return HttpResponse(200, {}, b'{"order_id": 7, "region": "region-b"}')
        message_id = f"<{uuid.uuid4().hex}@lab.drorch.test>"
        self.mail.mkdir(parents=True, exist_ok=True)
        (self.mail / f"{time.time_ns()}.json").write_text(json.dumps({
            "from": "app@lab", "to": json_body.get("to"), "subject": f"test {message_id}",
            "message_id": message_id, "body": "hi", "received_at": time.time()}))
        return HttpResponse(200, {}, json.dumps({"message_id": message_id}).encode())


class _Rows:
    def __enter__(self) -> _Rows:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def execute(self, sql: str, params: Any = None) -> Any:
        return type("Cursor", (), {"fetchall": staticmethod(lambda: [(1,)])})()


def _with_flows(r: Rig, monkeypatch: pytest.MonkeyPatch, *, bad_login: bool = False) -> None:
    """The real flow runner (``RunFlows.apply``) against the shop's answers."""
    monkeypatch.setattr(validate.RunFlows, "apply", REAL_APPLY[validate.RunFlows])
    shop = _Shop(r.state / "lab" / "mail", bad_login)
    monkeypatch.setattr("drorch.validate.HttpxTransport", lambda: _Context(shop))
    monkeypatch.setattr(pg_adapter, "connect", lambda *_a, **_k: _Rows())
    monkeypatch.setattr(dns_adapter, "answers", lambda *_a, **_k: ({"127.0.0.1"}, 60))


class _Context:
    def __init__(self, shop: _Shop) -> None:
        self.shop = shop

    def __enter__(self) -> _Shop:
        return self.shop

    def __exit__(self, *_: object) -> None:
        return None


def _promoted(seconds: float | None, exact: bool) -> dict[str, Any]:
    return {"rpo_bytes": 0 if exact else None, "rpo_seconds": seconds, "rpo_exact": exact,
            "replica_last_commit_at": time.time() - 1}


def _reports(r: Rig) -> list[dict[str, Any]]:
    rb = load_runbook(Path(os.environ["DRORCH_RUNBOOK"]))
    engine, store = engine_for(rb)
    return [build_report(incident_record(store, rb, i.id)) for i in store.incidents(rb.name)]


def _no_flows_runbook(tmp_path: Path) -> Path:
    text = LAB_RUNBOOK.read_text()
    start, end = text.index("\nvalidation:\n"), text.index("\ntargets:\n")
    path = tmp_path / "no-flows.yaml"
    path.write_text(text[:start] + text[end:])
    return path


def _automatic(r: Rig, kind: str, *, crash: str | None = None) -> None:
    """A failover the watcher would open (trigger ``kind``, a first failure 10 s before:
    the probes' for ``health``, an alarm's that counted alone for ``alarm``, as
    ``drorch.watch_state.trigger_for`` records them); ``crash``: the process dies inside
    that step."""
    rb = load_runbook(Path(os.environ["DRORCH_RUNBOOK"]))
    engine, _store = engine_for(rb)
    now = time.time()
    alarm = kind == "alarm"
    incident = engine.start_failover(actor="auto", reason="region-a failed", trigger={
        "kind": kind, "detail": "2/3 probes failing", "region": "region-a",
        "first_failure_at": now - 10, "decided_at": now, "down": [] if alarm else ["db", "app"],
        "alarms": ["region-a-unhealthy"] if alarm else [],
        "alarm_events": [{"name": "region-a-unhealthy", "state": "ALARM",
                          "changed_at": now - 11, "received_at": now - 10,
                          "reason": "Threshold Crossed"}] if alarm else [],
        "probe_failing_since": None if alarm else now - 10, "probes": 3, "quorum": 2})
    if crash:
        r.crashing.add(crash)
    with contextlib.suppress(Crash):  # the journal keeps the step "started"
        engine.run(incident)


def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """One report per outcome (see the module docstring)."""
    reports: list[dict[str, Any]] = []

    def fresh(name: str, runbook: Path = LAB_RUNBOOK) -> Rig:
        r = rig(tmp_path / name, monkeypatch)
        monkeypatch.setenv("DRORCH_RUNBOOK", str(runbook))
        return r

    ok = ["--reason", "doc", "--actor", "alice", "--yes"]
    # completed with flows (RPO exact), then a completed failback
    r = fresh("a")
    _with_flows(r, monkeypatch)
    r.details["promote:main"] = _promoted(0.0, True)
    assert r.cli("failover", *ok).exit_code == 0
    assert r.cli("failback", *ok).exit_code == 0
    reports += _reports(r)
    # a failed flow halts; the RPO missed its target
    monkeypatch.setenv("DRORCH_LAB_FLOW_DEADLINE_S", "1")
    r = fresh("b")
    _with_flows(r, monkeypatch, bad_login=True)
    r.details["promote:main"] = _promoted(9.0, True)
    assert r.cli("failover", *ok).exit_code == 5
    reports += _reports(r)
    monkeypatch.delenv("DRORCH_LAB_FLOW_DEADLINE_S")
    # rolled back; then a rollback whose undo fails (halts)
    r = fresh("c")
    r.failing.add("promote:main")
    assert r.cli("failover", *ok).exit_code == 4
    r.failing_undo.add("freeze:main")
    assert r.cli("failover", *ok).exit_code == 5
    reports += _reports(r)
    # no flows; the failed region's write flag deferred; then a failback that crashes
    r = fresh("d", _no_flows_runbook(tmp_path))
    r.failing.add("freeze:write-flag@region-a")
    assert r.cli("failover", *ok).exit_code == 0
    r.failing.clear()
    r.crashing.add("resync:main")
    with pytest.raises(Crash):
        r.cli("failback", *ok)
    reports += _reports(r)
    # automatic: health (RPO estimated: region-a unreachable), alarm (crashes mid-step)
    r = fresh("e", _no_flows_runbook(tmp_path))
    r.details["promote:main"] = _promoted(None, False)
    _automatic(r, "health")
    reports += _reports(r)
    r = fresh("f", _no_flows_runbook(tmp_path))
    _automatic(r, "alarm", crash="promote:main")
    reports += _reports(r)
    return reports


def test_the_doc_names_exactly_what_real_reports_hold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key and listed value, both ways (the lab-only ones: what reports produce
    must be documented)."""
    reports = corpus(tmp_path, monkeypatch)
    doc = report_doc.documented()
    sections = set(doc.keys) - LAB_ONLY_SECTIONS
    fields = [f for f in doc.values if f not in LAB_ONLY_VALUES]
    problems = report_doc.differences(reports, both_ways=sections, values_both_ways=fields,
                                      doc=doc, may_be_missing={"": {"reconcile"}})
    assert problems == []
    methods = {r["rpo"]["method"] for r in reports}
    assert {"lsn-at-promotion", "estimate (old primary unreachable)"} <= methods


def test_the_check_fails_on_an_undocumented_key_or_value_and_on_a_stale_one() -> None:
    """The comparison is not vacuous: a key or value the page lacks, and one it names
    that nothing produces, are each reported."""
    text = report_doc.DOC.read_text()
    doc = report_doc.documented(text.replace("| `waits_s` |", "| waits |")
                                .replace("`lsn-at-promotion`, ", ""))
    report = {"waits_s": 1.0, "kind": "failover", "rpo": {"method": "lsn-at-promotion"},
              "audit": {"path": "p", "head": "h", "signature": "x"}}
    problems = report_doc.differences([report], both_ways=["audit", ""],
                                      values_both_ways=["kind"], doc=doc)
    assert "(top level): key 'waits_s' is produced but not documented" in problems
    assert "audit: key 'signature' is produced but not documented" in problems
    assert "rpo.method: value 'lsn-at-promotion' is produced but not documented" in problems
    assert "kind: value 'failback' is documented but no report produced it" in problems
    assert "(top level): key 'summary' is documented but no report produced it" in problems
