output "table_name" {
  description = "The table's name."
  value       = aws_dynamodb_table.journal.name
}

output "table_arn" {
  description = "The table's ARN."
  value       = aws_dynamodb_table.journal.arn
}

output "replica_regions" {
  description = "Regions the table is replicated to."
  value       = var.replica_regions
}
