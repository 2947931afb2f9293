"""The healthy side's AWS API down (region-b) with region-a dead (found by review): the
steps there are required, so the failover halts, saying plainly which API failed."""

from __future__ import annotations

import pytest

from tests.conftest import Lab
from tests.integration.test_failover import _incident_state

pytestmark = pytest.mark.postgres


def test_aws_down_in_the_region_we_move_to_halts_and_says_why(lab: Lab) -> None:
    assert lab.cli("lab", "fail", "region-a", "--mode", "stop").returncode == 0
    assert lab.cli("lab", "fail", "region-b", "--mode", "aws-down").returncode == 0
    result = lab.cli("failover", "--reason", "both", "--actor", "alice", timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out
    assert _incident_state(lab) == "halted"  # promoted already: forward or halt
    assert "could not reach region-b's SSM API" in " ".join(out.split())
