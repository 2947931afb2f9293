"""Keep Aurora's snapshot of the old writer's volume after an unplanned global failover.

``FailoverGlobalCluster`` with ``AllowDataLoss`` leaves a snapshot of the old primary
cluster's volume, ``rds:unplanned-global-failover-...`` (Aurora User Guide, "Recovering
an Amazon Aurora global database from an unplanned outage"). It is an automated
snapshot: it goes when the old cluster's backup retention says so. It holds the writes
the failover lost, so drorch copies it at once to a manual snapshot it names, kept until
a human deletes it. The copy is made in the failed region, through that region's API:
best effort in a failover (deferred and retried while that API does not answer).
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError

from drorch.steps.base import Step, StepContext, StepFailed

UNPLANNED_PREFIX = "rds:unplanned-global-failover-"


def copy_identifier(incident_id: str, database: str) -> str:
    """A DB cluster snapshot identifier for the copy: letters, digits and single hyphens,
    starting with a letter, at most 63 characters (CopyDBClusterSnapshot's
    TargetDBClusterSnapshotIdentifier constraints)."""
    raw = re.sub(r"[^a-z0-9]+", "-", f"drorch-{incident_id}-{database}".lower())
    return re.sub(r"-{2,}", "-", raw)[:63].strip("-")


class KeepFailoverSnapshot(Step):
    """Runs beside the open stage's steps (its id: ``evidence:<database>``)."""

    stage = "evidence"
    api = "RDS"

    def _old(self, ctx: StepContext) -> tuple[Any, str]:
        ep = ctx.runbook.database(self.target).endpoints[ctx.from_region]
        return ctx.aws("rds", ctx.aws_region(ctx.from_region)), str(ep.cluster_id)

    def _copy_id(self, ctx: StepContext) -> str:
        return copy_identifier(ctx.incident_id, self.target)

    def _unplanned(self, ctx: StepContext) -> bool:
        return ctx.facts.get(f"promote:{self.target}:aurora_path") == "failover"

    def api_region(self, ctx: StepContext) -> str | None:
        return ctx.from_region

    def describe(self, ctx: StepContext) -> str:
        _client, old = self._old(ctx)
        return (f"after an unplanned failover: copy Aurora's snapshot of {old}'s volume in "
                f"{ctx.from_region} to {self._copy_id(ctx)} (kept until a human deletes it)")

    def check(self, ctx: StepContext) -> bool:
        if not self._unplanned(ctx):
            return True  # a switchover or a detach loses nothing: no such snapshot
        client, _old = self._old(ctx)
        try:
            client.describe_db_cluster_snapshots(
                DBClusterSnapshotIdentifier=self._copy_id(ctx))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "DBClusterSnapshotNotFoundFault":
                return False
            raise
        return True

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        client, old = self._old(ctx)
        snaps = client.describe_db_cluster_snapshots(
            DBClusterIdentifier=old)["DBClusterSnapshots"]
        mine = [s for s in snaps if s["DBClusterSnapshotIdentifier"].startswith(
            UNPLANNED_PREFIX)]
        if not mine:
            raise StepFailed(f"Aurora shows no {UNPLANNED_PREFIX}* snapshot of {old} in "
                             f"{ctx.from_region} yet")
        source = max(mine, key=lambda s: s.get("SnapshotCreateTime") or 0)
        copy = self._copy_id(ctx)
        # named after the incident and database (tags would need rds:AddTagsToResource)
        client.copy_db_cluster_snapshot(
            SourceDBClusterSnapshotIdentifier=source["DBClusterSnapshotIdentifier"],
            TargetDBClusterSnapshotIdentifier=copy)
        return {"source": source["DBClusterSnapshotIdentifier"], "copy": copy,
                "region": ctx.from_region}
