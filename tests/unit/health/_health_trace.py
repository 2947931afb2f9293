"""Helpers that build observation traces for replaying the window with a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from drorch.health.alarms import AlarmEvent
from drorch.health.config import HealthPolicy, RegionHealth, TcpProbe
from drorch.health.probes import ProbeResult
from drorch.health.window import Observation, Verdict, WindowState, advance, initial_state


def region_spec(
    region: str = "region-a",
    probes: int = 3,
    quorum: int = 2,
    fail_after_s: float = 180,
    interval_s: float = 10,
    healthy_rounds_to_reset: int = 1,
) -> RegionHealth:
    return RegionHealth(
        region=region,
        aws_region="us-east-1" if region == "region-a" else "eu-west-1",
        probes=[TcpProbe(name=f"p{i}", host="127.0.0.1", port=1, timeout_s=1)
                for i in range(probes)],
        quorum=quorum,
        fail_after_s=fail_after_s,
        interval_s=interval_s,
        healthy_rounds_to_reset=healthy_rounds_to_reset,
    )


def observe(spec: RegionHealth, at: float, down: set[str] | int = 0,
            alarms: tuple[AlarmEvent, ...] = ()) -> Observation:
    """A probe round at ``at`` where ``down`` (names, or the first N probes) failed."""
    names = [p.name for p in spec.probes]
    failed = set(names[:down]) if isinstance(down, int) else down
    results = tuple(
        ProbeResult(n, spec.region, n not in failed, 0.01,
                    "refused" if n in failed else None, at)
        for n in names
    )
    return Observation(spec.region, at, results, alarms)


def replay(
    spec: RegionHealth,
    seconds: float,
    down_at: Callable[[float], set[str] | int],
    policy: HealthPolicy | None = None,
    start: float = 1_000_000.0,
) -> Iterator[tuple[float, Verdict, WindowState]]:
    """One round every ``spec.interval_s`` for ``seconds``; ``down_at(t)`` says what fails."""
    state = initial_state(spec.region)
    t = 0.0
    while t <= seconds:
        obs = observe(spec, start + t, down_at(t))
        state = advance(state, obs, spec, policy or HealthPolicy())
        yield t, state.verdict, state
        t += spec.interval_s


def alarm(name: str, state: str, at: float, region: str = "us-east-1") -> AlarmEvent:
    return AlarmEvent(
        alarm_name=name, state=state, old_state=None, reason=f"{name} went {state}", at=at,
        aws_region=region, region_label=None,
    )
