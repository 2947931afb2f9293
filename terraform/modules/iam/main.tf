# A role for drorch and a policy granting exactly the calls drorch makes, each on the
# resources of this estate only. The actions, with the code that makes them:
#
#   ssm:GetParameter, ssm:PutParameter                    drorch/adapters/flags.py
#   secretsmanager:GetSecretValue, PutSecretValue,
#     ListSecretVersionIds                                drorch/adapters/secrets.py
#   secretsmanager:DescribeSecret, route53:GetHealthCheck,
#     sqs:GetQueueAttributes, sns:ListSubscriptionsByTopic,
#     iam:SimulatePrincipalPolicy and the role's policy
#     reads (ListAttachedRolePolicies, GetPolicy,
#     GetPolicyVersion, ListRolePolicies, GetRolePolicy)  drorch/adapters/readiness_aws.py
#     (readiness: drorch plan, drorch watch; sts:GetCallerIdentity needs no permission)
#   route53:ListHostedZonesByName                         drorch/adapters/route53.py (zone_id)
#   route53:ListResourceRecordSets (paginator),
#     ChangeResourceRecordSets (UPSERT), GetChange        drorch/adapters/route53.py
#   route53:GetHealthCheckStatus                          drorch/health/checks.py
#   cloudwatch:DescribeAlarms                             drorch/health/checks.py
#   sqs:ReceiveMessage, sqs:DeleteMessage                 drorch/health/alarms.py
#     (DeleteMessageBatch is authorised as DeleteMessage:
#      https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html)
#   rds:DescribeDBInstances (also the available waiter),
#     rds:PromoteReadReplica; failback: ModifyDBInstance,
#     CreateDBSnapshot, DescribeDBSnapshots,
#     AddTagsToResource, CreateDBInstanceReadReplica      drorch/adapters/rds.py
#   rds:DescribeGlobalClusters, DescribeDBClusters,
#     SwitchoverGlobalCluster, FailoverGlobalCluster,
#     RemoveFromGlobalCluster                             drorch/adapters/aurora.py
#   rds:DescribeDBClusterSnapshots, CopyDBClusterSnapshot  drorch/steps/evidence.py
#   rds:RestoreDBClusterFromSnapshot, CreateDBInstance,
#     DeleteDBInstance, DeleteDBCluster (and the cluster
#     waiters' DescribeDBClusters)                        drorch/adapters/aurora.py
#   s3:GetBucketObjectLockConfiguration, ListBucket,
#     ListBucketVersions, PutObject (+ PutObjectRetention),
#     GetObject (+ GetObjectVersion, GetObjectRetention)  drorch/adapters/s3.py (audit ship/verify)
#
# Resource types and condition keys per action: the Service Authorization Reference
# (https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html).
# ListHostedZonesByName and GetChange support no resource-level scoping ("*" or
# change/*). ChangeResourceRecordSets is narrowed to UPSERT of the runbook's record
# names and types with Route 53's condition keys
# (https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/specifying-rrset-conditions.html).

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "AssumeByTrustedPrincipals"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = var.trusted_principal_arns
    }
  }
}

locals {
  p = data.aws_partition.current.partition

  record_names = [for n in var.record_names : lower(trimsuffix(n, "."))]

  statements = concat(
    [
      {
        sid       = "WriteFlag"
        actions   = ["ssm:GetParameter", "ssm:PutParameter"]
        resources = var.write_flag_parameter_arns
      },
      {
        sid       = "ConnectionSecrets"
        actions   = ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue", "secretsmanager:ListSecretVersionIds", "secretsmanager:PutSecretValue"]
        resources = var.secret_arns
      },
      {
        sid       = "FindHostedZone"
        actions   = ["route53:ListHostedZonesByName"]
        resources = ["*"]
      },
      {
        sid       = "ReadRecords"
        actions   = ["route53:ListResourceRecordSets"]
        resources = ["arn:${local.p}:route53:::hostedzone/${var.hosted_zone_id}"]
      },
      {
        sid       = "WaitForChange"
        actions   = ["route53:GetChange"]
        resources = ["arn:${local.p}:route53:::change/*"]
      },
    ],
    length(var.health_check_ids) == 0 ? [] : [{
      sid       = "HealthCheckStatus"
      actions   = ["route53:GetHealthCheck", "route53:GetHealthCheckStatus"]
      resources = [for id in var.health_check_ids : "arn:${local.p}:route53:::healthcheck/${id}"]
    }],
    length(var.alarm_arns) == 0 ? [] : [{
      sid       = "ReadAlarms"
      actions   = ["cloudwatch:DescribeAlarms"]
      resources = var.alarm_arns
    }],
    var.alarm_queue_arn == null ? [] : [{
      sid       = "AlarmQueue"
      actions   = ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
      resources = [var.alarm_queue_arn]
    }],
    var.alarm_topic_arn == null ? [] : [{
      sid       = "AlarmTopicWiring"
      actions   = ["sns:ListSubscriptionsByTopic"]
      resources = [var.alarm_topic_arn]
    }],
    length(var.rds_instance_arns) == 0 ? [] : [
      {
        sid       = "RdsInstances"
        actions   = ["rds:DescribeDBInstances", "rds:PromoteReadReplica"]
        resources = var.rds_instance_arns
      },
      {
        # failback: fence (security groups), rename and keep the old primary
        # (<id>-old-<incident>), its evidence snapshot (drorch-*), a new replica under
        # the freed identifier
        sid     = "RdsFailback"
        actions = ["rds:AddTagsToResource", "rds:CreateDBInstanceReadReplica", "rds:CreateDBSnapshot", "rds:DescribeDBSnapshots", "rds:ModifyDBInstance"]
        resources = concat(var.rds_instance_arns, [for arn in var.rds_instance_arns : "${arn}-old-*"], [
          "arn:${data.aws_partition.current.partition}:rds:*:*:snapshot:drorch-*",
        ])
      },
    ],
    var.aurora_global_cluster_arn == null ? [] : [
      {
        sid       = "AuroraGlobalCluster"
        actions   = ["rds:DescribeGlobalClusters", "rds:FailoverGlobalCluster", "rds:RemoveFromGlobalCluster", "rds:SwitchoverGlobalCluster"]
        resources = concat([var.aurora_global_cluster_arn], var.aurora_cluster_arns)
      },
      {
        sid       = "AuroraClusters"
        actions   = ["rds:DescribeDBClusters"]
        resources = var.aurora_cluster_arns
      },
      {
        # failback after an unplanned failover: the snapshot copy restored to a temporary
        # cluster (<cluster>-restore-<incident>) with one instance, deleted after the
        # reconcile (drorch/steps/aurora_failback.py)
        sid     = "AuroraRestoreForReconcile"
        actions = ["rds:CreateDBInstance", "rds:DeleteDBCluster", "rds:DeleteDBInstance", "rds:DescribeDBInstances", "rds:RestoreDBClusterFromSnapshot"]
        resources = concat(
          [for arn in var.aurora_cluster_arns : "${arn}-restore-*"],
          [for arn in var.aurora_cluster_arns : "${replace(arn, ":cluster:", ":db:")}-restore-i-*"],
          ["arn:${data.aws_partition.current.partition}:rds:*:*:cluster-snapshot:drorch-*"],
        )
      },
      {
        # Aurora's snapshot of an unplanned failover's old writer, copied at once
        sid     = "AuroraFailoverSnapshots"
        actions = ["rds:CopyDBClusterSnapshot", "rds:DescribeDBClusterSnapshots"]
        resources = concat(var.aurora_cluster_arns, [
          "arn:${data.aws_partition.current.partition}:rds:*:*:cluster-snapshot:rds:unplanned-global-failover-*",
          "arn:${data.aws_partition.current.partition}:rds:*:*:cluster-snapshot:drorch-*",
        ])
      },
    ],
    [
      {
        # readiness: may this role make every call drorch makes? (IAM's own simulation)
        sid       = "ReadinessOwnPermissions"
        actions   = ["iam:GetRolePolicy", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies", "iam:SimulatePrincipalPolicy"]
        resources = [aws_iam_role.drorch.arn]
      },
      {
        sid       = "ReadinessOwnPolicy"
        actions   = ["iam:GetPolicy", "iam:GetPolicyVersion"]
        resources = ["arn:${local.p}:iam::${data.aws_caller_identity.current.account_id}:policy/${var.role_name}-policy"]
      },
    ],
    # Audit shipping (`drorch audit ship`, `drorch audit verify s3://...`,
    # drorch/adapters/s3.py): write-once objects under COMPLIANCE retention into the
    # audit-bucket module's bucket, and reading them back. PutObject that sets a
    # retention also needs PutObjectRetention; GetObject of a version needs
    # GetObjectVersion, and shows its retention only with GetObjectRetention.
    # ListObjectsV2 is authorised as ListBucket, ListObjectVersions as ListBucketVersions,
    # GetObjectLockConfiguration as GetBucketObjectLockConfiguration. No delete, no
    # PutObjectRetention without a new object, no BypassGovernanceRetention.
    var.audit_bucket_arn == null ? [] : [{
      sid = "AuditArchive"
      actions = ["s3:GetBucketObjectLockConfiguration", "s3:GetObject", "s3:GetObjectRetention",
        "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions", "s3:PutObject",
      "s3:PutObjectRetention"]
      resources = [var.audit_bucket_arn, "${var.audit_bucket_arn}/*"]
    }],
    length(var.kms_key_arns) == 0 ? [] : [{
      sid       = "SecretsKms"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = var.kms_key_arns
    }],
  )
}

data "aws_iam_policy_document" "drorch" {
  dynamic "statement" {
    for_each = local.statements
    content {
      sid       = statement.value.sid
      effect    = "Allow"
      actions   = statement.value.actions
      resources = statement.value.resources
    }
  }

  # Only UPSERTs of the runbook's records: drorch never creates or deletes a record.
  statement {
    sid       = "FlipWeights"
    effect    = "Allow"
    actions   = ["route53:ChangeResourceRecordSets"]
    resources = ["arn:${local.p}:route53:::hostedzone/${var.hosted_zone_id}"]

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
      values   = local.record_names
    }

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsRecordTypes"
      values   = var.record_types
    }

    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsActions"
      values   = ["UPSERT"]
    }
  }
}

resource "aws_iam_role" "drorch" {
  name                 = var.role_name
  description          = "drorch: fails the estate over between its two regions"
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  max_session_duration = var.max_session_duration
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags
}

resource "aws_iam_policy" "drorch" {
  name        = "${var.role_name}-policy"
  description = "Exactly the calls drorch makes, on this estate's resources"
  policy      = data.aws_iam_policy_document.drorch.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "drorch" {
  role       = aws_iam_role.drorch.name
  policy_arn = aws_iam_policy.drorch.arn
}
