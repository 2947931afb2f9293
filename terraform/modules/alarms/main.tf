# Route 53 health check -> CloudWatch alarm -> SNS topic -> SQS queue -> `drorch watch`.
#
# Route 53 publishes health check metrics (namespace AWS/Route53, HealthCheckStatus:
# 1 healthy, 0 unhealthy) only in US East (N. Virginia), so the alarms must live in
# us-east-1 (https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/monitoring-health-checks.html),
# and an alarm notifies an SNS topic in its own region. Give this module a us-east-1
# provider. The queue can be read from anywhere; drorch reads it with ReceiveMessage
# and DeleteMessageBatch (drorch/health/alarms.py), and accepts both the SNS envelope
# and raw delivery.
#
# Every alarm carries the drorch region it is about in its name; the alarm's ARN names
# us-east-1 for both, so the runbook maps alarm names to regions (health.alarm_regions).

data "aws_region" "current" {}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name_prefix}-alarms"
  kms_master_key_id = var.sns_kms_key_id
  tags              = var.tags
}

resource "aws_sqs_queue" "alarms" {
  name                       = "${var.name_prefix}-alarms"
  message_retention_seconds  = var.message_retention_seconds
  visibility_timeout_seconds = var.visibility_timeout_seconds
  receive_wait_time_seconds  = 20
  sqs_managed_sse_enabled    = true
  tags                       = var.tags
}

# SNS may deliver to the queue only from this topic: the queue policy the SNS -> SQS
# subscription needs (https://docs.aws.amazon.com/sns/latest/dg/subscribe-sqs-queue-to-sns-topic.html).
data "aws_iam_policy_document" "queue" {
  statement {
    sid       = "AllowAlarmTopic"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.alarms.arn]

    principals {
      type        = "Service"
      identifiers = ["sns.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_sns_topic.alarms.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "alarms" {
  queue_url = aws_sqs_queue.alarms.id
  policy    = data.aws_iam_policy_document.queue.json
}

resource "aws_sns_topic_subscription" "queue" {
  topic_arn            = aws_sns_topic.alarms.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.alarms.arn
  raw_message_delivery = false

  depends_on = [aws_sqs_queue_policy.alarms]
}

resource "aws_cloudwatch_metric_alarm" "health_check" {
  for_each = var.health_check_ids

  alarm_name          = "${var.name_prefix}-${each.key}-unhealthy"
  alarm_description   = "drorch: Route 53 health check ${each.value} of region ${each.key} is failing."
  namespace           = "AWS/Route53"
  metric_name         = "HealthCheckStatus"
  statistic           = "Minimum"
  period              = var.period_seconds
  evaluation_periods  = var.evaluation_periods
  datapoints_to_alarm = var.evaluation_periods
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  # no data from a health check means it no longer reports: treat it as failing
  treat_missing_data = "breaching"
  dimensions = {
    HealthCheckId = each.value
  }
  alarm_actions = [aws_sns_topic.alarms.arn]
  ok_actions    = [aws_sns_topic.alarms.arn]
  tags          = var.tags
}
