variable "table_name" {
  description = "Table name."
  type        = string
}

variable "replica_regions" {
  description = "Regions to replicate to (the secondary region). Empty: no replica (moto hangs on replicas)."
  type        = list(string)
  default     = []
}

variable "stream_enabled" {
  description = "Enable the stream even without replicas (replicas turn it on regardless)."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "Customer managed KMS key; null: the AWS owned key."
  type        = string
  default     = null
}

variable "replica_kms_key_arns" {
  description = "Per replica region, its customer managed KMS key (required per replica when kms_key_arn is set)."
  type        = map(string)
  default     = {}
}

variable "deletion_protection" {
  description = "Refuse deletion of the table."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags."
  type        = map(string)
  default     = {}
}
