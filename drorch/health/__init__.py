"""Health: probes, the N-minute failure window, alarm triggers and failover guards.

One tick of a watch loop, per region::

    results = run_round(spec, clients)                       # I/O, bounded
    state = advance(state, Observation(region, now, tuple(results), alarms), spec, policy)
    decision = decide_failover(primary_state.verdict, secondary_state.verdict,
                               lag_bytes, machine_busy, policy)

Everything but ``run_round``/``run_probe`` and ``AlarmQueue`` is pure.
"""

from drorch.health.alarms import (
    AlarmEvent,
    AlarmQueue,
    Received,
    parse_alarm_message,
    region_for_alarm,
)
from drorch.health.checks import ClientFactory
from drorch.health.config import (
    CloudWatchAlarmProbe,
    HealthPolicy,
    HttpProbe,
    PostgresProbe,
    ProbeSpec,
    RegionHealth,
    Route53HealthCheckProbe,
    TcpProbe,
)
from drorch.health.guards import Decision, LagReading, decide_failover
from drorch.health.probes import ProbeResult, run_probe, run_round
from drorch.health.window import (
    Observation,
    Verdict,
    WindowState,
    advance,
    fmt_duration,
    initial_state,
    next_probe_at,
)

__all__ = [
    "AlarmEvent",
    "AlarmQueue",
    "Received",
    "ClientFactory",
    "CloudWatchAlarmProbe",
    "Decision",
    "LagReading",
    "HealthPolicy",
    "HttpProbe",
    "Observation",
    "PostgresProbe",
    "ProbeResult",
    "ProbeSpec",
    "RegionHealth",
    "Route53HealthCheckProbe",
    "TcpProbe",
    "Verdict",
    "WindowState",
    "advance",
    "decide_failover",
    "fmt_duration",
    "initial_state",
    "next_probe_at",
    "parse_alarm_message",
    "region_for_alarm",
    "run_probe",
    "run_round",
]
