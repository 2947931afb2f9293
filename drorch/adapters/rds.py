"""Amazon RDS for PostgreSQL: read a DB instance, promote a cross-region read replica,
wait until it is available.

The facts this module relies on come from the Amazon RDS API Reference
(``DescribeDBInstances``, ``PromoteReadReplica``) and the boto3 waiter
``db_instance_available``. ``PromoteReadReplica`` answers at once and promotes in the
background: the instance shows ``modifying`` (and may reboot) before ``available``, and
a promoted instance no longer names a ``ReadReplicaSourceDBInstanceIdentifier``.
Calling it on an instance that is not a read replica fails with
``InvalidDBInstanceState``: a retried promotion after a kill is told apart by reading the
instance first (:func:`describe`), not by the error.

Every call returns AWS's request id, for the audit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError, WaiterError


class RdsError(RuntimeError):
    """An RDS call failed or an instance is not in the state a step needs; the message
    names the instance, the region and AWS's words."""


@dataclass(frozen=True)
class Instance:
    """What drorch reads of a DB instance (``DescribeDBInstances``)."""

    identifier: str
    arn: str
    status: str
    """``DBInstanceStatus``: ``available``, ``modifying``, ``backing-up``, ..."""
    address: str | None
    """``Endpoint.Address`` (None while the instance is being created)."""
    port: int | None
    source: str | None
    """``ReadReplicaSourceDBInstanceIdentifier``: the source's id, or its ARN for a
    cross-region replica; None for a standalone instance (a promoted replica)."""
    replicas: tuple[str, ...]
    """``ReadReplicaDBInstanceIdentifiers`` (ARNs for cross-region replicas)."""
    request_id: str | None = None
    instance_class: str | None = None
    security_groups: tuple[str, ...] = ()
    """``VpcSecurityGroups[].VpcSecurityGroupId``."""

    @property
    def is_replica(self) -> bool:
        return self.source is not None


def _request_id(resp: dict[str, Any]) -> str | None:
    meta = resp.get("ResponseMetadata") or {}
    return meta.get("RequestId")


def _fail(what: str, identifier: str, e: ClientError) -> RdsError:
    err = e.response.get("Error", {})
    rid = _request_id(e.response)
    return RdsError(f"RDS {what} {identifier}: {err.get('Code', '?')}: "
                    f"{err.get('Message', e)}" + (f" (request {rid})" if rid else ""))


def _instance(raw: dict[str, Any], request_id: str | None) -> Instance:
    ep = raw.get("Endpoint") or {}
    return Instance(raw["DBInstanceIdentifier"], raw.get("DBInstanceArn", ""),
                    raw.get("DBInstanceStatus", "unknown"), ep.get("Address"),
                    int(ep["Port"]) if ep.get("Port") is not None else None,
                    raw.get("ReadReplicaSourceDBInstanceIdentifier") or None,
                    tuple(raw.get("ReadReplicaDBInstanceIdentifiers") or ()), request_id,
                    raw.get("DBInstanceClass"),
                    tuple(g["VpcSecurityGroupId"] for g in raw.get("VpcSecurityGroups") or ()
                          if g.get("VpcSecurityGroupId")))


def describe(client: Any, identifier: str) -> Instance:
    """The instance as RDS describes it now. Raises :class:`RdsError` (unknown instance
    included: ``DBInstanceNotFound``)."""
    try:
        resp = client.describe_db_instances(DBInstanceIdentifier=identifier)
    except ClientError as e:
        raise _fail("describe", identifier, e) from e
    return _instance(resp["DBInstances"][0], _request_id(resp))


def promote_read_replica(client: Any, identifier: str) -> Instance:
    """Ask RDS to promote the read replica ``identifier`` to a standalone instance.

    Returns the instance as the call answered it, with the request id. Not idempotent
    by itself: a second call on the promoted instance fails (``InvalidDBInstanceState``),
    so callers read the instance first and journal the request before making it."""
    try:
        resp = client.promote_read_replica(DBInstanceIdentifier=identifier)
    except ClientError as e:
        raise _fail("promote read replica", identifier, e) from e
    return _instance(resp["DBInstance"], _request_id(resp))


Progress = Callable[[str], None]
"""Told, about every ``PROGRESS_EVERY_S`` of a long wait, what is awaited and for how long."""

PROGRESS_EVERY_S = 30.0


def _wait(client: Any, waiter: str, kwargs: dict[str, Any], timeout_s: float, delay_s: float,
          what: str, status_of: Callable[[dict[str, Any]], str],
          progress: Progress | None) -> None:
    """boto3's waiter ``waiter``, polling every ``delay_s``, at most about ``timeout_s``,
    run in rounds of about :data:`PROGRESS_EVERY_S` so that ``progress`` hears how it
    goes between rounds (boto3's waiters take no callback). Raises ``WaiterError`` when
    the waiter meets a failure state or the time is up."""
    delay = max(1, math.ceil(min(delay_s, timeout_s)))
    started = time.monotonic()
    while True:
        left = timeout_s - (time.monotonic() - started)
        rounds = max(1, math.ceil(min(left, PROGRESS_EVERY_S) / delay) + 1)
        try:
            client.get_waiter(waiter).wait(**kwargs, WaiterConfig={"Delay": delay,
                                                                   "MaxAttempts": rounds})
            return
        except WaiterError as e:
            if "Max attempts exceeded" not in str(e) or left <= PROGRESS_EVERY_S:
                raise
            if progress is not None:
                progress(f"waiting for {what}: {status_of(e.last_response or {})} after "
                         f"{time.monotonic() - started:.0f} s (up to {timeout_s:g} s)")


def _instance_status(resp: dict[str, Any]) -> str:
    return str(((resp.get("DBInstances") or [{}])[0]).get("DBInstanceStatus", "unknown"))


def wait_available(client: Any, identifier: str, timeout_s: float,
                   delay_s: float = 5.0, progress: Progress | None = None) -> Instance:
    """Wait (boto3's ``db_instance_available`` waiter, polling every ``delay_s``) until
    the instance is ``available``, at most about ``timeout_s``, telling ``progress``
    about every 30 s; then describe it. Raises :class:`RdsError` naming the last status
    seen when it is not."""
    try:
        _wait(client, "db_instance_available", {"DBInstanceIdentifier": identifier},
              timeout_s, delay_s, f"RDS instance {identifier}", _instance_status, progress)
    except WaiterError as e:
        raise RdsError(f"RDS instance {identifier} not available within {timeout_s:g}s "
                       f"(last status {_instance_status(e.last_response or {})}): "
                       f"{e}") from e
    return describe(client, identifier)


def find(client: Any, identifier: str) -> Instance | None:
    """The instance, or None when RDS knows none by that identifier (``DBInstanceNotFound``).
    Raises :class:`RdsError` for any other failure."""
    try:
        return describe(client, identifier)
    except RdsError as e:
        if "DBInstanceNotFound" in str(e):
            return None
        raise


def rename(client: Any, identifier: str, new_identifier: str) -> Instance:
    """``ModifyDBInstance`` with ``NewDBInstanceIdentifier`` and ``ApplyImmediately``: the
    instance keeps its data and answers at an endpoint named after the new identifier,
    and the old identifier (with its endpoint address) is free for another instance
    (Amazon RDS User Guide, "Renaming a DB instance"). Not idempotent by itself: callers
    look both names up first."""
    try:
        resp = client.modify_db_instance(DBInstanceIdentifier=identifier,
                                         NewDBInstanceIdentifier=new_identifier,
                                         ApplyImmediately=True)
    except ClientError as e:
        raise _fail("rename", identifier, e) from e
    return _instance(resp["DBInstance"], _request_id(resp))


def set_security_groups(client: Any, identifier: str, group_ids: list[str]) -> Instance:
    """``ModifyDBInstance`` with ``VpcSecurityGroupIds`` and ``ApplyImmediately``: the
    instance's network path becomes exactly these groups' (a fence: groups that admit
    no application). Idempotent."""
    try:
        resp = client.modify_db_instance(DBInstanceIdentifier=identifier,
                                         VpcSecurityGroupIds=list(group_ids),
                                         ApplyImmediately=True)
    except ClientError as e:
        raise _fail("set security groups of", identifier, e) from e
    return _instance(resp["DBInstance"], _request_id(resp))


def add_tags(client: Any, arn: str, tags: dict[str, str]) -> None:
    """``AddTagsToResource`` (idempotent: a key set again takes the new value)."""
    try:
        client.add_tags_to_resource(ResourceName=arn,
                                    Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    except ClientError as e:
        raise _fail("tag", arn, e) from e


@dataclass(frozen=True)
class Snapshot:
    """What drorch reads of a manual DB snapshot (``DescribeDBSnapshots``)."""

    identifier: str
    arn: str
    status: str
    """``creating``, ``available``, ..."""
    instance: str
    request_id: str | None = None


def _snapshot(raw: dict[str, Any], request_id: str | None) -> Snapshot:
    return Snapshot(raw["DBSnapshotIdentifier"], raw.get("DBSnapshotArn", ""),
                    raw.get("Status", "unknown"), raw.get("DBInstanceIdentifier", ""),
                    request_id)


def find_snapshot(client: Any, snapshot_id: str) -> Snapshot | None:
    """The manual snapshot ``snapshot_id``, or None (``DBSnapshotNotFound``)."""
    try:
        resp = client.describe_db_snapshots(DBSnapshotIdentifier=snapshot_id)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("DBSnapshotNotFound",
                                                        "DBSnapshotNotFoundFault"):
            return None
        raise _fail("describe snapshot", snapshot_id, e) from e
    found = resp.get("DBSnapshots") or []
    return _snapshot(found[0], _request_id(resp)) if found else None


def create_snapshot(client: Any, identifier: str, snapshot_id: str,
                    tags: dict[str, str]) -> Snapshot:
    """``CreateDBSnapshot`` of instance ``identifier``: a manual snapshot, kept until
    someone deletes it (manual snapshots outlive the instance and its retention period:
    Amazon RDS User Guide, "Creating a DB snapshot for a Single-AZ DB instance"). Not
    idempotent by itself (``DBSnapshotAlreadyExists``): callers look it up first."""
    try:
        resp = client.create_db_snapshot(
            DBInstanceIdentifier=identifier, DBSnapshotIdentifier=snapshot_id,
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    except ClientError as e:
        raise _fail("snapshot", identifier, e) from e
    return _snapshot(resp["DBSnapshot"], _request_id(resp))


def wait_snapshot(client: Any, snapshot_id: str, timeout_s: float,
                  delay_s: float = 15.0, progress: Progress | None = None) -> Snapshot:
    """Wait (boto3's ``db_snapshot_available`` waiter) until the snapshot is
    ``available``, at most about ``timeout_s``, telling ``progress`` about every 30 s.
    Raises :class:`RdsError`."""
    try:
        _wait(client, "db_snapshot_available", {"DBSnapshotIdentifier": snapshot_id},
              timeout_s, delay_s, f"RDS snapshot {snapshot_id}",
              lambda r: str(((r.get("DBSnapshots") or [{}])[0]).get("Status", "unknown")),
              progress)
    except WaiterError as e:
        raise RdsError(f"RDS snapshot {snapshot_id} not available within {timeout_s:g}s: "
                       f"{e}") from e
    found = find_snapshot(client, snapshot_id)
    if found is None:
        raise RdsError(f"RDS snapshot {snapshot_id} vanished after it became available")
    return found


def replica_settings(client: Any, identifier: str) -> dict[str, Any]:
    """What a new read replica that replaces ``identifier`` (in the same region) must keep
    of it, as ``CreateDBInstanceReadReplica`` arguments: its subnet group (its VPC), its
    security groups, its parameter group (a ``default.*`` one is what RDS picks anyway),
    its KMS key when encrypted (a cross-region replica of an encrypted source needs a key
    of its own region: RDS API Reference, CreateDBInstanceReadReplica, ``KmsKeyId``),
    Multi-AZ and its instance class. Without them the replica, the next primary, would
    land in the default VPC and security group."""
    try:
        raw = client.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"][0]
    except ClientError as e:
        raise _fail("describe", identifier, e) from e
    out: dict[str, Any] = {"MultiAZ": bool(raw.get("MultiAZ"))}
    if raw.get("DBInstanceClass"):
        out["DBInstanceClass"] = raw["DBInstanceClass"]
    if (raw.get("DBSubnetGroup") or {}).get("DBSubnetGroupName"):
        out["DBSubnetGroupName"] = raw["DBSubnetGroup"]["DBSubnetGroupName"]
    groups = [g["VpcSecurityGroupId"] for g in raw.get("VpcSecurityGroups") or ()
              if g.get("VpcSecurityGroupId")]
    if groups:
        out["VpcSecurityGroupIds"] = groups
    params = [g["DBParameterGroupName"] for g in raw.get("DBParameterGroups") or ()
              if not str(g.get("DBParameterGroupName", "default.")).startswith("default.")]
    if params:
        out["DBParameterGroupName"] = params[0]
    if raw.get("StorageEncrypted") and raw.get("KmsKeyId"):
        out["KmsKeyId"] = raw["KmsKeyId"]
    return out


def create_read_replica(client: Any, identifier: str, source_arn: str, source_region: str,
                        instance_class: str | None, port: int,
                        tags: dict[str, str],
                        settings: dict[str, Any] | None = None) -> Instance:
    """``CreateDBInstanceReadReplica`` in this client's region, of the instance
    ``source_arn`` in ``source_region`` (a cross-region replica names its source by ARN;
    boto3 signs the ``PreSignedUrl`` from ``SourceRegion``: RDS API Reference,
    CreateDBInstanceReadReplica). RDS copies the source's data and starts streaming; the
    instance shows ``creating`` until ``available``. ``settings``: what it keeps of the
    instance it replaces (:func:`replica_settings`). Not idempotent by itself
    (``DBInstanceAlreadyExists``): callers look it up first."""
    kwargs: dict[str, Any] = {
        "DBInstanceIdentifier": identifier, "SourceDBInstanceIdentifier": source_arn,
        "SourceRegion": source_region, "Port": port,
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
    if instance_class:
        kwargs["DBInstanceClass"] = instance_class
    kwargs.update(settings or {})
    try:
        resp = client.create_db_instance_read_replica(**kwargs)
    except ClientError as e:
        raise _fail("create read replica", identifier, e) from e
    return _instance(resp["DBInstance"], _request_id(resp))
