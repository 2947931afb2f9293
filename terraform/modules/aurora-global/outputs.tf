output "global_cluster_id" {
  description = "The global cluster's identifier."
  value       = aws_rds_global_cluster.this.id
}

output "global_cluster_arn" {
  description = "The global cluster's ARN (for the drorch IAM policy)."
  value       = aws_rds_global_cluster.this.arn
}

output "primary_cluster_id" {
  description = "The primary regional cluster's identifier."
  value       = aws_rds_cluster.primary.cluster_identifier
}

output "secondary_cluster_id" {
  description = "The secondary regional cluster's identifier."
  value       = aws_rds_cluster.secondary.cluster_identifier
}

output "primary_endpoint" {
  description = "The primary cluster's writer endpoint."
  value       = aws_rds_cluster.primary.endpoint
}

output "secondary_endpoint" {
  description = "The secondary cluster's cluster (writer) endpoint: it accepts writes once the cluster is promoted."
  value       = aws_rds_cluster.secondary.endpoint
}

output "secondary_reader_endpoint" {
  description = "The secondary cluster's reader endpoint."
  value       = aws_rds_cluster.secondary.reader_endpoint
}

output "port" {
  description = "PostgreSQL port."
  value       = var.port
}

output "db_name" {
  description = "The database's name."
  value       = var.db_name
}

output "master_username" {
  description = "The master user's name (the password is not an output)."
  value       = var.master_username
}

output "cluster_arns" {
  description = "Both regional clusters' ARNs (for the drorch IAM policy)."
  value       = [aws_rds_cluster.primary.arn, aws_rds_cluster.secondary.arn]
}
