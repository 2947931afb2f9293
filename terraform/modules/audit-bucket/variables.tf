variable "bucket_name" {
  description = "Globally unique bucket name."
  type        = string
}

variable "retention_days" {
  description = "Compliance-mode retention of every object, in days: nobody can delete or overwrite an object version before then."
  type        = number
  default     = 365

  validation {
    condition     = var.retention_days >= 1
    error_message = "retention_days must be at least 1."
  }
}

variable "kms_key_arn" {
  description = "Customer managed KMS key; null: SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags."
  type        = map(string)
  default     = {}
}
