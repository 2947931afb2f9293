"""S3 for the audit archive: write-once objects under Object Lock, and reading them back.

The only code that calls S3. ``client`` is a boto3 S3 client from
``drorch.adapters.aws.AwsClients`` (bounded connect/read timeouts, botocore's standard
retry mode). Facts relied on, from the S3 User Guide and API Reference:

- Object Lock works per object *version*: a PUT to an existing key of a versioned
  bucket adds a version, it does not replace the locked one, and a version under
  COMPLIANCE retention cannot be deleted or shortened by anyone until it ends
  ("Locking objects with Object Lock", retention modes). So a write-once archive is
  kept write-once by ``If-None-Match: *`` (conditional writes: 412 Precondition Failed
  when the key exists) and checked by counting versions.
- A PUT that sets a retention needs ``Content-MD5`` or ``x-amz-sdk-checksum-algorithm``
  (S3 answers ``MissingUploadObjectWithObjectLockHeaders`` otherwise; moto too): the
  object's SHA-256 is sent, and S3 checks it.
- IAM: ``PutObject`` with a retention also needs ``s3:PutObjectRetention``;
  ``GetObject`` of a given version needs ``s3:GetObjectVersion``, and shows the version's
  retention only with ``s3:GetObjectRetention`` (moto 5.2 has no ``GetObjectRetention``
  call: the headers are what both answer); ``ListObjectsV2``
  is authorised as ``s3:ListBucket``, ``ListObjectVersions`` as ``s3:ListBucketVersions``,
  ``GetObjectLockConfiguration`` as ``s3:GetBucketObjectLockConfiguration``
  (Service Authorization Reference, Amazon S3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError


class ArchiveUnavailable(RuntimeError):
    """The bucket cannot serve as the archive (missing, no Object Lock, access denied)."""


@dataclass(frozen=True)
class Version:
    """One stored version of a key (``delete_marker``: a DELETE left a marker here)."""

    key: str
    version_id: str
    is_latest: bool
    delete_marker: bool = False


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def object_lock(client: Any, bucket: str) -> dict[str, Any] | None:
    """The bucket's Object Lock configuration (``ObjectLockEnabled``, ``Rule``), or
    ``None`` when it has none. Raises ``ArchiveUnavailable`` when the bucket is missing or
    not readable."""
    try:
        return dict(client.get_object_lock_configuration(Bucket=bucket)
                    .get("ObjectLockConfiguration") or {})
    except ClientError as exc:
        if _code(exc) == "ObjectLockConfigurationNotFoundError":
            return None
        raise ArchiveUnavailable(f"s3://{bucket}: {_code(exc) or exc}") from exc


def list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix`` (latest versions), sorted."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def list_versions(client: Any, bucket: str, prefix: str) -> list[Version]:
    """Every version and delete marker under ``prefix`` (a bucket without versioning has
    one version per key, id ``null``)."""
    out: list[Version] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket,
                                                                       Prefix=prefix):
        out += [Version(v["Key"], v["VersionId"], v["IsLatest"])
                for v in page.get("Versions", [])]
        out += [Version(m["Key"], m["VersionId"], m["IsLatest"], True)
                for m in page.get("DeleteMarkers", [])]
    return out


@dataclass(frozen=True)
class Stored:
    """One object version as ``GetObject`` returns it. ``lock_mode``/``retain_until``
    come from its ``x-amz-object-lock-*`` headers, which S3 sends only to a caller allowed
    ``s3:GetObjectRetention`` (without it they are ``None``: read as "no retention", which
    fails a verification rather than passing it)."""

    body: bytes
    version_id: str | None
    lock_mode: str | None
    retain_until: datetime | None


def get(client: Any, bucket: str, key: str, version_id: str | None = None) -> Stored:
    """The object (a given version when ``version_id``; ``"null"`` is a bucket without
    versioning's only one)."""
    extra = {"VersionId": version_id} if version_id and version_id != "null" else {}
    got = client.get_object(Bucket=bucket, Key=key, **extra)
    return Stored(bytes(got["Body"].read()), got.get("VersionId"),
                  got.get("ObjectLockMode"), got.get("ObjectLockRetainUntilDate"))


def put_once(client: Any, bucket: str, key: str, body: bytes, *, retain_until: datetime,
             content_type: str = "application/json") -> str | None:
    """Write ``body`` at ``key`` only if no object is there (``If-None-Match: *``), under
    COMPLIANCE retention until ``retain_until``; returns the new version id, or ``None``
    when the key already existed (nothing written: the caller compares what is there)."""
    try:  # botocore computes the SHA-256 and sends it with its algorithm's name
        made = client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*",
                                 ContentType=content_type, ChecksumAlgorithm="SHA256",
                                 ObjectLockMode="COMPLIANCE",
                                 ObjectLockRetainUntilDate=retain_until)
    except ClientError as exc:
        if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
            return None
        raise
    return str(made.get("VersionId") or "null")
