"""Parsing CloudWatch alarm notifications as SQS delivers them, and mapping them to regions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from drorch.health.alarms import parse_alarm_message, region_for_alarm
from drorch.health.config import CloudWatchAlarmProbe, HealthPolicy, RegionHealth, TcpProbe

# The shape CloudWatch publishes to SNS (documented alarm notification format).
ALARM = {
    "AlarmName": "region-a-db-unreachable",
    "AlarmDescription": "Primary database not answering",
    "AWSAccountId": "123456789012",
    "AlarmConfigurationUpdatedTimestamp": "2026-11-20T09:00:00.000+0000",
    "NewStateValue": "ALARM",
    "NewStateReason": "Threshold Crossed: 3 out of the last 3 datapoints [0.0 (22/11/26 10:02:00)]"
    " were less than the threshold (1.0).",
    "StateChangeTime": "2026-11-22T10:05:00.123+0000",
    "Region": "US East (N. Virginia)",
    "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:region-a-db-unreachable",
    "OldStateValue": "OK",
    "OKActions": [],
    "AlarmActions": ["arn:aws:sns:us-east-1:123456789012:drorch-alarms"],
    "InsufficientDataActions": [],
    "Trigger": {
        "MetricName": "HealthCheckStatus",
        "Namespace": "AWS/Route53",
        "StatisticType": "Statistic",
        "Statistic": "MINIMUM",
        "Unit": None,
        "Dimensions": [{"value": "hc-1234", "name": "HealthCheckId"}],
        "Period": 60,
        "EvaluationPeriods": 3,
        "ComparisonOperator": "LessThanThreshold",
        "Threshold": 1.0,
        "TreatMissingData": "missing",
        "EvaluateLowSampleCountPercentile": "",
    },
}

ENVELOPE = {
    "Type": "Notification",
    "MessageId": "5e8c9f4a-1b2c-5d3e-9f00-0123456789ab",
    "TopicArn": "arn:aws:sns:us-east-1:123456789012:drorch-alarms",
    "Subject": 'ALARM: "region-a-db-unreachable" in US East (N. Virginia)',
    "Message": json.dumps(ALARM),
    "Timestamp": "2026-11-22T10:05:00.456Z",
    "SignatureVersion": "1",
    "Signature": "EXAMPLE==",
    "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
    "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&x=y",
}


def test_parses_real_sns_envelope() -> None:
    """The SNS envelope's Message string is unpacked into an alarm event."""
    ev = parse_alarm_message(json.dumps(ENVELOPE))
    assert ev is not None
    assert ev.alarm_name == "region-a-db-unreachable"
    assert ev.state == "ALARM" and ev.firing and ev.old_state == "OK"
    assert ev.reason.startswith("Threshold Crossed")
    assert ev.at == datetime(2026, 11, 22, 10, 5, 0, 123000, tzinfo=UTC).timestamp()
    assert ev.aws_region == "us-east-1"  # from the ARN, not the display name
    assert ev.region_label == "US East (N. Virginia)"
    assert ev.dimensions == (("HealthCheckId", "hc-1234"),)
    assert ev.message_id == ENVELOPE["MessageId"]


def test_parses_raw_message_delivery() -> None:
    """With raw delivery the body is the alarm JSON itself."""
    ev = parse_alarm_message(json.dumps({**ALARM, "NewStateValue": "OK"}))
    assert ev is not None and ev.state == "OK" and not ev.firing and ev.message_id is None


def test_falls_back_to_envelope_timestamp() -> None:
    """Without StateChangeTime the SNS Timestamp dates the event."""
    alarm = {k: v for k, v in ALARM.items() if k != "StateChangeTime"}
    ev = parse_alarm_message(json.dumps({**ENVELOPE, "Message": json.dumps(alarm)}))
    assert ev is not None
    assert ev.at == datetime(2026, 11, 22, 10, 5, 0, 456000, tzinfo=UTC).timestamp()


def test_non_alarm_bodies_yield_none() -> None:
    """Subscription confirmations, other notifications and garbage are not alarms."""
    confirm = {"Type": "SubscriptionConfirmation", "Message": "You have chosen to subscribe"}
    other = {**ENVELOPE, "Message": "plain text from someone else"}
    bad_state = {**ALARM, "NewStateValue": "ON_FIRE"}
    for body in (json.dumps(confirm), json.dumps(other), json.dumps(bad_state), "{", "[]", ""):
        assert parse_alarm_message(body) is None, body


def _policy(**kw: object) -> HealthPolicy:
    def region(name: str, aws: str, alarm: str | None = None) -> RegionHealth:
        probes: list = [TcpProbe(name="tcp", host="127.0.0.1", port=5432)]
        if alarm:
            probes.append(CloudWatchAlarmProbe(name="alarm", alarm_name=alarm))
        return RegionHealth(region=name, aws_region=aws, probes=probes, quorum=1,
                            fail_after_s=60, interval_s=10)

    return HealthPolicy(
        regions=[region("region-a", "us-east-1"), region("region-b", "eu-west-1", "b-alarm")],
        **kw,
    )


def test_region_mapping_order() -> None:
    """Explicit mapping wins, then a region's alarm probe, then the ARN's AWS region."""
    ev = parse_alarm_message(json.dumps(ENVELOPE))
    assert ev is not None
    assert region_for_alarm(ev, _policy()) == "region-a"
    mapped = _policy(alarm_regions={"region-a-db-unreachable": "region-b"})
    assert region_for_alarm(ev, mapped) == "region-b"
    probe_named = ev.__class__(**{**ev.__dict__, "alarm_name": "b-alarm"})
    assert region_for_alarm(probe_named, _policy()) == "region-b"
    elsewhere = ev.__class__(**{**ev.__dict__, "aws_region": "ap-south-1"})
    assert region_for_alarm(elsewhere, _policy()) is None
