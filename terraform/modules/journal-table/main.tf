# DynamoDB table for drorch's journal and lease (a later issue moves them off the local
# SQLite file; drorch does not use this table yet). A global table (version
# 2019.11.21) replicates to the regions in var.replica_regions; replicas need a stream
# with new and old images
# (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/V2globaltables.tutorial.html).
# Replicas are behind a variable because the lab's moto hangs on them.
resource "aws_dynamodb_table" "journal" {
  name         = var.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  stream_enabled   = length(var.replica_regions) > 0 || var.stream_enabled
  stream_view_type = length(var.replica_regions) > 0 || var.stream_enabled ? "NEW_AND_OLD_IMAGES" : null

  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  # expired lease items are removed by DynamoDB
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  dynamic "replica" {
    for_each = var.replica_regions
    content {
      region_name            = replica.value
      point_in_time_recovery = true
      kms_key_arn            = lookup(var.replica_kms_key_arns, replica.value, null)
    }
  }

  tags = var.tags
}
