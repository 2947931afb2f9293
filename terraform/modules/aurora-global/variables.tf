variable "global_cluster_id" {
  description = "Global cluster identifier (the runbook's databases[].global_cluster_id)."
  type        = string
}

variable "primary_cluster_id" {
  description = "Regional cluster identifier in the primary region (endpoints.<primary>.cluster_id)."
  type        = string
}

variable "secondary_cluster_id" {
  description = "Regional cluster identifier in the secondary region (endpoints.<secondary>.cluster_id)."
  type        = string
}

variable "engine_version" {
  description = "Aurora PostgreSQL version that supports global databases, e.g. 15.4."
  type        = string
  default     = "15.4"
}

variable "instance_class" {
  description = "Instance class (global databases need memory-optimized classes, e.g. db.r6g.large)."
  type        = string
  default     = "db.r6g.large"
}

variable "instances_per_cluster" {
  description = "DB instances per regional cluster (at least 1)."
  type        = number
  default     = 1

  validation {
    condition     = var.instances_per_cluster >= 1
    error_message = "Each regional cluster needs at least one instance."
  }
}

variable "db_name" {
  description = "Database created in the global cluster."
  type        = string
  default     = "app"
}

variable "master_username" {
  description = "Master user name."
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

variable "storage_encrypted" {
  description = "Encrypt storage; then secondary_kms_key_id is required."
  type        = bool
  default     = true
}

variable "primary_kms_key_id" {
  description = "KMS key ARN in the primary region; null: aws/rds."
  type        = string
  default     = null
}

variable "secondary_kms_key_id" {
  description = "KMS key ARN in the secondary region (required when encrypted)."
  type        = string
  default     = null
}

variable "primary_subnet_group_name" {
  description = "DB subnet group in the primary region."
  type        = string
  default     = null
}

variable "secondary_subnet_group_name" {
  description = "DB subnet group in the secondary region."
  type        = string
  default     = null
}

variable "primary_security_group_ids" {
  description = "Security groups of the primary cluster."
  type        = list(string)
  default     = []
}

variable "secondary_security_group_ids" {
  description = "Security groups of the secondary cluster."
  type        = list(string)
  default     = []
}

variable "backup_retention_period" {
  description = "Days of automated backups."
  type        = number
  default     = 7
}

variable "deletion_protection" {
  description = "Refuse deletion."
  type        = bool
  default     = true
}

variable "skip_final_snapshot" {
  description = "Delete the primary cluster without a final snapshot (tests only)."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags."
  type        = map(string)
  default     = {}
}

variable "performance_insights_enabled" {
  description = "Performance Insights on every instance (7 days of history are free of charge)."
  type        = bool
  default     = true
}

variable "iam_database_authentication_enabled" {
  description = "Allow IAM database authentication on both regional clusters."
  type        = bool
  default     = true
}
