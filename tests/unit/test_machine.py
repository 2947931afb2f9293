"""The lifecycle table: what may happen from each state."""

from __future__ import annotations

import pytest

from drorch.machine import TRANSITIONS, IllegalTransition, Lifecycle, State


def test_failover_path() -> None:
    """monitoring -> failing_over -> failed_over -> failing_back -> monitoring."""
    lc = Lifecycle()
    for trigger, state in [("start_failover", State.FAILING_OVER),
                           ("failover_done", State.FAILED_OVER),
                           ("start_failback", State.FAILING_BACK),
                           ("failback_done", State.MONITORING)]:
        assert lc.fire(trigger) == state


def test_no_second_failover_while_failed_over() -> None:
    """A failed-over incident cannot start another failover; only failback."""
    lc = Lifecycle(State.FAILED_OVER)
    assert not lc.can("start_failover")
    with pytest.raises(IllegalTransition, match="cannot start failover while failed_over"):
        lc.fire("start_failover")


def test_halt_only_from_running_paths_and_resume_returns() -> None:
    """Halting happens only mid-failover/failback; a human resumes it."""
    assert not Lifecycle(State.MONITORING).can("halt")
    lc = Lifecycle(State.FAILING_OVER)
    lc.fire("halt")
    assert lc.can("resume_failover") and lc.fire("resume_failover") == State.FAILING_OVER


def test_no_auto_transitions() -> None:
    """No to_<state>() shortcuts exist that would bypass the table."""
    assert not hasattr(Lifecycle(), "to_failed_over")
    assert {t["trigger"] for t in TRANSITIONS} >= {"start_failover", "halt", "roll_back"}
