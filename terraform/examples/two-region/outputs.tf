# What `drorch runbook from-terraform` reads (terraform output -json). None of these
# holds a secret: the database password is an input only, and the connection secret
# is named, never read.

output "service_name" {
  description = "The runbook's name."
  value       = var.name
}

output "regions" {
  description = "Per drorch region name: its AWS region and role before any failover."
  value = {
    (var.primary_name)   = { aws_region = var.primary_region, role = "primary" }
    (var.secondary_name) = { aws_region = var.secondary_region, role = "secondary" }
  }
}

output "database" {
  description = "The database pair: kind, identifiers and endpoints per drorch region (no password)."
  value = {
    name              = "main"
    kind              = local.db.kind
    global_cluster_id = local.db.global_cluster_id
    dbname            = local.db.dbname
    user              = local.db.user
    endpoints = {
      (var.primary_name) = {
        host        = local.db.primary_host
        port        = local.db.port
        instance_id = local.rds ? local.db.primary_id : null
        cluster_id  = local.aurora ? local.db.primary_id : null
      }
      (var.secondary_name) = {
        host        = local.db.secondary_host
        port        = local.db.port
        instance_id = local.rds ? local.db.secondary_id : null
        cluster_id  = local.aurora ? local.db.secondary_id : null
      }
    }
  }
}

output "connection_secret" {
  description = "The connection secret's name and which regions' copies drorch writes (a replica is read-only: only the primary's)."
  value = {
    secret_id  = module.secret.secret_name
    replicated = module.secret.replicated
    regions    = module.secret.replicated ? [var.primary_name] : [var.primary_name, var.secondary_name]
  }
}

output "dns" {
  description = "The weighted records drorch flips."
  value = {
    zone             = module.dns.zone_name
    record_name      = module.dns.record_name
    record_type      = module.dns.record_type
    ttl              = module.dns.ttl
    set_identifiers  = module.dns.set_identifiers
    health_check_ids = module.dns.health_check_ids
  }
}

output "write_flag" {
  description = "The SSM write flag, the same name in both regions."
  value = {
    parameter = module.write_flag_primary.parameter_name
  }
}

output "alarms" {
  description = "The queue drorch watch reads and the alarm per drorch region."
  value = {
    queue_url   = module.alarms.queue_url
    aws_region  = module.alarms.aws_region
    alarm_names = module.alarms.alarm_names
  }
}

output "drorch_role_arn" {
  description = "The role drorch runs as."
  value       = module.iam.role_arn
}

output "drorch_policy_actions" {
  description = "Every action the drorch role may call."
  value       = module.iam.actions
}

output "audit_bucket" {
  description = "The Object Lock bucket for drorch's audit archive."
  value       = module.audit.bucket_name
}

output "audit_archive" {
  description = "Where drorch audit ship copies the audit log (the runbook's audit.archive)."
  value = {
    url            = "s3://${module.audit.bucket_name}/${var.name}"
    aws_region     = var.primary_region
    retention_days = module.audit.retention_days
  }
}

output "journal_table" {
  description = "The DynamoDB table for the journal and lease (not used by drorch yet)."
  value       = module.journal.table_name
}
