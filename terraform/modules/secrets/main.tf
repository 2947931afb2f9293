# The connection secret applications read, in both regions. Two ways, chosen by
# var.replicate:
#
# - true: one secret replicated by Secrets Manager (multi-Region secrets,
#   https://docs.aws.amazon.com/secretsmanager/latest/userguide/create-manage-multi-region-secrets.html).
#   The replica keeps the name, its ARN differs only in the region, and it is
#   read-only while it is a replica ("you can't edit a replica secret", same page):
#   drorch can rewrite only the primary copy, and Secrets Manager copies the new
#   version over. While the primary region is down the replica cannot be rewritten
#   until replication is stopped (StopReplicationToReplica), which drorch does not
#   do yet: see README.
# - false: two independent secrets with the same name, one per region; drorch writes
#   each (drorch/steps/secrets.py writes every copy the runbook lists, each through
#   its own region's API, and defers the failed region's).
resource "aws_secretsmanager_secret" "primary" {
  #checkov:skip=CKV2_AWS_57:rotation needs the application team's rotation Lambda; drorch plan fails while a rotation is in flight (readiness check secret)
  name                    = var.name
  description             = var.description
  kms_key_id              = var.kms_key_id
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags

  dynamic "replica" {
    for_each = var.replicate ? [var.replica_region] : []
    content {
      region     = replica.value
      kms_key_id = var.replica_kms_key_id
    }
  }
}

resource "aws_secretsmanager_secret" "secondary" {
  #checkov:skip=CKV2_AWS_57:rotation needs the application team's rotation Lambda; drorch plan fails while a rotation is in flight (readiness check secret)
  count    = var.replicate ? 0 : 1
  provider = aws.secondary

  name                    = var.name
  description             = var.description
  kms_key_id              = var.replica_kms_key_id
  recovery_window_in_days = var.recovery_window_in_days
  tags                    = var.tags
}

# The first version: a JSON object with host and port (the keys drorch rewrites) plus
# whatever else the applications need. drorch writes later versions during a failover,
# so Terraform ignores changes to the value after creation.
resource "aws_secretsmanager_secret_version" "primary" {
  count = var.create_initial_version ? 1 : 0

  secret_id     = aws_secretsmanager_secret.primary.id
  secret_string = jsonencode(var.initial_value)

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_secretsmanager_secret_version" "secondary" {
  count    = var.create_initial_version && !var.replicate ? 1 : 0
  provider = aws.secondary

  secret_id     = aws_secretsmanager_secret.secondary[0].id
  secret_string = jsonencode(var.initial_value)

  lifecycle {
    ignore_changes = [secret_string]
  }
}

data "aws_region" "primary" {}

locals {
  secondary_arn = var.replicate ? replace(aws_secretsmanager_secret.primary.arn, ":${data.aws_region.primary.name}:", ":${var.replica_region}:") : aws_secretsmanager_secret.secondary[0].arn
}
