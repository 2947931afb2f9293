variable "role_name" {
  description = "Name of the role drorch assumes (the policy is ROLE-policy)."
  type        = string
}

variable "trusted_principal_arns" {
  description = "Who may assume the role: the ARNs of the roles or users drorch runs as (e.g. its host's instance role)."
  type        = list(string)
}

variable "write_flag_parameter_arns" {
  description = "ARNs of the write flag parameter in each region (write-flag's parameter_arn)."
  type        = list(string)
}

variable "secret_arns" {
  description = "ARNs of every copy of the connection secrets (secrets' secret_arns)."
  type        = list(string)
}

variable "hosted_zone_id" {
  description = "The hosted zone of the weighted records."
  type        = string
}

variable "record_names" {
  description = "Record names drorch may UPSERT (trailing dot optional)."
  type        = list(string)
}

variable "record_types" {
  description = "Record types drorch may UPSERT."
  type        = list(string)
  default     = ["A"]
}

variable "health_check_ids" {
  description = "Route 53 health checks drorch's probes may read (route53_health_check probes)."
  type        = list(string)
  default     = []
}

variable "alarm_arns" {
  description = "CloudWatch alarms drorch's probes may describe (cloudwatch_alarm probes)."
  type        = list(string)
  default     = []
}

variable "alarm_queue_arn" {
  description = "The SQS queue drorch watch reads; null: no queue permission."
  type        = string
  default     = null
}

variable "alarm_topic_arn" {
  description = "The SNS topic the alarms notify (readiness checks it delivers to the queue); null: none."
  type        = string
  default     = null
}

variable "audit_bucket_arn" {
  description = "The audit-bucket module's bucket, where drorch audit ship writes; null: no S3 permission."
  type        = string
  default     = null
}

variable "rds_instance_arns" {
  description = "RDS for PostgreSQL instances (primary and replica); empty for Aurora."
  type        = list(string)
  default     = []
}

variable "aurora_global_cluster_arn" {
  description = "Aurora global cluster; null for RDS."
  type        = string
  default     = null
}

variable "aurora_cluster_arns" {
  description = "Aurora regional clusters (both regions)."
  type        = list(string)
  default     = []
}

variable "kms_key_arns" {
  description = "Customer managed keys of the secrets (only when they are not aws/secretsmanager: Secrets Manager then needs kms:Decrypt to read and kms:GenerateDataKey to write)."
  type        = list(string)
  default     = []
}

variable "max_session_duration" {
  description = "Longest session, in seconds (a failover plus its validation must fit)."
  type        = number
  default     = 3600
}

variable "permissions_boundary_arn" {
  description = "Permissions boundary for the role, if your organisation requires one."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags."
  type        = map(string)
  default     = {}
}
