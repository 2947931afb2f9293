"""The failback of an RDS for PostgreSQL database (``kind: rds``), through the RDS API.

RDS cannot turn a promoted-away primary back into a standby: after an unplanned failover
the old primary comes back as a standalone, writable instance. So the way back is:

1. :class:`FenceRdsPrimary`: the application roles are locked out over SQL (the
   failover's freeze, as the master user may do it: per-database read-only default,
   ``NOLOGIN``, sessions ended) and, when the runbook names them, its network path is
   closed by putting it in fence security groups (``ModifyDBInstance``), verified.
2. :class:`SnapshotOldPrimary`: a manual snapshot of it, the evidence of what it held,
   kept until a human deletes it.
3. The divergent writes are reconciled onto the serving primary
   (:class:`drorch.steps.failback.ReconcileDivergence`: a full comparison when the
   master user may not read the WAL, which is RDS's case).
4. :class:`ReplaceRdsReplica`: the old primary is renamed (``<identifier>-old-<incident>``,
   tagged, never deleted) and a fresh cross-region read replica of the serving primary is
   created under its identifier, so its endpoint address (which RDS derives from the
   identifier) and the runbook stay true; then drorch waits until it has caught up.
5. The planned switch back (freeze, barrier, ``PromoteReadReplica``, secrets, DNS,
   validation), then :class:`RejoinRdsReplica` does 4. for the region left, so the estate
   is a primary and its cross-region replica again.

Each step reads RDS before it acts and journals a request before making it, so a kill at
any line and ``drorch resume`` make one snapshot, one rename and one replica.
"""

from __future__ import annotations

import re
import time
from typing import Any

from drorch.adapters import postgres as pg
from drorch.adapters import rds
from drorch.faultpoints import fault_point
from drorch.steps.base import Step, StepContext, StepFailed

KEPT_TAG = "drorch:kept-by"
"""On an instance drorch renamed and kept: the incident that did it (delete it by hand)."""


def groups_before_fact(database: str) -> str:
    """The old primary's security groups before the fence put it in the fence groups: the
    ones its replacement gets."""
    return f"fence:{database}:groups_before"


def _identifier(prefix: str, incident_id: str, limit: int = 63) -> str:
    """An RDS identifier from ``prefix`` and an incident id: letters, digits and single
    hyphens, starting with a letter, at most ``limit`` characters, no hyphen at the end
    (RDS API Reference, DBInstanceIdentifier / DBSnapshotIdentifier constraints)."""
    tail = re.sub(r"[^a-z0-9]+", "-", incident_id.lower()).strip("-")[-20:].strip("-")
    head = re.sub(r"[^a-z0-9]+", "-", prefix.lower()).strip("-")
    if not head[:1].isalpha():
        head = f"drorch-{head}"
    head = head[:limit - len(tail) - 1].strip("-")
    return f"{head}-{tail}"  # the incident's part is never cut


def _endpoint(ctx: StepContext, db: str, region: str) -> Any:
    return ctx.runbook.database(db).endpoints[region]


def _client(ctx: StepContext, region: str) -> Any:
    return ctx.aws("rds", ctx.aws_region(region))


def _fail(db: str, region: str, exc: Exception) -> StepFailed:
    return StepFailed(f"{db} in {region}: {exc}")


def kept_name(ctx: StepContext, database: str, region: str, incident: str) -> str:
    """What the instance of ``database`` in ``region`` is renamed to when it is replaced
    by a new replica: ``<instance_id>-old-<incident>``."""
    ep = _endpoint(ctx, database, region)
    return _identifier(f"{ep.instance_id}-old", incident)


def old_primary(ctx: StepContext, database: str) -> tuple[str, str]:
    """The failback's old primary (``ctx.to_region``) as (identifier, connection string):
    under the runbook's identifier, or, when a failback that went on to replace it was
    rolled back (a failure after the rename), under the name it was kept as, reached at
    the endpoint RDS describes for that name (the address follows the identifier)."""
    ep = _endpoint(ctx, database, ctx.to_region)
    incident = str(ctx.facts.get("failover_incident") or ctx.incident_id)
    kept = rds.find(_client(ctx, ctx.to_region), kept_name(ctx, database, ctx.to_region,
                                                           incident))
    if kept is None or not kept.address or not kept.port:
        return str(ep.instance_id), str(ep.dsn())
    return kept.identifier, str(ep.model_copy(update={"host": kept.address,
                                                      "port": kept.port}).dsn())


class FenceRdsPrimary(Step):
    """The old primary (``ctx.to_region``) locked out over SQL and, when the runbook names
    fence security groups, cut off from the network; verified, never assumed. Its data is
    left as it is: nothing here writes a row."""

    stage = "fence"
    api = "RDS"

    def _fact(self) -> str:
        return f"fence:{self.target}:freeze"

    def describe(self, ctx: StepContext) -> str:
        ep = _endpoint(ctx, self.target, ctx.to_region)
        net = (f"; security groups set to {ep.fence_security_group_ids}"
               if ep.fence_security_group_ids else "; no fence security group in the runbook")
        return (f"fence {self.target}'s old primary {ep.instance_id} in {ctx.to_region}: "
                f"application roles locked out over SQL{net}")

    def _groups_fenced(self, ctx: StepContext, name: str) -> bool:
        ep = _endpoint(ctx, self.target, ctx.to_region)
        if not ep.fence_security_group_ids:
            return True
        found = rds.describe(_client(ctx, ctx.to_region), name)
        return sorted(found.security_groups) == sorted(ep.fence_security_group_ids)

    def check(self, ctx: StepContext) -> bool:
        fact = ctx.facts.get(self._fact())
        if not fact or fact.get("phase") != "done":
            return False
        db = ctx.runbook.database(self.target)
        try:
            name, dsn = old_primary(ctx, self.target)
            return pg.is_frozen(dsn, db.app_roles) and self._groups_fenced(ctx, name)
        except (pg.Unreachable, rds.RdsError):
            return False

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        db = ctx.runbook.database(self.target)
        ep = _endpoint(ctx, self.target, ctx.to_region)
        try:
            name, dsn = old_primary(ctx, self.target)
        except rds.RdsError as exc:
            raise _fail(self.target, ctx.to_region, exc) from exc
        out: dict[str, Any] = {"instance": name, "region": ctx.to_region}
        if ep.fence_security_group_ids:
            client = _client(ctx, ctx.to_region)
            try:
                before = rds.describe(client, name)
                key = groups_before_fact(self.target)
                if ctx.facts.get(key) is None:  # a rerun must not record the fence's own
                    ctx.facts.set(key, list(before.security_groups))
                answer = rds.set_security_groups(client, name, ep.fence_security_group_ids)
            except rds.RdsError as exc:
                raise _fail(self.target, ctx.to_region, exc) from exc
            ctx.record("aws.rds.fence_security_groups", {
                "database": self.target, "region": ctx.to_region, "instance": name,
                "before": ctx.facts.get(key), "after": ep.fence_security_group_ids,
                "request_id": answer.request_id})
            out["security_groups"] = {"before": ctx.facts.get(key),
                                      "after": ep.fence_security_group_ids}
        previous = ctx.facts.get(self._fact())
        try:
            record = pg.freeze(
                dsn, db.app_roles,
                pg.FreezeRecord.from_dict(previous) if previous else None,
                on_intent=lambda i: ctx.facts.set(self._fact(), {"phase": "intent",
                                                                 **i.to_dict()}),
                others_wait_s=db.freeze_others_wait_s)
        except pg.Unreachable as exc:
            raise StepFailed(
                f"{self.target}'s old primary in {ctx.to_region} does not answer ({exc}): its "
                "divergent writes cannot be read, so drorch does not fail back. Bring it "
                "back, then run the failback again (nothing was changed but what the "
                "journal shows)"
            ) from exc
        ctx.facts.set(self._fact(), {"phase": "done", **record.to_dict()})
        if not pg.is_frozen(dsn, db.app_roles):
            raise StepFailed(f"{self.target} in {ctx.to_region}: locked out, yet an "
                             "application role can still log in or write")
        if not self._groups_fenced(ctx, name):
            raise StepFailed(f"{self.target} in {ctx.to_region}: RDS does not show the "
                             "fence security groups on the instance")
        return {**out, "sql_lockout": record.to_dict(),
                "network": "security groups" if ep.fence_security_group_ids else
                "not closed (no fence_security_group_ids): the SQL lockout alone"}


class SnapshotOldPrimary(Step):
    """A manual snapshot of the fenced old primary: what it held, divergent writes
    included, kept until a human deletes it (drorch never deletes one)."""

    stage = "evidence"
    api = "RDS"

    def snapshot_id(self, ctx: StepContext) -> str:
        return _identifier(f"drorch-{self.target}-failback", ctx.incident_id, 255)

    def describe(self, ctx: StepContext) -> str:
        ep = _endpoint(ctx, self.target, ctx.to_region)
        return (f"snapshot {ep.instance_id} in {ctx.to_region} as {self.snapshot_id(ctx)} "
                "(evidence, kept until a human deletes it)")

    def check(self, ctx: StepContext) -> bool:
        try:
            found = rds.find_snapshot(_client(ctx, ctx.to_region), self.snapshot_id(ctx))
        except rds.RdsError as exc:
            raise _fail(self.target, ctx.to_region, exc) from exc
        return found is not None and found.status == "available"

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        client, snap_id = _client(ctx, ctx.to_region), self.snapshot_id(ctx)
        timeout = ctx.runbook.database(self.target).resync_timeout_s
        try:
            name, _dsn = old_primary(ctx, self.target)
            found = rds.find_snapshot(client, snap_id)
            if found is None:
                made = rds.create_snapshot(client, name, snap_id, {
                    KEPT_TAG: ctx.incident_id, "drorch:database": self.target})
                ctx.record("aws.rds.create_db_snapshot", {
                    "database": self.target, "region": ctx.to_region,
                    "instance": name, "snapshot": snap_id, "arn": made.arn,
                    "request_id": made.request_id})
                fault_point(f"{self.id}:snapshot_requested")
            found = rds.wait_snapshot(client, snap_id, timeout,
                                      progress=ctx.waiting(self.id))
        except rds.RdsError as exc:
            raise _fail(self.target, ctx.to_region, exc) from exc
        ctx.facts.set(f"evidence:{self.target}:snapshot", {"id": snap_id, "arn": found.arn,
                                                          "region": ctx.to_region})
        return {"snapshot": snap_id, "arn": found.arn, "status": found.status,
                "instance": name, "region": ctx.to_region}


class ReplaceRdsReplica(Step):
    """The old primary (``ctx.to_region``) renamed and kept; a fresh cross-region read
    replica of the serving primary (``ctx.from_region``) created under its identifier;
    waited for until it has caught up. Refuses until the divergent writes are accounted
    for (the replica takes the old primary's endpoint address)."""

    stage = "resync"
    api = "RDS"

    def _roles(self, ctx: StepContext) -> tuple[str, str]:
        """(region whose instance is replaced, region of the primary it will follow)."""
        return ctx.to_region, ctx.from_region

    def _renaming_incident(self, ctx: StepContext) -> str:
        """Whose incident names the kept instance: the failover's (a failback retried
        after a rollback finds the rename it already made)."""
        return str(ctx.facts.get("failover_incident") or ctx.incident_id)

    def kept_id(self, ctx: StepContext) -> str:
        replaced, _ = self._roles(ctx)
        return kept_name(ctx, self.target, replaced, self._renaming_incident(ctx))

    def describe(self, ctx: StepContext) -> str:
        replaced, source = self._roles(ctx)
        ep = _endpoint(ctx, self.target, replaced)
        return (f"rename {ep.instance_id} in {replaced} to {self.kept_id(ctx)} (kept), create "
                f"{ep.instance_id} as a read replica of {source}'s primary, wait until it "
                "has caught up")

    def _settings_key(self) -> str:
        return f"{self.id}:replica_settings"

    def _keep_settings(self, ctx: StepContext, client: Any, identifier: str) -> None:
        """Journal, before the rename, what the new replica keeps of the instance it
        replaces (its network, parameter group, encryption): the old primary's own
        security groups, not the fence's."""
        if ctx.facts.get(self._settings_key()) is not None:
            return
        settings = rds.replica_settings(client, identifier)
        # the old primary's own groups, when the failback's fence replaced them
        groups = ctx.facts.get(groups_before_fact(self.target)) if self.stage == "resync" \
            else None
        if groups:
            settings["VpcSecurityGroupIds"] = groups
        ctx.facts.set(self._settings_key(), settings)

    def _ready(self, ctx: StepContext) -> bool:
        """Captured and every change accounted for."""
        accounting = ctx.facts.get(f"reconcile:{self.target}:accounting") or {}
        return (ctx.facts.get(f"reconcile:{self.target}:applied") is not None
                and accounting.get("holds") is True)

    def _source(self, ctx: StepContext) -> rds.Instance:
        _, source = self._roles(ctx)
        ep = _endpoint(ctx, self.target, source)
        return rds.describe(_client(ctx, source), str(ep.instance_id))

    def check(self, ctx: StepContext) -> bool:
        replaced, _ = self._roles(ctx)
        ep = _endpoint(ctx, self.target, replaced)
        try:
            now = rds.find(_client(ctx, replaced), str(ep.instance_id))
            if now is None or now.source != self._source(ctx).arn or now.status != "available":
                return False
            return pg.in_recovery(ep.dsn())
        except (rds.RdsError, pg.Unreachable):
            return False

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        if not self._ready(ctx):
            raise StepFailed(f"{self.target}: the old primary's divergent writes are not "
                             "accounted for; its identifier is not handed to a new replica")
        replaced, source_region = self._roles(ctx)
        db = ctx.runbook.database(self.target)
        ep = _endpoint(ctx, self.target, replaced)
        client, name, kept = _client(ctx, replaced), str(ep.instance_id), self.kept_id(ctx)
        out: dict[str, Any] = {"instance": name, "region": replaced, "kept": kept}
        t0 = time.monotonic()
        try:
            source = self._source(ctx)
            if source.is_replica or source.status != "available":
                raise StepFailed(f"{self.target}: {source_region}'s instance {source.identifier} "
                                 f"is not an available primary ({source.status})")
            current, old = rds.find(client, name), rds.find(client, kept)
            if current is not None and current.source != source.arn:
                if old is not None:
                    raise StepFailed(f"{self.target} in {replaced}: both {name} and {kept} "
                                     "exist and neither is the new replica; look at them")
                self._keep_settings(ctx, client, name)
                ctx.facts.set(f"{self.id}:rename_requested", kept)
                answer = rds.rename(client, name, kept)
                ctx.record("aws.rds.rename_db_instance", {
                    "database": self.target, "region": replaced, "instance": name,
                    "renamed_to": kept, "request_id": answer.request_id})
                fault_point(f"{self.id}:renamed")
                current = None
            kept_instance = rds.find(client, kept)
            if kept_instance is not None:
                rds.add_tags(client, kept_instance.arn, {
                    KEPT_TAG: ctx.incident_id, "drorch:database": self.target,
                    "drorch:note": "kept by drorch: delete it by hand once not needed"})
            if current is None:
                ctx.facts.set(f"{self.id}:replica_requested", source.arn)
                if ctx.facts.get(self._settings_key()) is None and old is not None:
                    self._keep_settings(ctx, client, old.identifier)
                settings = dict(ctx.facts.get(self._settings_key()) or {})
                made = rds.create_read_replica(
                    client, name, source.arn, ctx.aws_region(source_region),
                    source.instance_class, ep.port,
                    {"drorch:database": self.target, "drorch:created-by": ctx.incident_id},
                    settings)
                ctx.record("aws.rds.create_db_instance_read_replica", {
                    "database": self.target, "region": replaced, "instance": name,
                    "source": source.arn, "request_id": made.request_id})
                fault_point(f"{self.id}:replica_requested")
            ready = rds.wait_available(client, name, db.resync_timeout_s,
                                       progress=ctx.waiting(self.id))
        except rds.RdsError as exc:
            raise _fail(self.target, replaced, exc) from exc
        try:
            lsn = _wait_caught_up(ep.dsn(), _endpoint(ctx, self.target, source_region).dsn(),
                                  db.resync_timeout_s)
        except (TimeoutError, pg.Error) as exc:
            raise StepFailed(f"{self.target}: the new replica {name} in {replaced} did not "
                             f"catch up: {exc}") from exc
        return {**out, "source": source.arn, "endpoint": f"{ready.address}:{ready.port}",
                "replay_lsn": lsn, "seconds": round(time.monotonic() - t0, 3)}


def _wait_caught_up(replica_dsn: str, primary_dsn: str, timeout_s: float) -> str:
    from drorch.reconcile.resync import wait_caught_up

    return wait_caught_up(replica_dsn, primary_dsn, timeout_s)


class RejoinRdsReplica(ReplaceRdsReplica):
    """After the switch back, the region left (``ctx.from_region``) gets a fresh
    cross-region read replica of the primary again; its instance, frozen and caught up
    before the promotion, is renamed and kept (nothing of it is erased)."""

    stage = "rejoin"

    def _roles(self, ctx: StepContext) -> tuple[str, str]:
        return ctx.from_region, ctx.to_region

    def _renaming_incident(self, ctx: StepContext) -> str:
        return ctx.incident_id

    def _ready(self, ctx: StepContext) -> bool:
        promoted = ctx.facts.get(f"promote:{self.target}:measured") or {}
        return bool(promoted.get("caught_up"))
