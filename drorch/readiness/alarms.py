"""The alarm chain ``drorch watch`` listens to: each alarm the runbook names exists,
has its actions enabled and notifies an SNS topic that delivers to the queue
``health.alarm_queue_url``, and the queue lets that topic send.

An alarm with no action, or a topic with no subscription for the queue, is a chain
that never rings: CloudWatch changes state and nobody hears it. In AWS, SNS delivers to
an SQS queue only when the queue's access policy allows ``sqs:SendMessage`` to
``sns.amazonaws.com`` from that topic (SNS developer guide, "Sending Amazon SNS messages
to an Amazon SQS queue"); moto delivers without one, so that part is a warning.
"""

from __future__ import annotations

import json
from typing import Any

from drorch.adapters import readiness_aws as ra
from drorch.adapters import route53 as r53
from drorch.readiness.context import Context, aws_problem, not_configured
from drorch.readiness.result import CheckResult, failed, passed, warned
from drorch.watch_state import sqs_region

CHECK = "alarms"


def alarm_regions(ctx: Context, queue_region: str | None) -> dict[str, str]:
    """Alarm name -> the AWS region it lives in: a ``cloudwatch_alarm`` probe's region,
    else the queue's (Route 53 health check alarms live in us-east-1 with it)."""
    health = ctx.runbook.health
    if health is None:
        return {}
    names: dict[str, str] = {}
    for rh in health.regions:
        for p in rh.probes:
            if p.kind == "cloudwatch_alarm":
                names[p.alarm_name] = p.aws_region or rh.aws_region or ctx.aws_region(rh.region)
    for name in health.alarm_regions:
        names.setdefault(name, queue_region or ctx.aws_region(ctx.runbook.primary.name))
    return names


def check(ctx: Context) -> list[CheckResult]:
    health = ctx.runbook.health
    url = health.alarm_queue_url if health else None
    names = alarm_regions(ctx, None)
    if not url and not names:
        return [not_configured(CHECK, "alarms (health.alarm_queue_url, cloudwatch_alarm "
                               "probes)")]
    if not url:
        return [warned(CHECK, "-", f"alarms are named ({', '.join(sorted(names))}) but no "
                       "health.alarm_queue_url: `drorch watch` only polls them as probes "
                       "and hears no alarm as it fires", "set health.alarm_queue_url to the "
                       "queue their SNS topic delivers to")]
    q_region = sqs_region(url, ctx.aws_region(ctx.runbook.secondary.name))
    try:
        queue = ra.queue_attributes(ctx.aws("sqs", q_region), url)
    except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
        return [aws_problem(ctx, CHECK, url, "SQS", q_region, exc, f"queue {url}")]
    queue_arn = str(queue["QueueArn"])
    ctx.learn("queue_arn", queue_arn)
    names = alarm_regions(ctx, q_region)
    if not names:
        return [warned(CHECK, url, "the queue exists but the runbook names no alarm that "
                       "feeds it", "name the alarms in health.alarm_regions")]
    out: list[CheckResult] = []
    by_region: dict[str, list[str]] = {}
    for name, region in names.items():
        by_region.setdefault(region, []).append(name)
    topics: dict[str, list[str]] = {}
    for region, wanted in by_region.items():
        try:
            found = _find_alarms(ctx, region, sorted(wanted))
        except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
            out.append(aws_problem(ctx, CHECK, ", ".join(sorted(wanted)), "CloudWatch",
                                   region, exc, "the alarms"))
            continue
        for name in sorted(wanted):
            where, alarm = found.get(name, (region, None))
            res = _alarm(ctx, name, where, alarm, topics)
            if res is not None:
                out.append(res)
    for topic, alarm_names in topics.items():
        out.append(_topic(ctx, topic, alarm_names, queue_arn, queue.get("Policy")))
    return out


def _find_alarms(ctx: Context, region: str,
                 names: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (AWS region, alarm): first in ``region``; an alarm named only in
    ``health.alarm_regions`` may live elsewhere (Route 53 health check alarms live in
    us-east-1), so the missing ones are looked for in us-east-1 and the runbook's
    regions too. A region that does not answer is an error only for ``region``."""
    found = {n: (region, a) for n, a in ra.alarms(ctx.aws("cloudwatch", region),
                                                   names).items()}
    others = dict.fromkeys(["us-east-1", *(r.aws_region for r in ctx.runbook.regions)])
    for other in (o for o in others if o != region):
        missing = [n for n in names if n not in found]
        if not missing:
            break
        try:
            found |= {n: (other, a) for n, a in ra.alarms(ctx.aws("cloudwatch", other),
                                                           missing).items()}
        except Exception:  # noqa: BLE001, S112 (only a second place to look)
            continue
    return found


def _alarm(ctx: Context, name: str, region: str, alarm: dict[str, Any] | None,
           topics: dict[str, list[str]]) -> CheckResult | None:
    if alarm is None:
        return failed(CHECK, name, f"alarm {name} does not exist in {region}: `drorch "
                      "watch` would never hear of the failure it is for",
                      "create it (terraform/modules/alarms) or correct the runbook")
    ctx.learn("alarm_arn", alarm.get("AlarmArn"))
    if alarm.get("ActionsEnabled") is False:
        return failed(CHECK, name, f"alarm {name}'s actions are disabled: it changes state "
                      "and notifies nobody", "enable them (EnableAlarmActions)")
    sns = [a for a in alarm.get("AlarmActions") or [] if str(a).startswith("arn:")
           and ":sns:" in str(a)]
    if not sns:
        return failed(CHECK, name, f"alarm {name} has no SNS action: when it fires, "
                      "nothing reaches the queue `drorch watch` reads",
                      "set its alarm action to the topic that delivers to "
                      "health.alarm_queue_url (terraform/modules/alarms)")
    for topic in sns:
        topics.setdefault(str(topic), []).append(name)
    return _watched_check(ctx, name, alarm)


def _record_health_checks(ctx: Context) -> dict[str, set[str]]:
    """Region -> the health checks its weighted DNS records carry (empty when there is no
    DNS section or Route 53 does not answer: the dns checks say so)."""
    dns = ctx.runbook.dns
    out: dict[str, set[str]] = {}
    if dns is None:
        return out
    try:
        client = ctx.aws("route53", "us-east-1")  # Route 53 is global, signed there
        zone = r53.zone_id(client, dns.zone)
        for rec in dns.records:
            found = {w.set_identifier: w for w in r53.weighted_records(client, zone, rec.name,
                                                                      rec.type)}
            for region, sid in rec.set_identifiers.items():
                hc = found[sid].raw.get("HealthCheckId") if sid in found else None
                if hc:
                    out.setdefault(region, set()).add(str(hc))
    except Exception:  # noqa: BLE001 (the dns checks report Route 53's problems)
        return {}
    return out


def _watched_check(ctx: Context, name: str, alarm: dict[str, Any]) -> CheckResult | None:
    """An alarm on a Route 53 health check (``AWS/Route53`` ``HealthCheckStatus``, its
    ``HealthCheckId`` dimension: Route 53 developer guide, "Monitoring health check
    status and getting notifications") must watch the health check the runbook gives its
    region: one that watches another region's check, or a check that is gone, never
    fires for this region's failure (or fires for the wrong one)."""
    if alarm.get("Namespace") != "AWS/Route53":
        return None
    watched = {d.get("Value") for d in alarm.get("Dimensions") or []
               if d.get("Name") == "HealthCheckId"}
    health = ctx.runbook.health
    region = health.alarm_regions.get(name) if health else None
    if health is None or region is None or not watched:
        return None
    ids = {r.region: {p.health_check_id for p in r.probes
                      if getattr(p, "health_check_id", None)} for r in health.regions}
    for r, known in _record_health_checks(ctx).items():
        ids.setdefault(r, set()).update(known)
    expected = ids.get(region) or set()
    if not expected or watched & expected:
        return None
    owner = next((r for r, known in ids.items() if watched & known), None)
    whose = f"{owner}'s" if owner else "one the runbook does not name"
    return failed(CHECK, name, f"alarm {name} watches health check "
                  f"{', '.join(sorted(str(w) for w in watched))} ({whose}), where the "
                  f"runbook gives {region} {', '.join(sorted(expected))}: it would not fire "
                  f"when {region} fails",
                  "point the alarm's HealthCheckId dimension at the region's health check "
                  "(terraform/modules/alarms)")


def _topic(ctx: Context, topic: str, alarm_names: list[str], queue_arn: str,
           policy: dict[str, Any] | None) -> CheckResult:
    target = ", ".join(alarm_names)
    region = topic.split(":")[3]
    ctx.learn("topic_arn", topic)
    try:
        subs = ra.topic_subscriptions(ctx.aws("sns", region), topic)
    except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
        return aws_problem(ctx, CHECK, target, "SNS", region, exc, f"topic {topic}")
    delivering = [s for s in subs if s.get("Protocol") == "sqs"
                  and s.get("Endpoint") == queue_arn
                  and s.get("SubscriptionArn") not in (None, "PendingConfirmation")]
    if not delivering:
        return failed(CHECK, target, f"topic {topic} does not deliver to the queue "
                      f"{queue_arn}: the alarm fires into nothing", "subscribe the queue "
                      "to the topic (terraform/modules/alarms)")
    if not _policy_allows(policy, topic, queue_arn):
        return warned(CHECK, target, f"the queue's access policy does not let {topic} send "
                      "to it: AWS drops the deliveries (moto does not enforce it)",
                      "allow sqs:SendMessage to sns.amazonaws.com with aws:SourceArn the "
                      "topic (terraform/modules/alarms does)")
    return passed(CHECK, target, f"wired: alarm -> {topic.split(':')[-1]} -> queue "
                  f"{queue_arn.split(':')[-1]}")


def _policy_allows(policy: dict[str, Any] | None, topic: str, queue_arn: str) -> bool:
    """A statement allowing ``sqs:SendMessage`` to SNS (or anyone) for this topic."""
    if not policy:
        return False
    statements = policy.get("Statement") or []
    for st in statements if isinstance(statements, list) else [statements]:
        if st.get("Effect") != "Allow":
            continue
        actions = st.get("Action") or []
        actions = [actions] if isinstance(actions, str) else actions
        if not any(a in ("sqs:SendMessage", "sqs:*", "*") for a in actions):
            continue
        principal = json.dumps(st.get("Principal"))
        if "sns.amazonaws.com" not in principal and principal not in ('"*"',
                                                                      '{"AWS": "*"}'):
            continue
        condition = json.dumps(st.get("Condition") or {})
        if st.get("Condition") and topic not in condition:
            continue
        return True
    return False
