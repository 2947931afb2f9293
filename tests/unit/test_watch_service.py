"""The watcher as a service, its pure half: the recovery hold after a failover, the
refusal it causes, when the old primary counts as answering, and the retry count."""

from __future__ import annotations

import json

from drorch.health import HealthPolicy
from drorch.health.probes import ProbeResult
from drorch.watch_state import (
    Hold,
    LastFailover,
    TickView,
    WatchRecord,
    decide,
    from_json,
    hold_changed,
    hold_for,
    old_primary_answers,
    restart_count,
    to_json,
)
from tests.unit.test_watch_decisions import POLICY, SPECS, T0, _run

PERIOD = 600.0
HELD = POLICY.model_copy(update={"recovery_period_s": PERIOD})


def _failover(acked_by: str | None = None) -> LastFailover:
    return LastFailover("lab-1", T0, "region-a", "region-b", acked_by,
                        T0 + 5 if acked_by else None)


def _failing_primary_view(hold: Hold | None) -> TickView:
    """region-b serves writes (after a failover) and has failed its window; region-a is
    healthy: everything but the hold says fail over."""
    b, a = _run("region-b", 8, 3), _run("region-a", 8, 0)
    return TickView(T0 + 100, "region-b", "region-a", {"region-a": a, "region-b": b},
                    frozenset(SPECS), False, 0, None, hold)


def test_recovery_period_default_is_an_hour_and_the_runbook_may_set_it() -> None:
    """A runbook without the key holds for an hour; a negative period is refused."""
    assert HealthPolicy().recovery_period_s == 3600
    assert HealthPolicy(recovery_period_s=5).recovery_period_s == 5
    try:
        HealthPolicy(recovery_period_s=-1)
    except ValueError:
        pass
    else:
        raise AssertionError("a negative recovery period was accepted")


def test_no_failover_means_no_hold() -> None:
    """Nothing failed over: nothing is held."""
    assert hold_for(None, HELD, T0) is None


def test_unacknowledged_failover_holds_even_after_the_period() -> None:
    """Without `drorch ack` the hold never ends by itself; the reason says what ends it."""
    during = hold_for(_failover(), HELD, T0 + 10)
    after = hold_for(_failover(), HELD, T0 + PERIOD + 10)
    assert during is not None and after is not None
    assert not during.acked and not during.period_over
    assert "`drorch ack lab-1`" in during.reason and "recovery period of 10m" in during.reason
    assert not after.acked and after.period_over
    assert "`drorch ack lab-1`" in after.reason and "recovery period" not in after.reason


def test_acknowledged_failover_holds_until_the_period_ends() -> None:
    """An ack within the period leaves the hold until the period's end, then it ends."""
    during = hold_for(_failover("alice"), HELD, T0 + 10)
    assert during is not None and during.acked and not during.period_over
    assert "acknowledged by alice" in during.reason and "drorch ack" not in during.reason
    assert hold_for(_failover("alice"), HELD, T0 + PERIOD) is None


def test_hold_refuses_a_failover_the_guards_would_allow() -> None:
    """With the hold in force a failed primary and a healthy secondary are refused with
    guard recovery_hold; the reason keeps the window's sentence and adds the hold's."""
    hold = hold_for(_failover(), HELD, T0 + 100)
    d = decide(_failing_primary_view(hold), HELD)
    assert d.action == "refuse" and d.guard == "recovery_hold" and d.trigger is None
    assert "region-b failed" in d.reason and "`drorch ack lab-1`" in d.reason
    assert "failing over" not in d.reason


def test_without_hold_the_same_view_fails_over() -> None:
    """The same view with the hold lifted starts a failover: the hold alone refused it."""
    d = decide(_failing_primary_view(None), HELD)
    assert d.action == "failover" and d.trigger is not None


def test_hold_leaves_other_decisions_alone() -> None:
    """A healthy primary under a hold is 'none', not a refusal (nothing to refuse)."""
    hold = hold_for(_failover(), HELD, T0 + 100)
    a, b = _run("region-a", 8, 0), _run("region-b", 8, 0)
    view = TickView(T0 + 100, "region-b", "region-a", {"region-a": a, "region-b": b},
                    frozenset(SPECS), False, 0, None, hold)
    assert decide(view, HELD).action == "none"


def test_hold_changes_are_news_once() -> None:
    """Starting, being acknowledged, the period ending and ending are changes; the same
    hold on the next tick (its reason's clock aside) is not."""
    held = hold_for(_failover(), HELD, T0 + 10)
    again = hold_for(_failover(), HELD, T0 + 11)
    acked = hold_for(_failover("alice"), HELD, T0 + 12)
    expired = hold_for(_failover(), HELD, T0 + PERIOD + 1)
    assert hold_changed(None, held) and hold_changed(held, None)
    assert not hold_changed(held, again) and not hold_changed(None, None)
    assert hold_changed(held, acked) and hold_changed(held, expired)


def _results(ok: dict[str, bool]) -> list[ProbeResult]:
    return [ProbeResult(n, "region-a", v, 0.01, None if v else "refused", T0)
            for n, v in ok.items()]


def test_old_primary_answers_only_when_its_database_does() -> None:
    """The fence is tried when a PostgreSQL probe of the old region passed, not when only
    its TCP port or app answered, nor when the region was not probed this tick."""
    spec = SPECS["region-a"]
    assert old_primary_answers(_results({"db": True, "db-port": False, "app": False}), spec)
    assert not old_primary_answers(_results({"db": False, "db-port": True, "app": True}), spec)
    assert not old_primary_answers(None, spec) and not old_primary_answers([], spec)


def test_old_primary_without_postgres_probe_answers_on_any_probe() -> None:
    """A region judged without a PostgreSQL probe: any passing probe means it is back."""
    spec = SPECS["region-a"].model_copy(update={"probes": SPECS["region-a"].probes[1:]})
    assert old_primary_answers(_results({"db-port": True, "app": False}), spec)
    assert not old_primary_answers(_results({"db-port": False, "app": False}), spec)


def test_rolled_back_attempt_restarts_the_count() -> None:
    """After a rollback the region's window starts over and is observed afresh: the retry
    needs a whole new failing window; the other region keeps its window."""
    a, b = _run("region-a", 8, 3), _run("region-b", 8, 0)
    assert a.verdict.failed
    windows, fresh = restart_count({"region-a": a, "region-b": b}, frozenset(SPECS),
                                   "region-a")
    assert windows["region-a"].verdict.status == "unknown"
    assert windows["region-b"] == b and fresh == frozenset({"region-b"})
    view = TickView(T0 + 100, "region-a", "region-b", windows, fresh, False, 0)
    assert decide(view, POLICY).action == "none"
    again = _run("region-a", 3, 3, state=windows["region-a"], start=T0 + 200)
    view = TickView(T0 + 203, "region-a", "region-b", {**windows, "region-a": again},
                    frozenset(SPECS), False, 0)
    assert decide(view, POLICY).action == "wait"  # counting again, not failing over


def test_record_keeps_the_hold_across_a_restart() -> None:
    """The hold survives the JSON round trip (status reads it; a restarted watcher does
    not audit the same hold again)."""
    hold = hold_for(_failover("alice"), HELD, T0 + 10)
    record = WatchRecord(hold=hold)
    assert from_json(json.loads(json.dumps(to_json(record)))).hold == hold
    assert from_json(json.loads(json.dumps(to_json(WatchRecord())))).hold is None
