output "primary_instance_id" {
  description = "The primary's DB instance identifier."
  value       = aws_db_instance.primary.identifier
}

output "replica_instance_id" {
  description = "The replica's DB instance identifier."
  value       = aws_db_instance.replica.identifier
}

output "primary_address" {
  description = "The primary's endpoint host name."
  value       = aws_db_instance.primary.address
}

output "replica_address" {
  description = "The replica's endpoint host name."
  value       = aws_db_instance.replica.address
}

output "port" {
  description = "PostgreSQL port of both instances."
  value       = var.port
}

output "db_name" {
  description = "The database's name."
  value       = var.db_name
}

output "master_username" {
  description = "The master user's name (not a secret; the password is not an output)."
  value       = var.master_username
}

output "instance_arns" {
  description = "Both instances' ARNs (for the drorch IAM policy)."
  value       = [aws_db_instance.primary.arn, aws_db_instance.replica.arn]
}
