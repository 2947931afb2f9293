output "queue_url" {
  description = "The queue drorch watch reads (the runbook's health.alarm_queue_url)."
  value       = aws_sqs_queue.alarms.id
}

output "queue_arn" {
  description = "The queue's ARN (for the drorch IAM policy)."
  value       = aws_sqs_queue.alarms.arn
}

output "topic_arn" {
  description = "The SNS topic the alarms notify."
  value       = aws_sns_topic.alarms.arn
}

output "aws_region" {
  description = "Where the alarms live (us-east-1 for Route 53 health check metrics)."
  value       = data.aws_region.current.name
}

output "alarm_names" {
  description = "Per drorch region name, its alarm's name (the runbook's health.alarm_regions, inverted)."
  value       = { for k, a in aws_cloudwatch_metric_alarm.health_check : k => a.alarm_name }
}

output "alarm_arns" {
  description = "The alarms' ARNs (for the drorch IAM policy)."
  value       = [for a in aws_cloudwatch_metric_alarm.health_check : a.arn]
}
