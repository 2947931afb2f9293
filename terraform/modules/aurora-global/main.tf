# Aurora PostgreSQL Global Database: a global cluster, its primary regional cluster
# (provider aws) and a secondary regional cluster (aws.secondary). drorch makes the
# secondary the writer with SwitchoverGlobalCluster, FailoverGlobalCluster or
# RemoveFromGlobalCluster (drorch/adapters/aurora.py) and writes the writer endpoint
# Aurora describes into the connection secret.
#
# A secondary cluster has no master credentials of its own, and, when encrypted, needs
# a KMS key in its region (https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/aurora-global-database-getting-started.html).
# After a switchover or failover the roles are swapped, so Terraform ignores the
# attributes that change (the provider's documented pattern for global clusters:
# https://registry.terraform.io/providers/hashicorp/aws/5.100.0/docs/resources/rds_global_cluster).

resource "aws_rds_global_cluster" "this" {
  global_cluster_identifier = var.global_cluster_id
  engine                    = "aurora-postgresql"
  engine_version            = var.engine_version
  database_name             = var.db_name
  storage_encrypted         = var.storage_encrypted
  deletion_protection       = var.deletion_protection
}

resource "aws_rds_cluster" "primary" {
  #checkov:skip=CKV2_AWS_8:backups are the cluster's own (backup_retention_period); an AWS Backup plan is the organisation's choice
  #checkov:skip=CKV2_AWS_27:logging every statement is the database owner's choice (volume, values in statements); drorch needs none of it
  cluster_identifier                  = var.primary_cluster_id
  global_cluster_identifier           = aws_rds_global_cluster.this.id
  engine                              = aws_rds_global_cluster.this.engine
  engine_version                      = aws_rds_global_cluster.this.engine_version
  database_name                       = var.db_name
  master_username                     = var.master_username
  master_password                     = var.master_password
  port                                = var.port
  storage_encrypted                   = var.storage_encrypted
  kms_key_id                          = var.primary_kms_key_id
  db_subnet_group_name                = var.primary_subnet_group_name
  vpc_security_group_ids              = var.primary_security_group_ids
  backup_retention_period             = var.backup_retention_period
  copy_tags_to_snapshot               = true
  deletion_protection                 = var.deletion_protection
  skip_final_snapshot                 = var.skip_final_snapshot
  final_snapshot_identifier           = var.skip_final_snapshot ? null : "${var.primary_cluster_id}-final"
  enabled_cloudwatch_logs_exports     = ["postgresql"]
  iam_database_authentication_enabled = var.iam_database_authentication_enabled
  tags                                = var.tags

  lifecycle {
    ignore_changes = [global_cluster_identifier, replication_source_identifier]
  }
}

resource "aws_rds_cluster_instance" "primary" {
  #checkov:skip=CKV_AWS_354:Performance Insights is encrypted with the storage key when one is given (primary/replica/secondary_kms_key_id), else with the AWS managed key for RDS
  #checkov:skip=CKV_AWS_118:enhanced monitoring needs an IAM role for RDS to publish OS metrics; the estate's monitoring owns it
  count = var.instances_per_cluster

  identifier           = "${var.primary_cluster_id}-${count.index}"
  cluster_identifier   = aws_rds_cluster.primary.id
  engine               = aws_rds_cluster.primary.engine
  engine_version       = aws_rds_cluster.primary.engine_version
  instance_class       = var.instance_class
  db_subnet_group_name = var.primary_subnet_group_name
  publicly_accessible  = false
  tags                 = var.tags

  auto_minor_version_upgrade      = true
  performance_insights_enabled    = var.performance_insights_enabled
  performance_insights_kms_key_id = var.performance_insights_enabled ? var.primary_kms_key_id : null
}

resource "aws_rds_cluster" "secondary" {
  #checkov:skip=CKV2_AWS_8:backups are the cluster's own (backup_retention_period); an AWS Backup plan is the organisation's choice
  #checkov:skip=CKV2_AWS_27:logging every statement is the database owner's choice (volume, values in statements); drorch needs none of it
  provider = aws.secondary

  cluster_identifier        = var.secondary_cluster_id
  global_cluster_identifier = aws_rds_global_cluster.this.id
  engine                    = aws_rds_global_cluster.this.engine
  engine_version            = aws_rds_global_cluster.this.engine_version
  port                      = var.port
  storage_encrypted         = var.storage_encrypted
  kms_key_id                = var.secondary_kms_key_id
  db_subnet_group_name      = var.secondary_subnet_group_name
  vpc_security_group_ids    = var.secondary_security_group_ids
  backup_retention_period   = var.backup_retention_period
  copy_tags_to_snapshot     = true
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = true
  # the secondary serves after a failover: same logs and authentication as the primary
  enabled_cloudwatch_logs_exports     = ["postgresql"]
  iam_database_authentication_enabled = var.iam_database_authentication_enabled
  tags                                = var.tags

  # the secondary joins only once the primary has a writer instance
  depends_on = [aws_rds_cluster_instance.primary]

  lifecycle {
    ignore_changes = [global_cluster_identifier, replication_source_identifier]

    precondition {
      condition     = !var.storage_encrypted || var.secondary_kms_key_id != null
      error_message = "An encrypted secondary cluster needs secondary_kms_key_id: a KMS key in the secondary region."
    }
  }
}

resource "aws_rds_cluster_instance" "secondary" {
  #checkov:skip=CKV_AWS_354:Performance Insights is encrypted with the storage key when one is given (primary/replica/secondary_kms_key_id), else with the AWS managed key for RDS
  #checkov:skip=CKV_AWS_118:enhanced monitoring needs an IAM role for RDS to publish OS metrics; the estate's monitoring owns it
  count    = var.instances_per_cluster
  provider = aws.secondary

  identifier           = "${var.secondary_cluster_id}-${count.index}"
  cluster_identifier   = aws_rds_cluster.secondary.id
  engine               = aws_rds_cluster.secondary.engine
  engine_version       = aws_rds_cluster.secondary.engine_version
  instance_class       = var.instance_class
  db_subnet_group_name = var.secondary_subnet_group_name
  publicly_accessible  = false
  tags                 = var.tags

  auto_minor_version_upgrade      = true
  performance_insights_enabled    = var.performance_insights_enabled
  performance_insights_kms_key_id = var.performance_insights_enabled ? var.secondary_kms_key_id : null
}
