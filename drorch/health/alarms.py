"""CloudWatch alarm notifications, as they arrive from SNS through an SQS queue.

``parse_alarm_message`` (pure) accepts both shapes an SQS body can take:
- the SNS envelope (``{"Type": "Notification", "Message": "<alarm JSON as a string>",
  ...}``), the default for an SNS -> SQS subscription;
- the alarm JSON itself, when the subscription uses raw message delivery.

Anything else (subscription confirmations, foreign messages, broken JSON) yields
``None``. ``AlarmQueue.receive`` reads a batch and ``ack`` deletes every message it
received, parsed or not (an unparsable message would otherwise come back forever).
The watcher acknowledges only after it has journaled what the alarms did to its
window: killed in between, it reads the same alarms again once their visibility
timeout ends, instead of losing them. Delivery is at least once and unordered
(standard SQS); the window keeps only the newest state per alarm, so duplicates
and reordering are harmless.

Which region an alarm is about: see ``region_for_alarm``. Note that the alarm's
``Region`` field is a display name ("US East (N. Virginia)"), so the AWS region
code is taken from ``AlarmArn``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from drorch.health.config import CloudWatchAlarmProbe, HealthPolicy

log = structlog.get_logger(__name__)

_STATES = frozenset({"ALARM", "OK", "INSUFFICIENT_DATA"})
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


@dataclass(frozen=True)
class AlarmEvent:
    """One alarm state change. ``at`` is ``StateChangeTime`` in epoch seconds
    (else the SNS ``Timestamp``; ``None`` if neither parses)."""

    alarm_name: str
    state: str
    old_state: str | None
    reason: str
    at: float | None
    aws_region: str | None
    region_label: str | None
    dimensions: tuple[tuple[str, str], ...] = ()
    message_id: str | None = None

    @property
    def firing(self) -> bool:
        return self.state == "ALARM"


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _aws_region_of(alarm: dict[str, Any]) -> str | None:
    arn = alarm.get("AlarmArn")
    if isinstance(arn, str):
        parts = arn.split(":")
        if len(parts) > 3 and parts[0] == "arn" and _AWS_REGION.match(parts[3]):
            return parts[3]
    label = alarm.get("Region")
    if isinstance(label, str) and _AWS_REGION.match(label):
        return label
    return None


def _dimensions(alarm: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    trigger = alarm.get("Trigger")
    dims = trigger.get("Dimensions") if isinstance(trigger, dict) else None
    out: list[tuple[str, str]] = []
    for d in dims if isinstance(dims, list) else []:
        if isinstance(d, dict):
            # AWS writes lower-case keys here ("name"/"value"); accept both.
            name = d.get("name", d.get("Name"))
            value = d.get("value", d.get("Value"))
            if name is not None and value is not None:
                out.append((str(name), str(value)))
    return tuple(out)


def parse_alarm_message(body: str) -> AlarmEvent | None:
    """An ``AlarmEvent`` from an SQS message body, or ``None`` if it is not an alarm."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    envelope: dict[str, Any] = {}
    if doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        envelope = doc
        try:
            doc = json.loads(doc["Message"])
        except ValueError:
            return None
        if not isinstance(doc, dict):
            return None
    name, state = doc.get("AlarmName"), doc.get("NewStateValue")
    if not isinstance(name, str) or not name or state not in _STATES:
        return None
    old = doc.get("OldStateValue")
    return AlarmEvent(
        alarm_name=name,
        state=str(state),
        old_state=old if isinstance(old, str) else None,
        reason=str(doc.get("NewStateReason") or ""),
        at=_epoch(doc.get("StateChangeTime")) or _epoch(envelope.get("Timestamp")),
        aws_region=_aws_region_of(doc),
        region_label=doc.get("Region") if isinstance(doc.get("Region"), str) else None,
        dimensions=_dimensions(doc),
        message_id=envelope.get("MessageId") if envelope else None,
    )


def region_for_alarm(event: AlarmEvent, policy: HealthPolicy) -> str | None:
    """The drorch region an alarm is about, or ``None`` when it maps to none.

    Order: the explicit ``policy.alarm_regions`` mapping; a region whose
    ``cloudwatch_alarm`` probe names this alarm; the one region whose ``aws_region``
    equals the alarm's (from its ARN). Ambiguity (several regions share the AWS
    region) yields ``None``: an alarm is never guessed onto a region.
    """
    if event.alarm_name in policy.alarm_regions:
        return policy.alarm_regions[event.alarm_name]
    for rh in policy.regions:
        for p in rh.probes:
            if isinstance(p, CloudWatchAlarmProbe) and p.alarm_name == event.alarm_name:
                return rh.region
    if event.aws_region:
        matches = [rh.region for rh in policy.regions if rh.aws_region == event.aws_region]
        if len(matches) == 1:
            return matches[0]
    return None


@dataclass(frozen=True)
class Received:
    """Alarm events (oldest state change first) and the receipts that acknowledge
    every message they came from, alarms or not."""

    events: list[AlarmEvent]
    receipts: tuple[str, ...]


class AlarmQueue:
    """Reads alarm notifications from one SQS queue.

    ``sqs_client`` is a boto3 SQS client (or anything with ``receive_message`` and
    ``delete_message_batch``).
    """

    def __init__(self, sqs_client: Any, queue_url: str) -> None:
        self._sqs = sqs_client
        self._url = queue_url

    def receive(self, max_messages: int = 10, wait_s: float = 0.0) -> Received:
        """Up to ``max_messages`` messages, not yet deleted: they stay invisible for the
        queue's visibility timeout and come back unless ``ack``-ed.

        Long-polls up to ``wait_s`` (whole seconds, at most 20) for the first batch
        only; later batches (when ``max_messages`` > 10) do not wait.
        """
        events: list[AlarmEvent] = []
        receipts: list[str] = []
        wait = max(0, min(20, int(wait_s)))
        while len(receipts) < max_messages:
            batch = min(10, max_messages - len(receipts))
            resp = self._sqs.receive_message(
                QueueUrl=self._url, MaxNumberOfMessages=batch, WaitTimeSeconds=wait
            )
            messages = resp.get("Messages", [])
            if not messages:
                break
            wait = 0
            for m in messages:
                receipts.append(m["ReceiptHandle"])
                event = parse_alarm_message(m.get("Body", ""))
                if event is None:
                    log.warning("alarm_message_ignored", message_id=m.get("MessageId"))
                else:
                    events.append(event)
        events.sort(key=lambda e: e.at if e.at is not None else float("inf"))
        return Received(events, tuple(receipts))

    def ack(self, received: Received) -> None:
        """Delete the messages ``received`` came from (ten per request, SQS's limit)."""
        handles = received.receipts
        for start in range(0, len(handles), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h}
                       for i, h in enumerate(handles[start:start + 10])]
            resp = self._sqs.delete_message_batch(QueueUrl=self._url, Entries=entries)
            for failure in resp.get("Failed", []):
                # The message will come back after its visibility timeout; harmless.
                log.warning("alarm_message_not_deleted", code=failure.get("Code"))

    def poll(self, max_messages: int = 10, wait_s: float = 0.0) -> list[AlarmEvent]:
        """``receive`` then ``ack`` at once: for readers with nothing to journal first."""
        received = self.receive(max_messages, wait_s)
        self.ack(received)
        return received.events
