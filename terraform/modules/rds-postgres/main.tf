# RDS for PostgreSQL: a primary instance in the primary region and a cross-region read
# replica in the secondary (aws.secondary). drorch's failover promotes the replica
# (PromoteReadReplica, then the db_instance_available waiter: drorch/adapters/rds.py)
# and writes the endpoint RDS describes into the connection secret.
#
# A cross-region replica names its source by ARN, and an encrypted one needs a KMS key
# in its own region (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_ReadRepl.XRgn.html);
# the source needs automated backups (backup_retention_period > 0).
resource "aws_db_instance" "primary" {
  #checkov:skip=CKV_AWS_354:Performance Insights is encrypted with the storage key when one is given (primary/replica/secondary_kms_key_id), else with the AWS managed key for RDS
  #checkov:skip=CKV_AWS_118:enhanced monitoring needs an IAM role for RDS to publish OS metrics; the estate's monitoring owns it
  #checkov:skip=CKV2_AWS_30:logging every statement is the database owner's choice (volume, values in statements); drorch needs none of it
  identifier                          = var.primary_identifier
  engine                              = "postgres"
  engine_version                      = var.engine_version
  instance_class                      = var.instance_class
  allocated_storage                   = var.allocated_storage
  storage_type                        = "gp3"
  storage_encrypted                   = var.storage_encrypted
  kms_key_id                          = var.primary_kms_key_id
  db_name                             = var.db_name
  username                            = var.master_username
  password                            = var.master_password
  port                                = var.port
  db_subnet_group_name                = var.primary_subnet_group_name
  vpc_security_group_ids              = var.primary_security_group_ids
  parameter_group_name                = var.primary_parameter_group_name
  multi_az                            = var.multi_az
  publicly_accessible                 = false
  backup_retention_period             = var.backup_retention_period
  copy_tags_to_snapshot               = true
  deletion_protection                 = var.deletion_protection
  skip_final_snapshot                 = var.skip_final_snapshot
  final_snapshot_identifier           = var.skip_final_snapshot ? null : "${var.primary_identifier}-final"
  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = var.iam_database_authentication_enabled
  enabled_cloudwatch_logs_exports     = ["postgresql"]
  performance_insights_enabled        = var.performance_insights_enabled
  performance_insights_kms_key_id     = var.performance_insights_enabled ? var.primary_kms_key_id : null
  tags                                = var.tags

  lifecycle {
    # after a failover drorch has changed the topology; Terraform must not fight it
    ignore_changes = [replicate_source_db]
  }
}

resource "aws_db_instance" "replica" {
  #checkov:skip=CKV_AWS_354:Performance Insights is encrypted with the storage key when one is given (primary/replica/secondary_kms_key_id), else with the AWS managed key for RDS
  #checkov:skip=CKV_AWS_118:enhanced monitoring needs an IAM role for RDS to publish OS metrics; the estate's monitoring owns it
  #checkov:skip=CKV_AWS_133:a PostgreSQL read replica keeps no automated backups until it is promoted; set them on the promoted instance
  provider = aws.secondary

  identifier             = var.replica_identifier
  replicate_source_db    = aws_db_instance.primary.arn
  instance_class         = var.instance_class
  storage_type           = "gp3"
  storage_encrypted      = var.storage_encrypted
  kms_key_id             = var.replica_kms_key_id
  port                   = var.port
  db_subnet_group_name   = var.replica_subnet_group_name
  vpc_security_group_ids = var.replica_security_group_ids
  parameter_group_name   = var.replica_parameter_group_name
  multi_az               = var.multi_az
  publicly_accessible    = false
  # a replica of PostgreSQL keeps no automated backups until it is promoted
  backup_retention_period    = 0
  copy_tags_to_snapshot      = true
  deletion_protection        = var.deletion_protection
  skip_final_snapshot        = true
  auto_minor_version_upgrade = true
  # the replica's own server log, as the primary's (the one that serves after a failover)
  enabled_cloudwatch_logs_exports = ["postgresql"]
  performance_insights_enabled    = var.performance_insights_enabled
  performance_insights_kms_key_id = var.performance_insights_enabled ? var.replica_kms_key_id : null
  tags                            = var.tags

  lifecycle {
    # drorch promotes the replica: afterwards it has no source, and an apply must not
    # try to turn the new primary back into a replica
    ignore_changes = [replicate_source_db, backup_retention_period]

    precondition {
      condition     = !var.storage_encrypted || var.replica_kms_key_id != null
      error_message = "An encrypted cross-region read replica needs replica_kms_key_id: a KMS key in the secondary region."
    }
  }
}
