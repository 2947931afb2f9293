"""Fence on return: after a failover, the old primary is locked out as soon as it answers.

An old primary that comes back (a healed host, a partition that ends) is a writable
primary nobody uses on purpose, and clients that still point at it (a stale DNS
answer, a pooled connection string, a job with its own config) write there: those
writes are lost to the service until a failback reconciles them. The watcher
therefore, while a failover is in force (the last completed incident is a failover
and no incident is open), fences the old primary the moment one of its PostgreSQL
probes answers, with the same SQL lockout the failover's freeze uses
(``drorch.steps.freeze.freeze_journaled``): application roles ``NOLOGIN``,
``default_transaction_read_only``, their sessions ended. It needs no control of the
node, so it works wherever drorch can log in.

Journal: the fence is recorded on the failover incident exactly as that incident's
freeze would have been (fact ``freeze:<db>``, intent first, then ``done``, merged
with anything the failover's freeze recorded), so whatever undoes a freeze of that
node reads one record; ``fenced_on_return:<db>`` says who fenced it, when and what
it found. Failback later restarts the node as a standby and rewinds it from the
serving region, which replaces both the roles and ``postgresql.auto.conf``; its
switch back opens the application roles on the promoted node (``OpenWrites``).

Acting is done under the runbook's lease (the engine's): while a human's failback
holds it, the watcher does not fence (failback fences the node itself).

The old region's write flag is raised too, best effort: its AWS API may be as down
as its database was. Each attempt runs in the background (one at a time) so a hung
API never delays the probes; the first failure and the success are recorded. The
failover's steps that were deferred because that API did not answer (its write flag,
its copy of a secret) are tried again the same way, at most every
``RETRY_DEFERRED_EVERY_S`` (``Engine.retry_deferred`` journals each attempt).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog

from drorch.adapters import flags
from drorch.adapters import postgres as pg
from drorch.audit import AuditLog
from drorch.config import Runbook
from drorch.engine import LEASE_TTL_S, Engine, IncidentFacts
from drorch.steps.base import Clients, StepContext
from drorch.steps.freeze import freeze_journaled
from drorch.store.sqlite import LeaseHeld, SqliteStore, StaleLease, this_holder
from drorch.watch_state import LastFailover

log = structlog.get_logger("drorch.watch")

ACTOR = "auto"
RETRY_DEFERRED_EVERY_S = 30.0


def fenced_key(database: str) -> str:
    return f"fenced_on_return:{database}"


def flag_key(region: str) -> str:
    return f"write_flag_on_return:{region}"


def in_force(engine: Engine) -> LastFailover | None:
    """The completed failover the service is failed over by, if no incident is open
    (a failback running, or a halted incident, is a human's to finish)."""
    last = engine.last_failover()
    if last is None or engine.open_incident() is not None:
        return None
    return last_failover(engine.store, last.id)


def last_failover(store: SqliteStore, incident_id: str) -> LastFailover:
    facts = store.facts(incident_id)
    ack = facts.get("ack") or {}
    return LastFailover(incident_id, float(facts["completed"]), facts["from_region"],
                        facts["to_region"], ack.get("by"), ack.get("at"))


def latest_failover(store: SqliteStore, runbook: str) -> LastFailover | None:
    """The latest completed failover of the runbook, failed back since or not: what a
    recovery hold is about."""
    for inc in reversed(store.incidents(runbook)):
        if inc.kind == "failover" and store.fact(inc.id, "completed"):
            return last_failover(store, inc.id)
    return None


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class ReturnFence:
    """Fences the old primary and raises its write flag; one per watcher.

    ``fence(fo)`` is called from a tick when the old region's PostgreSQL answered; it
    is idempotent (an already locked-out node is recorded once, not changed).
    """

    def __init__(self, runbook: Runbook, store: SqliteStore, audit: AuditLog,
                 aws: Clients, engine: Engine) -> None:
        self.runbook, self.store, self.audit, self.aws = runbook, store, audit, aws
        self.engine = engine
        self._flag: Future[None] | None = None
        self._flag_error: str | None = None
        self._retry: Future[None] | None = None
        self._retried_at = float("-inf")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="watch-flag")

    def close(self) -> None:
        """Stop starting flag attempts; one in flight is bounded by the AWS client's
        timeouts and is not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the database --------------------------------------------------------
    def fence(self, fo: LastFailover) -> list[str]:
        """Lock every database's old primary out; returns one sentence per change
        recorded (empty when nothing was new). Skipped while another actor holds the
        runbook's lease; the lease is taken only when something is to be done, so a
        watcher that re-checks a fenced node every round never stands in a human's way."""
        if all(self._settled(fo, db.name) for db in self.runbook.databases):
            return []
        lease = self.engine.lease_name
        try:
            token = self.store.acquire_lease(lease, this_holder(), LEASE_TTL_S)
        except LeaseHeld as exc:
            log.info("watch.fence_deferred", incident=fo.incident, reason=str(exc))
            return []
        try:
            facts = IncidentFacts(self.store, fo.incident, lease, token)
            ctx = StepContext(self.runbook, fo.incident, ACTOR, fo.from_region, fo.to_region,
                              self.aws, facts)
            return [s for db in self.runbook.databases
                    if (s := self._fence_one(ctx, facts, db.name)) is not None]
        except StaleLease:
            log.error("watch.fence_lease_lost", incident=fo.incident)
            return []
        finally:
            self.store.release_lease(lease, token)

    def _settled(self, fo: LastFailover, database: str) -> bool:
        """Recorded fenced and still locked out (read-only: no lease needed)."""
        if self.store.fact(fo.incident, fenced_key(database)) is None:
            return False
        db = self.runbook.database(database)
        try:
            return pg.is_frozen(db.endpoints[fo.from_region].dsn(), db.app_roles)
        except pg.Error:
            return True  # gone again: nothing to do until it answers

    def _fence_one(self, ctx: StepContext, facts: IncidentFacts, database: str) -> str | None:
        db = self.runbook.database(database)
        region = ctx.from_region
        dsn = db.endpoints[region].dsn()
        try:
            if pg.is_frozen(dsn, db.app_roles):
                if facts.get(fenced_key(database)) is not None:
                    return None
                return self._recorded(ctx, facts, database, "already_locked_out",
                                      {"note": "no application role can log in or write"})
            record = freeze_journaled(ctx, database, dsn, f"watch-fence:{database}")
        except pg.Error as exc:  # unreachable again, or refused: the next round retries
            log.warning("watch.fence_failed", database=database, region=region,
                        error=_error(exc))
            return None
        return self._recorded(ctx, facts, database, "fenced", record.to_dict())

    def _recorded(self, ctx: StepContext, facts: IncidentFacts, database: str, state: str,
                  detail: dict[str, Any]) -> str:
        region = ctx.from_region
        previous = facts.get(fenced_key(database)) or {}
        facts.set(fenced_key(database), {
            "state": state, "region": region, "at": time.time(), "by": "watch",
            "times": int(previous.get("times", 0)) + 1, **detail})
        self.audit.record("watch.old_primary_fenced", actor=ACTOR, incident=ctx.incident_id,
                          reason=f"{database} in {region} answers again after the failover",
                          inputs={"database": database, "region": region},
                          outcome="ok" if state == "fenced" else "skipped", detail=detail)
        log.warning("watch.old_primary_fenced", database=database, region=region, state=state)
        return f"{database} in {region}: {state.replace('_', ' ')}"

    # -- the failover's deferred steps ----------------------------------------
    def retry_deferred(self, fo: LastFailover) -> None:
        """Start one background retry of the failover's deferred steps, unless one is
        running, the last began less than ``RETRY_DEFERRED_EVERY_S`` ago, or none is
        left."""
        if self._retry is not None and not self._retry.done():
            return
        if time.monotonic() - self._retried_at < RETRY_DEFERRED_EVERY_S:
            return
        if not self.engine.deferred_steps(fo.incident):
            return
        self._retried_at = time.monotonic()
        self._retry = self._pool.submit(self._retry_deferred, fo)

    def _retry_deferred(self, fo: LastFailover) -> None:
        if not self._still_in_force(fo):  # a failback began meanwhile: it redoes them
            return
        try:
            after = self.engine.retry_deferred(fo.incident)
        except Exception as exc:  # noqa: BLE001 (best effort: the next round retries)
            log.warning("watch.retry_deferred_failed", incident=fo.incident, error=_error(exc))
            return
        log.info("watch.retried_deferred", incident=fo.incident, steps=after)

    # -- the write flag ------------------------------------------------------
    def raise_flag(self, fo: LastFailover) -> None:
        """Start one background attempt to raise the old region's write flag unless it
        is recorded raised or an attempt is still running."""
        wf = self.runbook.write_flag
        if wf is None or self.store.fact(fo.incident, flag_key(fo.from_region)) is not None:
            return
        if self._flag is not None and not self._flag.done():
            return
        self._flag = self._pool.submit(self._raise_flag, fo, wf.parameter)

    def _still_in_force(self, fo: LastFailover) -> bool:
        now = in_force(self.engine)
        return now is not None and now.incident == fo.incident

    def _raise_flag(self, fo: LastFailover, parameter: str) -> None:
        region = fo.from_region
        if not self._still_in_force(fo):  # a failback began meanwhile: it owns the flags
            return
        try:
            client = self.aws("ssm", self.runbook.region(region).aws_region)
            was = flags.is_frozen(client, parameter)
            if not was:
                flags.set_frozen(client, parameter, True)
        except Exception as exc:  # noqa: BLE001 (best effort: recorded, retried next round)
            error = _error(exc)
            if self._flag_error is None:
                self.audit.record("watch.write_flag_unreachable", actor=ACTOR,
                                  incident=fo.incident, outcome="failed",
                                  reason=f"could not reach {region}'s SSM API",
                                  inputs={"region": region, "parameter": parameter},
                                  detail={"error": error})
            log.warning("watch.write_flag_unreachable", region=region, error=error)
            self._flag_error = error
            return
        detail = {"region": region, "parameter": parameter, "at": time.time(),
                  "state": "already_raised" if was else "raised",
                  "after_errors": self._flag_error is not None}
        self.store.set_fact(fo.incident, flag_key(region), detail)
        self.audit.record("watch.write_flag_raised", actor=ACTOR, incident=fo.incident,
                          reason=f"{region}'s SSM API answers after the failover",
                          inputs={"region": region, "parameter": parameter},
                          outcome="ok" if not was else "skipped", detail=detail)
        log.info("watch.write_flag_raised", region=region, state=detail["state"])
        self._flag_error = None
