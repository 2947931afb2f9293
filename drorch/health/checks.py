"""One check per probe kind: touch the endpoint once, say whether it is healthy.

Each ``check_*`` returns ``None`` when healthy and raises ``CheckFailed`` (or any
exception) with a short human reason otherwise. Each bounds its own I/O by the
probe's ``timeout_s`` where the library allows it; ``probes.run_round`` adds a hard
deadline on top, because no library timeout bounds every way an endpoint can hang.
Nothing here retries: one failed check is one failed observation, and the window
decides what it means. No check writes anything.

AWS checks use the client factory they are given (``clients(service, aws_region)``);
the factory should set short botocore timeouts and ``retries={"max_attempts": 1}``.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from drorch.health.config import (
    CloudWatchAlarmProbe,
    HttpProbe,
    PostgresProbe,
    Route53HealthCheckProbe,
    TcpProbe,
)

ClientFactory = Callable[[str, str], Any]
"""``clients(service, aws_region) -> boto3 client``; supplied by the caller."""

DEFAULT_ROUTE53_REGION = "us-east-1"


class CheckFailed(Exception):
    """The endpoint answered, and the answer means unhealthy."""


def check_http(spec: HttpProbe) -> None:
    with httpx.Client(timeout=spec.timeout_s, trust_env=False, follow_redirects=False) as c:
        resp = c.get(spec.url)
        if resp.status_code != spec.expect_status:
            raise CheckFailed(f"HTTP {resp.status_code}, expected {spec.expect_status}")
        if spec.body_contains is not None and spec.body_contains not in resp.text:
            raise CheckFailed(f"body does not contain {spec.body_contains!r}")


def check_tcp(spec: TcpProbe) -> None:
    with socket.create_connection((spec.host, spec.port), timeout=spec.timeout_s):
        pass


def postgres_conninfo(spec: PostgresProbe) -> str:
    """The probe's conninfo with the three timeouts that together bound a hung server."""
    from psycopg.conninfo import make_conninfo

    ms = max(1, int(spec.timeout_s * 1000))
    timeouts: dict[str, Any] = {
        # libpq takes whole seconds and enforces at least 2 s (measured with libpq 18):
        # the hard deadline in run_round is what holds a sub-second timeout.
        "connect_timeout": max(1, math.ceil(spec.timeout_s)),
        "tcp_user_timeout": ms,
        "options": f"-c statement_timeout={ms}",
        "application_name": "drorch-probe",
    }
    if spec.dsn is not None:
        return make_conninfo(spec.dsn, **timeouts)
    password = os.environ.get(spec.password_env) if spec.password_env else None
    return make_conninfo(
        host=spec.host, port=spec.port, dbname=spec.dbname, user=spec.user,
        **({"password": password} if password else {}), **timeouts,
    )


def postgres_secrets(spec: PostgresProbe) -> list[str]:
    """Strings that must never appear in a probe error (passwords)."""
    from psycopg.conninfo import conninfo_to_dict

    found: list[str] = []
    if spec.dsn is not None:
        try:
            pw = conninfo_to_dict(spec.dsn).get("password")
        except Exception:  # an unparsable dsn: redact the whole thing
            pw = spec.dsn
        if pw:
            found.append(str(pw))
    if spec.password_env and os.environ.get(spec.password_env):
        found.append(os.environ[spec.password_env])
    return found


def check_postgres(spec: PostgresProbe) -> None:
    import psycopg

    with psycopg.connect(postgres_conninfo(spec), autocommit=True) as conn:
        row = conn.execute("SELECT 1").fetchone()
        if row is None or row[0] != 1:
            raise CheckFailed(f"SELECT 1 returned {row!r}")


def healthy_share(observations: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(healthy, total) among Route 53 checker observations.

    A checker is healthy when its ``StatusReport.Status`` starts with ``Success``
    (AWS writes e.g. ``"Success: HTTP Status Code 200, OK"`` / ``"Failure: ..."``).
    """
    total = healthy = 0
    for obs in observations:
        total += 1
        status = str(obs.get("StatusReport", {}).get("Status", ""))
        if status.startswith("Success"):
            healthy += 1
    return healthy, total


def check_route53_health_check(
    spec: Route53HealthCheckProbe, clients: ClientFactory, aws_region: str | None
) -> None:
    region = spec.aws_region or aws_region or DEFAULT_ROUTE53_REGION
    client = clients("route53", region)
    resp = client.get_health_check_status(HealthCheckId=spec.health_check_id)
    healthy, total = healthy_share(resp.get("HealthCheckObservations", []))
    if total == 0:
        raise CheckFailed(f"health check {spec.health_check_id}: no checker observations")
    if healthy / total < spec.min_healthy_share:
        raise CheckFailed(
            f"health check {spec.health_check_id}: {healthy}/{total} checkers healthy, "
            f"need {spec.min_healthy_share:.0%}"
        )


def check_cloudwatch_alarm(
    spec: CloudWatchAlarmProbe, clients: ClientFactory, aws_region: str | None
) -> None:
    region = spec.aws_region or aws_region
    if region is None:
        raise CheckFailed("no AWS region for the alarm (set aws_region on the probe or region)")
    resp = clients("cloudwatch", region).describe_alarms(AlarmNames=[spec.alarm_name])
    alarms = [*resp.get("MetricAlarms", []), *resp.get("CompositeAlarms", [])]
    if not alarms:
        raise CheckFailed(f"alarm {spec.alarm_name!r} not found in {region}")
    state = alarms[0].get("StateValue")
    if state == "ALARM" or (state == "INSUFFICIENT_DATA" and spec.insufficient_data_is_failure):
        reason = alarms[0].get("StateReason") or ""
        raise CheckFailed(f"alarm {spec.alarm_name!r} is {state}: {reason}".rstrip(": "))
