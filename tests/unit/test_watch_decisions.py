"""The watcher's pure half: one decision per tick, its trigger, and what it remembers."""

from __future__ import annotations

import json

import pytest

from drorch.health import Decision, HealthPolicy, RegionHealth, WindowState, advance, initial_state
from drorch.health.config import PostgresProbe, TcpProbe
from drorch.health.window import Observation
from drorch.watch_state import (
    TickView,
    WatchDecision,
    WatchRecord,
    decide,
    due_regions,
    from_json,
    is_news,
    lag_worth_keeping,
    last_lag_before,
    needs_lag,
    seconds_until_due,
    sqs_region,
    summary_rows,
    to_json,
    verdict_changes,
)
from tests.unit.health._health_trace import alarm, observe

T0 = 1_000_000.0
POLICY = HealthPolicy(max_replica_lag_bytes=1 << 20, refuse_on_unknown_lag=False)


def _spec(region: str) -> RegionHealth:
    """Like the lab: a postgres probe, a tcp probe and one more, quorum 2, window 6 s."""
    return RegionHealth(
        region=region, aws_region="us-east-1" if region == "region-a" else "us-west-2",
        probes=[PostgresProbe(name="db", host="127.0.0.1", port=1, timeout_s=1),
                TcpProbe(name="db-port", host="127.0.0.1", port=1, timeout_s=1),
                TcpProbe(name="app", host="127.0.0.1", port=2, timeout_s=1)],
        quorum=2, fail_after_s=6, interval_s=1,
    )


SPECS = {"region-a": _spec("region-a"), "region-b": _spec("region-b")}


def _run(region: str, seconds: float, down: set[str] | int,
         policy: HealthPolicy = POLICY, state: WindowState | None = None,
         start: float = T0) -> WindowState:
    spec = SPECS[region]
    state = state or initial_state(region)
    t = 0.0
    while t <= seconds:
        state = advance(state, observe(spec, start + t, down), spec, policy)
        t += 1
    return state


def _view(a: WindowState, b: WindowState, *, busy: bool = False, lag: int | None = 0,
          fresh: frozenset[str] = frozenset(SPECS)) -> TickView:
    return TickView(T0 + 100, "region-a", "region-b", {"region-a": a, "region-b": b},
                    fresh, busy, lag)


def test_healthy_primary_means_nothing_to_do() -> None:
    """A healthy primary: action none, and the reason says it is healthy."""
    d = decide(_view(_run("region-a", 10, 0), _run("region-b", 10, 0)), POLICY)
    assert d.action == "none" and "region-a healthy" in d.reason and d.trigger is None


def test_degraded_primary_waits_with_the_count_in_the_reason() -> None:
    """While the count runs the watcher waits and says how far it has gone."""
    d = decide(_view(_run("region-a", 3, 3), _run("region-b", 3, 0)), POLICY)
    assert d.action == "wait"
    assert "region-a failing for 3s of 6s (3/3 probes down" in d.reason


def test_failed_primary_fails_over_with_rto_start_in_trigger() -> None:
    """A failed primary and a healthy secondary start a failover whose trigger says
    kind health and carries the first failing observation as first_failure_at."""
    a = _run("region-a", 8, {"db", "app"})
    d = decide(_view(a, _run("region-b", 8, 0), lag=4096), POLICY)
    assert d.action == "failover"
    assert d.trigger is not None
    assert d.trigger["kind"] == "health"
    assert d.trigger["first_failure_at"] == T0
    assert d.trigger["down"] == ["db", "app"] and d.trigger["region"] == "region-a"
    assert d.trigger["detail"] == d.reason and "4.0 KiB" in d.reason


def test_secondary_down_refuses() -> None:
    """No automatic failover into a failing secondary; the guard is named."""
    d = decide(_view(_run("region-a", 8, 3), _run("region-b", 8, 3)), POLICY)
    assert d.action == "refuse" and d.guard == "secondary_unhealthy" and d.trigger is None
    assert "secondary unhealthy: region-b failed" in d.reason


def test_failover_running_or_done_refuses() -> None:
    """A failover already running or done is never started again by the watcher."""
    d = decide(_view(_run("region-a", 8, 3), _run("region-b", 8, 0), busy=True), POLICY)
    assert d.action == "refuse" and d.guard == "already_failing_over"


def test_lag_over_limit_refuses() -> None:
    """A replica further behind than the runbook allows is not promoted automatically."""
    d = decide(_view(_run("region-a", 8, 3), _run("region-b", 8, 0), lag=8 << 20), POLICY)
    assert d.action == "refuse" and d.guard == "replica_lag"


def test_verdicts_carried_over_a_restart_are_not_acted_on() -> None:
    """A failed verdict read back from the journal does nothing until this run observed
    the region itself; an unrefreshed secondary counts as not observed."""
    a, b = _run("region-a", 8, 3), _run("region-b", 8, 0)
    assert decide(_view(a, b, fresh=frozenset()), POLICY).action == "none"
    d = decide(_view(a, b, fresh=frozenset({"region-a"})), POLICY)
    assert d.action == "refuse" and d.guard == "secondary_unknown"


def test_alarm_alone_trigger_is_kind_alarm_counting_from_when_it_was_read() -> None:
    """With alarm_may_trigger_alone, a firing alarm on a healthy-looking region fails it
    after the window; the trigger says kind alarm and starts when drorch read it."""
    policy = POLICY.model_copy(update={"alarm_may_trigger_alone": True})
    spec = SPECS["region-a"]
    state = advance(initial_state("region-a"), observe(spec, T0, 0), spec, policy)
    ev = alarm("db-down", "ALARM", at=T0 - 3600)  # a stale StateChangeTime
    state = advance(state, Observation("region-a", T0 + 1, alarms=(ev,)), spec, policy)
    state = _run("region-a", 7, 0, policy, state, start=T0 + 2)
    d = decide(_view(state, _run("region-b", 8, 0)), policy)
    assert d.action == "failover" and d.trigger is not None
    assert d.trigger["kind"] == "alarm" and d.trigger["alarms"] == ["db-down"]
    assert d.trigger["first_failure_at"] == T0 + 1


def test_alarm_by_default_waits_for_probes_and_then_triggers_as_health() -> None:
    """By default an alarm alone never fails a region; once probes fail for the window
    the failover's trigger is kind health and still names the alarm."""
    spec = SPECS["region-a"]
    ev = alarm("db-down", "ALARM", at=T0)
    state = advance(initial_state("region-a"), Observation("region-a", T0, alarms=(ev,)),
                    spec, POLICY)
    calm = _run("region-a", 20, 0, state=state, start=T0 + 1)
    assert decide(_view(calm, _run("region-b", 8, 0)), POLICY).action == "none"
    failed = _run("region-a", 7, 3, state=calm, start=T0 + 22)
    d = decide(_view(failed, _run("region-b", 8, 0)), POLICY)
    assert d.action == "failover" and d.trigger is not None
    assert d.trigger["kind"] == "health" and d.trigger["alarms"] == ["db-down"]
    assert d.trigger["first_failure_at"] == T0 + 22


def test_lag_is_read_only_for_a_failed_primary_whose_database_answers() -> None:
    """Reading the lag is skipped unless the primary failed with its PostgreSQL probe up."""
    spec = SPECS["region-a"]
    assert needs_lag(_run("region-a", 8, {"db-port", "app"}), spec)
    assert not needs_lag(_run("region-a", 8, {"db", "app"}), spec)
    assert not needs_lag(_run("region-a", 3, {"db-port", "app"}), spec)


def test_every_region_is_probed_first_then_on_its_schedule() -> None:
    """Regions not yet observed by this run are due at once; others when their interval
    (shorter while degraded) has passed."""
    a, b = _run("region-a", 2, 0), _run("region-b", 2, 3)
    windows = {"region-a": a, "region-b": b}
    last = T0 + 2
    assert due_regions(windows, SPECS, last + 0.1, frozenset()) == ["region-a", "region-b"]
    fresh = frozenset(SPECS)
    assert due_regions(windows, SPECS, last + 0.1, fresh) == []
    assert due_regions(windows, SPECS, last + 0.6, fresh) == ["region-b"]
    assert due_regions(windows, SPECS, last + 1.0, fresh) == ["region-a", "region-b"]
    assert seconds_until_due(windows, SPECS, last + 0.1, cap=1.0) == pytest.approx(0.4)
    assert seconds_until_due(windows, SPECS, last + 0.1, cap=0.25) == 0.25


def test_verdict_changes_are_status_or_alarm_changes_only() -> None:
    """A new status or a new firing alarm is a change; the count going on is not."""
    a1, a2 = _run("region-a", 1, 3), _run("region-a", 3, 3)
    assert verdict_changes({"region-a": a1}, {"region-a": a2}) == []
    changes = verdict_changes({}, {"region-a": a1})
    assert [(old, v.status) for old, v in changes] == [(None, "degraded")]
    healthy = _run("region-a", 1, 0)
    changes = verdict_changes({"region-a": a2}, {"region-a": healthy})
    assert [(old, v.status) for old, v in changes] == [("degraded", "healthy")]
    spec = SPECS["region-a"]
    suspect = advance(healthy, Observation("region-a", T0 + 5, alarms=(
        alarm("x", "ALARM", T0 + 5),)), spec, POLICY)
    assert len(verdict_changes({"region-a": healthy}, {"region-a": suspect})) == 1


def test_a_refusal_is_news_once_until_its_guard_changes() -> None:
    """The same refusal every tick is reported once; a new guard or action is news."""
    refuse = WatchDecision("refuse", "x", "secondary_unhealthy")
    assert is_news(None, refuse)
    assert not is_news(Decision("refuse", "y", "secondary_unhealthy"), refuse)
    assert is_news(Decision("refuse", "y", "replica_lag"), refuse)
    assert is_news(Decision("wait", "y"), refuse)


def test_record_round_trips_through_json() -> None:
    """What the watcher stores comes back equal, alarms and probe results included."""
    spec = SPECS["region-a"]
    a = advance(_run("region-a", 3, 3), Observation("region-a", T0 + 4, alarms=(
        alarm("x", "ALARM", T0 + 4),)), spec, POLICY)
    results = observe(spec, T0 + 4, {"db"}).results
    record = WatchRecord(windows={"region-a": a, "region-b": _run("region-b", 3, 0)},
                         probes={"region-a": results}, state="degraded", primary="region-a",
                         decision=Decision("wait", "counting"), incident="inc-1",
                         changes=({"region": "region-a", "to": "degraded"},),
                         updated_at=T0 + 4, last_lag=(4096, T0 + 3))
    doc = json.loads(json.dumps(to_json(record)))
    assert from_json(doc) == record


def test_unreadable_record_starts_afresh() -> None:
    """A record of another version or a damaged one is dropped, never half-read."""
    assert from_json(None) == WatchRecord()
    assert from_json({"version": 99, "windows": {}}) == WatchRecord()
    assert from_json({"version": 1, "windows": {"region-a": {"nope": 1}}}) == WatchRecord()


def test_summary_says_how_far_the_count_has_gone() -> None:
    """`drorch status` rows: the window's sentence and the last round's probes."""
    spec = SPECS["region-a"]
    a = _run("region-a", 4, {"db", "app"})
    record = WatchRecord(windows={"region-a": a}, primary="region-a",
                         probes={"region-a": observe(spec, T0 + 4, {"db", "app"}).results})
    rows = summary_rows(record, SPECS)
    assert rows[0]["progress"] == "region-a failing for 4s of 6s (2/3 probes down: db, app)"
    assert rows[0]["role"] == "primary" and rows[0]["status"] == "degraded"
    assert [(p["probe"], p["ok"]) for p in rows[0]["probes"]] == [
        ("db", False), ("db-port", True), ("app", False)]
    assert rows[1]["region"] == "region-b" and rows[1]["status"] == "unknown"


def test_sqs_region_from_url_or_fallback() -> None:
    """The queue's AWS region comes from its URL when the URL says, else the fallback."""
    assert sqs_region("https://sqs.eu-west-1.amazonaws.com/123/q", "us-west-2") == "eu-west-1"
    assert sqs_region("https://ap-south-1.queue.amazonaws.com/123/q", "x") == "ap-south-1"
    assert sqs_region("http://127.0.0.1:25000/123456789012/q", "us-west-2") == "us-west-2"


def test_lag_is_kept_from_rounds_where_the_primary_database_answered() -> None:
    """With a lag limit, every round whose PostgreSQL probes all passed reads the lag
    (the reading a dead primary leaves behind); without a limit, or with the database
    down, none is read."""
    spec = SPECS["region-a"]
    policy = POLICY.model_copy(update={"regions": list(SPECS.values())})
    healthy = list(observe(spec, T0, 0).results)
    db_down = list(observe(spec, T0, {"db"}).results)
    assert lag_worth_keeping(healthy, spec, policy)
    assert not lag_worth_keeping(db_down, spec, policy)
    assert not lag_worth_keeping(None, spec, policy)
    unlimited = policy.model_copy(update={"max_replica_lag_bytes": None})
    assert not lag_worth_keeping(healthy, spec, unlimited)


def test_only_a_reading_from_just_before_the_count_stands_in() -> None:
    """A reading at most two probe rounds (interval plus slowest timeout, 2 s here) before
    the count began (or during it) is used by the guard; an older one says nothing of the
    replica now. A server shutting down, its port still open, puts a round between the
    last reading and the count, and a busy watcher's rounds run late."""
    policy = POLICY.model_copy(update={"regions": list(SPECS.values()),
                                       "refuse_on_unknown_lag": True})
    a = _run("region-a", 8, 3)
    since = a.verdict.failing_since
    assert a.verdict.failed and since is not None
    reading = last_lag_before(a, (2048, since - 1.0), policy)
    assert reading is not None and (reading.bytes, reading.before_failure_s) == (2048, 1.0)
    assert last_lag_before(a, (2048, since - 30), policy) is None
    assert last_lag_before(a, None, policy) is None
    assert SPECS["region-a"].lag_reading_max_age_s == 4.0
    two_late_rounds = last_lag_before(a, (2048, since - 3.9), policy)
    assert two_late_rounds is not None and two_late_rounds.before_failure_s == 3.9
    assert last_lag_before(a, (2048, since - 4.1), policy) is None
    b = _run("region-b", 8, 0)
    view = TickView(T0 + 100, "region-a", "region-b", {"region-a": a, "region-b": b},
                    frozenset(SPECS), False, None, (2048, since - 1.0))
    assert decide(view, policy).action == "failover"
    stale = TickView(T0 + 100, "region-a", "region-b", {"region-a": a, "region-b": b},
                     frozenset(SPECS), False, None, (2048, since - 30))
    assert decide(stale, policy).guard == "replica_lag_unknown"
