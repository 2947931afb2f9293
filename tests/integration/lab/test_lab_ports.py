"""Two labs on one machine: a stopped server's port is never handed to the other lab."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from drorch.config import load_runbook
from drorch.lab import faults, ports
from drorch.lab import lab as lab_mod
from tests.conftest import LAB_RUNBOOK, SPARE_BLOCK, Lab, lab_env

pytestmark = pytest.mark.postgres


def test_stopped_postgres_comes_back_on_its_own_port_after_another_lab_started(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Region-a's PostgreSQL is stopped (its port now looks free to any probe); a
    second lab starts from another worker's port block; healing region-a brings it
    back on its own port, and both labs answer on their own ports."""
    node_a = lab_mod.node_for(lab.runbook, "main", "region-a")
    faults.fail(lab.runbook, "region-a", "stop")
    assert not node_a.is_running()
    assert ports._bindable(node_a.port)  # what fooled the old probing allocator

    env = lab_env(tmp_path / "second", SPARE_BLOCK)  # no worker of this run has it
    second = None
    try:
        with monkeypatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            second = load_runbook(LAB_RUNBOOK)
        lab_mod.up(second)

        faults.heal(lab.runbook, "region-a")
        assert node_a.is_running()
        for runbook in (lab.runbook, second):
            for region, ep in runbook.database("main").endpoints.items():
                with psycopg.connect(ep.dsn()) as c:
                    port = c.execute("SHOW port").fetchone()[0]
                    recovery = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                assert int(port) == ep.port
                assert recovery == (region == "region-b")
    finally:
        if second is not None:
            lab_mod.down(second)
