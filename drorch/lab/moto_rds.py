"""Aurora global database switchover and failover, and RDS read replica promotion bound
to the lab's real PostgreSQL, added to moto's RDS classes.

moto 5.2 models Aurora global databases (``CreateGlobalCluster``,
``DescribeGlobalClusters``, ``RemoveFromGlobalCluster``, ``DeleteGlobalCluster``,
``CreateDBCluster`` with ``GlobalClusterIdentifier``) but answers
``SwitchoverGlobalCluster`` and ``FailoverGlobalCluster`` with "not implemented".
drorch's ``aurora-global`` adapter needs both, so this module adds them to moto's
RDS backend and response classes when it is imported. The lab's moto server
(:mod:`drorch.lab.moto_server`) imports it when its RDS backend is first asked for:
moto's RDS models pull in EC2's, ~1.4 s of CPU that a lab making no RDS call never
needs.

What the two calls do follows the Amazon RDS API Reference
(https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_SwitchoverGlobalCluster.html,
https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_FailoverGlobalCluster.html,
https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_FailoverState.html), the
shapes in botocore's ``rds/2014-10-31/service-2.json`` and the AWS CLI examples
(``awscli/examples/rds/{switchover,failover}-global-cluster.rst``):

* The call answers with the global cluster as the operation *starts*: ``Status``
  ``switching-over`` or ``failing-over``, ``FailoverState`` ``{Status: pending,
  FromDbClusterArn, ToDbClusterArn, IsDataLossAllowed}``, members' ``IsWriter``
  unchanged (that is what the CLI examples show).
* The operation completes after ``DRORCH_MOTO_GLOBAL_SWITCH_SECONDS`` (default 0:
  moto completes it synchronously, so the first ``DescribeGlobalClusters`` after
  the call already sees it done). Completion is applied lazily, at the next
  request that touches global clusters: the target becomes the writer, the old
  writer a secondary (switchover: "demotes the current primary cluster to a
  secondary (read-only) cluster"; failover: the old primary rejoins as a
  secondary, which moto shows at once because it has no outage to wait out),
  ``FailoverState`` is cleared ("empty unless a switchover or failover operation
  is scheduled or is in progress") and ``Status`` is ``available`` again.
* A failover with data loss also leaves the snapshot Aurora takes of the old
  primary's volume, ``rds:unplanned-global-failover-<old primary>-<timestamp>``
  (Aurora User Guide, "Recovering an Amazon Aurora global database from an
  unplanned outage"), as an automated cluster snapshot in the old primary's region.

Refusals use the operations' documented error codes (the four faults both
operations list: ``GlobalClusterNotFoundFault``, ``DBClusterNotFoundFault``,
``InvalidGlobalClusterStateFault``, ``InvalidDBClusterStateFault``) and
``InvalidParameterCombination`` (common to all RDS actions) for
``AllowDataLoss`` together with ``Switchover``, which the reference says "Can't be
specified together". Which of the four AWS returns in each case is not written
down; the choice here is: the global cluster's own state (an operation already in
progress, no writer) is ``InvalidGlobalClusterStateFault``; the target's (not a
member of this global cluster, already its writer, not available) and an
unavailable primary on a switchover are ``InvalidDBClusterStateFault``.

moto gaps around these calls are closed too, because drorch's Aurora adapter meets
them on the same paths: ``DescribeGlobalClusters`` ignored
``GlobalClusterIdentifier`` (it answered every global cluster, and never
``GlobalClusterNotFoundFault``); ``CreateGlobalCluster`` with
``SourceDBClusterIdentifier`` looked the source up only in us-east-1 and left it
without the writer role; ``RemoveFromGlobalCluster`` (the detach-and-promote path)
did nothing when sent to any region but us-east-1; members lacked
``SynchronizationStatus``.

RDS for PostgreSQL instances with a cross-region read replica (drorch's ``rds``
kind) meet moto's ``PromoteReadReplica``, which only flipped a flag: it answered
``available`` for an instance that is no read replica, failed with a server error
(``KeyError``) for an unknown one, and left ``ReadReplicaSourceDBInstanceIdentifier``
on the promoted instance and the instance in its source's
``ReadReplicaDBInstanceIdentifiers``. Here it follows
https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_PromoteReadReplica.html
and the AWS CLI example (``awscli/examples/rds/promote-read-replica.rst``):

* The call answers with the instance as promotion *starts*: ``DBInstanceStatus``
  ``modifying``, ``ReadReplicaSourceDBInstanceIdentifier`` still set (as the CLI
  example shows). It completes after ``DRORCH_MOTO_PROMOTE_SECONDS`` (default 0:
  by the next request that reads instances), lazily as above: the source identifier
  is cleared, the instance leaves its source's ``ReadReplicaDBInstanceIdentifiers``
  (moto lists a cross-region replica there by ARN; the source is looked up by the
  replica's record of it, in its own region, and a source that is gone is skipped:
  promotion is for when the source's region is lost) and ``DBInstanceStatus`` is
  ``available``.
* Refusals: ``DBInstanceNotFound`` (404) for an unknown instance;
  ``InvalidDBInstanceState`` ("The DB instance isn't in a valid state", the only other
  error the operation lists) for an instance that is not a read replica ("DB Instance
  is not a read replica", what AWS answers), one already being promoted, or one not
  ``available``.

The lab binds moto instances to its real PostgreSQL clusters with two tags, given to
``CreateDBInstance`` or ``CreateDBInstanceReadReplica`` (lab only; a real RDS instance
has no such tag):

* ``drorch:lab-address`` (e.g. ``127.0.0.1``): ``Endpoint.Address`` answers it instead
  of moto's ``<id>.aaaaaaaaaa.<region>.rds.amazonaws.com``. ``Endpoint.Port`` is the
  ``Port`` given at creation (moto keeps it; a replica without one inherits its
  source's, as the API documents), so create the instance with the cluster's port.
* ``drorch:lab-dsn`` (a libpq connection string): ``PromoteReadReplica`` promotes that
  cluster before it answers: ``pg_is_in_recovery()``, then ``SELECT pg_promote(true,
  60)``. A cluster that is no longer in recovery counts as already promoted (the call
  is idempotent) when it is past timeline 1; on timeline 1 it was never promoted, so
  it is not a standby and the call is refused. Any failure (unreachable, not a
  standby, promotion not finished in 60 s) answers ``InvalidDBInstanceState`` with
  the reason and leaves moto's state as it was.

The tags are read at each call. A replica created without ``Tags`` gets its
source's tags in moto (a copy of the source instance); the ``drorch:lab-*`` ones are
dropped from that copy, since each names one cluster. moto gaps on the same paths are
closed too: a cross-region replica was placed in its source's availability zone
(``us-east-1a`` in us-west-2), and deleting one failed (moto removed it from its
source's list by identifier, where it is listed by ARN).

Nothing here starts anything on import: importing patches moto's classes only
(idempotently), so an in-process ``moto.mock_aws`` or ``ThreadedMotoServer`` gets
the calls as well. Without moto (a production install, no ``lab`` extra) the import
does nothing.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from drorch.lab.moto_server import (
    LAB_ADDRESS_TAG,
    LAB_DATADIR_TAG,
    LAB_DSN_TAG,
    LAB_LOGFILE_TAG,
    promote_seconds,
    switch_seconds,
)

try:  # the lab extra; a production install imports this module without it
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.rds.exceptions import (
        DBInstanceAlreadyExists,
        DBInstanceNotFoundError,
        RDSClientError,
    )
    from moto.rds.models import DBCluster, DBInstance, GlobalCluster, RDSBackend, rds_backends
    from moto.rds.responses import RDSResponse
except ImportError:
    HAVE_MOTO = False
else:
    HAVE_MOTO = True

GLOBAL_REGION = "us-east-1"
"""moto keeps every global cluster in this region's backend (``RDSResponse.global_backend``)."""

_CLUSTER_ARN = re.compile(r"^arn:aws[\w-]*:rds:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
                          r"cluster:(?P<id>[A-Za-z][A-Za-z0-9-]*)$")
_lock = threading.RLock()
"""moto's server is threaded: an operation and its lazy completion must not interleave."""


def fault(code: str, message: str) -> Exception:
    """An RDS error moto's server answers with ``code`` and the HTTP status the error's
    shape in botocore's RDS model gives it (e.g. 404 for ``GlobalClusterNotFoundFault``,
    for which moto has no class; moto's ``InvalidGlobalClusterStateFault`` class always
    says "is not empty", the ``DeleteGlobalCluster`` case)."""
    return RDSClientError(code, message)


@dataclass
class Transition:
    """A switchover or failover in progress on one global cluster (its ``FailoverState``)."""

    from_cluster: DBCluster
    to_cluster: DBCluster
    data_loss_allowed: bool
    done_at: float

    def failover_state(self) -> dict[str, Any]:
        """The ``FailoverState`` structure while the operation runs. ``pending`` is
        what AWS answers as the operation starts; moto shows no later phase."""
        return {"Status": "pending",
                "FromDbClusterArn": self.from_cluster.db_cluster_arn,
                "ToDbClusterArn": self.to_cluster.db_cluster_arn,
                "IsDataLossAllowed": self.data_loss_allowed}


def _transition(gc: GlobalCluster) -> Transition | None:
    return getattr(gc, "_drorch_transition", None)


# --- GlobalCluster additions ---------------------------------------------------------

def _failover_state(self: GlobalCluster) -> dict[str, Any] | None:
    """``GlobalCluster.FailoverState``: absent unless an operation is in progress."""
    transition = _transition(self)
    return transition.failover_state() if transition else None


_moto: dict[str, Any] = {}
"""moto's own implementations, kept by ``install`` before it replaces them."""


def _global_cluster_members(self: GlobalCluster) -> list[dict[str, Any]]:
    """moto's members plus ``SynchronizationStatus`` (``connected``: moto replicates
    nothing, so a member is never behind)."""
    members = _moto["global_cluster_members"].fget(self)
    for member in members:
        member.setdefault("SynchronizationStatus", "connected")
    return members


# --- completion ----------------------------------------------------------------------

def _complete(gc: GlobalCluster, transition: Transition) -> None:
    """Apply a finished switchover or failover: roles swap, ``FailoverState`` clears."""
    old, new = transition.from_cluster, transition.to_cluster
    old.is_writer = False
    new.is_writer = True
    # Writers first, as AWS lists them; keeps moto's "Readers" on the writer entry right.
    gc.members.sort(key=lambda member: not member.is_writer)
    gc.status = "available"
    gc._drorch_transition = None  # type: ignore[attr-defined]
    if transition.data_loss_allowed:
        stamp = utcnow().strftime("%Y-%m-%d-%H-%M-%S")
        snapshot = old.backend.create_auto_cluster_snapshot(
            old.db_cluster_identifier,
            f"rds:unplanned-global-failover-{old.db_cluster_identifier}-{stamp}")
        _image_lab_volume(old, snapshot, stamp)


def _image_lab_volume(cluster: DBCluster, snapshot: Any, stamp: str) -> None:
    """Lab only: the snapshot of a lab-bound old writer holds a copy of its data
    directory (:func:`drorch.lab.aurora_images.take_image`), for a restore. A copy that
    fails leaves the snapshot without one (moto's alone), the failover unaffected."""
    from drorch.lab.aurora_images import take_image

    datadir, dsn = lab_tag(cluster, LAB_DATADIR_TAG), lab_tag(cluster, LAB_DSN_TAG)
    if not datadir or not dsn:
        return
    try:
        snapshot._drorch_image = (take_image(datadir, stamp), dsn)
    except Exception as exc:  # noqa: BLE001 (the lab's copy must not fail moto's failover)
        print(f"drorch lab: no image of {datadir} for {snapshot}: {exc}", flush=True)


def settle(backend: RDSBackend) -> None:
    """Complete every operation on ``backend``'s global clusters whose time has come."""
    now = time.monotonic()
    with _lock:
        for gc in list(backend.global_clusters.values()):
            transition = _transition(gc)
            if transition is not None and transition.done_at <= now:
                _complete(gc, transition)


# --- lookups -------------------------------------------------------------------------

def _global_cluster(backend: RDSBackend, identifier: str) -> GlobalCluster:
    """By identifier or by ARN (``arn:aws:rds::ACCOUNT:global-cluster:ID``)."""
    name = identifier.rsplit(":global-cluster:", 1)[-1]
    if name not in backend.global_clusters:
        raise fault("GlobalClusterNotFoundFault", f"Global cluster {identifier} not found.")
    return backend.global_clusters[name]


def _cluster(account_id: str, request_region: str, identifier: str) -> DBCluster:
    """A DB cluster by ARN (looked up in the ARN's region, as the reference asks
    callers to pass it "so that Aurora can locate the cluster in its Amazon Web
    Services Region") or by identifier (in the region the request went to)."""
    match = _CLUSTER_ARN.match(identifier)
    if match:
        account, region, name = match["account"], match["region"], match["id"]
    elif identifier.startswith("arn:"):
        raise fault("DBClusterNotFoundFault", f"DBCluster {identifier} not found.")
    else:
        account, region, name = account_id, request_region, identifier
    if region not in rds_backends[account].regions:
        raise fault("DBClusterNotFoundFault", f"DBCluster {identifier} not found.")
    clusters = rds_backends[account][region].clusters
    if name not in clusters:
        raise fault("DBClusterNotFoundFault", f"DBCluster {identifier} not found.")
    return clusters[name]


def _cluster_state(cluster: DBCluster) -> str:
    """The state AWS would report. moto reports ``creating`` once, on the first read
    after creation, and ``available`` from then on, so ``creating`` counts as
    available here (reading ``status`` would flip it as a side effect)."""
    state = getattr(cluster, "_status", "available")
    return "available" if state == "creating" else state


# --- the operations ------------------------------------------------------------------

def _start(backend: RDSBackend, global_cluster_identifier: str,
           target_db_cluster_identifier: str, request_region: str,
           data_loss_allowed: bool) -> GlobalCluster:
    settle(backend)
    with _lock:
        gc = _global_cluster(backend, global_cluster_identifier)
        target = _cluster(backend.account_id, request_region, target_db_cluster_identifier)
        name = gc.global_cluster_identifier
        if _transition(gc) is not None:
            raise fault("InvalidGlobalClusterStateFault",
                        f"Global cluster {name} already has a switchover or failover in "
                        "progress.")
        if target not in gc.members:
            raise fault("InvalidDBClusterStateFault",
                        f"DB cluster {target.db_cluster_arn} is not a member of global "
                        f"cluster {name}.")
        writer = next((m for m in gc.members if m.is_writer), None)
        if writer is None:
            raise fault("InvalidGlobalClusterStateFault",
                        f"Global cluster {name} has no primary cluster.")
        if target is writer:
            raise fault("InvalidDBClusterStateFault",
                        f"DB cluster {target.db_cluster_arn} is already the primary cluster "
                        f"of global cluster {name}; the target must be a secondary.")
        if _cluster_state(target) != "available":
            raise fault("InvalidDBClusterStateFault",
                        f"DB cluster {target.db_cluster_arn} is {_cluster_state(target)}, "
                        "not available.")
        if not data_loss_allowed and _cluster_state(writer) != "available":
            # A switchover needs a healthy primary to synchronize from; a failover is
            # for when it is not.
            raise fault("InvalidDBClusterStateFault",
                        f"Primary DB cluster {writer.db_cluster_arn} is "
                        f"{_cluster_state(writer)}; a switchover needs it available (fail "
                        "over with AllowDataLoss instead).")
        if data_loss_allowed:
            _promote_lab_cluster(target)
        else:
            _switch_lab_clusters(writer, target)
        gc._drorch_transition = Transition(  # type: ignore[attr-defined]
            from_cluster=writer, to_cluster=target, data_loss_allowed=data_loss_allowed,
            done_at=time.monotonic() + switch_seconds())
        gc.status = "failing-over" if data_loss_allowed else "switching-over"
        return gc


def switchover_global_cluster(self: RDSBackend, global_cluster_identifier: str,
                              target_db_cluster_identifier: str,
                              request_region: str) -> GlobalCluster:
    """SwitchoverGlobalCluster: promote a secondary, demote the primary to a
    secondary, no data loss. Called on the backend that holds global clusters."""
    return _start(self, global_cluster_identifier, target_db_cluster_identifier,
                  request_region, data_loss_allowed=False)


def failover_global_cluster(self: RDSBackend, global_cluster_identifier: str,
                            target_db_cluster_identifier: str, request_region: str,
                            allow_data_loss: bool | None = None,
                            switchover: bool | None = None) -> GlobalCluster:
    """FailoverGlobalCluster: with ``AllowDataLoss`` a failover; otherwise ("Specify
    the Switchover parameter or omit it") a switchover. The two parameters "Can't be
    specified together"."""
    if allow_data_loss is not None and switchover is not None:
        raise fault("InvalidParameterCombination",
                    "AllowDataLoss and Switchover can't be specified together.")
    return _start(self, global_cluster_identifier, target_db_cluster_identifier,
                  request_region, data_loss_allowed=bool(allow_data_loss))


# --- moto gaps on the way ------------------------------------------------------------

def describe_global_clusters(self: RDSBackend,
                             global_cluster_identifier: str | None = None
                             ) -> list[GlobalCluster]:
    """Completes due operations first; honours ``GlobalClusterIdentifier``."""
    settle(self)
    if global_cluster_identifier:
        return [_global_cluster(self, global_cluster_identifier)]
    return _moto["describe_global_clusters"](self)


def delete_global_cluster(self: RDSBackend, global_cluster_identifier: str) -> GlobalCluster:
    settle(self)
    return _moto["delete_global_cluster"](self, global_cluster_identifier)


def remove_from_global_cluster(self: RDSBackend, global_cluster_identifier: str,
                               db_cluster_identifier: str) -> GlobalCluster:
    """RemoveFromGlobalCluster, "Detaches an Aurora secondary cluster from an Aurora
    global database cluster. The cluster becomes a standalone cluster with read-write
    capability" (API_RemoveFromGlobalCluster). moto's own looks the global cluster up
    in the request's region, so from any region but us-east-1 (where moto keeps them)
    it silently did nothing; this one finds both where they are, and refuses a cluster
    that is not a member instead of answering as if it had detached it."""
    holder = rds_backends[self.account_id][GLOBAL_REGION]
    settle(holder)
    with _lock:
        gc = _global_cluster(holder, global_cluster_identifier)
        cluster = _cluster(self.account_id, self.region_name, db_cluster_identifier)
        if cluster not in gc.members:
            raise fault("InvalidDBClusterStateFault",
                        f"DB cluster {cluster.db_cluster_arn} is not a member of global "
                        f"cluster {gc.global_cluster_identifier}.")
        if _transition(gc) is not None:
            raise fault("InvalidGlobalClusterStateFault",
                        f"Global cluster {gc.global_cluster_identifier} has a switchover or "
                        "failover in progress.")
        _promote_lab_cluster(cluster)  # it "becomes a standalone cluster with read-write"
        gc.members.remove(cluster)
        cluster.global_cluster_identifier = None
        cluster.is_writer = False
        return gc


def create_global_cluster(self: RDSBackend, global_cluster_identifier: str,
                          source_db_cluster_identifier: str | None, engine: str | None,
                          engine_version: str | None, storage_encrypted: bool | None,
                          deletion_protection: bool | None) -> GlobalCluster:
    """moto's, with the source cluster found in its own region and made the writer
    ("the source DB cluster ... becomes the primary cluster", API_CreateGlobalCluster)."""
    source: DBCluster | None = None
    if source_db_cluster_identifier is not None:
        match = _CLUSTER_ARN.match(source_db_cluster_identifier)
        if match and match["region"] != self.region_name:
            source = _cluster(self.account_id, self.region_name, source_db_cluster_identifier)
            # moto's own code looks the source up in this backend: lend it the cluster.
            self.clusters[source.db_cluster_arn] = source
    try:
        gc = _moto["create_global_cluster"](self, global_cluster_identifier,
                                         source_db_cluster_identifier, engine,
                                         engine_version, storage_encrypted,
                                         deletion_protection)
    finally:
        if source is not None:
            self.clusters.pop(source.db_cluster_arn, None)
    if gc.members and not any(m.is_writer for m in gc.members):
        gc.members[0].is_writer = True
    return gc


# --- RDS instances: read replica promotion, bound to the lab's PostgreSQL ---------


LAB_TAGS = (LAB_ADDRESS_TAG, LAB_DSN_TAG)
PG_PROMOTE_WAIT_S = 60
"""``pg_promote(true, 60)``: how long the real promotion may take."""
PG_CONNECT_TIMEOUT_S = 5
"""Used when the ``drorch:lab-dsn`` names no ``connect_timeout``."""


def lab_tag(instance: Any, key: str) -> str | None:
    """The value of tag ``key`` on a moto instance, or None."""
    for tag in getattr(instance, "tags", None) or []:
        if tag.get("Key") == key:
            return tag.get("Value")
    return None


@dataclass
class Promotion:
    """A ``PromoteReadReplica`` in progress: moto shows it ``modifying`` until done."""

    instance: DBInstance
    source: str
    """The replica's ``ReadReplicaSourceDBInstanceIdentifier`` (identifier or ARN)."""
    done_at: float


_promotions: list[Promotion] = []
"""In progress, across every account and region (a promotion touches two regions)."""


def _promotion_of(instance: DBInstance) -> Promotion | None:
    return next((p for p in _promotions if p.instance is instance), None)


def _source_backend_and_name(replica: DBInstance, source: str) -> tuple[RDSBackend, str]:
    """Where the replica's source lives: the ARN's region, else the replica's own."""
    if source.startswith("arn:"):
        parts = source.split(":")
        return rds_backends[parts[4] or replica.account_id][parts[3]], parts[-1]
    return replica.backend, source


def _detach_from_source(replica: DBInstance, source: str) -> None:
    """Take ``replica`` out of its source's ``ReadReplicaDBInstanceIdentifiers``. The
    source may be gone (deleted, or its region is what failed): nothing to do then."""
    try:
        backend, name = _source_backend_and_name(replica, source)
        primary = backend.databases.get(name)
    except Exception:  # an ARN naming no backend, a region moto cannot build
        return
    if primary is None:
        return
    entries = {replica.db_instance_identifier, replica.db_instance_arn}
    primary.replicas = [r for r in primary.replicas if r not in entries]


def _complete_promotion(promotion: Promotion) -> None:
    instance = promotion.instance
    instance.is_replica = False
    instance.source_db_instance_identifier = None
    instance.status = "available"
    _detach_from_source(instance, promotion.source)


def settle_promotions() -> None:
    """Complete every promotion whose time has come, in every region."""
    now = time.monotonic()
    with _lock:
        for promotion in [p for p in _promotions if p.done_at <= now]:
            _promotions.remove(promotion)
            _complete_promotion(promotion)


def _conninfo(dsn: str) -> dict[str, Any]:
    """``dsn`` as psycopg connection arguments, with a connect timeout."""
    from psycopg.conninfo import conninfo_to_dict

    params: dict[str, Any] = dict(conninfo_to_dict(dsn))
    params.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
    return params


def promote_real_cluster(dsn: str) -> str:
    """Promote the PostgreSQL standby at ``dsn``. Returns what happened (``promoted`` or
    ``already promoted``); raises ``RuntimeError`` with the reason when it cannot."""
    import psycopg

    try:
        with psycopg.connect(**_conninfo(dsn), autocommit=True) as conn:
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
            if not in_recovery:
                # Every promotion starts a new timeline: timeline 1 was never promoted.
                wal = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())"
                                   ).fetchone()[0]  # type: ignore[index]
                if int(wal[:8], 16) <= 1:
                    raise RuntimeError("the cluster is not a standby (not in recovery, and "
                                       "never promoted: still on timeline 1)")
                return "already promoted"
            done = conn.execute("SELECT pg_promote(true, %s)",
                                (PG_PROMOTE_WAIT_S,)).fetchone()[0]  # type: ignore[index]
            if not done:
                raise RuntimeError(f"the cluster did not finish promotion within "
                                   f"{PG_PROMOTE_WAIT_S} s")
            if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                raise RuntimeError("the cluster is still in recovery after pg_promote")
            return "promoted"
    except psycopg.Error as exc:
        raise RuntimeError(f"the cluster could not be promoted: "
                           f"{str(exc).strip() or type(exc).__name__}") from exc


def _promote_lab_cluster(cluster: DBCluster) -> None:
    """Lab only: a DB cluster tagged ``drorch:lab-dsn`` is the lab's real PostgreSQL
    cluster; becoming the writer by a failover or a detach promotes it before the call
    answers (a switchover: :func:`_switch_lab_clusters`). ``InvalidDBClusterStateFault``
    with the reason (moto unchanged) when it cannot. After a failover or a detach the
    lab's old writer is not demoted: it stays a primary, frozen by drorch (read-only),
    where Aurora would rejoin it as a secondary once its region is back (after keeping
    its volume as the ``rds:unplanned-global-failover-`` snapshot)."""
    dsn = lab_tag(cluster, LAB_DSN_TAG)
    if not dsn:
        return
    try:
        promote_real_cluster(dsn)
    except RuntimeError as exc:
        raise fault("InvalidDBClusterStateFault",
                    f"DB cluster {cluster.db_cluster_arn}: {exc}") from exc


SYNC_WAIT_S = 30
"""How long a lab switchover waits for the secondary to replay the writer's last write."""


def _switch_lab_clusters(writer: DBCluster, target: DBCluster) -> None:
    """Lab only, a switchover between two clusters tagged with the lab's real ones, as
    Aurora does it ("synchronizes your secondary DB cluster with the primary", then
    promotes it and "demotes the current primary cluster to a secondary (read-only)
    cluster": Aurora User Guide, "Performing switchovers for Amazon Aurora global
    databases"): the writer's last write is replayed by the target (a committed
    message, waited for up to :data:`SYNC_WAIT_S`), the old writer is stopped cleanly
    (a fast shutdown sends its walsenders' WAL through the shutdown checkpoint), the
    target promoted, and the old writer started again as a standby of the target
    (``pg_rewind`` only where its WAL went past the fork: none of its writes, since it
    was replayed whole). ``InvalidDBClusterStateFault`` with the reason when a part
    cannot be done; the old writer is started again as it was if the target could not
    be promoted. A target without lab tags is moto's alone; an old writer without a data
    directory tag is only promoted past (as before)."""
    target_dsn, old_dsn = lab_tag(target, LAB_DSN_TAG), lab_tag(writer, LAB_DSN_TAG)
    datadir = lab_tag(writer, LAB_DATADIR_TAG)
    if not target_dsn:
        return
    if not old_dsn or not datadir:
        _promote_lab_cluster(target)
        return
    from drorch.lab.switchover import demote_and_follow, sync_then_stop

    old = _lab_node(writer, old_dsn, datadir)
    try:
        sync_then_stop(old, old_dsn, target_dsn, SYNC_WAIT_S)
    except RuntimeError as exc:
        raise fault("InvalidDBClusterStateFault",
                    f"DB cluster {target.db_cluster_arn} is not synchronized with the "
                    f"primary: {exc}") from exc
    try:
        promote_real_cluster(target_dsn)
    except RuntimeError as exc:
        old.start()
        raise fault("InvalidDBClusterStateFault",
                    f"DB cluster {target.db_cluster_arn}: {exc}") from exc
    try:
        demote_and_follow(old, target_dsn)
    except RuntimeError as exc:
        raise fault("InvalidDBClusterStateFault",
                    f"DB cluster {writer.db_cluster_arn} could not become a secondary of "
                    f"{target.db_cluster_arn}: {exc}") from exc


def _lab_node(cluster: DBCluster, dsn: str, datadir: str) -> Any:
    """The lab's cluster behind ``cluster`` as node control (``pg_ctl`` as the data
    directory's owner)."""
    from pathlib import Path

    from drorch.lab.rds_nodes import lab_node

    log = lab_tag(cluster, LAB_LOGFILE_TAG) or str(Path(datadir).parent / "switchover.log")
    return lab_node(Path(datadir), dsn, Path(log))


def _cluster_endpoint(self: DBCluster) -> str:
    """``Endpoint`` (the writer endpoint): the ``drorch:lab-address`` tag's value where
    there is one."""
    return lab_tag(self, LAB_ADDRESS_TAG) or _moto["cluster_endpoint"].fget(self)


def _refuse_promotion(instance: DBInstance) -> None:
    """``InvalidDBInstanceState`` unless ``instance`` is a read replica to promote now."""
    name = instance.db_instance_identifier
    if getattr(instance, "_drorch_promoting", False) or _promotion_of(instance):
        raise fault("InvalidDBInstanceState",
                    f"DB instance {name} is not available: it is being promoted.")
    if not instance.is_replica:
        raise fault("InvalidDBInstanceState", "DB Instance is not a read replica.")
    if instance.status != "available":
        raise fault("InvalidDBInstanceState",
                    f"DB instance {name} is {instance.status}, not available.")


def promote_read_replica(self: RDSBackend, db_kwargs: dict[str, Any]) -> DBInstance:
    """PromoteReadReplica: refuse what is not a read replica, promote the lab's real
    cluster (``drorch:lab-dsn``) first, then start the promotion moto shows."""
    settle_promotions()
    kwargs = dict(db_kwargs)
    name = kwargs.pop("db_instance_identifier")
    with _lock:
        instance = self.databases.get(name)
        if instance is None:
            raise DBInstanceNotFoundError(name)
        _refuse_promotion(instance)
        instance._drorch_promoting = True  # type: ignore[attr-defined]
    try:
        dsn = lab_tag(instance, LAB_DSN_TAG)
        if dsn:
            try:
                promote_real_cluster(dsn)  # outside the lock: it may take a while
            except RuntimeError as exc:
                raise fault("InvalidDBInstanceState",
                            f"DB instance {name} was not promoted: {exc}") from exc
        with _lock:
            instance.update(**kwargs)  # BackupRetentionPeriod, PreferredBackupWindow
            instance.status = "modifying"
            _promotions.append(Promotion(
                instance=instance, source=instance.source_db_instance_identifier or "",
                done_at=time.monotonic() + promote_seconds()))
    finally:
        instance._drorch_promoting = False  # type: ignore[attr-defined]
    return instance


def describe_db_instances(self: RDSBackend, *args: Any, **kwargs: Any) -> list[DBInstance]:
    """Completes due promotions first."""
    settle_promotions()
    return _moto["describe_db_instances"](self, *args, **kwargs)


def create_db_instance_read_replica(self: RDSBackend,
                                   db_kwargs: dict[str, Any]) -> DBInstance:
    """moto's, without the source's lab tags on a replica given no tags of its own,
    and in an availability zone of its own region."""
    settle_promotions()
    replica = _moto["create_db_instance_read_replica"](self, db_kwargs)
    if db_kwargs.get("tags") is None:
        replica.tags = [t for t in replica.tags if t["Key"] not in LAB_TAGS]
    if not db_kwargs.get("availability_zone") and not replica.availability_zone.startswith(
            replica.region):
        replica.availability_zone = f"{replica.region}a"
    try:
        _fill_vacated(self, replica)
    except Exception:
        self.delete_db_instance(replica.db_instance_identifier)
        raise
    return replica


def _vacated_by(backend: RDSBackend, identifier: str) -> tuple[DBInstance, Any] | None:
    """The renamed instance of ``backend`` whose ``drorch:lab-vacated`` slot is
    ``identifier``'s, and that slot."""
    from drorch.lab.rds_nodes import VACATED_TAG, Slot

    for instance in backend.databases.values():
        value = lab_tag(instance, VACATED_TAG)
        if value and Slot.from_tag(value).identifier == identifier:
            return instance, Slot.from_tag(value)
    return None


def _fill_vacated(backend: RDSBackend, replica: DBInstance) -> None:
    """Lab only: a read replica created under an identifier a rename vacated gets a real
    cluster there, a standby of its source's (:func:`drorch.lab.rds_nodes.fill`), and that
    cluster's tags. ``InvalidDBInstanceState`` with the reason when it cannot be made."""
    from drorch.lab.rds_nodes import VACATED_TAG, fill

    found = _vacated_by(backend, replica.db_instance_identifier)
    source = replica.source_db_instance_identifier or ""
    if found is None or not source:
        return
    renamed, slot = found
    src_backend, src_name = _source_backend_and_name(replica, source)
    primary = src_backend.databases.get(src_name)
    source_dsn = lab_tag(primary, LAB_DSN_TAG) if primary is not None else None
    if not source_dsn:
        return
    try:
        fill(slot, source_dsn, lab_tag(renamed, LAB_DATADIR_TAG) or "")
    except (RuntimeError, OSError) as exc:
        raise fault("InvalidDBInstanceState",
                    f"DB instance {replica.db_instance_identifier} could not be created "
                    f"as a replica of {source}: {exc}") from exc
    address = lab_tag(renamed, LAB_ADDRESS_TAG) or "127.0.0.1"
    replica.tags = [t for t in replica.tags if t["Key"] not in (
        *LAB_TAGS, LAB_DATADIR_TAG, LAB_LOGFILE_TAG)] + [
        {"Key": LAB_ADDRESS_TAG, "Value": address}, {"Key": LAB_DSN_TAG, "Value": slot.dsn},
        {"Key": LAB_DATADIR_TAG, "Value": slot.datadir},
        {"Key": LAB_LOGFILE_TAG, "Value": slot.logfile}]
    replica.port = slot.port
    renamed.tags = [t for t in renamed.tags if t["Key"] != VACATED_TAG]


def copy_db_cluster_snapshot(self: RDSBackend, source_db_cluster_snapshot_identifier: str,
                             target_db_cluster_snapshot_identifier: str,
                             *args: Any, **kwargs: Any) -> Any:
    """moto's; in the lab the copy holds the same volume image as its source."""
    copy = _moto["copy_db_cluster_snapshot"](
        self, source_db_cluster_snapshot_identifier, target_db_cluster_snapshot_identifier,
        *args, **kwargs)
    source = self.get_db_cluster_snapshot(source_db_cluster_snapshot_identifier)
    if getattr(source, "_drorch_image", None):
        copy._drorch_image = source._drorch_image
    return copy


RESTORED_TAG = "drorch:lab-restored"
"""On a DB cluster restored from a snapshot with a lab image: its cluster is the lab's to
remove when the DB cluster is deleted."""


def restore_db_cluster_from_snapshot(self: RDSBackend, from_snapshot_id: str,
                                     overrides: dict[str, Any]) -> DBCluster:
    """RestoreDBClusterFromSnapshot: a new DB cluster from the snapshot's volume, as a
    cluster of its own: not a member of the source's global cluster, without its lab
    tags (moto copied the source cluster's whole configuration: a restored cluster
    joined the global cluster and named the old writer's real cluster). In the lab, a
    snapshot with a volume image starts a real cluster from a copy of it
    (:func:`drorch.lab.aurora_images.restore_image`)."""
    import copy as _copy

    snapshot = self.describe_db_cluster_snapshots(
        db_cluster_identifier=None, db_snapshot_identifier=from_snapshot_id)[0]
    # moto's get_cfg fails (KeyError) for a cluster made without a master password, as a
    # global database's secondary is: its attributes, private ones under their names
    props = {k.lstrip("_"): v for k, v in _copy.copy(snapshot.cluster.__dict__).items()
             if k != "backend" and not k.startswith("_drorch")}
    for key in ("global_cluster_identifier", "replication_source_identifier"):
        props.pop(key, None)
    # a restore takes the master user from the snapshot (RestoreDBClusterFromSnapshot has
    # no MasterUserPassword); moto's create_db_cluster wants one for a cluster outside a
    # global database: the snapshot's, or a stand-in the lab's real cluster never reads
    props["master_username"] = props.get("master_username") or "postgres"
    props["master_user_password"] = props.get("master_user_password") or "restored-x1"
    props["tags"] = []
    for key, value in overrides.items():
        if value:
            props[key] = value
    props["tags"] = [t for t in props.get("tags") or [] if not t["Key"].startswith(
        "drorch:lab-")]
    image = getattr(snapshot, "_drorch_image", None)
    restored = None
    if image:
        from drorch.lab.ports import free_port

        props["port"] = free_port()
    cluster = self.create_db_cluster(props)  # moto's record first: its refusal starts nothing
    if image:
        from drorch.lab.aurora_images import restore_image

        try:
            restored = restore_image(image[0], cluster.db_cluster_identifier, image[1],
                                     cluster.port)
        except Exception as exc:  # noqa: BLE001 (answered as the API's fault)
            self.clusters.pop(cluster.db_cluster_identifier, None)
            raise fault("InvalidDBClusterSnapshotStateFault",
                        f"DB cluster snapshot {from_snapshot_id} could not be restored: "
                        f"{exc}") from exc
    if restored is not None:
        datadir, dsn, _port, log = restored
        cluster.tags = [*cluster.tags, {"Key": LAB_ADDRESS_TAG, "Value": "127.0.0.1"},
                        {"Key": LAB_DSN_TAG, "Value": dsn},
                        {"Key": LAB_DATADIR_TAG, "Value": datadir},
                        {"Key": LAB_LOGFILE_TAG, "Value": log},
                        {"Key": RESTORED_TAG, "Value": "true"}]
    return cluster


def delete_db_cluster(self: RDSBackend, cluster_identifier: str,
                      snapshot_name: str | None = None) -> DBCluster:
    """moto's; in the lab a cluster restored from a volume image is stopped and its
    files removed (only such a cluster: never the lab's own)."""
    cluster = _moto["delete_db_cluster"](self, cluster_identifier, snapshot_name)
    # automated snapshots go with their cluster (moto kept them, and a cluster made again
    # under the name within the minute then collided with its own old snapshot's name)
    for name in [n for n, snap in self.cluster_snapshots.items()
                 if snap.cluster is cluster and snap.snapshot_type == "automated"]:
        del self.cluster_snapshots[name]
    if lab_tag(cluster, RESTORED_TAG) == "true":
        from drorch.lab.aurora_images import drop_restored

        drop_restored(lab_tag(cluster, LAB_DATADIR_TAG) or "",
                      lab_tag(cluster, LAB_DSN_TAG) or "",
                      lab_tag(cluster, LAB_LOGFILE_TAG) or "")
    return cluster


def modify_db_instance(self: RDSBackend, db_instance_identifier: str,
                       db_kwargs: dict[str, Any]) -> DBInstance:
    """moto's, and in the lab a rename (``NewDBInstanceIdentifier``) moves the instance's
    real cluster aside, as the endpoint address moves with the identifier on RDS
    (:func:`drorch.lab.rds_nodes.vacate`); the slot it left is tagged on the renamed
    instance for a replica created under the old identifier. ``InvalidDBInstanceState``
    with the reason when the cluster cannot be moved (moto unchanged)."""
    settle_promotions()
    new_id = db_kwargs.get("new_db_instance_identifier")
    instance = self.databases.get(db_instance_identifier)
    dsn = lab_tag(instance, LAB_DSN_TAG) if instance is not None else None
    datadir = lab_tag(instance, LAB_DATADIR_TAG) if instance is not None else None
    if not new_id or new_id == db_instance_identifier or not dsn or not datadir:
        return _moto["modify_db_instance"](self, db_instance_identifier, db_kwargs)
    from drorch.lab.rds_nodes import VACATED_TAG, vacate

    if new_id in self.databases:
        raise DBInstanceAlreadyExists()
    try:
        left, now = vacate(db_instance_identifier, new_id, datadir, dsn,
                           lab_tag(instance, LAB_LOGFILE_TAG) or f"{datadir}.log")
    except (RuntimeError, OSError) as exc:
        raise fault("InvalidDBInstanceState",
                    f"DB instance {db_instance_identifier} could not be renamed: {exc}") from exc
    instance.tags = [t for t in instance.tags if t["Key"] not in (
        LAB_DSN_TAG, LAB_DATADIR_TAG, LAB_LOGFILE_TAG, VACATED_TAG)] + [
        {"Key": LAB_DSN_TAG, "Value": now.dsn}, {"Key": LAB_DATADIR_TAG, "Value": now.datadir},
        {"Key": LAB_LOGFILE_TAG, "Value": now.logfile},
        {"Key": VACATED_TAG, "Value": left.to_tag()}]
    instance.port = now.port
    return _moto["modify_db_instance"](self, db_instance_identifier, db_kwargs)


def _address(self: DBInstance) -> str:
    """``Endpoint.Address``: the ``drorch:lab-address`` tag's value where there is one."""
    return lab_tag(self, LAB_ADDRESS_TAG) or _moto["address"].fget(self)


def _remove_replica(self: DBInstance, replica: DBInstance) -> None:
    """moto's removed a replica by identifier; a cross-region one is listed by ARN."""
    entries = {replica.db_instance_identifier, replica.db_instance_arn}
    self.replicas = [r for r in self.replicas if r not in entries]


# --- responses -----------------------------------------------------------------------

def _response_switchover(self: RDSResponse) -> ActionResult:
    gc = self.global_backend.switchover_global_cluster(  # type: ignore[attr-defined]
        global_cluster_identifier=self.params["GlobalClusterIdentifier"],
        target_db_cluster_identifier=self.params["TargetDbClusterIdentifier"],
        request_region=self.region)
    return ActionResult({"GlobalCluster": gc})


def _response_failover(self: RDSResponse) -> ActionResult:
    gc = self.global_backend.failover_global_cluster(  # type: ignore[attr-defined]
        global_cluster_identifier=self.params["GlobalClusterIdentifier"],
        target_db_cluster_identifier=self.params["TargetDbClusterIdentifier"],
        request_region=self.region,
        allow_data_loss=self.params.get("AllowDataLoss"),
        switchover=self.params.get("Switchover"))
    return ActionResult({"GlobalCluster": gc})


def _response_describe_global_clusters(self: RDSResponse) -> ActionResult:
    clusters = self.global_backend.describe_global_clusters(
        self.params.get("GlobalClusterIdentifier"))
    return ActionResult({"GlobalClusters": clusters})


def install() -> None:
    """Add the calls to moto's RDS classes (idempotent). Called on import."""
    if getattr(RDSBackend, "_drorch_installed", False):
        return
    _moto.update(
        global_cluster_members=GlobalCluster.global_cluster_members,
        describe_global_clusters=RDSBackend.describe_global_clusters,
        delete_global_cluster=RDSBackend.delete_global_cluster,
        remove_from_global_cluster=RDSBackend.remove_from_global_cluster,
        create_global_cluster=RDSBackend.create_global_cluster,
        address=DBInstance.address,
        cluster_endpoint=DBCluster.endpoint,
        describe_db_instances=RDSBackend.describe_db_instances,
        create_db_instance_read_replica=RDSBackend.create_db_instance_read_replica,
        modify_db_instance=RDSBackend.modify_db_instance,
        copy_db_cluster_snapshot=RDSBackend.copy_db_cluster_snapshot,
        delete_db_cluster=RDSBackend.delete_db_cluster,
        promote_read_replica=RDSBackend.promote_read_replica)
    GlobalCluster.failover_state = property(_failover_state)  # type: ignore[attr-defined]
    GlobalCluster.global_cluster_members = property(  # type: ignore[method-assign,assignment]
        _global_cluster_members)
    RDSBackend.switchover_global_cluster = switchover_global_cluster  # type: ignore[attr-defined]
    RDSBackend.failover_global_cluster = failover_global_cluster  # type: ignore[attr-defined]
    RDSBackend.describe_global_clusters = describe_global_clusters  # type: ignore[method-assign]
    RDSBackend.delete_global_cluster = delete_global_cluster  # type: ignore[method-assign]
    RDSBackend.remove_from_global_cluster = remove_from_global_cluster  # type: ignore[method-assign]
    RDSBackend.create_global_cluster = create_global_cluster  # type: ignore[method-assign]
    DBInstance.address = property(_address)  # type: ignore[method-assign,assignment]
    DBCluster.endpoint = property(_cluster_endpoint)  # type: ignore[method-assign,assignment]
    DBInstance.remove_replica = _remove_replica  # type: ignore[method-assign]
    RDSBackend.describe_db_instances = describe_db_instances  # type: ignore[method-assign]
    RDSBackend.create_db_instance_read_replica = (  # type: ignore[method-assign]
        create_db_instance_read_replica)
    RDSBackend.promote_read_replica = promote_read_replica  # type: ignore[method-assign]
    RDSBackend.modify_db_instance = modify_db_instance  # type: ignore[method-assign]
    RDSBackend.copy_db_cluster_snapshot = copy_db_cluster_snapshot  # type: ignore[method-assign]
    RDSBackend.restore_db_cluster_from_snapshot = (  # type: ignore[method-assign]
        restore_db_cluster_from_snapshot)
    RDSBackend.delete_db_cluster = delete_db_cluster  # type: ignore[method-assign]
    RDSResponse.switchover_global_cluster = _response_switchover  # type: ignore[attr-defined]
    RDSResponse.failover_global_cluster = _response_failover  # type: ignore[attr-defined]
    RDSResponse.describe_global_clusters = (  # type: ignore[method-assign]
        _response_describe_global_clusters)
    RDSBackend._drorch_installed = True  # type: ignore[attr-defined]


if HAVE_MOTO:
    install()
