output "bucket_name" {
  description = "The bucket's name."
  value       = aws_s3_bucket.audit.bucket
}

output "bucket_arn" {
  description = "The bucket's ARN."
  value       = aws_s3_bucket.audit.arn
}

output "retention_days" {
  description = "Compliance-mode retention in days."
  value       = var.retention_days
}
