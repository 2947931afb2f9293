variable "primary_identifier" {
  description = "DB instance identifier of the primary (the runbook's endpoints.<primary>.instance_id)."
  type        = string
}

variable "replica_identifier" {
  description = "DB instance identifier of the cross-region read replica (endpoints.<secondary>.instance_id)."
  type        = string
}

variable "engine_version" {
  description = "PostgreSQL major or major.minor version, e.g. 15 or 15.7."
  type        = string
  default     = "15"
}

variable "instance_class" {
  description = "Instance class of both instances (the replica must keep up with the primary's writes)."
  type        = string
  default     = "db.m6g.large"
}

variable "allocated_storage" {
  description = "Storage in GiB."
  type        = number
  default     = 100
}

variable "storage_encrypted" {
  description = "Encrypt storage; then replica_kms_key_id is required."
  type        = bool
  default     = true
}

variable "primary_kms_key_id" {
  description = "KMS key ARN in the primary region; null: aws/rds."
  type        = string
  default     = null
}

variable "replica_kms_key_id" {
  description = "KMS key ARN in the secondary region (required for an encrypted cross-region replica)."
  type        = string
  default     = null
}

variable "db_name" {
  description = "Database created on the primary (the runbook's endpoints.*.dbname)."
  type        = string
  default     = "app"
}

variable "master_username" {
  description = "Master user name (what drorch connects as unless you give it a role of its own)."
  type        = string
  default     = "postgres"
}

variable "master_password" {
  description = "Master password. Sensitive; it is stored in the Terraform state."
  type        = string
  sensitive   = true
}

variable "port" {
  description = "PostgreSQL port."
  type        = number
  default     = 5432
}

variable "primary_subnet_group_name" {
  description = "DB subnet group in the primary region."
  type        = string
  default     = null
}

variable "replica_subnet_group_name" {
  description = "DB subnet group in the secondary region."
  type        = string
  default     = null
}

variable "primary_security_group_ids" {
  description = "Security groups of the primary (must let drorch's host reach the port)."
  type        = list(string)
  default     = []
}

variable "replica_security_group_ids" {
  description = "Security groups of the replica."
  type        = list(string)
  default     = []
}

variable "primary_parameter_group_name" {
  description = "Parameter group of the primary; null: the engine default."
  type        = string
  default     = null
}

variable "replica_parameter_group_name" {
  description = "Parameter group of the replica; null: the engine default."
  type        = string
  default     = null
}

variable "multi_az" {
  description = "Multi-AZ in each region."
  type        = bool
  default     = true
}

variable "backup_retention_period" {
  description = "Days of automated backups on the primary (at least 1: a read replica needs them)."
  type        = number
  default     = 7

  validation {
    condition     = var.backup_retention_period >= 1
    error_message = "A read replica's source needs automated backups (at least 1 day)."
  }
}

variable "iam_database_authentication_enabled" {
  description = "Allow IAM database authentication on the primary."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Refuse deletion of either instance."
  type        = bool
  default     = true
}

variable "skip_final_snapshot" {
  description = "Delete the primary without a final snapshot (tests only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags."
  type        = map(string)
  default     = {}
}

variable "performance_insights_enabled" {
  description = "Performance Insights on both instances (7 days of history are free of charge)."
  type        = bool
  default     = true
}
