variable "name" {
  description = "Secret name (the runbook's secrets[].secret_id), e.g. app/main/db."
  type        = string
}

variable "description" {
  description = "Shown in the Secrets Manager console."
  type        = string
  default     = "Database connection for the applications; drorch repoints host/port on failover."
}

variable "replica_region" {
  description = "The secondary AWS region (where the replica or the second secret lives); must be the aws.secondary provider's region."
  type        = string
}

variable "kms_key_id" {
  description = "KMS key in the primary region; null uses aws/secretsmanager (then drorch's role needs no KMS permission)."
  type        = string
  default     = null
}

variable "replica_kms_key_id" {
  description = "KMS key in the replica region; null uses aws/secretsmanager there."
  type        = string
  default     = null
}

variable "recovery_window_in_days" {
  description = "Days a deleted secret can be restored (0 deletes at once, 7-30 otherwise)."
  type        = number
  default     = 30
}

variable "replicate" {
  description = "true: one secret replicated by Secrets Manager (drorch can rewrite the primary copy only); false: an independent secret per region, both rewritten by drorch."
  type        = bool
  default     = true
}

variable "create_initial_version" {
  description = "Write initial_value as the first version (drorch reads AWSCURRENT, which must exist)."
  type        = bool
  default     = true
}

variable "initial_value" {
  description = "The first version's JSON object; must contain the keys the runbook's host_key/port_key name (default host, port)."
  type        = map(string)
  default     = {}
  sensitive   = true
}

variable "tags" {
  description = "Tags for the secret."
  type        = map(string)
  default     = {}
}
