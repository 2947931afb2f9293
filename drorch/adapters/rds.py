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
                    tuple(raw.get("ReadReplicaDBInstanceIdentifiers") or ()), request_id)


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


def wait_available(client: Any, identifier: str, timeout_s: float,
                   delay_s: float = 5.0) -> Instance:
    """Wait (boto3's ``db_instance_available`` waiter, polling every ``delay_s``) until
    the instance is ``available``, at most about ``timeout_s``; then describe it.
    Raises :class:`RdsError` naming the last status seen when it is not."""
    delay = max(1, math.ceil(min(delay_s, timeout_s)))
    attempts = max(1, math.ceil(timeout_s / delay) + 1)
    try:
        client.get_waiter("db_instance_available").wait(
            DBInstanceIdentifier=identifier,
            WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
    except WaiterError as e:
        last = (e.last_response or {}).get("DBInstances") or [{}]
        raise RdsError(f"RDS instance {identifier} not available within {timeout_s:g}s "
                       f"(last status {last[0].get('DBInstanceStatus', 'unknown')}): "
                       f"{e}") from e
    return describe(client, identifier)
