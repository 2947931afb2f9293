"""Route 53 health check and CloudWatch alarm probes against moto (in-process AWS)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from drorch.health.config import CloudWatchAlarmProbe, RegionHealth, Route53HealthCheckProbe
from drorch.health.probes import run_probe, run_round

_CFG = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2)


def _clients(service: str, aws_region: str) -> Any:
    return boto3.client(service, region_name=aws_region, config=_CFG)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        yield


def _alarm(name: str, aws_region: str) -> None:
    _clients("cloudwatch", aws_region).put_metric_alarm(
        AlarmName=name, MetricName="HealthCheckStatus", Namespace="AWS/Route53",
        Statistic="Minimum", Period=60, EvaluationPeriods=3, Threshold=1.0,
        ComparisonOperator="LessThanThreshold",
    )


def _set_state(name: str, aws_region: str, state: str) -> None:
    _clients("cloudwatch", aws_region).set_alarm_state(
        AlarmName=name, StateValue=state, StateReason=f"test set {state}"
    )


def test_route53_health_check_status(aws: None) -> None:
    """A health check whose checkers report success is healthy; an unknown id fails."""
    hc = _clients("route53", "us-east-1").create_health_check(
        CallerReference="region-a-app",
        HealthCheckConfig={"IPAddress": "127.0.0.1", "Port": 80, "Type": "HTTP",
                           "ResourcePath": "/health"},
    )["HealthCheck"]["Id"]
    ok = run_probe(Route53HealthCheckProbe(name="r53", health_check_id=hc), _clients)
    assert ok.ok, ok.error
    missing = run_probe(Route53HealthCheckProbe(name="r53", health_check_id="nope"), _clients)
    assert not missing.ok and "NoSuchHealthCheck" in (missing.error or "")


def test_cloudwatch_alarm_state_drives_probe(aws: None) -> None:
    """ALARM fails the probe with the alarm's reason; OK passes; unknown alarm fails."""
    _alarm("db-down", "eu-west-1")
    spec = CloudWatchAlarmProbe(name="cw", alarm_name="db-down")
    _set_state("db-down", "eu-west-1", "ALARM")
    firing = run_probe(spec, _clients, aws_region="eu-west-1")
    assert not firing.ok and firing.error == "alarm 'db-down' is ALARM: test set ALARM"
    _set_state("db-down", "eu-west-1", "OK")
    assert run_probe(spec, _clients, aws_region="eu-west-1").ok
    elsewhere = run_probe(spec, _clients, aws_region="us-east-1")
    assert not elsewhere.ok and "not found in us-east-1" in (elsewhere.error or "")


def test_insufficient_data_fails_only_when_asked(aws: None) -> None:
    """INSUFFICIENT_DATA (metric stopped arriving) is a failure only if the probe says so."""
    _alarm("app-5xx", "us-east-1")
    _set_state("app-5xx", "us-east-1", "INSUFFICIENT_DATA")
    lenient = CloudWatchAlarmProbe(name="cw", alarm_name="app-5xx", aws_region="us-east-1")
    strict = lenient.model_copy(update={"insufficient_data_is_failure": True})
    assert run_probe(lenient, _clients).ok
    assert not run_probe(strict, _clients).ok


def test_round_uses_region_aws_region_for_aws_probes(aws: None) -> None:
    """A round passes the region's AWS region to probes that do not name one."""
    _alarm("db-down", "eu-west-1")
    _set_state("db-down", "eu-west-1", "ALARM")
    hc = _clients("route53", "us-east-1").create_health_check(
        CallerReference="b", HealthCheckConfig={"IPAddress": "127.0.0.1", "Port": 80,
                                                "Type": "TCP"},
    )["HealthCheck"]["Id"]
    spec = RegionHealth(
        region="region-b", aws_region="eu-west-1",
        probes=[CloudWatchAlarmProbe(name="cw", alarm_name="db-down"),
                Route53HealthCheckProbe(name="r53", health_check_id=hc)],
        quorum=1, fail_after_s=60, interval_s=10,
    )
    cw, r53 = run_round(spec, _clients)
    assert (cw.ok, r53.ok) == (False, True)
