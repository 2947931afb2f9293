"""The lab's alarm chain in moto: Route 53 health checks -> CloudWatch alarms -> SNS ->
SQS, as ``terraform/modules/alarms`` builds it, and the notifications the lab publishes
in CloudWatch's place, read back by drorch's own parser."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drorch.adapters.aws import AwsClients
from drorch.config import Runbook, load_runbook
from drorch.health.alarms import AlarmQueue, parse_alarm_message, region_for_alarm
from drorch.lab import alarms
from drorch.lab import lab as lab_mod
from drorch.watch import health_specs
from tests.conftest import LAB_RUNBOOK

A_ALARM, B_ALARM = "drorch-lab-region-a-unhealthy", "drorch-lab-region-b-unhealthy"


@pytest.fixture
def chain(worker_moto: tuple[int, Path],
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Runbook, AwsClients]]:
    """The lab runbook's zone and alarm chain made in the worker's moto (wiped first)."""
    port = worker_moto[0]
    httpx.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10).raise_for_status()
    monkeypatch.setenv("DRORCH_LAB_MOTO_PORT", str(port))
    runbook = load_runbook(LAB_RUNBOOK)
    aws = AwsClients(runbook.aws.endpoint_url)
    lab_mod._create_zone(runbook, aws)
    yield runbook, aws


def _drain(runbook: Runbook, aws: AwsClients) -> list[dict[str, Any]]:
    chain = alarms.chain_for(runbook)
    assert chain is not None
    sqs = aws("sqs", chain.queue_region)
    received = sqs.receive_message(QueueUrl=chain.queue_url, MaxNumberOfMessages=10)
    messages = received.get("Messages", [])
    for m in messages:
        sqs.delete_message(QueueUrl=chain.queue_url, ReceiptHandle=m["ReceiptHandle"])
    return [json.loads(m["Body"]) for m in messages]


def test_lab_up_builds_the_chain_terraform_builds(chain: tuple[Runbook, AwsClients]) -> None:
    """Each region's weighted record carries its health check; each alarm watches that
    check's HealthCheckStatus and notifies the topic, which delivers to the queue the
    runbook's watcher reads; the new alarms' move to OK was notified."""
    runbook, aws = chain
    r53 = aws("route53", "us-east-1")
    zone = r53.list_hosted_zones_by_name(DNSName="lab.drorch.test.")["HostedZones"][0]["Id"]
    records = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    checks = {r["SetIdentifier"]: r["HealthCheckId"] for r in records if "SetIdentifier" in r}
    assert set(checks) == {"region-a", "region-b"}
    cw = aws("cloudwatch", "us-east-1")
    found = {a["AlarmName"]: a for a in cw.describe_alarms()["MetricAlarms"]}
    assert set(found) == {A_ALARM, B_ALARM}
    topic = aws("sns", "us-east-1").list_topics()["Topics"][0]["TopicArn"]
    for name, region in ((A_ALARM, "region-a"), (B_ALARM, "region-b")):
        a = found[name]
        assert (a["Namespace"], a["MetricName"], a["ComparisonOperator"]) == (
            "AWS/Route53", "HealthCheckStatus", "LessThanThreshold")
        assert a["Dimensions"] == [{"Name": "HealthCheckId", "Value": checks[region]}]
        assert a["AlarmActions"] == a["OKActions"] == [topic]
        assert a["StateValue"] == "OK"
    notes = _drain(runbook, aws)
    assert sorted(json.loads(n["Message"])["AlarmName"] for n in notes) == [A_ALARM, B_ALARM]
    assert {json.loads(n["Message"])["OldStateValue"] for n in notes} == {"INSUFFICIENT_DATA"}


def test_a_fired_alarm_reaches_the_queue_as_cloudwatch_sends_it(
        chain: tuple[Runbook, AwsClients]) -> None:
    """``notify`` sets the alarm and publishes CloudWatch's document through SNS: drorch's
    parser reads it as region-a's alarm (by ``alarm_regions``: both alarms' ARNs name
    us-east-1), with the health check as its dimension; the same state again sends
    nothing; OK clears it."""
    runbook, aws = chain
    _drain(runbook, aws)
    assert alarms.notify(runbook, aws, "region-a", "ALARM") == [f"alarm {A_ALARM} OK -> ALARM"]
    assert alarms.notify(runbook, aws, "region-a", "ALARM") == []
    (note,) = _drain(runbook, aws)
    assert note["Type"] == "Notification"
    assert note["Subject"] == f'ALARM: "{A_ALARM}" in US East (N. Virginia)'
    doc = json.loads(note["Message"])
    assert {"AlarmName", "AlarmDescription", "AWSAccountId", "NewStateValue", "NewStateReason",
            "StateChangeTime", "Region", "AlarmArn", "OldStateValue", "Trigger"} <= set(doc)
    assert doc["Region"] == "US East (N. Virginia)"
    assert doc["NewStateReason"].startswith("Threshold Crossed: 2 out of the last 2 datapoints")
    assert doc["Trigger"]["Dimensions"][0]["name"] == "HealthCheckId"
    event = parse_alarm_message(json.dumps(note))
    assert event is not None and event.firing and event.old_state == "OK"
    assert event.aws_region == "us-east-1" and event.at is not None
    policy, _specs = health_specs(runbook)
    assert region_for_alarm(event, policy) == "region-a"
    state = aws("cloudwatch", "us-east-1").describe_alarms(AlarmNames=[A_ALARM])
    assert state["MetricAlarms"][0]["StateValue"] == "ALARM"

    assert alarms.notify(runbook, aws, "region-a", "OK") == [f"alarm {A_ALARM} ALARM -> OK"]
    chain_ = alarms.chain_for(runbook)
    assert chain_ is not None
    queue = AlarmQueue(aws("sqs", chain_.queue_region), chain_.queue_url)
    (cleared,) = queue.poll()
    assert (cleared.alarm_name, cleared.state, cleared.old_state) == (A_ALARM, "OK", "ALARM")
