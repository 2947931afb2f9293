"""Failover guards: act only on a failed primary with a healthy, caught-up secondary."""

from __future__ import annotations

from drorch.health.config import HealthPolicy
from drorch.health.guards import LagReading, decide_failover
from drorch.health.window import Verdict, WindowState, advance, initial_state
from tests.unit.health._health_trace import observe, region_spec

T0 = 1_000_000.0
POLICY = HealthPolicy(max_replica_lag_bytes=16 * 1024 * 1024)


def _state(region: str, down: int, seconds: float = 300) -> WindowState:
    spec = region_spec(region=region, fail_after_s=180, interval_s=10)
    state = initial_state(region)
    t = 0.0
    while t <= seconds:
        state = advance(state, observe(spec, T0 + t, down), spec)
        t += 10
    return state


def _failed() -> Verdict:
    verdict = _state("region-a", 3).verdict
    assert verdict.failed
    return verdict


def test_failover_when_primary_failed_and_secondary_healthy() -> None:
    """A failed primary, a healthy secondary and a small lag: fail over, saying why."""
    d = decide_failover(_failed(), _state("region-b", 0).verdict, 4096, False, POLICY)
    assert d.action == "failover" and d.guard is None
    assert "region-a failed" in d.reason and "region-b healthy" in d.reason
    assert "4.0 KiB" in d.reason


def test_secondary_down_refuses() -> None:
    """No automatic failover into a secondary that is itself failing."""
    d = decide_failover(_failed(), _state("region-b", 3).verdict, 0, False, POLICY)
    assert d.action == "refuse" and d.guard == "secondary_unhealthy"
    assert "secondary unhealthy: region-b failed" in d.reason


def test_secondary_degraded_refuses() -> None:
    """A secondary that is only degraded is not healthy enough either."""
    d = decide_failover(_failed(), _state("region-b", 3, seconds=30).verdict, 0, False, POLICY)
    assert d.action == "refuse" and d.guard == "secondary_unhealthy"


def test_secondary_never_observed_refuses() -> None:
    """A secondary without any probe round is not assumed healthy."""
    d = decide_failover(_failed(), initial_state("region-b").verdict, 0, False, POLICY)
    assert d.action == "refuse" and d.guard == "secondary_unknown"
    assert decide_failover(_failed(), None, 0, False, POLICY).guard == "secondary_unknown"


def test_replica_lag_over_limit_refuses() -> None:
    """A lag above the runbook's limit refuses and names both figures."""
    d = decide_failover(_failed(), _state("region-b", 0).verdict, 64 << 20, False, POLICY)
    assert d.action == "refuse" and d.guard == "replica_lag"
    assert "64.0 MiB is over the limit of 16.0 MiB" in d.reason


def test_replica_lag_unknown_refuses_unless_policy_allows() -> None:
    """An unknown lag with a limit set refuses, unless the runbook accepts it."""
    secondary = _state("region-b", 0).verdict
    assert decide_failover(_failed(), secondary, None, False, POLICY).guard == (
        "replica_lag_unknown"
    )
    lenient = POLICY.model_copy(update={"refuse_on_unknown_lag": False})
    assert decide_failover(_failed(), secondary, None, False, lenient).action == "failover"


def test_last_lag_read_before_the_failure_stands_in_for_an_unknown_one() -> None:
    """A dead primary has no lag now: the reading taken just before its count began
    decides instead, within the limit (fail over, saying so) or over it (refuse)."""
    secondary = _state("region-b", 0).verdict
    close = decide_failover(_failed(), secondary, None, False, POLICY, LagReading(2048, 0.8))
    assert close.action == "failover"
    assert "replica lag unknown now, 2.0 KiB within 16.0 MiB when last read 0.8s before " \
           "the failure began" in close.reason
    far = decide_failover(_failed(), secondary, None, False, POLICY, LagReading(64 << 20, 0.8))
    assert far.action == "refuse" and far.guard == "replica_lag"
    assert "64.0 MiB when last read 0.8s before the failure began" in far.reason
    now = decide_failover(_failed(), secondary, 4096, False, POLICY, LagReading(64 << 20, 1))
    assert now.action == "failover"  # a lag read now wins over an older reading


def test_failover_already_running_refuses() -> None:
    """A failover already running or done is never started twice."""
    d = decide_failover(_failed(), _state("region-b", 0).verdict, 0, True, POLICY)
    assert d.action == "refuse" and d.guard == "already_failing_over"


def test_degraded_primary_waits_and_healthy_primary_does_nothing() -> None:
    """Degraded means wait for the window; healthy or unobserved means nothing to do."""
    secondary = _state("region-b", 0).verdict
    degraded = _state("region-a", 3, seconds=60).verdict
    assert decide_failover(degraded, secondary, 0, False, POLICY).action == "wait"
    healthy = _state("region-a", 0).verdict
    assert decide_failover(healthy, secondary, 0, False, POLICY).action == "none"
    unknown = initial_state("region-a").verdict
    assert decide_failover(unknown, secondary, 0, False, POLICY).action == "none"
