# The audit archive: an S3 bucket with versioning and Object Lock in compliance mode, so
# a shipped audit object cannot be overwritten or deleted by anyone, root included,
# until its retention ends
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html#object-lock-retention-modes).
# Object Lock must be enabled when the bucket is created and requires versioning.
resource "aws_s3_bucket" "audit" {
  #checkov:skip=CKV_AWS_18:access logs belong in a bucket of the organisation's log archive, which this module cannot know
  #checkov:skip=CKV_AWS_144:a copy in another region needs a second Object Lock bucket and a replication role; the estate chooses where
  #checkov:skip=CKV2_AWS_61:no lifecycle: Object Lock retention decides how long objects live, and expiring evidence is a records decision, not this module's
  #checkov:skip=CKV2_AWS_62:nothing consumes event notifications; drorch audit verify reads the objects themselves
  bucket              = var.bucket_name
  object_lock_enabled = true
  force_destroy       = false
  tags                = var.tags
}

resource "aws_s3_bucket_versioning" "audit" {
  bucket = aws_s3_bucket.audit.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.retention_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.audit]
}

resource "aws_s3_bucket_public_access_block" "audit" {
  bucket                  = aws_s3_bucket.audit.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != null
  }
}
