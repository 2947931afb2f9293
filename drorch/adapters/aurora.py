"""Aurora PostgreSQL Global Database: which regional cluster writes, and making another
one the writer.

Facts from the Amazon RDS API Reference: ``SwitchoverGlobalCluster`` promotes a
secondary and demotes the primary to a secondary, with no data loss (the primary must be
healthy); ``FailoverGlobalCluster`` with ``AllowDataLoss`` promotes a secondary when the
primary is not (writes it had not replicated are lost, and Aurora keeps a snapshot of
the old primary's volume); ``RemoveFromGlobalCluster`` detaches a secondary, which
"becomes a standalone cluster with read-write capability" (for accounts or engine
versions where managed failover is not allowed). Each answers as the operation starts:
``DescribeGlobalClusters`` shows it done when the target's ``IsWriter`` is true and
``FailoverState`` is gone. Every call returns AWS's request id, for the audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from botocore.exceptions import ClientError
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

Path = Literal["switchover", "failover", "detach"]
"""How a secondary becomes the writer: planned (no loss), managed failover (data loss
allowed), or detach-and-promote."""


class AuroraError(RuntimeError):
    """An Aurora call failed or the global cluster is not in the state a step needs."""


@dataclass(frozen=True)
class Member:
    arn: str
    is_writer: bool


@dataclass(frozen=True)
class GlobalCluster:
    identifier: str
    status: str
    members: tuple[Member, ...]
    failover_state: dict[str, Any] | None
    """``FailoverState`` while a switchover or failover runs, else None."""

    def writer(self) -> str | None:
        return next((m.arn for m in self.members if m.is_writer), None)

    def member(self, arn: str) -> Member | None:
        return next((m for m in self.members if m.arn == arn), None)


@dataclass(frozen=True)
class Cluster:
    identifier: str
    arn: str
    status: str
    endpoint: str | None
    """The writer endpoint (``Endpoint``)."""
    port: int | None
    global_cluster: str | None


def _request_id(resp: dict[str, Any]) -> str | None:
    return (resp.get("ResponseMetadata") or {}).get("RequestId")


def _fail(what: str, name: str, e: ClientError) -> AuroraError:
    err = e.response.get("Error", {})
    rid = _request_id(e.response)
    return AuroraError(f"Aurora {what} {name}: {err.get('Code', '?')}: "
                       f"{err.get('Message', e)}" + (f" (request {rid})" if rid else ""))


def describe_global(client: Any, identifier: str) -> GlobalCluster:
    """The global cluster now. Raises :class:`AuroraError` (``GlobalClusterNotFoundFault``
    included)."""
    try:
        raw = client.describe_global_clusters(
            GlobalClusterIdentifier=identifier)["GlobalClusters"][0]
    except ClientError as e:
        raise _fail("describe global cluster", identifier, e) from e
    members = tuple(Member(m["DBClusterArn"], bool(m.get("IsWriter")))
                    for m in raw.get("GlobalClusterMembers") or [])
    return GlobalCluster(raw["GlobalClusterIdentifier"], raw.get("Status", "unknown"),
                         members, raw.get("FailoverState") or None)


def describe_cluster(client: Any, identifier: str) -> Cluster:
    """A regional DB cluster (``DescribeDBClusters``)."""
    try:
        raw = client.describe_db_clusters(DBClusterIdentifier=identifier)["DBClusters"][0]
    except ClientError as e:
        raise _fail("describe cluster", identifier, e) from e
    return Cluster(raw["DBClusterIdentifier"], raw["DBClusterArn"], raw.get("Status", "?"),
                   raw.get("Endpoint"), int(raw["Port"]) if raw.get("Port") else None,
                   raw.get("GlobalClusterIdentifier"))


def make_writer(client: Any, global_id: str, target: Cluster, how: Path) -> str | None:
    """Start making ``target`` the writer by ``how``; AWS's request id. Not idempotent:
    callers read the global cluster first (:func:`is_writer`) and journal the request."""
    try:
        if how == "switchover":
            resp = client.switchover_global_cluster(GlobalClusterIdentifier=global_id,
                                                    TargetDbClusterIdentifier=target.arn)
        elif how == "failover":
            resp = client.failover_global_cluster(GlobalClusterIdentifier=global_id,
                                                  TargetDbClusterIdentifier=target.arn,
                                                  AllowDataLoss=True)
        else:
            resp = client.remove_from_global_cluster(GlobalClusterIdentifier=global_id,
                                                     DbClusterIdentifier=target.arn)
    except ClientError as e:
        raise _fail(how, f"{global_id} -> {target.identifier}", e) from e
    return _request_id(resp)


def is_writer(client: Any, global_id: str, target: Cluster, how: Path) -> bool:
    """Has ``target`` become the writer (:func:`writer_in`, read now)?"""
    return writer_in(describe_global(client, global_id), target, how)


def writer_in(gc: GlobalCluster, target: Cluster, how: Path) -> bool:
    """Is ``target`` the writer in ``gc``? A detached cluster is a standalone writer once
    it is no longer a member; otherwise it is the global cluster's writer with no
    operation in progress."""
    if how == "detach":
        return gc.member(target.arn) is None
    member = gc.member(target.arn)
    return member is not None and member.is_writer and gc.failover_state is None


def wait_writer(client: Any, global_id: str, target: Cluster, how: Path,
                timeout_s: float, poll_s: float = 2.0) -> bool:
    """Poll :func:`is_writer` until true, at most ``timeout_s``."""
    try:
        Retrying(retry=retry_if_result(lambda done: not done),
                 stop=stop_after_delay(timeout_s), wait=wait_fixed(poll_s))(
            is_writer, client, global_id, target, how)
    except RetryError:
        return False
    return True


# -- restoring an unplanned failover's snapshot, for the failback's reconcile -----------


def find_cluster(client: Any, identifier: str) -> Cluster | None:
    """The DB cluster, or None when there is none by that identifier
    (``DBClusterNotFoundFault``)."""
    try:
        return describe_cluster(client, identifier)
    except AuroraError as e:
        if "DBClusterNotFoundFault" in str(e):
            return None
        raise


def restore_cluster(client: Any, identifier: str, snapshot_id: str, engine: str,
                    tags: dict[str, str]) -> str | None:
    """``RestoreDBClusterFromSnapshot``: a new DB cluster ``identifier`` from the cluster
    snapshot ``snapshot_id``, on its own (no global cluster). It has no instance yet:
    :func:`add_instance`. Not idempotent by itself: callers look it up first. Returns the
    request id."""
    try:
        resp = client.restore_db_cluster_from_snapshot(
            DBClusterIdentifier=identifier, SnapshotIdentifier=snapshot_id, Engine=engine,
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    except ClientError as e:
        raise _fail("restore from snapshot", identifier, e) from e
    return _request_id(resp)


def add_instance(client: Any, cluster_id: str, instance_id: str, engine: str,
                 instance_class: str) -> str | None:
    """``CreateDBInstance`` in the DB cluster: an Aurora cluster answers SQL only through
    an instance ("Creating an Amazon Aurora DB cluster": a restored cluster has none).
    Returns the request id."""
    try:
        resp = client.create_db_instance(DBInstanceIdentifier=instance_id,
                                         DBClusterIdentifier=cluster_id, Engine=engine,
                                         DBInstanceClass=instance_class)
    except ClientError as e:
        raise _fail("add an instance to", cluster_id, e) from e
    return _request_id(resp)


def wait_cluster(client: Any, identifier: str, timeout_s: float, *, deleted: bool = False,
                 delay_s: float = 10.0) -> None:
    """boto3's ``db_cluster_available`` (or ``db_cluster_deleted``) waiter, at most
    about ``timeout_s``. Raises :class:`AuroraError`."""
    from botocore.exceptions import WaiterError

    name = "db_cluster_deleted" if deleted else "db_cluster_available"
    delay = max(1, int(min(delay_s, timeout_s)))
    try:
        client.get_waiter(name).wait(DBClusterIdentifier=identifier, WaiterConfig={
            "Delay": delay, "MaxAttempts": max(1, int(timeout_s / delay) + 1)})
    except WaiterError as e:
        raise AuroraError(f"Aurora cluster {identifier} not "
                          f"{'deleted' if deleted else 'available'} within "
                          f"{timeout_s:g}s: {e}") from e


def delete_restored(client: Any, cluster_id: str, instance_id: str) -> list[str | None]:
    """``DeleteDBInstance`` then ``DeleteDBCluster`` (no final snapshot: the failover's
    copy is the evidence and stays) of a cluster drorch restored; what is already gone is
    skipped. Returns the request ids."""
    from drorch.adapters import rds

    ids: list[str | None] = []
    try:
        if rds.find(client, instance_id) is not None:
            ids.append(_request_id(client.delete_db_instance(
                DBInstanceIdentifier=instance_id, SkipFinalSnapshot=True)))
        if find_cluster(client, cluster_id) is not None:
            ids.append(_request_id(client.delete_db_cluster(
                DBClusterIdentifier=cluster_id, SkipFinalSnapshot=True)))
    except ClientError as e:
        raise _fail("delete", cluster_id, e) from e
    except rds.RdsError as e:
        raise AuroraError(str(e)) from e
    return ids
