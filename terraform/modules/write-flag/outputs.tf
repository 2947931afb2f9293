output "parameter_name" {
  description = "The parameter's name (the runbook's write_flag.parameter)."
  value       = aws_ssm_parameter.flag.name
}

output "parameter_arn" {
  description = "The parameter's ARN (for the drorch IAM policy)."
  value       = aws_ssm_parameter.flag.arn
}
