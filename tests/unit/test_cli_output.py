"""Each ``--output json`` form parses and holds to its published schema (the JSON
Schema of its pydantic model, the one ``docs/cli-json.md`` shows), in the states a
script meets: nothing happened, failed over, halted, a watcher stale or stopped."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from drorch.cli_output import PlanOutput, StatusOutput
from drorch.config import load_runbook
from drorch.exitcodes import ExitCode
from drorch.store.sqlite import SqliteStore
from drorch.watch import record_key
from drorch.watch_state import WatchRecord, to_json
from tests.conftest import LAB_RUNBOOK
from tests.unit.cli_rig import Rig, rig


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return rig(tmp_path, monkeypatch)


def _json(r: Rig, model: Any, *args: str, code: int = 0) -> dict[str, Any]:
    result = r.cli(*args, "--output", "json")
    assert result.exit_code == code, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, model.model_json_schema())
    model.model_validate(doc)
    return doc


def test_status_json_before_anything(r: Rig) -> None:
    """No incident, no watcher: region-a serves, nothing needs a human, exit 0."""
    doc = _json(r, StatusOutput, "status")
    assert doc["active_region"] == "region-a" and doc["latest_incident"] is None
    assert doc["watcher"] is None and doc["attention"] == [] and doc["exit_code"] == 0
    assert doc["state_dir"] == str(r.state)
    assert [h["status"] for h in doc["health"]] == ["unknown", "unknown"]


def test_status_json_failed_over_then_halted(r: Rig) -> None:
    """After a failover region-b serves; a halted failback makes status exit 5 and
    says so in `attention`."""
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == 0
    doc = _json(r, StatusOutput, "status")
    assert doc["active_region"] == "region-b"
    assert doc["latest_incident"]["state"] == "failed_over"
    assert {s["status"] for s in doc["latest_incident"]["steps"]} == {"done"}
    r.failing.add("dns:lab.drorch.test.")  # after the failback's promotion: halts
    assert r.cli("failback", "--reason", "x", "--yes").exit_code == ExitCode.HALTED
    doc = _json(r, StatusOutput, "status", code=ExitCode.HALTED)
    assert doc["exit_code"] == ExitCode.HALTED
    assert doc["latest_incident"]["kind"] == "failback"
    assert "is halted" in doc["attention"][0]


def _watch_record(r: Rig, state: str, age_s: float) -> None:
    rb = load_runbook(LAB_RUNBOOK)
    store = SqliteStore(r.state / "journal.db")
    store.put(record_key(rb), to_json(WatchRecord(state=state, primary="region-a",  # type: ignore[arg-type]
                                                  updated_at=time.time() - age_s)))
    store.close()


@pytest.mark.parametrize(("state", "age_s", "stale"), [
    ("monitoring", 1.0, False), ("monitoring", 3600.0, True), ("stopped", 3600.0, False)])
def test_status_shows_the_verdicts_age_and_exits_7_when_stale(
        r: Rig, state: str, age_s: float, stale: bool) -> None:
    """A running watcher's verdict older than 3 intervals plus the slowest timeout
    (the lab: 3 x 1 s + 1 s), and never less than 10 s, is stale: exit 7, and the text
    says STALE with its age. A watcher journaled as stopped is not expected to tick."""
    _watch_record(r, state, age_s)
    doc = _json(r, StatusOutput, "status", code=ExitCode.STALE if stale else 0)
    watcher = doc["watcher"]
    assert watcher["stale_after_s"] == 10.0 and watcher["state"] == state
    assert watcher["age_s"] == pytest.approx(age_s, abs=5)
    assert watcher["stale"] is stale
    text = r.cli("status")
    assert text.exit_code == (ExitCode.STALE if stale else 0)
    assert ("STALE" in text.output) is stale
    assert "ago" in text.output


def test_plan_json_allowed_and_refused(r: Rig) -> None:
    """`plan` and `failover --dry-run`: the stages before any failover (exit 0); after
    one, refused (exit 3) with the reason and no stages; the failback's plan then goes
    region-b -> region-a."""
    for args in (["plan"], ["failover", "--dry-run"]):
        # plan also runs the readiness checks: nothing answers on port 1, so it is
        # allowed but not ready (exit 2); a dry run has no readiness (exit 0)
        doc = _json(r, PlanOutput, *args,
                    code=ExitCode.NOT_READY if args == ["plan"] else ExitCode.OK)
        if args == ["plan"]:
            assert doc["ready"] == "not_ready"
            [replica] = [c for c in doc["readiness"] if c["check"] == "database.replica"]
            assert replica["status"] == "fail" and "does not answer" in replica["reason"]
        else:
            assert doc["ready"] is None and doc["readiness"] == []
        assert doc["allowed"] and doc["refusal"] is None
        assert (doc["from_region"], doc["to_region"]) == ("region-a", "region-b")
        assert [s["name"] for s in doc["stages"]] == ["freeze", "promote", "open", "dns",
                                                      "validate"]
        assert any(s["irreversible"] for st in doc["stages"] for s in st["steps"])
        assert any("could not check" in w for w in doc["warnings"])  # port 1 refuses
        # the promotion candidate does not answer either: said before anything is frozen
        assert any(w.startswith("main in region-b does not answer") for w in doc["warnings"])
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == 0
    doc = _json(r, PlanOutput, "plan", code=ExitCode.REFUSED)
    assert not doc["allowed"] and "already failed over" in doc["refusal"]
    assert doc["stages"] == []
    back = _json(r, PlanOutput, "failback", "--dry-run")
    assert (back["kind"], back["from_region"], back["to_region"]) == (
        "failback", "region-b", "region-a")
    assert back["stages"][0]["name"] == "fence"


def test_a_bad_output_is_a_usage_error(r: Rig) -> None:
    """`--output yaml` exits 2; a run (not a dry run) has no JSON form."""
    assert r.cli("status", "--output", "yaml").exit_code == ExitCode.USAGE
    assert r.cli("failover", "--reason", "x", "--yes", "--output", "json").exit_code == \
        ExitCode.USAGE


@pytest.mark.parametrize("running", [False, True])
def test_status_exits_5_for_an_incident_in_flight_that_nobody_runs(
        r: Rig, running: bool) -> None:
    """A failover whose process was killed (in flight, its lease free) needs a human:
    exit 5 and `drorch resume` in `attention`; one still running (lease held by a live
    process) does not."""
    from drorch.store.sqlite import Incident, this_holder

    store = SqliteStore(r.state / "journal.db")
    now = time.time()
    store.create_incident(Incident("lab-1", "failover", "lab", "alice", "test",
                                   {"kind": "manual"}, "failing_over", now, now))
    if running:
        store.acquire_lease("runbook:lab", this_holder(), 60)
    store.close()
    code = ExitCode.OK if running else ExitCode.HALTED
    doc = _json(r, StatusOutput, "status", code=code)
    assert doc["latest_incident"]["state"] == "failing_over"
    if running:
        assert doc["attention"] == []
    else:
        assert "nobody is running it" in doc["attention"][0]
        assert "drorch resume" in doc["attention"][0]
