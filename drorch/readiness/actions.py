"""Every AWS call drorch makes for a runbook, as IAM actions on the resources they act
on: what the IAM readiness check asks about. Pure: ARNs are built from the runbook,
the account and partition (from the caller's ARN) and what the other checks learned
(the zone id, secret ARNs with their suffix, alarm topics).

The same list is in ``terraform/modules/iam/main.tf``, and
``tests/unit/test_readiness_actions.py`` holds the two to each other. ARN formats:
Service Authorization Reference, "Resource types defined by ..." per service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drorch.config import Runbook


@dataclass(frozen=True)
class Needed:
    action: str
    resource: str
    why: str


def _queue_arn(p: str, url: str, region: str, account: str) -> str:
    return f"arn:{p}:sqs:{region}:{account}:{url.rstrip('/').split('/')[-1]}"


def needed(rb: Runbook, account: str, partition: str = "aws",
           learned: Mapping[str, list[Any]] | None = None) -> list[Needed]:
    """(action, resource, why) for every call a failover, ``drorch watch`` and ``drorch
    plan`` make for ``rb``. Failback-only calls (none to AWS today) are not listed."""
    p, acct, learned = partition, account, learned or {}
    out: list[Needed] = []

    def add(actions: list[str], resources: list[str], why: str) -> None:
        out.extend(Needed(a, r, why) for a in actions for r in resources)

    if rb.write_flag:
        name = rb.write_flag.parameter.lstrip("/")
        add(["ssm:GetParameter", "ssm:PutParameter"],
            [f"arn:{p}:ssm:{r.aws_region}:{acct}:parameter/{name}" for r in rb.regions],
            "the write flag (freeze, open)")
    secret_arns = {str(a).split(":secret:")[1].rsplit("-", 1)[0] + "@" + str(a).split(":")[3]:
                   str(a) for a in learned.get("secret_arn", []) if a}
    for s in rb.secrets:
        region = rb.region(s.region).aws_region
        arn = secret_arns.get(f"{s.secret_id}@{region}",
                              f"arn:{p}:secretsmanager:{region}:{acct}:secret:{s.secret_id}")
        add(["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue",
             "secretsmanager:ListSecretVersionIds", "secretsmanager:DescribeSecret"],
            [arn], "the connection secret (repoint, readiness)")
    if rb.dns:
        zones = learned.get("hosted_zone_id") or ["ZONE"]
        add(["route53:ListHostedZonesByName"], ["*"], "find the hosted zone")
        add(["route53:ListResourceRecordSets", "route53:ChangeResourceRecordSets"],
            [f"arn:{p}:route53:::hostedzone/{zones[0]}"], "flip the weights")
        add(["route53:GetChange"], [f"arn:{p}:route53:::change/C0000000000000"],
            "wait INSYNC")
    checks = set(learned.get("health_check_id", []))
    probes = {pr.health_check_id for rh in (rb.health.regions if rb.health else [])
              for pr in rh.probes if pr.kind == "route53_health_check"}
    add(["route53:GetHealthCheck"], [f"arn:{p}:route53:::healthcheck/{h}"
                                     for h in sorted(checks | probes)], "readiness")
    add(["route53:GetHealthCheckStatus"], [f"arn:{p}:route53:::healthcheck/{h}"
                                           for h in sorted(probes)], "health probes")
    add(["cloudwatch:DescribeAlarms"], sorted({str(a) for a in learned.get("alarm_arn", [])
                                               if a}), "alarm probes, readiness")
    if rb.health and rb.health.alarm_queue_url:
        queue = next(iter(learned.get("queue_arn", [])), None) or _queue_arn(
            p, rb.health.alarm_queue_url, rb.secondary.aws_region, acct)
        add(["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"], [queue],
            "the alarm queue")
    add(["sns:ListSubscriptionsByTopic"], sorted({str(t) for t in learned.get("topic_arn", [])}),
        "readiness (alarm wiring)")
    archive = rb.audit.archive
    if archive is not None:
        bucket = archive.url.removeprefix("s3://").split("/", 1)[0]
        add(["s3:GetBucketObjectLockConfiguration", "s3:ListBucket", "s3:ListBucketVersions"],
            [f"arn:{p}:s3:::{bucket}"], "drorch audit ship / verify")
        add(["s3:GetObject", "s3:GetObjectRetention", "s3:GetObjectVersion", "s3:PutObject",
             "s3:PutObjectRetention"], [f"arn:{p}:s3:::{bucket}/audit/x"],
            "drorch audit ship / verify")
    for db in rb.databases:
        if db.kind == "rds":
            instances = [f"arn:{p}:rds:{rb.region(r).aws_region}:{acct}:db:{ep.instance_id}"
                         for r, ep in db.endpoints.items()]
            add(["rds:DescribeDBInstances", "rds:PromoteReadReplica"], instances,
                f"promote {db.name}")
            add(["rds:ModifyDBInstance", "rds:CreateDBSnapshot", "rds:AddTagsToResource",
                 "rds:CreateDBInstanceReadReplica"], instances,
                f"fail {db.name} back (fence, snapshot, rename, a new replica)")
            add(["rds:DescribeDBSnapshots"],
                [f"arn:{p}:rds:{rb.region(r).aws_region}:{acct}:snapshot:drorch-x"
                 for r in db.endpoints], f"fail {db.name} back (its evidence snapshot)")
        if db.kind == "aurora-global":
            clusters = [f"arn:{p}:rds:{rb.region(r).aws_region}:{acct}:cluster:{ep.cluster_id}"
                        for r, ep in db.endpoints.items()]
            add(["rds:DescribeGlobalClusters", "rds:SwitchoverGlobalCluster",
                 "rds:FailoverGlobalCluster", "rds:RemoveFromGlobalCluster"],
                [f"arn:{p}:rds::{acct}:global-cluster:{db.global_cluster_id}"],
                f"make {db.name}'s secondary the writer")
            add(["rds:DescribeDBClusters"], clusters, f"{db.name}'s writer endpoint")
            restore = [f"{arn}-restore-x" for arn in clusters]
            restore += [f"{arn.replace(':cluster:', ':db:')}-restore-i-x" for arn in clusters]
            add(["rds:RestoreDBClusterFromSnapshot", "rds:CreateDBInstance",
                 "rds:DescribeDBInstances", "rds:DeleteDBInstance", "rds:DeleteDBCluster"],
                restore, f"fail {db.name} back after an unplanned failover (restore, reconcile)")
            add(["rds:DescribeDBClusterSnapshots", "rds:CopyDBClusterSnapshot"],
                [f"arn:{p}:rds:{rb.region(r).aws_region}:{acct}:cluster-snapshot:drorch-x"
                 for r in db.endpoints], f"keep {db.name}'s failover snapshot")
    return out
