"""The failback-only steps: fence the old primary, reconcile its divergent writes,
rebuild it as a replica. They run before anything is frozen, so a failure
leaves the service where it is (failed over) and the machine rolls back.

They need to control the old primary's node (stop, write ``standby.signal``,
``pg_rewind``): ``ctx.nodes(db, region)`` provides it, chosen by the database's kind
(:mod:`drorch.adapters.nodes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drorch.adapters import postgres as pg
from drorch.steps.base import Step, StepContext, StepFailed
from drorch.steps.promote import keep_sync_standbys, restore_sync_standbys, sync_fact_key


def _node(ctx: StepContext, db: str, region: str) -> Any:
    from drorch.adapters.nodes import NEEDS_NODE, NodeControlUnavailable

    if ctx.nodes is None:
        raise StepFailed(f"{db} in {region}: {', '.join(NEEDS_NODE)} need control of the "
                         "database node, and this engine was given none")
    try:
        return ctx.nodes(db, region)
    except NodeControlUnavailable as e:
        raise StepFailed(str(e)) from None


def _dsn(ctx: StepContext, db: str, region: str) -> str:
    return ctx.runbook.database(db).endpoints[region].dsn()


class FenceOldPrimary(Step):
    """Restart the old primary as a standby with no upstream: read-only, writes no WAL,
    prunes nothing, so its divergent commits stay readable. Verified, never assumed."""

    stage = "fence"

    def describe(self, ctx: StepContext) -> str:
        return f"fence {self.target} in {ctx.to_region} as a standby with no upstream"

    def check(self, ctx: StepContext) -> bool:
        from drorch.reconcile import fence

        node = _node(ctx, self.target, ctx.to_region)
        if not node.is_running():
            return False
        status = fence.verify_fenced(node.dsn(ctx.runbook.database(self.target)
                                              .endpoints[ctx.to_region].dbname))
        return status.state == "fenced"

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        from drorch.reconcile import fence

        node = _node(ctx, self.target, ctx.to_region)
        if node.is_running():
            before = fence.verify_fenced(node.dsn())
            if before.alarm:
                ctx.record("fence.alarm", {"database": self.target, "region": ctx.to_region,
                                           "found": before.to_dict()}, outcome="alarm")
        status = fence.fence_as_standby(node, start=True)
        if status.state != "fenced":
            ctx.record("fence.alarm", {"database": self.target, "region": ctx.to_region,
                                       "found": status.to_dict()}, outcome="alarm")
            raise StepFailed(f"{self.target} in {ctx.to_region} is not fenced: {status.reason}",
                             status.to_dict())
        return status.to_dict()


class ReconcileDivergence(Step):
    """Find every write the old primary committed after the split (its WAL, exactly),
    capture it on the new primary, apply the non-conflicting ones, write the rest to
    the conflict file. Idempotent: a captured run and applied changes are recorded
    on the new primary and not redone."""

    stage = "reconcile"

    def describe(self, ctx: StepContext) -> str:
        spec = ctx.runbook.database(self.target).reconcile
        tables = [t.name for t in spec.tables] if spec else []
        return (f"find {self.target}'s divergent writes in {ctx.to_region} (method "
                f"{spec.method if spec else '-'}), apply to {ctx.from_region}: {tables}")

    def check(self, ctx: StepContext) -> bool:
        if ctx.runbook.database(self.target).kind == "aurora-global":
            from drorch.steps.aurora_failback import failover_path

            if failover_path(ctx, self.target) != "failover":
                return True  # a switchover lost nothing: nothing diverged
        return ctx.facts.get(f"reconcile:{self.target}:applied") is not None

    def _old_dsn(self, ctx: StepContext, db: Any) -> str:
        """Where the old primary's writes are read: its node (``postgres``), its instance
        (``rds``), or the cluster restored from Aurora's snapshot of its volume."""
        ep = db.endpoints[ctx.to_region]
        if db.kind == "rds":
            from drorch.steps.rds_failback import old_primary

            return old_primary(ctx, self.target)[1]
        if db.kind == "aurora-global":
            from drorch.steps.aurora_failback import restored_fact

            restored = ctx.facts.get(restored_fact(self.target))
            if not restored:
                raise StepFailed(f"{self.target}: the failover's snapshot was not restored")
            return str(ep.model_copy(update={"host": restored["host"],
                                             "port": int(restored["port"])}).dsn())
        return str(_node(ctx, self.target, ctx.to_region).dsn(ep.dbname))

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        from drorch.reconcile.accounting import account
        from drorch.reconcile.apply import ApplyBlocked, SchemaChanged, apply_reconciliation
        from drorch.reconcile.find import blocked, find_divergence

        db = ctx.runbook.database(self.target)
        if db.reconcile is None:
            raise StepFailed(f"{self.target}: no reconcile section in the runbook; divergent "
                             "writes would be lost silently, so drorch will not resync")
        new_dsn = _dsn(ctx, self.target, ctx.from_region)
        managed = db.kind != "postgres"  # a primary AWS manages: locked out, not a standby
        old_dsn = self._old_dsn(ctx, db)
        divergence = _divergence(ctx, self.target, new_dsn)
        promoted = (ctx.facts.get("failover_promoted_at") or {}).get(self.target)
        try:
            report = find_divergence(
                old_dsn, new_dsn, db.reconcile, divergence,
                promoted_at=datetime.fromtimestamp(promoted, UTC) if promoted else None,
                locked_out_roles=db.app_roles if managed else None,
                split_max_keys=((ctx.facts.get("failover_split") or {}).get(self.target)
                                or {}).get("keys"))
        except pg.Error as exc:
            if getattr(exc, "sqlstate", None) != "42501":  # insufficient_privilege
                raise
            raise StepFailed(
                f"{self.target}: the role drorch connects as "
                f"({db.endpoints[ctx.to_region].user}) may not read everything it must "
                f"compare: {str(exc).strip().splitlines()[0]}. Nothing was applied or "
                "replaced. Grant it SELECT on that table in both regions (and INSERT, "
                "UPDATE, DELETE in the serving one), then run the failback again") from exc
        report_doc = {
            "run_id": report.run_id, "summary": report.summary(), "totals": report.totals(),
            "transactions": report.transactions, "method": report.method,
            "method_reason": report.method_reason, "divergence": divergence.to_dict(),
            "unlisted_tables": report.unlisted_tables, "default_policy": report.default_policy,
            "problems": report.problems, "unconfigured_tables": report.unconfigured_tables,
            "in_time": report.in_time, "notes": report.notes,
            "tables": [{"table": t.table, "policy": t.policy, "counts": t.counts()}
                       for t in report.tables]}
        ctx.facts.set(f"reconcile:{self.target}:report", report_doc)
        if blocked(report):  # before anything is applied or kept: a retry starts afresh
            accounting = account(report_doc, {"outcomes": [], "conflict_file": None})
            ctx.facts.set(f"reconcile:{self.target}:accounting", accounting.to_dict())
            ctx.record("reconcile.unaccounted", {"database": self.target,
                                                 **accounting.to_dict()}, outcome="halted")
            raise StepFailed(f"{self.target}: divergent writes that drorch cannot reconcile, "
                             f"so it will not {_erasing(db.kind)}: {accounting.problem()}",
                             accounting.to_dict())
        path = conflict_path(ctx, self.target)
        try:
            result = apply_reconciliation(
                report, new_dsn, db.reconcile, conflict_file=path,
                mapping_file=str(Path(ctx.runbook.state_dir) / f"rekeyed-{self.target}.csv"))
        except pg.Error as exc:
            if getattr(exc, "sqlstate", None) != "42501":  # insufficient_privilege
                raise
            ctx.record("reconcile.apply_stopped", {"database": self.target,
                                                   "error": str(exc)}, outcome="halted")
            raise StepFailed(
                f"{self.target}: the role drorch connects as in {ctx.from_region} "
                f"({db.endpoints[ctx.from_region].user}) may not apply the divergent rows: "
                f"{str(exc).strip().splitlines()[0]}. Nothing was replaced; what was "
                "applied stays recorded. Grant it what it lacks (on RDS: membership of "
                "rds_superuser), then run the failback again") from exc
        except (ApplyBlocked, SchemaChanged) as exc:  # nothing rewound; a resume goes on
            ctx.record("reconcile.apply_stopped", {"database": self.target,
                                                   "error": str(exc)}, outcome="halted")
            raise StepFailed(f"{self.target}: {exc}") from exc
        applied = result.to_dict()
        accounting = account(report_doc, applied)
        for t in accounting.tables:  # one audit entry per table, never one per row
            ctx.record("reconcile.table", {
                "database": self.target, **t.to_dict(),
                "changes_digest": _digest(f"{o['kind']}:{o['outcome']}:{o['digest']}"
                                          for o in applied["outcomes"]
                                          if o["table"] == t.table)},
                outcome="ok" if not t.unaccounted else "unaccounted")
        ctx.facts.set(f"reconcile:{self.target}:accounting", accounting.to_dict())
        if not accounting.holds:
            ctx.record("reconcile.unaccounted", {"database": self.target,
                                                 **accounting.to_dict()}, outcome="halted")
            raise StepFailed(f"{self.target}: divergent writes not accounted for, so drorch "
                             f"will not {_erasing(db.kind)}: {accounting.problem()}",
                             accounting.to_dict())
        # Captured and accounted for: the new primary's WAL from the split is not needed
        # any more (released before the fact, so a kill here cannot leave it pinned).
        released = pg.release_wal(new_dsn, pg.split_slot_name(self.target))
        if released:
            ctx.record("reconcile.split_wal_released", {
                "database": self.target, "region": ctx.from_region,
                "slot": pg.split_slot_name(self.target)})
        cap = (ctx.facts.get("split_wal_caps") or {}).get(self.target)
        if cap is not None and not ctx.facts.get(f"split:{self.target}:cap_restored"):
            # the cap the failover's promotion set: put the node's own setting back
            # as it was: ALTER SYSTEM's value again, or no ALTER SYSTEM entry at all
            pg.set_slot_wal_cap_mb(new_dsn, int(cap["previous_mb"])
                                   if cap.get("previous_by_alter_system") else None)
            ctx.facts.set(f"split:{self.target}:cap_restored", True)
            ctx.record("reconcile.split_wal_cap_restored", {
                "database": self.target, "region": ctx.from_region,
                "max_slot_wal_keep_size_mb": cap["previous_mb"]})
        ctx.facts.set(f"reconcile:{self.target}:applied", applied)
        return {"split_wal_released": released,
                "run_id": report.run_id, "summary": report.summary(), "totals": report.totals(),
                "divergence": divergence.to_dict(), "accounting": accounting.to_dict(),
                "conflict_file": path,
                "applied": {k: v for k, v in applied.items() if k != "outcomes"}}


def _erasing(kind: str) -> str:
    """What the failback will not do next while a divergent write is unaccounted for."""
    return ("hand the old primary's identifier to a new replica (it stays fenced, "
            "kept as it is)" if kind == "rds" else "rewind the old primary")


def _divergence(ctx: StepContext, database: str, new_dsn: str) -> Any:
    """Where the timelines split: the new primary's timeline history, or, where the role
    may not read it (``pg_read_file`` needs ``pg_read_server_files``, which RDS's master
    user lacks), what the failover journaled as the promoted node ended recovery (the
    end of the WAL it replayed and its last replayed commit:
    :func:`drorch.steps.promote.keep_split`), on the
    timeline before the one it writes now."""
    from drorch.reconcile.model import Divergence
    from drorch.reconcile.timeline import divergence_point

    try:
        return divergence_point(new_dsn)
    except pg.Error as exc:
        if "permission denied" not in str(exc):
            raise
    split = (ctx.facts.get("failover_split") or {}).get(database) or {}
    measured = (ctx.facts.get("failover_measured") or {}).get(database) or {}
    lsn = split.get("lsn") or measured.get("replica_receive_lsn") \
        or measured.get("replica_lsn")
    if not lsn:
        raise StepFailed(f"{database}: the new primary's timeline history is not readable "
                         "by this role, and the failover's journal has no replay position "
                         "for it: where the split is cannot be known")
    tli = pg.timeline(new_dsn)
    # unix seconds, the old primary's clock: the last commit the promoted node replayed
    at = split.get("at") if split else measured.get("replica_last_commit_at")
    return Divergence(str(lsn), tli, tli - 1,
                      datetime.fromtimestamp(float(at), UTC).isoformat() if at else None)


def conflict_path(ctx: StepContext, database: str) -> str:
    """The runbook's conflict file, else ``<state_dir>/conflicts-<database>.jsonl``."""
    spec = ctx.runbook.database(database).reconcile
    if spec is not None and spec.conflict_file:
        return spec.conflict_file
    return str(Path(ctx.runbook.state_dir) / f"conflicts-{database}.jsonl")


def _digest(items: Iterable[str]) -> str:
    """SHA-256 over the sorted items: names a change set in the audit without listing it."""
    h = hashlib.sha256()
    for item in sorted(items):
        h.update(item.encode())
        h.update(b"\0")
    return h.hexdigest()


class ResyncAsReplica(Step):
    """Rebuild the old primary (``ctx.to_region``) as a streaming replica of the serving
    one (``ctx.from_region``): pg_rewind, or a fresh base backup; wait until caught up.
    Refuses until its divergent writes were captured (a rewind erases them)."""

    stage = "resync"

    def _roles(self, ctx: StepContext) -> tuple[str, str]:
        """(region whose node is rebuilt, region it will follow)."""
        return ctx.to_region, ctx.from_region

    def describe(self, ctx: StepContext) -> str:
        rebuilt, source = self._roles(ctx)
        return f"rebuild {self.target} in {rebuilt} as a replica of {source}"

    def check(self, ctx: StepContext) -> bool:
        return False  # resync_as_replica returns at once when it already streams

    def _captured(self, ctx: StepContext) -> bool:
        """Captured and every change accounted for (the step before refuses otherwise;
        checked again here because a rewind cannot be undone)."""
        accounting = ctx.facts.get(f"reconcile:{self.target}:accounting") or {}
        return (ctx.facts.get(f"reconcile:{self.target}:applied") is not None
                and accounting.get("holds") is True)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        from drorch.reconcile.resync import resync_as_replica

        rebuilt, source = self._roles(ctx)
        own = self._own_sync(ctx, rebuilt)
        result = resync_as_replica(_node(ctx, self.target, rebuilt),
                                   _dsn(ctx, self.target, source),
                                   captured=self._captured(ctx),
                                   timeout_s=ctx.runbook.database(self.target).resync_timeout_s,
                                   evidence=self._evidence(ctx, rebuilt))
        if result.evidence:
            ctx.record("resync.evidence_kept", {"database": self.target, "region": rebuilt,
                                                "archive": result.evidence})
        if own is not None:  # the rebuild copied the source's postgresql.auto.conf
            keep_sync_standbys(_dsn(ctx, self.target, rebuilt), own)
        restored = restore_sync_standbys(ctx, self.target, _dsn(ctx, self.target, source),
                                         self._sync_fit(ctx), self._sync_restored_key())
        return {**result.to_dict(), **({"sync_standbys_restored": restored} if restored
                                       else {})}

    def _own_sync(self, ctx: StepContext, rebuilt: str) -> dict[str, Any] | None:
        """The rebuilt node's own ``synchronous_standby_names``, journaled before the
        rebuild (pg_rewind and a base backup copy the source's ``postgresql.auto.conf``
        over it); None when the node does not answer (nothing known to keep)."""
        key = f"{self.stage}:{self.target}:own_sync"
        own = ctx.facts.get(key)
        if own is None:
            try:
                value, altered = pg.sync_standby_names(_dsn(ctx, self.target, rebuilt))
            except pg.Unreachable:
                return None
            own = {"value": value, "by_alter_system": altered}
            ctx.facts.set(key, own)
        return dict(own)

    def _sync_fit(self, ctx: StepContext) -> dict[str, Any] | None:
        """What the failover's promotion did to the serving node's synchronous standbys:
        put back now that the rebuilt node streams from it."""
        return (ctx.facts.get("failover_sync_fits") or {}).get(self.target)

    def _sync_restored_key(self) -> str:
        return f"{self.stage}:{self.target}:sync_restored"

    def _sync_pending(self, ctx: StepContext) -> bool:
        return (self._sync_fit(ctx) is not None
                and not ctx.facts.get(self._sync_restored_key()))

    def _evidence(self, ctx: StepContext, rebuilt: str) -> Path | None:
        """Where the old primary's data directory is archived before the rewind (kept
        until a human deletes it)."""
        return (Path(ctx.runbook.state_dir) / "evidence"
                / f"{ctx.incident_id}-{self.target}-{rebuilt}.tar.gz")


class RejoinAsReplica(ResyncAsReplica):
    """After the switch back, the region we left becomes the replica again, ready for
    the next failover. It was frozen and caught up before the promotion, so nothing
    diverged there: there is nothing to capture."""

    stage = "rejoin"

    def _roles(self, ctx: StepContext) -> tuple[str, str]:
        return ctx.from_region, ctx.to_region

    def _captured(self, ctx: StepContext) -> bool:
        promoted = ctx.facts.get(f"promote:{self.target}:measured") or {}
        return bool(promoted.get("caught_up"))

    def _evidence(self, ctx: StepContext, rebuilt: str) -> Path | None:
        return None  # frozen and caught up before the promotion: nothing diverged

    def _sync_fit(self, ctx: StepContext) -> dict[str, Any] | None:
        """What this failback's promotion did to the old primary's synchronous standbys."""
        return ctx.facts.get(sync_fact_key(self.target))

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        checked = self._no_writes_after_split(ctx)
        return {**super().apply(ctx), "writes_after_split": checked}

    def _no_writes_after_split(self, ctx: StepContext) -> dict[str, Any]:
        """Before the rewind: the node we left must have written no row after the node
        now serving left it (its promotion). The freeze ended every session there, but
        a superuser may have logged in again and written; a rewind would erase that
        without a trace, so any such write stops the rejoin (the incident halts, the
        node is left as it is)."""
        from drorch.reconcile.timeline import divergence_point

        left = _dsn(ctx, self.target, ctx.from_region)
        try:
            if pg.in_recovery(left):
                return {"checked": False, "why": "already a standby"}
        except pg.Unreachable:
            return {"checked": False, "why": "unreachable"}
        split = divergence_point(_dsn(ctx, self.target, ctx.to_region)).lsn
        try:
            n = pg.user_writes_since(left, split)
        except pg.Error as exc:
            raise StepFailed(
                f"{self.target} in {ctx.from_region}: cannot check it for writes after "
                f"{ctx.to_region}'s promotion ({str(exc).strip().splitlines()[0]}); not "
                "rewinding it (install pg_walinspect there, then `drorch resume`)") from exc
        if n:
            ctx.record("rejoin.writes_after_split", {
                "database": self.target, "region": ctx.from_region, "split_lsn": split,
                "transactions": n}, outcome="halted")
            raise StepFailed(
                f"{self.target} in {ctx.from_region}: {n} transaction(s) wrote rows there "
                f"after {ctx.to_region}'s promotion at {split} (after the freeze): divergent "
                "writes a rewind would erase. Not rewinding it: it is left as it is "
                "(frozen, not serving); recover those rows from it, then `drorch resume`",
                {"split_lsn": split, "transactions": n})
        return {"checked": True, "split_lsn": split, "transactions": 0}

    def check(self, ctx: StepContext) -> bool:
        try:
            return (pg.in_recovery(_dsn(ctx, self.target, ctx.from_region))
                    and not self._sync_pending(ctx))
        except pg.Unreachable:
            return False
