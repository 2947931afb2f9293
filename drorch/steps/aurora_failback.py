"""The failback of an Aurora global database after an unplanned failover
(``FailoverGlobalCluster`` with ``AllowDataLoss``).

Aurora kept the old writer's volume as a snapshot (``rds:unplanned-global-failover-...``),
which the failover copied at once (:class:`drorch.steps.evidence.KeepFailoverSnapshot`),
and rebuilt the old writer's cluster as a secondary of the new one once its region was
back: the writes it never replicated live on only in that snapshot (Aurora User Guide,
"Recovering an Amazon Aurora global database from an unplanned outage"). So the way back:

1. :class:`RestoreLostWrites`: the copy restored to a temporary cluster of its own
   (``RestoreDBClusterFromSnapshot`` and an instance to reach it), its application roles
   locked out.
2. :class:`drorch.steps.failback.ReconcileDivergence` against that cluster, under the
   same accounting rules (a full comparison: the master user may not read the WAL).
3. :class:`DeleteRestoredCluster`: only that temporary cluster is deleted (the snapshot
   copy stays, kept until a human deletes it).
4. The planned switchover back.

After a switchover nothing diverged: each step is already done. After a detach the old
writer is a standalone writer; drorch refuses that failback before anything is done.
"""

from __future__ import annotations

from typing import Any

from drorch.adapters import aurora, rds
from drorch.adapters import postgres as pg
from drorch.faultpoints import fault_point
from drorch.steps.base import Step, StepContext, StepFailed
from drorch.steps.evidence import copy_identifier
from drorch.steps.rds_failback import KEPT_TAG, _identifier

ENGINE = "aurora-postgresql"
TEMPORARY_TAG = "drorch:temporary"
"""On a cluster drorch restored for a reconcile: the only kind it deletes."""
INSTANCE_CLASS = "db.r6g.large"
"""The temporary cluster's one instance: it only answers drorch's comparison."""


def failover_path(ctx: StepContext, database: str) -> str | None:
    """How the failover being undone made the writer (``switchover``, ``failover``,
    ``detach``), from its journal."""
    return (ctx.facts.get("failover_aurora_paths") or {}).get(database)


def restored_fact(database: str) -> str:
    return f"restore:{database}:cluster"


class _Restored(Step):
    api = "RDS"

    def _ids(self, ctx: StepContext) -> tuple[str, str]:
        """(temporary cluster, its instance): named after the failover being undone, so
        a failback retried after a rollback finds what the first one made."""
        ep = ctx.runbook.database(self.target).endpoints[ctx.to_region]
        incident = str(ctx.facts.get("failover_incident") or ctx.incident_id)
        return (_identifier(f"{ep.cluster_id}-restore", incident),
                _identifier(f"{ep.cluster_id}-restore-i", incident))

    def _client(self, ctx: StepContext) -> Any:
        return ctx.aws("rds", ctx.aws_region(ctx.to_region))

    def _unplanned(self, ctx: StepContext) -> bool:
        return failover_path(ctx, self.target) == "failover"


class RestoreLostWrites(_Restored):
    """The failover's snapshot copy restored to a temporary cluster in the old writer's
    region; its endpoint journaled for the reconcile."""

    stage = "restore"

    def describe(self, ctx: StepContext) -> str:
        cluster, _ = self._ids(ctx)
        return (f"after an unplanned failover: restore {self.target}'s snapshot copy "
                f"{self._snapshot(ctx)} to {cluster} in {ctx.to_region} (temporary, for the "
                "reconcile)")

    def _snapshot(self, ctx: StepContext) -> str:
        return copy_identifier(str(ctx.facts.get("failover_incident") or ""), self.target)

    def check(self, ctx: StepContext) -> bool:
        if not self._unplanned(ctx):
            return True  # a switchover lost nothing: nothing to restore
        return ctx.facts.get(restored_fact(self.target)) is not None

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        db = ctx.runbook.database(self.target)
        ep = db.endpoints[ctx.to_region]
        if not pg.reachable(ep.dsn()):  # the switch back needs it: check before restoring
            raise StepFailed(
                f"{self.target}'s cluster in {ctx.to_region} does not answer: the way back "
                "switches over to it, so nothing is restored until it is back (Aurora "
                "rebuilds it as a secondary once its region recovers); run the failback "
                "again then")
        cluster_id, instance_id = self._ids(ctx)
        client = self._client(ctx)
        try:
            found = aurora.find_cluster(client, cluster_id)
            if found is not None and not _ours(client, found):
                raise StepFailed(f"{self.target}: a cluster named {cluster_id} exists that "
                                 "drorch did not restore (no drorch:temporary tag); not "
                                 "using it: rename or delete it, then run the failback again")
            if found is None:
                ctx.facts.set(f"{self.id}:requested", cluster_id)
                rid = aurora.restore_cluster(client, cluster_id, self._snapshot(ctx), ENGINE,
                                             {KEPT_TAG: ctx.incident_id,
                                              TEMPORARY_TAG: "delete after reconcile",
                                              "drorch:database": self.target})
                ctx.record("aws.rds.restore_db_cluster_from_snapshot", {
                    "database": self.target, "region": ctx.to_region,
                    "cluster": cluster_id, "snapshot": self._snapshot(ctx),
                    "request_id": rid})
                fault_point(f"{self.id}:restore_requested")
            if rds.find(client, instance_id) is None:
                rid = aurora.add_instance(client, cluster_id, instance_id, ENGINE,
                                          INSTANCE_CLASS)
                ctx.record("aws.rds.create_db_instance", {
                    "database": self.target, "region": ctx.to_region,
                    "cluster": cluster_id, "instance": instance_id, "request_id": rid})
            aurora.wait_cluster(client, cluster_id, db.resync_timeout_s)
            restored = aurora.describe_cluster(client, cluster_id)
        except (aurora.AuroraError, rds.RdsError) as exc:
            raise StepFailed(f"{self.target} in {ctx.to_region}: {exc}") from exc
        if not restored.endpoint or not restored.port:
            raise StepFailed(f"{self.target}: Aurora describes no endpoint for {cluster_id}")
        dsn = ep.model_copy(update={"host": restored.endpoint, "port": restored.port}).dsn()
        try:  # nobody but drorch is to use it: the application roles are locked out
            record = pg.freeze(dsn, db.app_roles, others_wait_s=0)
        except pg.Error as exc:
            raise StepFailed(f"{self.target}: the restored cluster {cluster_id} does not "
                             f"answer: {exc}") from exc
        found = {"cluster": cluster_id, "instance": instance_id, "host": restored.endpoint,
                 "port": restored.port, "snapshot": self._snapshot(ctx)}
        ctx.facts.set(restored_fact(self.target), found)
        return {**found, "region": ctx.to_region, "sql_lockout": record.to_dict()}

    def undo(self, ctx: StepContext) -> dict[str, Any] | None:
        """A failback rolled back leaves no copy of the old writer running (it holds every
        row, sensitive ones too, and costs money): the temporary cluster is deleted; the
        snapshot copy stays, and a retry restores it again."""
        cluster_id, instance_id = self._ids(ctx)
        client = self._client(ctx)
        found = aurora.find_cluster(client, cluster_id)
        if found is None or not _ours(client, found):
            return None
        ids = aurora.delete_restored(client, cluster_id, instance_id)
        ctx.record("aws.rds.delete_db_cluster", {
            "database": self.target, "region": ctx.to_region, "cluster": cluster_id,
            "instance": instance_id, "request_ids": ids, "why": "rollback"})
        return {"deleted": cluster_id}


def _ours(client: Any, cluster: aurora.Cluster) -> bool:
    """The cluster carries the tag drorch puts on what it restores."""
    tags = client.list_tags_for_resource(ResourceName=cluster.arn).get("TagList") or []
    return any(t.get("Key") == TEMPORARY_TAG for t in tags)


class DeleteRestoredCluster(_Restored):
    """The temporary cluster deleted once its writes are accounted for; only it (its name
    and drorch's tag say so), never a cluster of the global database."""

    stage = "cleanup"

    def describe(self, ctx: StepContext) -> str:
        cluster, _ = self._ids(ctx)
        return f"delete the temporary cluster {cluster} in {ctx.to_region} (if restored)"

    def check(self, ctx: StepContext) -> bool:
        if not self._unplanned(ctx):
            return True
        cluster_id, _ = self._ids(ctx)
        try:
            return aurora.find_cluster(self._client(ctx), cluster_id) is None
        except aurora.AuroraError:
            return False

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        accounting = ctx.facts.get(f"reconcile:{self.target}:accounting") or {}
        if accounting.get("holds") is not True:
            raise StepFailed(f"{self.target}: the restored writes are not accounted for; "
                             "the temporary cluster is kept")
        cluster_id, instance_id = self._ids(ctx)
        client = self._client(ctx)
        db = ctx.runbook.database(self.target)
        if cluster_id in {ep.cluster_id for ep in db.endpoints.values()}:
            raise StepFailed(f"{self.target}: {cluster_id} is one of the global database's "
                             "clusters; drorch deletes only what it restored")
        found = aurora.find_cluster(client, cluster_id)
        if found is not None and not _ours(client, found):
            raise StepFailed(f"{self.target}: {cluster_id} has no drorch:temporary tag; "
                             "drorch deletes only what it restored")
        try:
            ids = aurora.delete_restored(client, cluster_id, instance_id)
            aurora.wait_cluster(client, cluster_id, db.resync_timeout_s, deleted=True)
        except aurora.AuroraError as exc:
            raise StepFailed(f"{self.target} in {ctx.to_region}: {exc}") from exc
        ctx.record("aws.rds.delete_db_cluster", {
            "database": self.target, "region": ctx.to_region, "cluster": cluster_id,
            "instance": instance_id, "request_ids": ids})
        return {"cluster": cluster_id, "instance": instance_id, "region": ctx.to_region}
