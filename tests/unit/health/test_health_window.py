"""The failure window replayed over long traces with a fake clock (observations are data)."""

from __future__ import annotations

from drorch.health.config import HealthPolicy
from drorch.health.window import (
    Observation,
    advance,
    fmt_duration,
    initial_state,
    next_probe_at,
)
from tests.unit.health._health_trace import alarm, observe, region_spec, replay

HOUR = 3600.0
T0 = 1_000_000.0


def test_steady_healthy_hour_is_never_degraded() -> None:
    """An hour of all-healthy rounds keeps the region healthy on every tick."""
    spec = region_spec()
    statuses = {v.status for _, v, _ in replay(spec, HOUR, lambda t: 0)}
    assert statuses == {"healthy"}


def test_flapping_every_90s_for_an_hour_never_fails() -> None:
    """Down 90 s, up 90 s, for an hour, with N=3 min: degraded often, failed never."""
    spec = region_spec(fail_after_s=180, interval_s=10)
    verdicts = [v for _, v, _ in replay(spec, HOUR, lambda t: 3 if (t // 90) % 2 else 0)]
    statuses = [v.status for v in verdicts]
    assert "failed" not in statuses
    assert statuses.count("degraded") > 100  # the outages were seen, just never long enough


def test_hard_outage_fails_after_n_plus_at_most_one_interval() -> None:
    """All probes down from t=605 s: failed no earlier than N and no later than N + interval."""
    spec = region_spec(fail_after_s=180, interval_s=10)
    outage = 605.0
    first_failed = next(
        (t, v) for t, v, _ in replay(spec, HOUR, lambda t: 3 if t >= outage else 0)
        if v.status == "failed"
    )
    t, verdict = first_failed
    assert 180 <= t - outage <= 180 + 10
    assert verdict.decided_at == T0 + t
    assert verdict.failing_since == T0 + 610
    assert verdict.reason.startswith("region-a failed: failing for 3m of 3m (3/3 probes down")


def test_failed_verdict_keeps_its_decision_time() -> None:
    """Once failed, later failing rounds keep the first ``decided_at``."""
    spec = region_spec(fail_after_s=60, interval_s=10)
    decided = {v.decided_at for _, v, _ in replay(spec, 600, lambda t: 3) if v.failed}
    assert decided == {T0 + 60}


def test_partial_outage_below_quorum_never_degrades() -> None:
    """One of three probes down for an hour with quorum 2: the region stays healthy."""
    spec = region_spec(quorum=2)
    statuses = {v.status for _, v, _ in replay(spec, HOUR, lambda t: {"p1"})}
    assert statuses == {"healthy"}


def test_quorum_reached_by_different_probes_counts() -> None:
    """Quorum is a count: different pairs of probes failing in turn keep the streak."""
    spec = region_spec(quorum=2, fail_after_s=60)
    pairs = [{"p0", "p1"}, {"p1", "p2"}, {"p0", "p2"}]
    verdicts = [v for _, v, _ in replay(spec, 120, lambda t: pairs[int(t // 10) % 3])]
    assert verdicts[-1].failed


def test_single_healthy_round_resets_by_default() -> None:
    """With ``healthy_rounds_to_reset=1`` one good round in an outage restarts the count."""
    spec = region_spec(fail_after_s=180, interval_s=10)
    blip = {150.0}
    statuses = [v.status for _, v, _ in replay(spec, 300, lambda t: 0 if t in blip else 3)]
    assert "failed" not in statuses


def test_hysteresis_ignores_single_healthy_blips() -> None:
    """With ``healthy_rounds_to_reset=3`` isolated healthy rounds do not stop the count."""
    spec = region_spec(fail_after_s=180, interval_s=10, healthy_rounds_to_reset=3)
    blips = {50.0, 100.0, 150.0}
    verdicts = [(t, v) for t, v, _ in replay(spec, 300, lambda t: 0 if t in blips else 3)]
    first = next(t for t, v in verdicts if v.failed)
    assert first == 180
    mid = dict(verdicts)[150.0]
    assert mid.status == "degraded" and "1/3 healthy rounds to reset" in mid.reason


def test_hysteresis_resets_after_enough_healthy_rounds() -> None:
    """Three consecutive healthy rounds end a streak when ``healthy_rounds_to_reset=3``."""
    spec = region_spec(fail_after_s=180, interval_s=10, healthy_rounds_to_reset=3)
    verdicts = dict(
        (t, v) for t, v, _ in replay(spec, 200, lambda t: 0 if 100 <= t <= 120 else 3)
    )
    assert verdicts[110.0].status == "degraded"
    assert verdicts[120.0].status == "healthy"
    assert verdicts[200.0].status == "degraded" and verdicts[200.0].failing_since == T0 + 130


def test_degraded_reason_names_elapsed_window_and_probes() -> None:
    """The reason is one human line: elapsed of N and which probes are down."""
    spec = region_spec(fail_after_s=180, interval_s=10)
    state = initial_state(spec.region)
    for t in range(0, 131, 10):
        state = advance(state, observe(spec, T0 + t, {"p0", "p2"}), spec)
    assert state.verdict.reason == "region-a failing for 2m10s of 3m (2/3 probes down: p0, p2)"
    assert state.verdict.elapsed_s == 130 and state.verdict.needed_s == 180


def test_gap_in_observations_breaks_the_streak() -> None:
    """A silence longer than ``max_gap_s`` means drorch cannot claim continuous failure."""
    spec = region_spec(fail_after_s=180, interval_s=10)
    state = advance(initial_state(spec.region), observe(spec, T0, 3), spec)
    state = advance(state, observe(spec, T0 + 170, 3), spec)  # 170 s > max_gap_s
    state = advance(state, observe(spec, T0 + 200, 3), spec)
    assert state.verdict.status == "degraded"
    assert state.verdict.failing_since == T0 + 170


def test_out_of_order_observation_is_ignored() -> None:
    """An observation older than the last one does not change the state."""
    spec = region_spec()
    state = advance(initial_state(spec.region), observe(spec, T0 + 100, 0), spec)
    late = advance(state, observe(spec, T0 + 50, 3), spec)
    assert late is state


def test_missing_probe_result_counts_as_failed() -> None:
    """A probe absent from a round is counted down, not silently skipped."""
    spec = region_spec(quorum=1)
    obs = Observation(spec.region, T0, observe(spec, T0, 0).results[:2])
    state = advance(initial_state(spec.region), obs, spec)
    assert state.verdict.status == "degraded" and state.verdict.down == ("p2",)


def test_no_round_yet_is_unknown() -> None:
    """Before any probe round the verdict is unknown, not healthy."""
    assert initial_state("region-b").verdict.status == "unknown"


def test_alarm_marks_region_suspect_and_asks_for_a_round_now() -> None:
    """By default an alarm does not fail the region; it asks for an immediate, faster round."""
    spec = region_spec(interval_s=10)
    state = advance(initial_state(spec.region), observe(spec, T0, 0), spec)
    assert next_probe_at(state, spec) == T0 + 10
    fired = Observation(spec.region, T0 + 3, alarms=(alarm("db-down", "ALARM", T0 + 2),))
    state = advance(state, fired, spec)
    assert state.verdict.status == "healthy" and state.verdict.suspect
    assert "suspect, alarm in ALARM: db-down" in state.verdict.reason
    assert next_probe_at(state, spec) == T0 + 3  # at once
    state = advance(state, observe(spec, T0 + 3, 0), spec)
    assert next_probe_at(state, spec) == T0 + 3 + spec.effective_suspect_interval_s


def test_alarm_alone_never_fails_region_by_default() -> None:
    """An alarm firing for an hour with healthy probes never yields failed (needs probes)."""
    spec = region_spec(fail_after_s=180)
    state = initial_state(spec.region)
    state = advance(state, Observation(spec.region, T0, alarms=(alarm("a", "ALARM", T0),)), spec)
    for i in range(360):
        state = advance(state, observe(spec, T0 + i * 10, 0), spec)
    assert state.verdict.status == "healthy" and state.verdict.suspect


def test_alarm_alone_may_fail_region_when_policy_allows() -> None:
    """With ``alarm_may_trigger_alone`` a firing alarm fails the region after N, probes healthy."""
    spec = region_spec(fail_after_s=180, interval_s=10)
    policy = HealthPolicy(alarm_may_trigger_alone=True)
    state = advance(initial_state(spec.region), observe(spec, T0, 0), spec, policy)
    fired = Observation(spec.region, T0 + 5, alarms=(alarm("a", "ALARM", T0 + 4),))
    state = advance(state, fired, spec, policy)
    statuses = []
    for i in range(1, 20):
        state = advance(state, observe(spec, T0 + 5 + i * 10, 0), spec, policy)
        statuses.append((i * 10, state.verdict.status))
    assert dict(statuses)[170] == "degraded" and dict(statuses)[180] == "failed"
    cleared = Observation(spec.region, T0 + 200, alarms=(alarm("a", "OK", T0 + 199),))
    assert advance(state, cleared, spec, policy).verdict.status == "healthy"


def test_stale_alarm_notification_counts_from_receipt() -> None:
    """An ALARM whose StateChangeTime is an hour old still needs N from when drorch saw it."""
    spec = region_spec(fail_after_s=180, interval_s=10)
    policy = HealthPolicy(alarm_may_trigger_alone=True)
    state = advance(initial_state(spec.region), observe(spec, T0, 0), spec, policy)
    old = Observation(spec.region, T0 + 1, alarms=(alarm("a", "ALARM", T0 - HOUR),))
    state = advance(state, old, spec, policy)
    assert state.verdict.status == "degraded" and state.verdict.failing_since == T0 + 1


def test_late_older_alarm_notification_is_ignored() -> None:
    """An ALARM delivered after a newer OK for the same alarm (SQS reorders) is dropped."""
    spec = region_spec()
    state = advance(initial_state(spec.region), observe(spec, T0, 0), spec)
    both = (alarm("a", "OK", T0 + 20), alarm("a", "ALARM", T0 + 10))
    state = advance(state, Observation(spec.region, T0 + 30, alarms=both[:1]), spec)
    state = advance(state, Observation(spec.region, T0 + 31, alarms=both[1:]), spec)
    assert not state.verdict.suspect


def test_fmt_duration() -> None:
    """Durations read like a human would write them."""
    assert [fmt_duration(s) for s in (2.5, 45, 60, 130, 180, 3725)] == [
        "2.5s", "45s", "1m", "2m10s", "3m", "1h2m5s",
    ]
