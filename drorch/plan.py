"""Which steps, in which stages, a failover runs: derived from the runbook alone.

A stage's steps run at once; stages run in order. Several database pairs are
frozen, promoted, opened and validated in parallel; stages are only as many as
the real dependencies: freeze, promote, open (writers and secrets), DNS, validate.
"""

from __future__ import annotations

from drorch.config import Runbook
from drorch.steps.aurora_failback import DeleteRestoredCluster, RestoreLostWrites
from drorch.steps.base import Stage
from drorch.steps.dns import FlipDns
from drorch.steps.evidence import KeepFailoverSnapshot
from drorch.steps.failback import (
    FenceOldPrimary,
    ReconcileDivergence,
    RejoinAsReplica,
    ResyncAsReplica,
)
from drorch.steps.freeze import FreezeDatabase, LowerWriteFlag, RaiseWriteFlag
from drorch.steps.promote import OpenWrites, PromoteDatabase
from drorch.steps.rds_failback import (
    FenceRdsPrimary,
    RejoinRdsReplica,
    ReplaceRdsReplica,
    SnapshotOldPrimary,
)
from drorch.steps.secrets import RewriteSecret, secret_target
from drorch.steps.validate import CanaryWrite, RunFlows


def failover_plan(runbook: Runbook, from_region: str, to_region: str,
                  planned_only: bool = False) -> list[Stage]:
    """``planned_only`` (a failback): no step for what only an unplanned failover leaves
    (Aurora's snapshot of a lost writer's volume)."""
    dbs = [d.name for d in runbook.databases]
    freeze = []
    if runbook.write_flag:
        freeze.append(RaiseWriteFlag(from_region))
    freeze += [FreezeDatabase(d) for d in dbs]
    opened = [OpenWrites(d) for d in dbs]
    if runbook.write_flag:
        opened.append(LowerWriteFlag(to_region))
    stages = [
        Stage("freeze", tuple(freeze)),
        Stage("promote", tuple(PromoteDatabase(d) for d in dbs)),
        # Letting writers in and repointing the secrets touch different systems and
        # neither needs the other: one stage. DNS waits for both (a client sent to the
        # new region must find a secret that points at a primary it may write to).
        Stage("open", (*opened, *(RewriteSecret(secret_target(s.secret_id, s.region))
                                  for s in runbook.secrets),
                       # Aurora's snapshot of what an unplanned failover lost, kept
                       *(KeepFailoverSnapshot(d.name) for d in runbook.databases
                         if d.kind == "aurora-global" and not planned_only))),
    ]
    if runbook.dns:
        stages.append(Stage("dns", (FlipDns(runbook.dns.zone),)))
    validate: list = [CanaryWrite(d) for d in dbs]
    if runbook.validation and runbook.validation.flows:
        validate.append(RunFlows("flows"))
    stages.append(Stage("validate", tuple(validate)))
    return [s for s in stages if s.steps]


def failback_plan(runbook: Runbook, from_region: str, to_region: str,
                  aurora_paths: dict[str, str] | None = None) -> list[Stage]:
    """Back from ``from_region`` (serving now) to ``to_region`` (the old primary):
    fence it, reconcile its divergent writes, rebuild it as a replica; then the
    planned switch (freeze, catch up, promote, ...); then the region we leave
    rejoins as a replica."""
    # An Aurora global database has no fence or rebuild: Aurora made the old writer a
    # secondary; the way back is another switchover, and Aurora makes the region we
    # leave a secondary again. (After a detach the engine refuses the failback.)
    # RDS cannot make the old primary a standby: it is fenced over SQL and by security
    # group, snapshotted, reconciled, then renamed and kept while a fresh cross-region
    # read replica takes its identifier (drorch.steps.rds_failback).
    # Aurora after an unplanned failover: its snapshot of the old writer's volume is
    # restored to a temporary cluster, reconciled, and that cluster deleted; after a
    # switchover those steps find nothing to do (drorch.steps.aurora_failback).
    own = [d.name for d in runbook.databases if d.kind == "postgres"]
    managed = [d.name for d in runbook.databases if d.kind == "rds"]
    # ``aurora_paths``: how the failover being undone made each Aurora writer (journaled);
    # unknown (a plan before any failover) counts as an unplanned one.
    aurora = [d.name for d in runbook.databases if d.kind == "aurora-global"
              and (aurora_paths or {}).get(d.name, "failover") == "failover"]
    stages = [
        Stage("fence", (*(FenceOldPrimary(d) for d in own),
                        *(FenceRdsPrimary(d) for d in managed))),
        Stage("evidence", tuple(SnapshotOldPrimary(d) for d in managed)),
        Stage("restore", tuple(RestoreLostWrites(d) for d in aurora)),
        Stage("reconcile", tuple(ReconcileDivergence(d) for d in own + managed + aurora)),
        Stage("cleanup", tuple(DeleteRestoredCluster(d) for d in aurora)),
        Stage("resync", (*(ResyncAsReplica(d) for d in own),
                         *(ReplaceRdsReplica(d) for d in managed))),
        *failover_plan(runbook, from_region, to_region, planned_only=True),
        Stage("rejoin", (*(RejoinAsReplica(d) for d in own),
                         *(RejoinRdsReplica(d) for d in managed))),
    ]
    return [s for s in stages if s.steps]


def plan_for(kind: str, runbook: Runbook, from_region: str, to_region: str,
             aurora_paths: dict[str, str] | None = None) -> list[Stage]:
    """``aurora_paths``: a failback's ``failover_aurora_paths`` fact."""
    if kind == "failback":
        return failback_plan(runbook, from_region, to_region, aurora_paths)
    return failover_plan(runbook, from_region, to_region)
