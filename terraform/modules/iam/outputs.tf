output "role_arn" {
  description = "The role drorch assumes."
  value       = aws_iam_role.drorch.arn
}

output "role_name" {
  description = "The role's name."
  value       = aws_iam_role.drorch.name
}

output "policy_arn" {
  description = "The policy's ARN."
  value       = aws_iam_policy.drorch.arn
}

output "policy_json" {
  description = "The policy document (for review and for tests comparing it with the calls drorch makes)."
  value       = data.aws_iam_policy_document.drorch.json
}

output "actions" {
  description = "Every action the policy grants, sorted."
  value       = sort(distinct(concat(flatten([for s in local.statements : s.actions]), ["route53:ChangeResourceRecordSets"])))
}
