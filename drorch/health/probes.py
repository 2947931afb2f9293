"""Run probes and whole probe rounds with hard deadlines.

``run_probe`` never raises: every outcome, including a bug in a check, becomes a
``ProbeResult`` with ``ok=False`` and a short reason. ``run_round`` runs one
region's probes concurrently, each in its own daemon thread, and returns no later
than the slowest probe's ``timeout_s`` (plus scheduling noise): a probe still
running at its deadline is reported ``timed out after Xs`` and its thread is left
behind, never joined. Each check also bounds its own I/O by the same timeout, so
abandoned threads end on their own shortly after.

Error texts are redacted of known secrets (a PostgreSQL password) before they
leave this module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from drorch.health import checks
from drorch.health.checks import CheckFailed, ClientFactory
from drorch.health.config import (
    CloudWatchAlarmProbe,
    HttpProbe,
    PostgresProbe,
    ProbeSpec,
    RegionHealth,
    Route53HealthCheckProbe,
    TcpProbe,
)

Clock = Callable[[], float]

_MAX_ERROR_LEN = 300


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome. ``at`` is the caller's clock when the probe started."""

    probe: str
    region: str
    ok: bool
    latency_s: float
    error: str | None
    at: float


def _no_clients(service: str, aws_region: str) -> object:
    raise CheckFailed(f"no AWS client factory given (needed for {service} in {aws_region})")


def _check(spec: ProbeSpec, clients: ClientFactory, aws_region: str | None) -> None:
    if isinstance(spec, HttpProbe):
        checks.check_http(spec)
    elif isinstance(spec, TcpProbe):
        checks.check_tcp(spec)
    elif isinstance(spec, PostgresProbe):
        checks.check_postgres(spec)
    elif isinstance(spec, Route53HealthCheckProbe):
        checks.check_route53_health_check(spec, clients, aws_region)
    elif isinstance(spec, CloudWatchAlarmProbe):
        checks.check_cloudwatch_alarm(spec, clients, aws_region)
    else:  # pragma: no cover - the discriminated union makes this unreachable
        raise CheckFailed(f"unknown probe kind {type(spec).__name__}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CheckFailed):
        return str(exc)
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _redact(text: str, spec: ProbeSpec) -> str:
    if isinstance(spec, PostgresProbe):
        for secret in checks.postgres_secrets(spec):
            text = text.replace(secret, "***")
    return text[:_MAX_ERROR_LEN]


def run_probe(
    spec: ProbeSpec,
    clients: ClientFactory | None = None,
    *,
    region: str = "",
    aws_region: str | None = None,
    clock: Clock = time.time,
) -> ProbeResult:
    """Run one probe in the calling thread; never raises.

    This call is bounded only by the check's own I/O timeouts; use ``run_round`` for
    a hard deadline.
    """
    at = clock()
    start = time.monotonic()
    error: str | None = None
    try:
        _check(spec, clients or _no_clients, aws_region)
    except Exception as exc:  # every failure is an observation, not a crash
        error = _redact(_describe(exc), spec)
    return ProbeResult(spec.name, region, error is None, time.monotonic() - start, error, at)


class _Slot:
    """Where a probe thread leaves its result; read only after ``done`` is set."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: ProbeResult | None = None


def _start(
    spec: ProbeSpec, clients: ClientFactory | None, health: RegionHealth, clock: Clock
) -> _Slot:
    slot = _Slot()

    def work() -> None:
        try:
            slot.result = run_probe(
                spec, clients, region=health.region, aws_region=health.aws_region, clock=clock
            )
        finally:
            slot.done.set()

    thread = threading.Thread(
        target=work, name=f"probe-{health.region}-{spec.name}", daemon=True
    )
    thread.start()
    return slot


def run_round(
    health: RegionHealth, clients: ClientFactory | None = None, clock: Clock = time.time
) -> list[ProbeResult]:
    """Run every probe of ``health`` at once; one result per probe, in config order.

    Returns by the largest probe timeout. A probe still running at its own
    ``timeout_s`` counts as failed ("timed out after Xs"); its thread is abandoned.
    """
    at = clock()
    start = time.monotonic()
    slots = [(spec, _start(spec, clients, health, clock)) for spec in health.probes]
    results: list[ProbeResult] = []
    for spec, slot in slots:
        remaining = start + spec.timeout_s - time.monotonic()
        if slot.done.wait(max(0.0, remaining)) and slot.result is not None:
            results.append(slot.result)
        else:
            results.append(
                ProbeResult(
                    probe=spec.name,
                    region=health.region,
                    ok=False,
                    latency_s=time.monotonic() - start,
                    error=f"timed out after {spec.timeout_s:g}s",
                    at=at,
                )
            )
    return results
