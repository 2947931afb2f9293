# The write flag drorch flips during a failover (drorch/adapters/flags.py: PutParameter
# with Overwrite, Type String, value "true" or "false"; GetParameter to read it). One
# instance of this module per region: applications in each region read their own copy.
#
# Terraform creates the parameter with "false" and then never touches its value again
# (ignore_changes): the value is drorch's state during an incident, and a later
# `terraform apply` must not unfreeze writes behind drorch's back.
resource "aws_ssm_parameter" "flag" {
  #checkov:skip=CKV2_AWS_34:the value is "true" or "false", no secret; a SecureString would make every application need kms:Decrypt to read whether it may write
  name        = var.parameter_name
  description = var.description
  type        = "String"
  value       = "false"
  tier        = "Standard"
  tags        = var.tags

  lifecycle {
    ignore_changes = [value]
  }
}
