"""Promote the replica in the region we move to. Irreversible.

When the old primary is still reachable (frozen), wait until the replica has
replayed its last LSN first: RPO = 0 by construction. When it is not, promote
what the replica has and record the best estimate; reconcile corrects it.
The measurement is journaled before ``pg_promote`` so a kill cannot lose it.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from drorch.adapters import aurora, rds
from drorch.adapters import postgres as pg
from drorch.steps.base import Step, StepContext, StepFailed
from drorch.steps.freeze import freeze_fact_key, freeze_journaled, recorded_baseline


class PromoteDatabase(Step):
    stage = "promote"
    irreversible = True

    def _dsns(self, ctx: StepContext) -> tuple[str, str]:
        db = ctx.runbook.database(self.target)
        return db.endpoints[ctx.from_region].dsn(), db.endpoints[ctx.to_region].dsn()

    def describe(self, ctx: StepContext) -> str:
        return (f"promote {self.target} in {ctx.to_region} (after it replays {ctx.from_region}'s "
                "last LSN when that node is reachable)")

    def check(self, ctx: StepContext) -> bool:
        _, new = self._dsns(ctx)
        db = ctx.runbook.database(self.target)
        if db.kind == "rds":
            client, instance_id = self._rds(ctx)
            try:
                if rds.describe(client, instance_id).is_replica:
                    return False
            except rds.RdsError as exc:
                raise StepFailed(f"{self.target} in {ctx.to_region}: {exc}") from exc
        if db.kind == "aurora-global":
            client, target = self._aurora(ctx)
            how = ctx.facts.get(self._path_key()) or "switchover"
            try:
                if not aurora.is_writer(client, str(db.global_cluster_id), target, how):
                    return False
            except aurora.AuroraError as exc:
                raise StepFailed(f"{self.target} in {ctx.to_region}: {exc}") from exc
        try:
            return not pg.in_recovery(new)
        except pg.Unreachable as exc:
            raise StepFailed(f"{self.target} in {ctx.to_region} is unreachable: {exc}") from exc

    def _measure(self, ctx: StepContext, old_dsn: str, new: pg.Target) -> dict[str, Any]:
        db = ctx.runbook.database(self.target)
        try:
            old_conn = pg.open_conn(old_dsn)
        except pg.Unreachable:
            old_conn = None
        try:
            return self._measure_with(ctx, db, old_conn, new)
        finally:
            if old_conn is not None:
                old_conn.close()

    def _measure_with(self, ctx: StepContext, db: Any, old: Any,
                      new: pg.Target) -> dict[str, Any]:
        old_status = pg.status(old) if old is not None else None
        if (old_status is not None and not old_status.in_recovery
                and pg.system_identifier(old) != pg.system_identifier(new)):
            raise StepFailed(f"{self.target}: {ctx.to_region} is not a replica of "
                             f"{ctx.from_region} (system identifiers differ)")
        wait_start = time.monotonic()
        caught_up = None
        barrier = None
        if old_status is not None and not old_status.in_recovery:
            self._freeze_if_back(ctx, old)
            barrier = pg.write_barrier(old)
            caught_up = pg.wait_replayed(new, barrier, db.promote_timeout_s, past=True)
        wait_s = time.monotonic() - wait_start
        if old_status is None and ctx.facts.get("planned_only"):
            raise StepFailed(f"{self.target}: {ctx.from_region} did not answer, and this "
                             "switch is planned only (a failback, or a drill's failover): "
                             "nothing is promoted without first replaying everything "
                             f"{ctx.from_region} wrote. If {ctx.from_region} is lost, going "
                             f"back to {ctx.to_region} is a new failover, not a failback")
        if caught_up is False:
            raise StepFailed(f"{self.target}: {ctx.to_region} did not replay {ctx.from_region}'s "
                             f"write barrier {barrier} within {db.promote_timeout_s:.0f}s; "
                             "not promoting (the old primary is reachable: that would lose "
                             "acknowledged writes)")
        new_status = pg.status(new)
        if not new_status.in_recovery:
            raise StepFailed(f"{self.target} in {ctx.to_region} is not a standby")
        rpo_bytes = rpo_seconds = None
        if caught_up:  # replayed past a barrier committed after the freeze: nothing lost
            rpo_bytes, rpo_seconds = 0, 0.0
        return {
            "rpo_caveat": _rpo_caveat(ctx, self.target) if caught_up else None,
            "old_reachable": old_status is not None,
            "old_lsn": old_status.lsn if old_status else None,
            "barrier_lsn": barrier,
            "replica_lsn": new_status.lsn,
            "replica_receive_lsn": new_status.receive_lsn,
            "replica_last_commit_at": new_status.last_commit_at,
            "caught_up": caught_up,
            "catch_up_wait_s": round(wait_s, 4),
            "rpo_bytes": rpo_bytes,
            "rpo_seconds": rpo_seconds,
            "rpo_exact": old_status is not None,
            "note": None if old_status else
            f"promoted {self.target} in {ctx.to_region}; {ctx.from_region} unreachable, so "
            "RPO unknown until failback reads its WAL",
        }

    def _freeze_if_back(self, ctx: StepContext, old: pg.Target) -> None:
        """The old primary was unreachable at freeze time but answers now: freeze it
        before anything else, or its clients could write after the barrier.

        When the freeze step did freeze it, ``is_frozen`` says so and nothing is done
        again (nor audited). Otherwise the intent is journaled before the first
        change, merged with whatever the freeze step recorded, so the freeze step's
        undo (a rollback if this promotion fails) restores exactly what was there."""
        roles = ctx.runbook.database(self.target).app_roles
        if pg.is_frozen(old, roles):
            return
        record = freeze_journaled(ctx, self.target, old, self.id)
        ctx.record("step.promote.froze_returning_primary",
                   {"database": self.target, "region": ctx.from_region, **record.to_dict()})

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        old, new_dsn = self._dsns(ctx)
        db = ctx.runbook.database(self.target)
        key = f"promote:{self.target}:measured"
        with pg.connect(new_dsn, int(db.promote_timeout_s * 1000) + 5000) as new:
            measured = ctx.facts.get(key)
            if measured is None:
                measured = self._measure(ctx, old, new)
                ctx.facts.set(key, measured)
            start = time.monotonic()
            requested = self._journal_request(ctx)
            if not self._promote(ctx, db, new, measured):
                raise StepFailed(
                    f"{self.target}: promotion in {ctx.to_region} requested at "
                    f"{requested}, not confirmed within {db.promote_timeout_s:g}s (replay "
                    "may be held back on it, e.g. by a recovery conflict with a query "
                    "there); it may still complete, so nothing is rolled back: find out "
                    "why, then `drorch resume` reads the node's real role and carries on",
                    {**measured, "promotion_requested_at": requested})
            promote_s = time.monotonic() - start
            if not measured.get("caught_up"):  # the old primary may have written past it
                keep_split(ctx, self.target, new)
            sync = fit_sync_standbys(ctx, self.target, new_dsn)
            pinned = pin_split_wal(ctx, self.target, new_dsn)
            gap = advance_sequences(ctx, self.target, new_dsn)
            prepared = pg.prepared_transactions(new)
            if prepared:  # replicated from the old primary, row locks and all
                ctx.record("step.promote.prepared_transactions",
                           {"database": self.target, "region": ctx.to_region,
                            "prepared": prepared}, outcome="attention")
            return {**measured, "promote_wait_s": round(promote_s, 4), "sequence_gap": gap,
                    "split_wal": pinned, "synchronous_standbys": sync,
                    "prepared_transactions": prepared,
                    "wait_s": round(promote_s + measured["catch_up_wait_s"], 4),
                    "timeline": pg.timeline(new)}

    def _rds(self, ctx: StepContext) -> tuple[Any, str]:
        ep = ctx.runbook.database(self.target).endpoints[ctx.to_region]
        assert ep.instance_id is not None  # the runbook model requires it for kind rds
        return ctx.aws("rds", ctx.aws_region(ctx.to_region)), ep.instance_id

    def _aurora(self, ctx: StepContext) -> tuple[Any, aurora.Cluster]:
        ep = ctx.runbook.database(self.target).endpoints[ctx.to_region]
        client = ctx.aws("rds", ctx.aws_region(ctx.to_region))
        try:
            return client, aurora.describe_cluster(client, str(ep.cluster_id))
        except aurora.AuroraError as exc:
            raise StepFailed(f"{self.target} in {ctx.to_region}: {exc}") from exc

    def _path_key(self) -> str:
        return f"promote:{self.target}:aurora_path"

    def _promote_aurora(self, ctx: StepContext, db: Any, new: Any,
                        measured: dict[str, Any]) -> bool:
        """Make the target region's cluster the global cluster's writer: a switchover
        when the old primary answered and the replica replayed its barrier (no loss),
        else ``aurora_unplanned`` (managed failover with data loss, or detach). The path
        is journaled before the call; a resumed step whose operation is still running
        (``FailoverState`` names this target) waits for it instead of asking again."""
        client, target = self._aurora(ctx)
        gid = str(db.global_cluster_id)
        how = ctx.facts.get(self._path_key())
        if how is None:
            how = "switchover" if measured.get("caught_up") else db.aurora_unplanned
            ctx.facts.set(self._path_key(), how)
        try:
            gc = aurora.describe_global(client, gid)
            running = (gc.failover_state or {}).get("ToDbClusterArn") == target.arn
            if not running and not aurora.writer_in(gc, target, how):
                request_id = aurora.make_writer(client, gid, target, how)
                ctx.record("aws.aurora.make_writer",
                           {"database": self.target, "region": ctx.to_region, "path": how,
                            "global_cluster": gid, "cluster": target.identifier,
                            "request_id": request_id})
            if not aurora.wait_writer(client, gid, target, how, db.promote_timeout_s):
                return False
        except aurora.AuroraError as exc:
            raise StepFailed(f"{self.target} in {ctx.to_region}: {exc}; the operation may "
                             "still complete, so nothing is rolled back: `drorch resume` "
                             "reads the global cluster's real state and carries on") from exc
        return _left_recovery(new, db.promote_timeout_s)

    def _promote(self, ctx: StepContext, db: Any, new: Any,
                 measured: dict[str, Any]) -> bool:
        """Promote by the database's kind; True once the node writes (out of recovery)
        within ``promote_timeout_s``. ``rds``: ``PromoteReadReplica`` unless RDS already
        shows the instance promoted (a resumed step), then the ``db_instance_available``
        waiter, then the node itself must leave recovery. ``aurora-global``:
        :meth:`_promote_aurora`."""
        if db.kind == "aurora-global":
            return self._promote_aurora(ctx, db, new, measured)
        if db.kind != "rds":
            return pg.promote(new, db.promote_timeout_s)
        client, instance_id = self._rds(ctx)
        try:
            if rds.describe(client, instance_id).is_replica:
                answer = rds.promote_read_replica(client, instance_id)
                ctx.record("aws.rds.promote_read_replica",
                           {"database": self.target, "region": ctx.to_region,
                            "instance": instance_id, "status": answer.status,
                            "request_id": answer.request_id})
            rds.wait_available(client, instance_id, db.promote_timeout_s,
                               progress=ctx.waiting(self.id))
        except rds.RdsError as exc:
            raise StepFailed(f"{self.target} in {ctx.to_region}: {exc}; the promotion may "
                             "still complete, so nothing is rolled back: `drorch resume` "
                             "reads the instance's real state and carries on") from exc
        return _left_recovery(new, db.promote_timeout_s)

    def _request_key(self) -> str:
        return f"promote:{self.target}:requested"

    def _journal_request(self, ctx: StepContext) -> str:
        """Journal the promotion request before it is made (an action is irreversible
        from the moment it is requested); the first request's time is kept."""
        at = ctx.facts.get(self._request_key())
        if at is None:
            at = datetime.now(UTC).isoformat(timespec="milliseconds")
            ctx.facts.set(self._request_key(), at)
        return str(at)

    def requested(self, ctx: StepContext) -> bool:
        return ctx.facts.get(self._request_key()) is not None


def split_fact(database: str) -> str:
    """The fact holding the split as the promoted node ended recovery: ``lsn`` (the last
    WAL it replayed), ``at`` (its last replayed commit, unix seconds, None when it
    replayed none since it started) and ``keys`` (each integer-keyed table's largest
    key): what a failback's full comparison needs when no WAL can be read."""
    return f"promote:{database}:split"


def keep_split(ctx: StepContext, database: str, new: pg.Target) -> None:
    """Journal :func:`split_fact` once, right after an unplanned promotion: recovery has
    replayed everything the node had received by then (a read before the promotion would
    miss rows received but not yet replayed, and call them the new primary's). Rows the
    new primary takes before this read only raise a table's largest key, which sends
    fewer keys down the exact path, never a wrong one. Best effort: it never stops a
    promotion."""
    if ctx.facts.get(split_fact(database)) is not None:
        return
    with contextlib.suppress(pg.Error):
        lsn, at = pg.recovery_end(new)
        ctx.facts.set(split_fact(database), {"lsn": lsn, "at": at,
                                             "keys": pg.split_key_maxima(new)})


def _rpo_caveat(ctx: StepContext, database: str) -> str | None:
    """What the barrier cannot vouch for: sessions the freeze could not end (superuser
    ones, for a role that is not a superuser: on RDS and Aurora the service's own) may
    commit after it. None when the freeze ended every session."""
    record = recorded_baseline(ctx.facts.get(freeze_fact_key(database)))
    kept = [n for n in (record.not_possible if record else [])
            if n.startswith(pg.SESSIONS_LEFT_OPEN)]
    if not kept:
        return None
    return (f"{database}: the freeze could not end every session in {ctx.from_region} "
            f"({'; '.join(kept)}): a write one of them committed after the barrier is not "
            "in this RPO")


def _left_recovery(target: pg.Target, timeout_s: float) -> bool:
    """Poll ``pg_is_in_recovery()`` until false, at most ``timeout_s``."""
    try:
        Retrying(retry=retry_if_result(bool), stop=stop_after_delay(timeout_s),
                 wait=wait_fixed(0.1))(pg.in_recovery, target)
    except RetryError:
        return False
    return True


class OpenWrites(Step):
    """Let the application roles into the new primary (a freeze on the old primary
    replicated their NOLOGIN) and lower the write flag in the new region."""

    stage = "open"

    def describe(self, ctx: StepContext) -> str:
        return f"let {ctx.runbook.database(self.target).app_roles} write to {self.target} in " \
               f"{ctx.to_region}"

    def _dsn(self, ctx: StepContext) -> str:
        return ctx.runbook.database(self.target).endpoints[ctx.to_region].dsn()

    def check(self, ctx: StepContext) -> bool:
        return (sequences_done(ctx, self.target) and sync_fits(ctx, self.target, self._dsn(ctx))
                and pg.writes_open(self._dsn(ctx), ctx.runbook.database(self.target).app_roles,
                                   recorded_baseline(ctx.facts.get(
                                       freeze_fact_key(self.target)))))

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        fit_sync_standbys(ctx, self.target, self._dsn(ctx))
        pin_split_wal(ctx, self.target, self._dsn(ctx))
        gap = advance_sequences(ctx, self.target, self._dsn(ctx))
        changed = pg.open_writes(self._dsn(ctx), ctx.runbook.database(self.target).app_roles,
                                 recorded_baseline(ctx.facts.get(freeze_fact_key(self.target))))
        return {"roles_let_in": changed, "sequence_gap": gap}


def sync_fact_key(database: str) -> str:
    return f"sync:{database}"


def _sync_satisfied(value: str, streaming: list[str]) -> tuple[bool, list[str]]:
    """Can a commit on this node return with these standbys streaming? And which of
    them the setting names."""
    parsed = pg.parse_sync_standbys(value)
    if parsed is None:
        return True, []
    named = [n for n in streaming if parsed.matches(n)]
    return len(named) >= parsed.num_sync, named


def sync_fits(ctx: StepContext, database: str, dsn: str) -> bool:
    """The promoted node's synchronous standbys can acknowledge commits (read only)."""
    value, _ = pg.sync_standby_names(dsn)
    return _sync_satisfied(value, pg.streaming_standbys(dsn))[0]


def fit_sync_standbys(ctx: StepContext, database: str, dsn: str) -> dict[str, Any] | None:
    """Right after a promotion: a ``synchronous_standby_names`` naming standbys that do
    not stream to this node (the usual symmetric setting, with the old primary gone)
    would hang every commit on it, drorch's and the application's, for ever. Keep only
    the named standbys that stream (``ANY k``), or none; the previous value is journaled
    first (fact ``sync:<database>``) and put back when a standby streams again
    (failback). Returns what was done; None when nothing needed changing."""
    key = sync_fact_key(database)
    value, altered = pg.sync_standby_names(dsn)
    satisfied, named = _sync_satisfied(value, pg.streaming_standbys(dsn))
    fact = ctx.facts.get(key)
    if satisfied:
        return fact
    if fact is None:
        fact = {"previous": value, "previous_by_alter_system": altered,
                "set": "ANY {} ({})".format(len(named), ", ".join(f'"{n}"' for n in named))
                if named else ""}
        ctx.facts.set(key, fact)  # before the change: a kill leaves it restorable
    pg.set_sync_standby_names(dsn, fact["set"])
    ctx.record("step.promote.sync_standbys_fitted", {"database": database, **fact})
    return fact


def restore_sync_standbys(ctx: StepContext, database: str, dsn: str,
                          fact: dict[str, Any] | None, done_key: str) -> dict[str, Any] | None:
    """Put back the ``synchronous_standby_names`` a promotion replaced (``fact`` from
    :func:`fit_sync_standbys`), once a standby streams again; ``done_key`` journals it.
    Idempotent; None when there was nothing to restore."""
    if fact is None or ctx.facts.get(done_key):
        return None
    pg.set_sync_standby_names(dsn, fact["previous"] if fact.get("previous_by_alter_system")
                              else None)
    ctx.facts.set(done_key, True)
    restored = {"database": database, "synchronous_standby_names": fact["previous"]}
    ctx.record("step.resync.sync_standbys_restored", restored)
    return restored


def keep_sync_standbys(dsn: str, own: dict[str, Any]) -> None:
    """Give a rebuilt node back its own ``synchronous_standby_names`` (``own``: value and
    whether it came from ``ALTER SYSTEM``), when the rebuild changed it."""
    value, altered = pg.sync_standby_names(dsn)
    if (value, altered) != (own["value"], own["by_alter_system"]):
        pg.set_sync_standby_names(dsn, own["value"] if own["by_alter_system"] else None)


def _unplanned(ctx: StepContext, database: str) -> bool:
    """The promotion did not wait for the old primary: it may have written past the split."""
    measured = ctx.facts.get(f"promote:{database}:measured") or {}
    return measured.get("caught_up") is not True


def _gap_needed(ctx: StepContext, database: str) -> bool:
    return ctx.runbook.database(database).sequence_gap > 0 and _unplanned(ctx, database)


def sequences_done(ctx: StepContext, database: str) -> bool:
    """No gap needed, or it was set (journaled after the ``setval``s), and the split's
    WAL pinned when the promotion was unplanned."""
    pinned = not _unplanned(ctx, database) or ctx.facts.get(f"split:{database}:pinned")
    return bool(pinned) and (
        not _gap_needed(ctx, database)
        or bool((ctx.facts.get(f"sequences:{database}:gap") or {}).get("done")))


MANAGED_KINDS = ("rds", "aurora-global")
MANAGED_NO_SLOT = (
    "the split's WAL is not pinned: a replication slot needs the REPLICATION attribute, "
    "which the master user of RDS and Aurora does not have (Aurora replicates storage, "
    "not WAL), and a failback there compares the tables rather than reading WAL files")


def pin_split_wal(ctx: StepContext, database: str, dsn: str) -> dict[str, Any] | None:
    """After an unplanned promotion, keep the new primary's WAL from the split until the
    failback has read it: without it, rows only the new side changed cannot be told
    from rows the old side changed, and would go to a human. Released by the failback
    once its reconcile is accounted for. Idempotent."""
    if not _unplanned(ctx, database):
        return None
    kind = ctx.runbook.database(database).kind
    if kind in MANAGED_KINDS:
        skipped = {"skipped": f"kind {kind}: {MANAGED_NO_SLOT}"}
        if ctx.facts.get(f"split:{database}:pinned") is None:
            ctx.facts.set(f"split:{database}:pinned", skipped)
            ctx.record("step.promote.split_wal_not_pinned", {"database": database, **skipped},
                       outcome="not_possible")
        return skipped
    slot = pg.split_slot_name(database)
    pinned: dict[str, Any] = {"slot": slot, "restart_lsn": pg.pin_wal(dsn, slot)}
    pinned.update(_cap_split_wal(ctx, database, dsn))
    if ctx.facts.get(f"split:{database}:pinned") is None:
        ctx.facts.set(f"split:{database}:pinned", pinned)
        ctx.record("step.promote.split_wal_pinned", {"database": database, **pinned})
    return pinned


def _cap_split_wal(ctx: StepContext, database: str, dsn: str) -> dict[str, Any]:
    """Bound what the split slot may keep: the runbook's ``split_wal_max_mb`` becomes the
    node's ``max_slot_wal_keep_size`` when that is unlimited or larger (the previous value
    journaled first, restored by the failback). Without it the pin is unbounded, and the
    step's output says so."""
    limit = ctx.runbook.database(database).split_wal_max_mb
    key = f"split:{database}:cap"
    done = ctx.facts.get(key)
    if done is not None:  # journaled first: a kill may have come before the setting
        if pg.slot_wal_cap_mb(dsn) != done["cap_mb"]:
            pg.set_slot_wal_cap_mb(dsn, int(done["cap_mb"]))
        return {"cap_mb": done["cap_mb"], "cap_set_by_drorch": True}
    current = pg.slot_wal_cap_mb(dsn)
    if limit is None or 0 <= current <= limit:
        return {"cap_mb": current if current >= 0 else None,
                **({} if current >= 0 else {"unbounded": True})}
    ctx.facts.set(key, {"cap_mb": limit, "previous_mb": current,  # before the change
                        "previous_by_alter_system": pg.slot_wal_cap_altered(dsn)})
    pg.set_slot_wal_cap_mb(dsn, limit)
    ctx.record("step.promote.split_wal_capped", {"database": database, "cap_mb": limit,
                                                 "previous_mb": current})
    return {"cap_mb": limit, "cap_set_by_drorch": True}


def advance_sequences(ctx: StepContext, database: str, dsn: str) -> dict[str, Any] | None:
    """Right after a promotion that did not wait for the old primary (it may have handed
    out ids past the split that this node never saw: PostgreSQL WAL-logs sequences 32
    values ahead, ``SEQ_LOG_VALS`` in ``src/backend/commands/sequence.c``, so the promoted
    node's next ids are the old one's), skip ``sequence_gap`` values of every sequence.
    The targets are journaled before the first ``setval``; a rerun after a kill sets the
    same ones (``setval`` to the greater of target and current), so it never moves twice.
    Returns what was done, None when no gap was needed."""
    if not _gap_needed(ctx, database):
        return None
    key = f"sequences:{database}:gap"
    planned = ctx.facts.get(key)
    if planned is None:
        gap = ctx.runbook.database(database).sequence_gap
        before = pg.sequence_positions(dsn)
        planned = {"gap": gap, "before": before,
                   "targets": {n: v + gap for n, v in before.items()}, "done": False}
        ctx.facts.set(key, planned)
    if planned.get("done"):
        return {k: planned.get(k) for k in ("gap", "sequences", "capped", "not_advanced")}
    now = pg.advance_sequences(dsn, planned["targets"])
    done = {"gap": planned["gap"], "sequences": len(now),
            "capped": sorted(n for n, v in now.items() if v < planned["targets"][n]),
            # not moved (the role may not setval them): their collisions are re-keyed at
            # the failback; grant the role UPDATE on them to have them skip ahead
            "not_advanced": pg.sequences_out_of_reach(dsn)}
    ctx.facts.set(key, {**planned, **done, "done": True})
    ctx.record("step.promote.sequences_advanced", {"database": database, **done})
    return done
