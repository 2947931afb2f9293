"""The database a failover would promote: it exists, it is a replica of the serving
primary, it streams, and it is not further behind than ``health.max_replica_lag_bytes``
(the limit ``drorch watch`` refuses an automatic failover past).

Per kind: ``postgres`` over SQL only; ``rds`` also through ``DescribeDBInstances`` (the
replica's ``ReadReplicaSourceDBInstanceIdentifier`` and its ``StatusInfos`` entry of
type ``read replication``, whose status is ``replicating`` while it works: RDS API
Reference, DBInstanceStatusInfo); ``aurora-global`` through ``DescribeGlobalClusters``
(the standby's regional cluster is a member, not the writer, and its
``SynchronizationStatus`` is ``connected`` where AWS reports one). Lag is measured over
SQL (primary's current LSN minus the standby's replayed LSN) wherever both answer.
"""

from __future__ import annotations

from typing import Any

import psycopg

from drorch.adapters import readiness_aws as ra
from drorch.adapters.readiness_pg import NodeFacts, node_facts
from drorch.config import DatabasePair
from drorch.readiness.context import Context, aws_problem
from drorch.readiness.result import CheckResult, failed, passed, skipped, warned

REPLICA = "database.replica"
LAG = "database.lag"


def check(ctx: Context) -> list[CheckResult]:
    out: list[CheckResult] = []
    for db in ctx.runbook.databases:
        out += check_database(ctx, db)
    return out


def check_database(ctx: Context, db: DatabasePair) -> list[CheckResult]:
    api = {"rds": _rds, "aurora-global": _aurora}.get(db.kind)
    api_result = api(ctx, db) if api else None
    standby, standby_err = _facts(db.endpoints[ctx.standby].dsn())
    primary, primary_err = _facts(db.endpoints[ctx.serving].dsn())
    target = f"{db.name} ({db.kind})"
    sql = _replica_over_sql(ctx, db, target, standby, standby_err)
    replica = api_result if api_result is not None and api_result.status != "pass" else sql
    if replica.status == "pass" and api_result is not None:
        replica = passed(REPLICA, target, f"{api_result.reason}; {sql.reason}")
    return [replica, _lag(ctx, db, target, primary, primary_err, standby)]


def _facts(dsn: str) -> tuple[NodeFacts | None, str | None]:
    try:
        return node_facts(dsn), None
    except psycopg.Error as exc:
        return None, (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _replica_over_sql(ctx: Context, db: DatabasePair, target: str,
                      standby: NodeFacts | None, err: str | None) -> CheckResult:
    where = f"{db.name} in {ctx.standby}"
    if standby is None:
        return failed(REPLICA, target, f"{where} does not answer ({err}): a failover now "
                      "would freeze the serving region, fail at the promotion and roll back",
                      f"start or repair the replica in {ctx.standby}; check "
                      f"endpoints.{ctx.standby} in the runbook")
    if not standby.in_recovery:
        return failed(REPLICA, target, f"{where} is not a replica (not in recovery): it is "
                      "already a primary, so two primaries could take writes",
                      f"rebuild {where} as a replica of {ctx.serving} (drorch failback "
                      "does it), or check which region the journal says serves")
    if db.kind != "aurora-global" and standby.receiver != "streaming":
        return failed(REPLICA, target, f"{where} is a standby but does not stream from "
                      f"{ctx.serving} (WAL receiver: {standby.receiver or 'none'}): it "
                      "falls further behind with every write",
                      f"check primary_conninfo and the replication slot on {where}, and "
                      f"that {ctx.serving} accepts its replication connection")
    return passed(REPLICA, target, f"{where} is a standby"
                  + (" streaming from the primary" if standby.receiver == "streaming" else ""))


def _lag(ctx: Context, db: DatabasePair, target: str, primary: NodeFacts | None,
         primary_err: str | None, standby: NodeFacts | None) -> CheckResult:
    limit = ctx.runbook.health.max_replica_lag_bytes if ctx.runbook.health else None
    if standby is None or not standby.in_recovery:
        return skipped(LAG, target, "no standby to measure (see database.replica)")
    if primary is None:
        return warned(LAG, target, f"{db.name} in {ctx.serving} does not answer "
                      f"({primary_err}): the replica's lag cannot be measured",
                      f"check {ctx.serving}; if it is down, `drorch failover` promotes "
                      "what the replica has")
    if primary.in_recovery:
        return warned(LAG, target, f"{db.name} in {ctx.serving} is in recovery too: no "
                      "primary to measure the lag against", "check which region serves "
                      "writes (`drorch status`)")
    if primary.lsn is None or standby.lsn is None:
        return skipped(LAG, target, f"{db.name} in {ctx.standby} reports no replayed LSN "
                       "(Aurora replicas read shared storage): lag not measurable over "
                       "SQL; see AuroraGlobalDBReplicationLag in CloudWatch")
    lag = max(0, primary.lsn - standby.lsn)
    said = f"{ctx.standby} is {lag:,} bytes behind {ctx.serving}"
    if limit is None:
        return passed(LAG, target, f"{said} (no health.max_replica_lag_bytes to judge it)")
    if lag > limit:
        return failed(LAG, target, f"{said}, over the limit of {limit:,} "
                      "(health.max_replica_lag_bytes): `drorch watch` would refuse an "
                      "automatic failover, and a manual one would lose that much",
                      f"find why {ctx.standby} lags (network, replay conflicts, I/O) "
                      "before relying on a failover")
    return passed(LAG, target, f"{said} (limit {limit:,})")


def _rds(ctx: Context, db: DatabasePair) -> CheckResult:
    target = f"{db.name} (rds)"
    ep, src = db.endpoints[ctx.standby], db.endpoints[ctx.serving]
    aws_region = ctx.aws_region(ctx.standby)
    what = f"RDS instance {ep.instance_id} (the replica in {ctx.standby})"
    try:
        inst = ra.db_instance(ctx.aws("rds", aws_region), str(ep.instance_id))
    except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
        res = aws_problem(ctx, REPLICA, target, "RDS", aws_region, exc, what)
        if res.status == "fail":
            return failed(REPLICA, target, res.reason + ": there is nothing to promote",
                          f"create the cross-region read replica of {src.instance_id} "
                          "(terraform/modules/rds-postgres) or correct "
                          f"endpoints.{ctx.standby}.instance_id")
        return res
    ctx.learn("rds_instance_arn", inst.get("DBInstanceArn"))
    source = inst.get("ReadReplicaSourceDBInstanceIdentifier") or ""
    if not source:
        return failed(REPLICA, target, f"{what} is not a read replica (no source): it was "
                      "promoted already, or never was one", f"make {ep.instance_id} a "
                      f"read replica of {src.instance_id} again, or check the journal")
    if source.split(":")[-1] != src.instance_id:
        return failed(REPLICA, target, f"{what} replicates from {source}, not from "
                      f"{src.instance_id}", "correct the runbook's instance ids")
    status = str(inst.get("DBInstanceStatus", "unknown"))
    if status not in ("available", "backing-up", "modifying", "maintenance"):
        return failed(REPLICA, target, f"{what} is {status}: RDS cannot promote it now",
                      "wait until it is available, or repair it")
    for info in inst.get("StatusInfos") or []:
        if info.get("StatusType") == "read replication" and (
                not info.get("Normal", True) or info.get("Status") not in (None, "replicating")):
            return failed(REPLICA, target, f"{what}: read replication is "
                          f"{info.get('Status')} ({info.get('Message') or 'no message'})",
                          "see the RDS event log for the replica; recreate it if it "
                          "stays broken")
    return passed(REPLICA, target, f"RDS shows {ep.instance_id} as a read replica of "
                  f"{src.instance_id} ({status})")


def _aurora(ctx: Context, db: DatabasePair) -> CheckResult:
    target = f"{db.name} (aurora-global)"
    gid = str(db.global_cluster_id)
    want = str(db.endpoints[ctx.standby].cluster_id)
    writer = str(db.endpoints[ctx.serving].cluster_id)
    gc: dict[str, Any] | None = None
    problem: CheckResult | None = None
    # the global cluster is described from either region: the standby's first
    for region in (ctx.standby, ctx.serving):
        aws_region = ctx.aws_region(region)
        try:
            gc = ra.global_cluster(ctx.aws("rds", aws_region), gid)
            break
        except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
            problem = aws_problem(ctx, REPLICA, target, "RDS", aws_region, exc,
                                  f"global cluster {gid}")
            if problem.status == "fail":
                break
    if gc is None:
        assert problem is not None
        return problem
    ctx.learn("aurora_global_arn", gc.get("GlobalClusterArn"))
    members = {str(m.get("DBClusterArn", "")).split(":")[-1]: m
               for m in gc.get("GlobalClusterMembers") or []}
    for m in members.values():
        ctx.learn("aurora_cluster_arn", m.get("DBClusterArn"))
    if want not in members:
        return failed(REPLICA, target, f"cluster {want} ({ctx.standby}) is not a member of "
                      f"global cluster {gid} (members: {', '.join(sorted(members)) or 'none'})"
                      ": there is nothing to fail over to", f"add {want} to {gid} as a "
                      "secondary (terraform/modules/aurora-global)")
    if members[want].get("IsWriter"):
        return failed(REPLICA, target, f"cluster {want} ({ctx.standby}) is already the "
                      f"writer of {gid}, but the journal says {ctx.serving} serves",
                      "check `drorch status` and the global cluster before any failover")
    sync = members[want].get("SynchronizationStatus")
    if sync not in (None, "connected"):
        return failed(REPLICA, target, f"cluster {want} ({ctx.standby}) is {sync}: a "
                      "switchover or failover to it would wait or fail",
                      "wait until Aurora reports it connected")
    if writer in members and not members[writer].get("IsWriter"):
        return warned(REPLICA, target, f"cluster {writer} ({ctx.serving}) is not the "
                      f"writer of {gid} although the journal says it serves",
                      "check `drorch status` and the global cluster")
    status = gc.get("Status", "unknown")
    if status != "available":
        return warned(REPLICA, target, f"global cluster {gid} is {status}",
                      "wait until it is available")
    return passed(REPLICA, target, f"Aurora shows {want} as a secondary of {gid}"
                  + (f" ({sync})" if sync else ""))
