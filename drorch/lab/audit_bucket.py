"""The lab's audit archive bucket, as ``terraform/modules/audit-bucket`` makes it:
versioning and Object Lock enabled at creation, a default retention in COMPLIANCE mode
(``audit.archive.retention_days``). moto enforces Object Lock (a locked version cannot
be deleted) and, as S3 does, keeps a PUT to an existing key as a new version.
Lab only."""

from __future__ import annotations

from typing import Any

from drorch.archive.layout import ArchiveUrl
from drorch.config import Runbook


def create(runbook: Runbook, aws: Any) -> str | None:
    """Create the bucket the runbook's ``audit.archive`` names; its name, or ``None``
    when the runbook names none. A fresh (reset) moto is assumed."""
    archive = runbook.audit.archive
    if archive is None:
        return None
    bucket = ArchiveUrl.parse(archive.url).bucket
    region = archive.aws_region or runbook.primary.aws_region
    s3 = aws("s3", region)
    where = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True, **where)
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": archive.retention_days}}})
    return bucket
