variable "name_prefix" {
  description = "Prefix of the topic, queue and alarm names, e.g. drorch-app."
  type        = string
}

variable "health_check_ids" {
  description = "Per drorch region name, the Route 53 health check id to alarm on (route53-failover's health_check_ids)."
  type        = map(string)
}

variable "period_seconds" {
  description = "Alarm period in seconds."
  type        = number
  default     = 60
}

variable "evaluation_periods" {
  description = "Consecutive failing periods before the alarm fires."
  type        = number
  default     = 2
}

variable "message_retention_seconds" {
  description = "How long an unread notification stays in the queue (default 4 days)."
  type        = number
  default     = 345600
}

variable "visibility_timeout_seconds" {
  description = "How long a received, not yet deleted message stays hidden: drorch deletes after journaling, so a watcher killed in between reads it again after this."
  type        = number
  default     = 60
}

variable "sns_kms_key_id" {
  description = "KMS key for the topic; null leaves it unencrypted. The AWS managed aws/sns key does not work: CloudWatch needs kms:Decrypt/GenerateDataKey on a customer managed key's policy."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags."
  type        = map(string)
  default     = {}
}
