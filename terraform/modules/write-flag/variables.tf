variable "parameter_name" {
  description = "SSM parameter name, the same in every region (the runbook's write_flag.parameter), e.g. /drorch/app/writes-frozen."
  type        = string

  validation {
    condition     = startswith(var.parameter_name, "/")
    error_message = "Use a hierarchical name starting with / so the IAM policy can scope it (arn:...:parameter/NAME)."
  }
}

variable "description" {
  description = "Shown in the SSM console."
  type        = string
  default     = "drorch write flag: \"true\" while writes are frozen during a failover; applications and jobs honour it."
}

variable "tags" {
  description = "Tags for the parameter."
  type        = map(string)
  default     = {}
}
