"""The lab's alarm chain: Route 53 health checks -> CloudWatch alarms -> SNS -> SQS.

The same chain ``terraform/modules/alarms`` and ``route53-failover`` build, made in
the lab's moto server by ``drorch lab up`` from the runbook's health section:

- the queue named by ``health.alarm_queue_url`` (its last path element; its AWS region
  from the URL, else us-east-1), and an SNS topic of the same name in us-east-1
  subscribed to it (SNS envelope, no raw delivery: what the module sets);
- per entry of ``health.alarm_regions`` (alarm name -> drorch region): an HTTP Route 53
  health check of that region's app, and a CloudWatch alarm on its
  ``AWS/Route53 HealthCheckStatus`` (Minimum < 1, missing data breaching) whose
  ``AlarmActions`` and ``OKActions`` are the topic. Route 53 publishes that metric only
  in us-east-1, so the alarms and topic live there, as in the Terraform.

moto probes nothing and runs no alarm actions (``../shared/FINDINGS.md``), so
``notify`` plays CloudWatch's part: ``SetAlarmState``, then the notification CloudWatch
sends to each SNS action of the new state, shaped as CloudWatch shapes it (AlarmName,
AlarmDescription, AWSAccountId, NewStateValue, NewStateReason, StateChangeTime, Region as
a display name, AlarmArn, OldStateValue, Trigger with lower-case dimension keys, the
actions; Subject ``ALARM: "name" in US East (N. Virginia)``), so that
``drorch.health.alarms.parse_alarm_message`` reads the lab's alarms and AWS's alike.
Like CloudWatch, no notification is sent when the state does not change.
Shape: "Using Amazon CloudWatch alarms" > "Alarm events and Amazon SNS notifications"
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/AlarmThatSendsEmail.html).

Lab only: nothing outside ``drorch.lab`` imports this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

from drorch.config import Runbook
from drorch.watch_state import sqs_region

ALARM_REGION = "us-east-1"
"""Route 53 health check metrics exist only in US East (N. Virginia)."""

REGION_NAMES = {"us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)",
                "us-west-1": "US West (N. California)", "us-west-2": "US West (Oregon)",
                "eu-west-1": "EU (Ireland)", "eu-central-1": "EU (Frankfurt)"}
"""The display names CloudWatch writes in a notification's ``Region`` field."""

PERIOD_S, EVALUATION_PERIODS = 60, 2
"""As ``terraform/modules/alarms`` defaults: two failing minutes fire the alarm."""


@dataclass(frozen=True)
class Chain:
    """What the runbook asks the lab to build: queue, topic, and alarm -> region."""

    queue_url: str
    queue_name: str
    queue_region: str
    topic_name: str
    alarms: dict[str, str]


def chain_for(runbook: Runbook) -> Chain | None:
    """The chain the runbook's health section wires, or ``None`` when it names no alarm
    queue or no alarm (``health.alarm_regions``)."""
    health = runbook.health
    if health is None or not health.alarm_queue_url or not health.alarm_regions:
        return None
    url = health.alarm_queue_url
    name = urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise ValueError(f"health.alarm_queue_url {url!r} names no queue")
    return Chain(url, name, sqs_region(url, ALARM_REGION), name, dict(health.alarm_regions))


def alarms_of(runbook: Runbook, region: str) -> list[str]:
    """The names of the lab alarms about ``region`` (empty without a chain)."""
    chain = chain_for(runbook)
    return sorted(a for a, r in chain.alarms.items() if r == region) if chain else []


def create(runbook: Runbook, aws: Any, addresses: dict[str, str]) -> dict[str, str]:
    """Build the chain in moto; returns region -> Route 53 health check id (for the
    weighted records). ``addresses``: each region's app address. Not idempotent: a
    fresh (reset) moto is assumed, as ``lab up`` has."""
    chain = chain_for(runbook)
    if chain is None or runbook.lab is None:
        return {}
    sqs = aws("sqs", chain.queue_region)
    queue = sqs.create_queue(QueueName=chain.queue_name, Attributes={
        "VisibilityTimeout": "60", "MessageRetentionPeriod": "345600"})
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue["QueueUrl"], AttributeNames=[
        "QueueArn"])["Attributes"]["QueueArn"]
    sns = aws("sns", ALARM_REGION)
    topic = sns.create_topic(Name=chain.topic_name)["TopicArn"]
    # the queue lets only this topic send, as the module's aws_sqs_queue_policy does
    # (AWS drops SNS deliveries a queue policy does not allow; `drorch plan` checks it)
    sqs.set_queue_attributes(QueueUrl=queue["QueueUrl"], Attributes={"Policy": json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Sid": "AlarmTopicSends", "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
            "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]})})
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "false"})
    r53, cw = aws("route53", "us-east-1"), aws("cloudwatch", ALARM_REGION)
    checks: dict[str, str] = {}
    for alarm, region in sorted(chain.alarms.items()):
        if region not in checks:
            made = r53.create_health_check(
                CallerReference=f"drorch-lab-{runbook.name}-{region}",
                HealthCheckConfig={"IPAddress": addresses[region], "Port": runbook.lab.app_port,
                                   "Type": "HTTP", "ResourcePath": "/health",
                                   "RequestInterval": 10, "FailureThreshold": 1})
            checks[region] = made["HealthCheck"]["Id"]
        cw.put_metric_alarm(
            AlarmName=alarm,
            AlarmDescription=f"drorch: Route 53 health check {checks[region]} of region "
                             f"{region} is failing.",
            Namespace="AWS/Route53", MetricName="HealthCheckStatus", Statistic="Minimum",
            Period=PERIOD_S, EvaluationPeriods=EVALUATION_PERIODS,
            DatapointsToAlarm=EVALUATION_PERIODS, ComparisonOperator="LessThanThreshold",
            Threshold=1.0, TreatMissingData="breaching",
            Dimensions=[{"Name": "HealthCheckId", "Value": checks[region]}],
            AlarmActions=[topic], OKActions=[topic])
        # CloudWatch starts a new alarm in INSUFFICIENT_DATA (moto starts it in OK); no
        # action is configured for that state, so nothing is sent
        cw.set_alarm_state(AlarmName=alarm, StateValue="INSUFFICIENT_DATA",
                           StateReason="Unchecked: Initial alarm creation")
    for region in checks:  # a new alarm leaves INSUFFICIENT_DATA once its check reports
        notify(runbook, aws, region, "OK")
    return checks


def _when(at: datetime) -> str:
    """CloudWatch's StateChangeTime form: ``2015-06-03T17:43:27.123+0000``."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


def _reason(state: str, at: datetime) -> str:
    """The sentence CloudWatch writes for this alarm's threshold crossing."""
    minutes = [(at - timedelta(minutes=i)).strftime("%d/%m/%y %H:%M:%S")
               for i in range(EVALUATION_PERIODS, 0, -1)]
    if state == "ALARM":
        points = ", ".join(f"0.0 ({m})" for m in minutes)
        return (f"Threshold Crossed: {EVALUATION_PERIODS} out of the last "
                f"{EVALUATION_PERIODS} datapoints [{points}] were less than the threshold "
                f"(1.0) (minimum {EVALUATION_PERIODS} datapoints for OK -> ALARM transition).")
    return (f"Threshold Crossed: 1 out of the last {EVALUATION_PERIODS} datapoints "
            f"[1.0 ({minutes[-1]})] was not less than the threshold (1.0) "
            "(minimum 1 datapoint for ALARM -> OK transition).")


def notification(alarm: dict[str, Any], old_state: str, state: str, reason: str,
                 at: datetime) -> dict[str, Any]:
    """The JSON CloudWatch publishes to an alarm's SNS actions, from ``DescribeAlarms``'s
    ``MetricAlarms[]`` entry ``alarm`` (the real document's keys and their order)."""
    arn = alarm["AlarmArn"]
    aws_region, account = arn.split(":")[3], arn.split(":")[4]
    updated = alarm.get("AlarmConfigurationUpdatedTimestamp")
    return {
        "AlarmName": alarm["AlarmName"],
        "AlarmDescription": alarm.get("AlarmDescription"),
        "AWSAccountId": account,
        "AlarmConfigurationUpdatedTimestamp": _when(updated.astimezone(UTC)) if isinstance(
            updated, datetime) else None,
        "NewStateValue": state,
        "NewStateReason": reason,
        "StateChangeTime": _when(at),
        "Region": REGION_NAMES.get(aws_region, aws_region),
        "AlarmArn": arn,
        "OldStateValue": old_state,
        "OKActions": list(alarm.get("OKActions") or []),
        "AlarmActions": list(alarm.get("AlarmActions") or []),
        "InsufficientDataActions": list(alarm.get("InsufficientDataActions") or []),
        "Trigger": {
            "MetricName": alarm.get("MetricName"),
            "Namespace": alarm.get("Namespace"),
            "StatisticType": "Statistic",
            "Statistic": str(alarm.get("Statistic", "")).upper(),
            "Unit": None,
            "Dimensions": [{"value": d["Value"], "name": d["Name"]}
                           for d in alarm.get("Dimensions") or []],
            "Period": alarm.get("Period"),
            "EvaluationPeriods": alarm.get("EvaluationPeriods"),
            "DatapointsToAlarm": alarm.get("DatapointsToAlarm"),
            "ComparisonOperator": alarm.get("ComparisonOperator"),
            "Threshold": alarm.get("Threshold"),
            "TreatMissingData": alarm.get("TreatMissingData"),
            "EvaluateLowSampleCountPercentile": "",
        },
    }


def notify(runbook: Runbook, aws: Any, region: str, state: str,
           now: datetime | None = None) -> list[str]:
    """Set every lab alarm about ``region`` to ``state`` (``ALARM`` or ``OK``) and publish
    what CloudWatch would to the SNS actions of that state; returns one phrase per alarm
    whose state changed (an alarm already in ``state`` sends nothing, as in CloudWatch)."""
    if state not in ("ALARM", "OK"):
        raise ValueError(f"alarm state must be ALARM or OK, not {state!r}")
    names = alarms_of(runbook, region)
    if not names:
        return []
    cw, sns = aws("cloudwatch", ALARM_REGION), aws("sns", ALARM_REGION)
    done: list[str] = []
    for alarm in cw.describe_alarms(AlarmNames=names)["MetricAlarms"]:
        old = alarm["StateValue"]
        if old == state:
            continue
        at = (now or datetime.now(UTC)).astimezone(UTC)
        reason = _reason(state, at)
        cw.set_alarm_state(AlarmName=alarm["AlarmName"], StateValue=state, StateReason=reason)
        message = json.dumps(notification(alarm, old, state, reason, at))
        subject = f'{state}: "{alarm["AlarmName"]}" in {REGION_NAMES.get(ALARM_REGION)}'
        actions = alarm.get("AlarmActions") if state == "ALARM" else alarm.get("OKActions")
        for topic in actions or []:
            sns.publish(TopicArn=topic, Message=message, Subject=subject[:100])
        done.append(f"alarm {alarm['AlarmName']} {old} -> {state}")
    return done
