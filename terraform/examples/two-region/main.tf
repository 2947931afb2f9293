# Two regions for one service, wired for drorch: `terraform output -json` of this
# root feeds `drorch runbook from-terraform`, which writes the runbook.

locals {
  rds    = var.database_kind == "rds"
  aurora = var.database_kind == "aurora-global"
}

module "dns" {
  source    = "../../modules/route53-failover"
  providers = { aws = aws.primary }

  zone_name   = var.zone_name
  create_zone = var.create_zone
  record_name = var.record_name
  ttl         = var.record_ttl
  regions = {
    (var.primary_name) = {
      set_identifier    = var.primary_name
      weight            = 100
      records           = var.record_values.primary
      health_check_fqdn = var.health_check_fqdns.primary
    }
    (var.secondary_name) = {
      set_identifier    = var.secondary_name
      weight            = 0
      records           = var.record_values.secondary
      health_check_fqdn = var.health_check_fqdns.secondary
    }
  }
}

module "alarms" {
  source    = "../../modules/alarms"
  providers = { aws = aws.us_east_1 }

  name_prefix      = "drorch-${var.name}"
  health_check_ids = module.dns.health_check_ids
}

module "write_flag_primary" {
  source    = "../../modules/write-flag"
  providers = { aws = aws.primary }

  parameter_name = "/drorch/${var.name}/writes-frozen"
}

module "write_flag_secondary" {
  source    = "../../modules/write-flag"
  providers = { aws = aws.secondary }

  parameter_name = "/drorch/${var.name}/writes-frozen"
}

module "rds" {
  source    = "../../modules/rds-postgres"
  count     = local.rds ? 1 : 0
  providers = { aws = aws.primary, aws.secondary = aws.secondary }

  primary_identifier         = "${var.name}-main-a"
  replica_identifier         = "${var.name}-main-b"
  master_password            = var.db_master_password
  storage_encrypted          = var.db_storage_encrypted
  replica_kms_key_id         = var.secondary_db_kms_key_id
  primary_subnet_group_name  = var.db_subnet_group_names.primary
  replica_subnet_group_name  = var.db_subnet_group_names.secondary
  primary_security_group_ids = var.db_security_group_ids.primary
  replica_security_group_ids = var.db_security_group_ids.secondary
  deletion_protection        = var.db_deletion_protection
  skip_final_snapshot        = !var.db_deletion_protection
}

module "aurora" {
  source    = "../../modules/aurora-global"
  count     = local.aurora ? 1 : 0
  providers = { aws = aws.primary, aws.secondary = aws.secondary }

  global_cluster_id            = "${var.name}-main"
  primary_cluster_id           = "${var.name}-main-a"
  secondary_cluster_id         = "${var.name}-main-b"
  master_password              = var.db_master_password
  storage_encrypted            = var.db_storage_encrypted
  secondary_kms_key_id         = var.secondary_db_kms_key_id
  primary_subnet_group_name    = var.db_subnet_group_names.primary
  secondary_subnet_group_name  = var.db_subnet_group_names.secondary
  primary_security_group_ids   = var.db_security_group_ids.primary
  secondary_security_group_ids = var.db_security_group_ids.secondary
  deletion_protection          = var.db_deletion_protection
  skip_final_snapshot          = !var.db_deletion_protection
}

locals {
  db = local.rds ? {
    kind              = "rds"
    global_cluster_id = null
    dbname            = module.rds[0].db_name
    user              = module.rds[0].master_username
    port              = module.rds[0].port
    primary_host      = module.rds[0].primary_address
    secondary_host    = module.rds[0].replica_address
    primary_id        = module.rds[0].primary_instance_id
    secondary_id      = module.rds[0].replica_instance_id
    } : {
    kind              = "aurora-global"
    global_cluster_id = module.aurora[0].global_cluster_id
    dbname            = module.aurora[0].db_name
    user              = module.aurora[0].master_username
    port              = module.aurora[0].port
    primary_host      = module.aurora[0].primary_endpoint
    secondary_host    = module.aurora[0].secondary_endpoint
    primary_id        = module.aurora[0].primary_cluster_id
    secondary_id      = module.aurora[0].secondary_cluster_id
  }
}

module "secret" {
  source    = "../../modules/secrets"
  providers = { aws = aws.primary, aws.secondary = aws.secondary }

  name           = "${var.name}/main/db"
  replica_region = var.secondary_region
  replicate      = var.replicate_secret
  initial_value = {
    host     = local.db.primary_host
    port     = tostring(local.db.port)
    dbname   = local.db.dbname
    username = local.db.user
    password = var.db_master_password
  }
}

module "journal" {
  source    = "../../modules/journal-table"
  providers = { aws = aws.primary }

  table_name      = "drorch-${var.name}-journal"
  replica_regions = var.journal_replica ? [var.secondary_region] : []
}

module "audit" {
  source    = "../../modules/audit-bucket"
  providers = { aws = aws.primary }

  bucket_name    = var.audit_bucket_name
  retention_days = var.audit_retention_days
}

module "iam" {
  source    = "../../modules/iam"
  providers = { aws = aws.primary }

  role_name                 = "drorch-${var.name}"
  trusted_principal_arns    = var.trusted_principal_arns
  write_flag_parameter_arns = [module.write_flag_primary.parameter_arn, module.write_flag_secondary.parameter_arn]
  secret_arns               = module.secret.secret_arns
  hosted_zone_id            = module.dns.zone_id
  record_names              = [module.dns.record_name]
  record_types              = [module.dns.record_type]
  health_check_ids          = values(module.dns.health_check_ids)
  alarm_arns                = module.alarms.alarm_arns
  alarm_queue_arn           = module.alarms.queue_arn
  alarm_topic_arn           = module.alarms.topic_arn
  rds_instance_arns         = local.rds ? module.rds[0].instance_arns : []
  aurora_global_cluster_arn = local.aurora ? module.aurora[0].global_cluster_arn : null
  aurora_cluster_arns       = local.aurora ? module.aurora[0].cluster_arns : []
  audit_bucket_arn          = module.audit.bucket_arn
}
