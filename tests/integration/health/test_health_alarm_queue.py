"""CloudWatch alarm notifications through SNS into SQS (moto), read by ``AlarmQueue``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from drorch.health.alarms import AlarmQueue, region_for_alarm
from drorch.health.config import HealthPolicy, RegionHealth, TcpProbe
from drorch.health.window import Observation, advance, initial_state

REGION = "us-east-1"


def _alarm_json(name: str, state: str, when: str) -> str:
    """The alarm document CloudWatch publishes (its real field set)."""
    return json.dumps({
        "AlarmName": name, "AlarmDescription": None, "AWSAccountId": "123456789012",
        "AlarmConfigurationUpdatedTimestamp": "2026-11-20T09:00:00.000+0000",
        "NewStateValue": state, "NewStateReason": f"Threshold Crossed: {name}",
        "StateChangeTime": when, "Region": "US East (N. Virginia)",
        "AlarmArn": f"arn:aws:cloudwatch:{REGION}:123456789012:alarm:{name}",
        "OldStateValue": "OK" if state == "ALARM" else "ALARM",
        "OKActions": [], "AlarmActions": [], "InsufficientDataActions": [],
        "Trigger": {"MetricName": "HealthCheckStatus", "Namespace": "AWS/Route53",
                    "Dimensions": [{"value": "hc-1", "name": "HealthCheckId"}],
                    "Period": 60, "EvaluationPeriods": 3, "Threshold": 1.0,
                    "ComparisonOperator": "LessThanThreshold"},
    })


@pytest.fixture
def wiring() -> Iterator[dict[str, Any]]:
    """A topic with two queues: one default (SNS envelope), one with raw delivery."""
    with mock_aws():
        sns = boto3.client("sns", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        topic = sns.create_topic(Name="drorch-alarms")["TopicArn"]
        urls = {}
        for name, raw in (("enveloped", False), ("raw", True)):
            url = sqs.create_queue(QueueName=f"drorch-{name}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            sub = sns.subscribe(TopicArn=topic, Protocol="sqs",
                                Endpoint=arn["Attributes"]["QueueArn"])
            if raw:
                sns.set_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"],
                                                AttributeName="RawMessageDelivery",
                                                AttributeValue="true")
            urls[name] = url
        yield {"sns": sns, "sqs": sqs, "topic": topic, **urls}


def _publish(w: dict[str, Any], name: str, state: str, when: str) -> None:
    w["sns"].publish(TopicArn=w["topic"], Subject=f'{state}: "{name}" in US East (N. Virginia)',
                     Message=_alarm_json(name, state, when))


def test_poll_reads_enveloped_alarm_and_deletes_it(wiring: dict[str, Any]) -> None:
    """An alarm published to SNS arrives as an event once, then the queue is empty."""
    _publish(wiring, "region-a-db", "ALARM", "2026-11-22T10:05:00.000+0000")
    queue = AlarmQueue(wiring["sqs"], wiring["enveloped"])
    events = queue.poll()
    assert [(e.alarm_name, e.state, e.aws_region) for e in events] == [
        ("region-a-db", "ALARM", "us-east-1")
    ]
    assert events[0].message_id is not None  # came through the SNS envelope
    assert queue.poll() == []


def test_received_alarm_comes_back_until_acknowledged(wiring: dict[str, Any]) -> None:
    """``receive`` leaves the message in flight: a reader killed before ``ack`` reads the
    same alarm again after the visibility timeout; once acknowledged it is gone."""
    wiring["sqs"].set_queue_attributes(QueueUrl=wiring["enveloped"],
                                       Attributes={"VisibilityTimeout": "1"})
    _publish(wiring, "region-a-db", "ALARM", "2026-11-22T10:05:00.000+0000")
    queue = AlarmQueue(wiring["sqs"], wiring["enveloped"])
    first = queue.receive()
    assert [e.alarm_name for e in first.events] == ["region-a-db"]
    assert queue.receive().receipts == ()  # in flight: invisible to other readers
    time.sleep(1.3)
    again = queue.receive()
    assert [(e.alarm_name, e.message_id) for e in again.events] == [
        ("region-a-db", first.events[0].message_id)]
    queue.ack(again)
    time.sleep(1.3)
    assert queue.receive().receipts == ()


def test_more_than_ten_messages_are_all_acknowledged(wiring: dict[str, Any]) -> None:
    """SQS deletes at most ten per request: ``poll`` of 23 leaves the queue empty."""
    for minute in range(23):
        _publish(wiring, f"a{minute:02d}", "ALARM", f"2026-11-22T10:{minute:02d}:00.000+0000")
    assert len(AlarmQueue(wiring["sqs"], wiring["enveloped"]).poll(max_messages=30)) == 23
    attrs = wiring["sqs"].get_queue_attributes(
        QueueUrl=wiring["enveloped"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert set(attrs.values()) == {"0"}


def test_poll_reads_raw_delivery(wiring: dict[str, Any]) -> None:
    """With raw message delivery the body is the alarm itself and parses the same way."""
    _publish(wiring, "region-a-db", "OK", "2026-11-22T10:09:00.000+0000")
    events = AlarmQueue(wiring["sqs"], wiring["raw"]).poll()
    assert [(e.alarm_name, e.state, e.message_id) for e in events] == [("region-a-db", "OK", None)]


def test_foreign_messages_are_consumed_and_skipped(wiring: dict[str, Any]) -> None:
    """A message that is not an alarm is deleted (no poison loop) and not returned."""
    wiring["sns"].publish(TopicArn=wiring["topic"], Message="deploy finished")
    _publish(wiring, "region-a-db", "ALARM", "2026-11-22T10:05:00.000+0000")
    queue = AlarmQueue(wiring["sqs"], wiring["enveloped"])
    assert [e.alarm_name for e in queue.poll(max_messages=25)] == ["region-a-db"]
    attrs = wiring["sqs"].get_queue_attributes(
        QueueUrl=wiring["enveloped"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attrs == {"ApproximateNumberOfMessages": "0",
                     "ApproximateNumberOfMessagesNotVisible": "0"}


def test_many_alarms_come_back_oldest_first(wiring: dict[str, Any]) -> None:
    """More than one receive batch is read when asked, ordered by state change time."""
    for minute in reversed(range(12)):
        _publish(wiring, f"a{minute:02d}", "ALARM", f"2026-11-22T10:{minute:02d}:00.000+0000")
    events = AlarmQueue(wiring["sqs"], wiring["enveloped"]).poll(max_messages=20)
    assert [e.alarm_name for e in events] == [f"a{m:02d}" for m in range(12)]


def test_queued_alarm_makes_region_suspect(wiring: dict[str, Any]) -> None:
    """An alarm read from the queue maps to its region and marks it suspect in the window."""
    spec = RegionHealth(region="region-a", aws_region=REGION,
                        probes=[TcpProbe(name="t", host="127.0.0.1", port=1)],
                        quorum=1, fail_after_s=60, interval_s=10)
    policy = HealthPolicy(regions=[spec])
    _publish(wiring, "region-a-db", "ALARM", "2026-11-22T10:05:00.000+0000")
    (event,) = AlarmQueue(wiring["sqs"], wiring["enveloped"]).poll()
    assert region_for_alarm(event, policy) == "region-a"
    state = advance(initial_state("region-a"),
                    Observation("region-a", 1_000.0, alarms=(event,)), spec, policy)
    assert state.verdict.alarms == ("region-a-db",)
