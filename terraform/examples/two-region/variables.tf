variable "name" {
  description = "The service's name: names the runbook and prefixes resource names."
  type        = string
  default     = "app"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]*$", var.name))
    error_message = "Lower case letters, digits and dashes."
  }
}

variable "primary_region" {
  description = "AWS region serving writes before any failover."
  type        = string
  default     = "us-east-1"
}

variable "secondary_region" {
  description = "AWS region drorch fails over to."
  type        = string
  default     = "us-west-2"
}

variable "primary_name" {
  description = "drorch's name for the primary region (runbook regions[].name)."
  type        = string
  default     = "region-a"
}

variable "secondary_name" {
  description = "drorch's name for the secondary region."
  type        = string
  default     = "region-b"
}

variable "database_kind" {
  description = "rds (RDS for PostgreSQL + cross-region read replica) or aurora-global (Aurora PostgreSQL global database)."
  type        = string
  default     = "rds"

  validation {
    condition     = contains(["rds", "aurora-global"], var.database_kind)
    error_message = "database_kind must be rds or aurora-global."
  }
}

variable "db_master_password" {
  description = "Master password of the database (sensitive; kept in the state, never an output)."
  type        = string
  sensitive   = true
}

variable "db_storage_encrypted" {
  description = "Encrypt the database's storage (then give secondary_db_kms_key_id)."
  type        = bool
  default     = true
}

variable "secondary_db_kms_key_id" {
  description = "KMS key ARN in the secondary region for the encrypted replica or secondary cluster."
  type        = string
  default     = null
}

variable "db_subnet_group_names" {
  description = "DB subnet group per region: { primary = ..., secondary = ... }."
  type        = object({ primary = optional(string), secondary = optional(string) })
  default     = {}
}

variable "db_security_group_ids" {
  description = "Security groups per region: { primary = [...], secondary = [...] }."
  type        = object({ primary = optional(list(string), []), secondary = optional(list(string), []) })
  default     = {}
}

variable "db_deletion_protection" {
  description = "Refuse deletion of the database."
  type        = bool
  default     = true
}

variable "zone_name" {
  description = "Public hosted zone, e.g. example.com."
  type        = string
}

variable "create_zone" {
  description = "Create the zone instead of looking it up."
  type        = bool
  default     = false
}

variable "record_name" {
  description = "The service's name in DNS, e.g. app.example.com."
  type        = string
}

variable "record_ttl" {
  description = "TTL of the weighted records (keep it well under the RTO target)."
  type        = number
  default     = 60
}

variable "record_values" {
  description = "A record values (load balancer or ingress addresses) per region: { primary = [...], secondary = [...] }."
  type        = object({ primary = list(string), secondary = list(string) })
}

variable "health_check_fqdns" {
  description = "What each region's Route 53 health check probes (HTTPS /health): { primary = ..., secondary = ... }."
  type        = object({ primary = string, secondary = string })
}

variable "replicate_secret" {
  description = "true: Secrets Manager replica (drorch rewrites the primary copy only); false: an independent copy per region, both rewritten by drorch."
  type        = bool
  default     = true
}

variable "journal_replica" {
  description = "Replicate the journal table to the secondary region (turn off against moto, which hangs on replicas)."
  type        = bool
  default     = true
}

variable "audit_bucket_name" {
  description = "Globally unique name of the audit archive bucket."
  type        = string
}

variable "audit_retention_days" {
  description = "Object Lock compliance retention of audit objects, in days."
  type        = number
  default     = 365
}

variable "trusted_principal_arns" {
  description = "Who may assume the drorch role (the role drorch's host runs as)."
  type        = list(string)
}

variable "tags" {
  description = "Default tags of every resource."
  type        = map(string)
  default     = { managed-by = "terraform", service = "drorch" }
}
