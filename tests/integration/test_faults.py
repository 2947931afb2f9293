"""Lab fault injection on real processes: stop refuses, hang times out, flap alternates,
heal brings the region back; every injection and heal is audited."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drorch.audit import AuditLog, iter_entries
from drorch.health import run_round
from drorch.lab import faults, services
from drorch.lab import lab as lab_mod
from drorch.lab.postgres import PgNode
from tests.conftest import Lab
from tests.integration.test_watch import shared_lab

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def calm_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab for every fault test here; each test heals what it broke."""
    with shared_lab(tmp_path_factory, "faults") as lab:
        yield lab


def _node(lab: Lab, region: str = "region-a") -> PgNode:
    return lab_mod.node_for(lab.runbook, "main", region)


def _app_pid(lab: Lab, region: str = "region-a") -> int:
    state = lab_mod.LabState.load(lab_mod.state_path(lab.runbook))
    assert state is not None
    return state.services[f"app:{region}"]


def _frozen(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


def _probes(lab: Lab, region: str = "region-a") -> dict[str, str | None]:
    """One real probe round of the region: probe name -> error (None when healthy)."""
    spec = lab.runbook.region_health(region)
    assert spec is not None
    return {r.probe: r.error for r in run_round(spec)}


def _audit(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "audit.jsonl")


def _actions(tmp_path: Path) -> list[tuple[str, str | None, str]]:
    return [(e["action"], e["inputs"].get("mode"), e["actor"])
            for e in iter_entries(tmp_path / "audit.jsonl")]


def test_stop_refuses_connections_until_heal_restarts(calm_lab: Lab, tmp_path: Path) -> None:
    """`stop` kills PostgreSQL and the app (connections refused); a second fault on the
    same region is refused; heal starts both again; both actions are audited."""
    audit = _audit(tmp_path)
    old_app = _app_pid(calm_lab)
    try:
        sentence = faults.fail(calm_lab.runbook, "region-a", "stop", audit=audit, actor="tess")
        assert "region-a stopped" in sentence
        assert not _node(calm_lab).is_running() and not services.pid_alive(old_app)
        errors = _probes(calm_lab)
        assert all(errors.values()) and "refused" in str(errors["db-port"])
        with pytest.raises(faults.FaultError, match="already has a stop fault"):
            faults.fail(calm_lab.runbook, "region-a", "hang")
    finally:
        healed = faults.heal(calm_lab.runbook, "region-a", audit=audit, actor="tess")
    assert "PostgreSQL main-region-a started" in healed and "app started" in healed
    assert _probes(calm_lab) == {"db": None, "db-port": None, "app": None}
    assert _node(calm_lab).is_running() and _app_pid(calm_lab) != old_app
    assert faults.active_faults(calm_lab.runbook) == {}
    assert _actions(tmp_path) == [("lab.fault.injected", "stop", "tess"),
                                  ("lab.fault.healed", "stop", "tess")]


def test_hang_makes_probes_time_out_and_heal_resumes(calm_lab: Lab, tmp_path: Path) -> None:
    """`hang` freezes the processes: the port still accepts but PostgreSQL and the app time
    out; heal resumes the same processes rather than restarting them."""
    postmaster, app = _node(calm_lab).pid(), _app_pid(calm_lab)
    assert postmaster is not None
    try:
        faults.fail(calm_lab.runbook, "region-a", "hang", audit=_audit(tmp_path))
        assert _frozen(postmaster) and _frozen(app)
        errors = _probes(calm_lab)
        assert errors["db-port"] is None
        assert errors["db"] == "timed out after 1s" and errors["app"] == "timed out after 1s"
    finally:
        healed = faults.heal(calm_lab.runbook, "region-a", audit=_audit(tmp_path))
    # resumed, not restarted; the region's alarm, fired by the hang, is cleared
    assert healed == "region-a healed: alarm drorch-lab-region-a-unhealthy ALARM -> OK"
    assert not _frozen(postmaster) and not _frozen(app)
    assert (_node(calm_lab).pid(), _app_pid(calm_lab)) == (postmaster, app)
    assert _probes(calm_lab) == {"db": None, "db-port": None, "app": None}


def test_flap_alternates_until_heal_stops_the_flapper(calm_lab: Lab, tmp_path: Path) -> None:
    """`flap` runs a detached flapper (its PID in faults.json) that freezes and thaws the
    region in turn; heal stops it and leaves the region running."""
    postmaster = _node(calm_lab).pid()
    assert postmaster is not None
    try:
        faults.fail(calm_lab.runbook, "region-a", "flap", period_s=1.0, audit=_audit(tmp_path))
        entry = faults.active_faults(calm_lab.runbook)["region-a"]
        assert entry["mode"] == "flap" and entry["period_s"] == 1.0
        flapper = entry["pid"]
        assert services.pid_alive(flapper)
        seen: set[bool] = set()
        deadline = time.monotonic() + 10
        while seen != {True, False} and time.monotonic() < deadline:
            seen.add(_frozen(postmaster))
            time.sleep(0.05)
        assert seen == {True, False}
    finally:
        healed = faults.heal(calm_lab.runbook, "region-a", audit=_audit(tmp_path))
    assert "flapper stopped" in healed and not services.pid_alive(flapper)
    assert not _frozen(postmaster)
    assert _probes(calm_lab) == {"db": None, "db-port": None, "app": None}
    assert [a[:2] for a in _actions(tmp_path)] == [("lab.fault.injected", "flap"),
                                                   ("lab.fault.healed", "flap")]


def test_flapper_exits_by_itself_once_its_fault_is_gone(calm_lab: Lab) -> None:
    """A flapper whose entry disappears from faults.json (as `lab down` removes the lab
    directory) exits on its own and leaves the region thawed."""
    postmaster = _node(calm_lab).pid()
    assert postmaster is not None
    try:
        faults.fail(calm_lab.runbook, "region-a", "flap", period_s=0.5)
        flapper = faults.active_faults(calm_lab.runbook)["region-a"]["pid"]
        faults.faults_path(calm_lab.runbook).write_text(json.dumps({}))
        deadline = time.monotonic() + 10
        while services.pid_alive(flapper) and time.monotonic() < deadline:
            time.sleep(0.05)  # pid_alive counts our unreaped child, a zombie, as gone
        assert not services.pid_alive(flapper)
        assert not _frozen(postmaster)
    finally:
        faults.heal(calm_lab.runbook, "region-a")


def test_release_all_stops_flappers_and_thaws_everything(calm_lab: Lab) -> None:
    """What `lab down` needs first: no flapper left running and no process left frozen,
    with nothing restarted."""
    postmaster_a, postmaster_b = _node(calm_lab).pid(), _node(calm_lab, "region-b").pid()
    assert postmaster_a is not None and postmaster_b is not None
    try:
        faults.fail(calm_lab.runbook, "region-a", "hang")
        faults.fail(calm_lab.runbook, "region-b", "flap", period_s=0.4)
        flapper = faults.active_faults(calm_lab.runbook)["region-b"]["pid"]
        assert faults.release_all(calm_lab.runbook) == ["flapper region-b"]
        assert not services.pid_alive(flapper)
        assert faults.active_faults(calm_lab.runbook) == {}
        for pid in (postmaster_a, postmaster_b, _app_pid(calm_lab), _app_pid(calm_lab, "region-b")):
            assert not _frozen(pid)
    finally:
        faults.heal(calm_lab.runbook, "region-a")
        faults.heal(calm_lab.runbook, "region-b")
