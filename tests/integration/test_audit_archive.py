"""``drorch audit ship`` / ``audit verify s3://...`` against the worker's moto server: an
S3 bucket with versioning and Object Lock as ``terraform/modules/audit-bucket`` makes it.

What moto does here as S3 does (checked in these tests): a PUT with ``If-None-Match: *``
to an existing key is refused (412), a locked version cannot be deleted (AccessDenied),
and a plain PUT to an existing key is *accepted* as a new version (Object Lock protects
versions, not keys). So tampering is tried the one way Object Lock leaves open, a new
version over a shipped object, and verify must catch it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from drorch.adapters.aws import AwsClients
from drorch.archive.layout import ArchiveUrl
from drorch.archive.ship import ShipRefused, ship
from drorch.archive.verify import verify_archive
from drorch.audit import AuditLog, seal
from drorch.redact import Redactor

SECRET = "hunter2-s3cr3t-value"


@pytest.fixture
def s3(worker_moto: tuple[int, Path]) -> Any:
    return AwsClients(f"http://127.0.0.1:{worker_moto[0]}")("s3", "us-east-1")


def _bucket(s3: Any, locked: bool = True) -> str:
    name = f"audit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
    if locked:
        s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    return name


def _log(tmp_path: Path, n: int, start: int = 0) -> Path:
    """An audit log of ``n`` more entries; one carries a secret the redactor knows and a
    DSN password, as a step's inputs might."""
    log = AuditLog(tmp_path / "audit.jsonl", redactor=Redactor([SECRET]))
    for i in range(start, start + n):
        log.record("step.freeze.applied", actor="auto", incident="inc-1", reason=f"step {i}",
                   inputs={"dsn": f"host=a password={SECRET}", "note": f"uses {SECRET}"})
    return log.path


def _report(tmp_path: Path, head: str) -> Path:
    path = tmp_path / "reports" / "inc-1.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"incident_id": "inc-1", "audit": {"head": head},
                                "summary": "failover"}, indent=2) + "\n")
    return path


def _versions(s3: Any, bucket: str) -> list[tuple[str, str]]:
    got = s3.list_object_versions(Bucket=bucket).get("Versions", [])
    return sorted((v["Key"], v["VersionId"]) for v in got)


def test_ship_is_write_once_incremental_locked_and_verifies(s3: Any, tmp_path: Path) -> None:
    """First ship: one chain segment, one head, one report, each under COMPLIANCE
    retention until now + retention days; no secret leaves. Again: nothing written. After
    new entries: one more segment and head, nothing else. The archive verifies."""
    bucket, url = (b := _bucket(s3)), ArchiveUrl.parse(f"s3://{b}/drorch/lab")
    log = _log(tmp_path, 3)
    head = json.loads(log.read_text().splitlines()[-1])["hash"]
    reports = [("inc-1", _report(tmp_path, head)), ("inc-2", tmp_path / "reports/none.json")]
    now = datetime.now(UTC)
    first = ship(s3, url, runbook="lab", log=log, reports=reports, retention_days=3, now=now)
    assert first.entries == (1, 3)
    assert [k.split("/")[0] for k in first.written] == ["chain", "heads", "incidents"]
    stored = _versions(s3, bucket)
    assert len(stored) == 3
    for key, version in stored:  # moto has no GetObjectRetention: GetObject's headers
        got = s3.get_object(Bucket=bucket, Key=key, VersionId=version)
        assert got["ObjectLockMode"] == "COMPLIANCE"
        assert abs(got["ObjectLockRetainUntilDate"] - (now + timedelta(days=3))) < timedelta(
            seconds=2)
        assert SECRET.encode() not in got["Body"].read()
    assert stored[0][0] == "drorch/lab/chain/000000000001-000000000003.jsonl"
    assert s3.get_object(Bucket=bucket, Key=stored[0][0])["Body"].read() == log.read_bytes()

    again = ship(s3, url, runbook="lab", log=log, reports=reports, retention_days=3)
    assert again.written == [] and "nothing new to ship" in again.message()
    assert _versions(s3, bucket) == stored

    _log(tmp_path, 2, start=3)
    more = ship(s3, url, runbook="lab", log=log, reports=reports, retention_days=3)
    assert more.written == ["chain/000000000004-000000000005.jsonl",
                            "heads/000000000005.json"]
    assert len(_versions(s3, bucket)) == 5

    checked = verify_archive(s3, url)
    assert checked.ok, checked.problems
    assert (checked.entries, checked.heads, checked.reports) == (5, 2, 1)
    assert checked.head == json.loads(log.read_text().splitlines()[-1])["hash"]
    assert verify_archive(s3, url, expected_head=head).ok
    assert not verify_archive(s3, url, expected_head="f" * 64).ok
    # a prefix nothing was shipped to (a typo) is no intact archive
    empty = verify_archive(s3, ArchiveUrl.parse(f"s3://{bucket}/nothing-here"))
    assert not empty.ok and "nothing has been shipped here" in empty.problems[0]


def test_a_new_version_over_a_shipped_object_is_found(s3: Any, tmp_path: Path) -> None:
    """Object Lock refuses deleting the shipped version but accepts a new version of the
    key: verify names the key, its two versions and the altered entry; a report replaced
    the same way no longer matches its name."""
    bucket, url = (b := _bucket(s3)), ArchiveUrl.parse(f"s3://{b}")
    log = _log(tmp_path, 3)
    head = json.loads(log.read_text().splitlines()[-1])["hash"]
    shipped = ship(s3, url, runbook="lab", log=log, reports=[("inc-1", _report(tmp_path, head))],
                   retention_days=1)
    segment, report = shipped.written[0], shipped.written[2]
    original = s3.get_object(Bucket=bucket, Key=segment)
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=segment, VersionId=original["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    lines = original["Body"].read().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"reason":"step 1"', b'"reason":"nothing happened"')
    s3.put_object(Bucket=bucket, Key=segment, Body=b"".join(lines))
    s3.put_object(Bucket=bucket, Key=report, Body=b'{"incident_id": "inc-1"}\n')

    checked = verify_archive(s3, url)
    assert not checked.ok
    text = "\n".join(checked.problems)
    assert f"{segment}: 2 versions (overwritten or deleted after it was shipped" in text
    assert original["VersionId"] in text
    assert f"{segment} line 2 was altered: its hash does not match its content" in text
    assert f"{report}: its content does not match its name (altered)" in text


def test_ship_refuses_an_unlocked_bucket_another_log_and_a_secret(
        s3: Any, tmp_path: Path) -> None:
    """Nothing is written to a bucket without Object Lock, to an archive of another log,
    or when an entry holds what the redactor masks."""
    log = _log(tmp_path, 2)
    plain = ArchiveUrl.parse(f"s3://{_bucket(s3, locked=False)}")
    with pytest.raises(ShipRefused, match="has no Object Lock enabled"):
        ship(s3, plain, runbook="lab", log=log, reports=[], retention_days=1)
    assert _versions(s3, plain.bucket) == []

    url = ArchiveUrl.parse(f"s3://{_bucket(s3)}")
    ship(s3, url, runbook="lab", log=_log(tmp_path / "other", 2), reports=[], retention_days=1)
    with pytest.raises(ShipRefused, match="is not the local log's entry 2"):
        ship(s3, url, runbook="lab", log=log, reports=[], retention_days=1)

    leaky = tmp_path / "leaky.jsonl"
    body = {"incident": None, "actor": "auto", "action": "step.x.applied", "reason": None,
            "inputs": {"password": "plain-text"}, "outcome": "ok", "detail": None,
            "ts": "2026-12-01T00:00:00+00:00"}
    leaky.write_text(json.dumps(seal(body, seq=1, prev="0" * 64), sort_keys=True,
                                separators=(",", ":")) + "\n")
    fresh = ArchiveUrl.parse(f"s3://{_bucket(s3)}")
    with pytest.raises(ShipRefused, match="audit entry 1 holds something the redactor masks"):
        ship(s3, fresh, runbook="lab", log=leaky, reports=[], retention_days=1)
    assert _versions(s3, fresh.bucket) == []


def test_ship_refuses_a_local_log_that_does_not_verify(s3: Any, tmp_path: Path) -> None:
    """An edited entry in the local log: nothing is shipped, the line is named."""
    log = _log(tmp_path, 3)
    log.write_bytes(log.read_bytes().replace(b"step 1", b"step 7"))
    url = ArchiveUrl.parse(f"s3://{_bucket(s3)}")
    with pytest.raises(ShipRefused, match="line 2 was altered"):
        ship(s3, url, runbook="lab", log=log, reports=[], retention_days=1)
    assert _versions(s3, url.bucket) == []
