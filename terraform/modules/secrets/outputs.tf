output "secret_name" {
  description = "The secret's name, the same in both regions (the runbook's secrets[].secret_id)."
  value       = aws_secretsmanager_secret.primary.name
}

output "replicated" {
  description = "true: the secondary copy is a Secrets Manager replica (read-only; drorch writes the primary copy only)."
  value       = var.replicate
}

output "primary_arn" {
  description = "ARN of the primary region's copy."
  value       = aws_secretsmanager_secret.primary.arn
}

output "secondary_arn" {
  description = "ARN of the secondary region's copy (for a replica: the primary's ARN with the replica's region)."
  value       = local.secondary_arn
}

output "secret_arns" {
  description = "Both copies' ARNs (for the drorch IAM policy)."
  value       = [aws_secretsmanager_secret.primary.arn, local.secondary_arn]
}
