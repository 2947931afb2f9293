"""Runs an incident's plan: check, apply, journal, audit; resumes from the journal.

Order of every step: journal ``started`` -> ``apply`` -> journal ``done``, with
``check`` first so a step finished by a process that was then killed is
observed, not repeated. Only the lease holder acts, and every journal write
carries its fencing token. Before an irreversible step (promotion) is requested
a failure rolls back (each done step's ``undo``, in reverse); from the moment it
is requested, the incident halts with its reason, for a human to ``drorch resume``.

In a failover, a step that calls the failed region's AWS API (its write flag, its
copy of a secret) is best effort: it gets ``aws.failed_region_deadline_s``, and
when that region does not answer it is journaled ``deferred`` (never ``failed``),
the failover goes on, and :meth:`Engine.retry_deferred` tries it again later.
"""

from __future__ import annotations

import secrets as _random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog

from drorch.adapters.aws_calls import recording_calls
from drorch.audit import AuditLog
from drorch.config import Runbook
from drorch.faultpoints import fault_point  # re-exported: watch.py imports it from here
from drorch.machine import Lifecycle, State
from drorch.plan import plan_for
from drorch.steps.base import Clients, NodeControl, Stage, Step, StepContext, StepFailed
from drorch.store.sqlite import Incident, LeaseHeld, SqliteStore, StaleLease, this_holder

LEASE_TTL_S = 30.0
log = structlog.get_logger("drorch.engine")

ProgressFn = Callable[[str, str, str, dict[str, Any]], None]
"""(step id, status, sentence, detail) -> None; the CLI renders it."""


@dataclass(frozen=True)
class IncidentPath:
    """The machine's triggers for one kind of incident."""

    initial: State
    start: str
    done: str
    roll_back: str
    resume: str


PATHS = {
    "failover": IncidentPath(State.MONITORING, "start_failover", "failover_done", "roll_back",
                      "resume_failover"),
    "failback": IncidentPath(State.FAILED_OVER, "start_failback", "failback_done",
                      "roll_back_failback", "resume_failback"),
}


class IncidentHalted(Exception):
    """The incident stopped where a human must look; the journal says why."""


class IncidentRolledBack(Exception):
    """A step failed before promotion; what was done was undone."""


class IncidentRefused(IncidentHalted):
    """The incident was not opened: a guard refused it and nothing changed.
    ``nothing_to_do`` when the request is already satisfied (no failover in force to
    fail back from). A subclass of :class:`IncidentHalted` so callers that stop on
    either keep doing so."""

    def __init__(self, message: str, *, nothing_to_do: bool = False) -> None:
        super().__init__(message)
        self.nothing_to_do = nothing_to_do


@dataclass
class IncidentFacts:
    """One incident's facts, written under a lease token (an actor that lost the lease
    cannot record what it did not finish)."""

    store: SqliteStore
    incident_id: str
    lease: str
    token: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.fact(self.incident_id, key, default)

    def set(self, key: str, value: Any) -> None:
        self.store.set_fact(self.incident_id, key, value, lease=self.lease, token=self.token)


def new_incident_id(runbook: Runbook) -> str:
    return f"{runbook.name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{_random.token_hex(2)}"


class Engine:
    def __init__(self, runbook: Runbook, store: SqliteStore, audit: AuditLog, aws: Clients,
                 progress: ProgressFn | None = None, nodes: NodeControl | None = None) -> None:
        self.runbook = runbook
        self.store = store
        self.audit = audit
        self.aws = aws
        self.nodes = nodes
        self.progress = progress or (lambda *_: None)
        self.lease_name = f"runbook:{runbook.name}"
        self._inflight: list[threading.Thread] = []

    # -- regions -------------------------------------------------------------
    def _completed(self) -> list[Incident]:
        return [i for i in self.store.incidents(self.runbook.name)
                if self.store.fact(i.id, "completed")]

    def active_region(self) -> str:
        """The region serving writes: the runbook's primary, or where the last
        completed failover or failback moved it."""
        done = self._completed()
        return self.store.fact(done[-1].id, "to_region") if done else self.runbook.primary.name

    def last_failover(self) -> Incident | None:
        """The completed failover the service is still failed over by, if any."""
        done = self._completed()
        return done[-1] if done and done[-1].kind == "failover" else None

    def open_incident(self) -> Incident | None:
        """An incident still in flight (failing over, or halted)."""
        for inc in reversed(self.store.incidents(self.runbook.name)):
            if inc.state in (State.FAILING_OVER, State.FAILING_BACK, State.HALTED):
                return inc
        return None

    # -- starting ----------------------------------------------------------
    def refusal(self, kind: str) -> IncidentRefused | None:
        """Why a ``kind`` incident would be refused now (read-only; ``plan`` and
        ``--dry-run`` ask it, and opening one raises it), or None."""
        if (inflight := self.open_incident()) is not None:
            return IncidentRefused(f"incident {inflight.id} is {inflight.state}: run "
                                   "`drorch resume` (or inspect it with `drorch status`)")
        last = self.last_failover()
        if kind == "failover" and last is not None:
            return IncidentRefused(
                f"already failed over to {self.store.fact(last.id, 'to_region')} by "
                f"incident {last.id}: the way back is `drorch failback`, not a second "
                "failover")
        if kind == "failback":
            if last is None:
                return IncidentRefused("nothing to fail back from: no completed failover is "
                                       "in force", nothing_to_do=True)
            to = self.store.fact(last.id, "to_region")
            back_to = self.store.fact(last.id, "from_region") or next(
                r.name for r in self.runbook.regions if r.name != to)
            # Aurora after a switchover or a managed failover needs no node control
            # (another switchover; a restore of the failover's snapshot): after a detach
            # it would, and the refusal says so.
            switched = {name for name, path in
                        self._per_database(last.id, "promote:{}:aurora_path").items()
                        if path in ("switchover", "failover")}
            problems = self._node_control_problems(str(back_to), switched)
            if problems:
                return IncidentRefused(
                    "a failback fences, keeps evidence of and rebuilds the old primary, "
                    "which needs node control: " + "; ".join(problems))
        return None

    def _node_control_problems(self, region: str, switched_over: set[str]) -> list[str]:
        """Why this engine's node control cannot reach each database's node in
        ``region`` (the old primary a failback returns to) where the failback needs it
        (``switched_over``: Aurora databases whose failover was a switchover do not);
        empty when it can."""
        from drorch.adapters.nodes import NodeControlUnavailable, needs_node_control

        needing = [db for db in self.runbook.databases
                   if needs_node_control(db, db.name in switched_over)]
        if needing and self.nodes is None:
            return ["this engine was given no node control"]
        out = []
        for db in needing:
            try:
                self.nodes(db.name, region)
            except NodeControlUnavailable as e:
                out.append(str(e))
        return out

    def start_failover(self, *, actor: str, reason: str | None,
                       trigger: dict[str, Any]) -> str:
        """A ``drill`` trigger makes the failover planned only (fact ``planned_only``, as
        every failback is): a promotion that could not first replay the old primary is
        refused, not made with loss, since a drill's failback needs what only a planned
        failover leaves (an Aurora switchover's old writer is a secondary; nothing
        diverged)."""
        def where() -> tuple[str, str, dict[str, Any]]:
            if (refused := self.refusal("failover")) is not None:
                raise refused
            src = self.active_region()
            planned = {"planned_only": True} if trigger.get("kind") == "drill" else {}
            return src, next(r.name for r in self.runbook.regions if r.name != src), planned

        return self._open("failover", actor, reason, trigger, where)

    def start_failback(self, *, actor: str, reason: str | None,
                       trigger: dict[str, Any]) -> str:
        def where() -> tuple[str, str, dict[str, Any]]:
            if (refused := self.refusal("failback")) is not None:
                raise refused
            last = self.last_failover()
            assert last is not None  # refusal() said so
            # When each promotion was first requested (irreversible from then on; a resume
            # journals later "started" events): the line between writes lost at the
            # failover and writes an unfenced old primary took after it.
            promoted: dict[str, float] = {}
            for e in self.store.events(last.id):
                if e.kind == "step" and e.name.startswith("promote:") and e.status == "started":
                    promoted.setdefault(e.name.split(":", 1)[1], e.at)
            per_db = partial(self._per_database, last.id)
            # A failback is planned only: the region it leaves serves, so its promotion
            # first replays everything written there; if that region does not answer,
            # going back is a new failover (with whatever it loses), never a failback.
            return (self.store.fact(last.id, "to_region"), self.store.fact(last.id, "from_region"),
                    {"failover_incident": last.id, "failover_promoted_at": promoted,
                     # the WAL caps the failover set on the promoted nodes: restored
                     "split_wal_caps": per_db("split:{}:cap"),
                     # the synchronous standbys its promotion emptied: restored once the
                     # old primary streams again
                     "failover_sync_fits": per_db("sync:{}"),
                     # what each promotion measured, and the split as it ended recovery:
                     # where the new primary's timeline history is not readable (RDS)
                     "failover_measured": per_db("promote:{}:measured"),
                     "failover_split": per_db("promote:{}:split"),
                     "failover_aurora_paths": per_db("promote:{}:aurora_path"),
                     "planned_only": True})

        return self._open("failback", actor, reason, trigger, where)

    def _open(self, kind: str, actor: str, reason: str | None, trigger: dict[str, Any],
              where: Callable[[], tuple[str, str, dict[str, Any]]]) -> str:
        """Open an incident under the lease: opening is acting, so two orchestrators that
        both saw the region die open one incident, not two. ``run`` keeps the lease;
        a refusal gives it back."""
        holder = this_holder()
        try:
            token = self.store.acquire_lease(self.lease_name, holder, LEASE_TTL_S)
        except LeaseHeld as exc:
            raise IncidentRefused(f"another orchestrator is acting: {exc}") from None
        try:
            from_region, to_region, facts = where()
        except IncidentHalted:
            self.store.release_lease(self.lease_name, token)
            raise
        now = time.time()
        inc = Incident(new_incident_id(self.runbook), kind, self.runbook.name, actor,
                       reason, trigger, PATHS[kind].initial.value, now, now)
        self.store.create_incident(inc)
        for key, value in {"from_region": from_region, "to_region": to_region,
                           **facts}.items():
            self.store.set_fact(inc.id, key, value, lease=self.lease_name, token=token)
        self.audit.record("incident.opened", actor=actor, incident=inc.id, reason=reason,
                          inputs={"kind": kind, "from": from_region, "to": to_region,
                                  "trigger": trigger})
        return inc.id

    def warm_up(self) -> None:
        """Create every AWS client a failover will use, before any decision: client
        creation costs 40-150 ms each and must not sit inside the RTO."""
        wanted = {("route53", "us-east-1")}
        for region in self.runbook.regions:
            wanted.add(("ssm", region.aws_region))
        for spec in self.runbook.secrets:
            wanted.add(("secretsmanager", self.runbook.region(spec.region).aws_region))
        for service, region in sorted(wanted):
            self.aws(service, region)

    def plan(self, from_region: str, to_region: str, kind: str = "failover",
             incident_id: str | None = None) -> list[Stage]:
        """``incident_id``: a failback's own journal says how the failover it undoes made
        each Aurora writer; without one (a plan, a dry run) the last failover's does."""
        paths = self.store.fact(incident_id, "failover_aurora_paths") if incident_id else None
        if paths is None and kind == "failback" and (last := self.last_failover()) is not None:
            paths = self._per_database(last.id, "promote:{}:aurora_path")
        return plan_for(kind, self.runbook, from_region, to_region, paths)

    def _per_database(self, incident_id: str, key: str) -> dict[str, Any]:
        """Database -> its fact ``key`` (``{}`` standing for its name) in the incident, for
        the databases that have one."""
        return {db.name: value for db in self.runbook.databases
                if (value := self.store.fact(incident_id, key.format(db.name))) is not None}

    # -- running -----------------------------------------------------------
    def run(self, incident_id: str, *, actor: str | None = None,
            reason: str | None = None) -> str:
        """Run (or resume) an incident. ``actor``: who runs it now, when not the one who
        opened it (a human resuming an automatic failover): the audit names them for
        everything done from here on, after an ``incident.resumed`` entry."""
        inc = self.store.incident(incident_id)
        if inc is None:
            raise KeyError(f"no incident {incident_id}")
        if actor is not None:
            self.audit.record("incident.resumed", actor=actor, incident=inc.id, reason=reason,
                              inputs={"state": inc.state, "opened_by": inc.actor})
            inc = replace(inc, actor=actor)
        holder = this_holder()
        token = self.store.acquire_lease(self.lease_name, holder, LEASE_TTL_S)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(token, stop), daemon=True)
        renewer.start()
        try:
            return self._run(inc, token)
        finally:
            stop.set()
            renewer.join(timeout=1)
            self.store.release_lease(self.lease_name, token)

    def _renew(self, token: int, stop: threading.Event) -> None:
        while not stop.wait(LEASE_TTL_S / 3):
            try:
                self.store.renew_lease(self.lease_name, token, LEASE_TTL_S)
            except StaleLease:
                log.error("lease.lost", token=token)
                return

    def _transition(self, inc: Incident, lc: Lifecycle, trigger: str, token: int,
                    detail: dict[str, Any] | None = None) -> None:
        before = lc.current
        lc.fire(trigger)
        self.store.append(inc.id, "transition", trigger, lc.current.value,
                          {"from": before.value, **(detail or {})}, lease=self.lease_name,
                          token=token, state=lc.current.value)
        self.audit.record(f"machine.{trigger}", actor=inc.actor, incident=inc.id,
                          inputs={"from": before.value, "to": lc.current.value},
                          detail=detail)
        log.info("machine.transition", incident=inc.id, trigger=trigger, state=lc.current.value)

    def _context(self, inc: Incident, token: int) -> StepContext:
        facts = IncidentFacts(self.store, inc.id, self.lease_name, token)

        def recorder(action: str, inputs: dict[str, Any], outcome: str = "ok") -> None:
            self.audit.record(action, actor=inc.actor, incident=inc.id, inputs=inputs,
                              outcome=outcome)

        return StepContext(self.runbook, inc.id, inc.actor, facts.get("from_region"),
                           facts.get("to_region"), self.aws, facts, nodes=self.nodes,
                           recorder=recorder, progress=self.progress)

    def _run(self, inc: Incident, token: int) -> str:
        path = PATHS[inc.kind]
        lc = Lifecycle(State(inc.state))
        facts = IncidentFacts(self.store, inc.id, self.lease_name, token)
        ctx = self._context(inc, token)
        if lc.current == State.HALTED:
            self._transition(inc, lc, path.resume, token)
        elif lc.can(path.start):
            self._transition(inc, lc, path.start, token,
                             {"from_region": ctx.from_region, "to_region": ctx.to_region})
        plan = self.plan(ctx.from_region, ctx.to_region, inc.kind, inc.id)
        for stage in plan:
            failure = self._run_stage(inc, stage, ctx, token)
            if failure is None:
                continue
            step, exc = failure
            if self._irreversible_requested(inc, plan, ctx):
                reason = f"{step.id} failed after promotion was requested: {exc}"
                self._transition(inc, lc, "halt", token, {"reason": reason, "step": step.id})
                self._note_audit_head(facts)
                raise IncidentHalted(reason)
            undo_error = self._roll_back(inc, plan, ctx, token)
            if undo_error is not None:
                reason = (f"{step.id} failed before promotion ({exc}) and the rollback "
                          f"failed too: {undo_error}")
                self._transition(inc, lc, "halt", token, {"reason": reason, "step": step.id})
                self._note_audit_head(facts)
                raise IncidentHalted(reason)
            self._transition(inc, lc, path.roll_back, token,
                             {"reason": f"{step.id} failed before promotion: {exc}"})
            self._note_audit_head(facts)
            raise IncidentRolledBack(f"{step.id} failed before promotion ({exc}); "
                                     "what was frozen was unfrozen")
        facts.set("completed", time.time())
        self._transition(inc, lc, path.done, token)
        self._note_audit_head(facts)
        return lc.current.value

    def _note_audit_head(self, facts: IncidentFacts) -> None:
        """Journal the audit log's path and head after the incident's last entry: the
        report carries it, and ``drorch audit verify --expected-head`` can then prove
        that no entry up to it was cut off the log or rewritten."""
        head = getattr(self.audit, "head", None)
        path = getattr(self.audit, "path", None)
        if head is None or path is None:
            return
        facts.set("audit", {"path": str(path), "head": head()})

    def _irreversible_requested(self, inc: Incident, plan: list[Stage],
                                ctx: StepContext) -> bool:
        """An irreversible action was requested (journaled before the request) or done:
        a promotion that outlived its timeout may still be completing, so nothing may
        be undone (that would leave two writable primaries)."""
        return any(step.irreversible and (self.store.step_status(inc.id, step.id) == "done"
                                          or step.requested(ctx))
                   for stage in plan for step in stage.steps)

    def _failed_region_api(self, inc: Incident, step: Step, ctx: StepContext) -> str | None:
        """The failed region, when ``step`` calls its AWS API during a failover."""
        if inc.kind != "failover":
            return None
        region = step.api_region(ctx)
        return region if region is not None and region == ctx.from_region else None

    def _run_stage(self, inc: Incident, stage: Stage, ctx: StepContext,
                   token: int) -> tuple[Step, Exception] | None:
        if len(stage.steps) == 1:
            results = [self._run_step(inc, stage.steps[0], ctx, token)]
        else:
            with ThreadPoolExecutor(max_workers=len(stage.steps)) as pool:
                results = list(pool.map(lambda s: self._run_step(inc, s, ctx, token),
                                        stage.steps))
        return next((r for r in results if r is not None), None)

    def _run_step(self, inc: Incident, step: Step, ctx: StepContext,
                  token: int) -> tuple[Step, Exception] | None:
        if self.store.step_status(inc.id, step.id) == "done":
            self.progress(step.id, "done", "already journaled as done", {})
            return None
        region = self._failed_region_api(inc, step, ctx)
        if region is not None:
            self._best_effort(inc, step, ctx, token, region)
            return None
        return self._attempt(inc, step, ctx, token)

    def _best_effort(self, inc: Incident, step: Step, ctx: StepContext, token: int,
                     region: str) -> None:
        """Run ``step`` with the failed-region deadline; defer it when it fails or does
        not finish in time. Its AWS clients give up within the deadline themselves (one
        attempt, connect and read timeouts of half of it each, see
        ``AwsClients.with_deadline``), so the call cannot land long after the step
        was deferred; the thread is kept until it ends, and a rollback or a retry waits
        for it (``_settle``) before it undoes or releases anything."""
        deadline = self.runbook.aws.failed_region_deadline_s
        quick = getattr(self.aws, "with_deadline", None)
        if quick is not None:
            ctx = replace(ctx, aws=quick(deadline))

        def attempt() -> None:
            try:
                self._attempt(inc, step, ctx, token, deferred_region=region)
            except StaleLease:
                log.info("step.late_answer_ignored", incident=inc.id, step=step.id)

        worker = threading.Thread(target=attempt, name=f"best-effort {step.id}", daemon=True)
        self._inflight.append(worker)
        worker.start()
        worker.join(deadline)
        if worker.is_alive():
            self._defer(inc, step, token, region, f"no answer within {deadline:g} s")

    def _settle(self) -> bool:
        """Wait (bounded) for best-effort calls still in flight; True when none is left."""
        limit = time.monotonic() + self.runbook.aws.failed_region_deadline_s + 5
        for worker in self._inflight:
            worker.join(max(0.0, limit - time.monotonic()))
        self._inflight = [w for w in self._inflight if w.is_alive()]
        return not self._inflight

    def _defer(self, inc: Incident, step: Step, token: int, region: str, error: str,
               calls: list[dict[str, Any]] | None = None) -> None:
        api = step.api
        note = (f"could not reach {region}'s {api} API ({error}): deferred, retried while "
                "the failover is in force and re-checked at failback")
        detail = {"region": region, "api": api, "error": error, "note": note}
        self.store.append(inc.id, "step", step.id, "deferred", detail, lease=self.lease_name,
                          token=token)
        self.audit.record(f"step.{step.stage}.deferred", actor=inc.actor, incident=inc.id,
                          inputs={"step": step.id, "aws_calls": list(calls or [])},
                          outcome="deferred", detail=detail)
        self.progress(step.id, "deferred", note, detail)
        log.warning("step.deferred", incident=inc.id, step=step.id, region=region, error=error)

    def deferred_steps(self, incident_id: str) -> list[Step]:
        """The steps journaled ``deferred`` last (not done since) of the failover in
        force; none for any other incident (a rolled-back or failed-back failover gave
        the region back: its deferred steps must not be done any more)."""
        inc = self.store.incident(incident_id)
        last = self.last_failover()
        if inc is None or last is None or last.id != incident_id \
                or self.open_incident() is not None:
            return []
        plan = self.plan(self.store.fact(inc.id, "from_region"),
                         self.store.fact(inc.id, "to_region"), inc.kind, inc.id)
        return [s for stage in plan for s in stage.steps
                if self.store.step_status(inc.id, s.id) == "deferred"]

    def retry_deferred(self, incident_id: str) -> dict[str, str]:
        """Try the incident's deferred steps again (each best effort, under the lease);
        returns each one's status afterwards (``done`` or still ``deferred``). Nothing
        when another orchestrator holds the lease: it is acting and will retry."""
        pending = self.deferred_steps(incident_id)
        inc = self.store.incident(incident_id)
        if not pending or inc is None:
            return {}
        try:
            token = self.store.acquire_lease(self.lease_name, this_holder(), LEASE_TTL_S)
        except LeaseHeld:
            return {}
        try:
            ctx = self._context(inc, token)
            for step in pending:
                region = step.api_region(ctx) or ctx.from_region
                self._best_effort(inc, step, ctx, token, region)
            self._settle()  # nothing of ours may land after the lease is given back
        finally:
            self.store.release_lease(self.lease_name, token)
        return {s.id: self.store.step_status(inc.id, s.id) or "pending" for s in pending}

    def _attempt(self, inc: Incident, step: Step, ctx: StepContext, token: int,
                 deferred_region: str | None = None) -> tuple[Step, Exception] | None:
        """check, apply, journal. ``deferred_region``: a failure defers the step (journaled
        ``deferred``, no failure returned) instead of failing it."""
        journal = dict(lease=self.lease_name, token=token)
        with recording_calls() as calls:
            return self._attempt_recorded(inc, step, ctx, journal, calls, deferred_region)

    def _attempt_recorded(self, inc: Incident, step: Step, ctx: StepContext,
                          journal: dict[str, Any], calls: list[dict[str, Any]],
                          deferred_region: str | None) -> tuple[Step, Exception] | None:
        """:meth:`_attempt`'s body; ``calls`` fills with the AWS calls it makes, which
        each audit entry of the step lists (service, operation, request id)."""
        token = journal["token"]
        try:
            # Journaled before ``check`` so a step's duration includes finding out.
            sentence = step.describe(ctx)
            self.store.append(inc.id, "step", step.id, "started", {"plan": sentence}, **journal)
            if step.check(ctx):
                detail = {"observed": "already done; not applied again"}
                self.store.append(inc.id, "step", step.id, "done", detail, **journal)
                if step.irreversible and step.requested(ctx):
                    # requested by a run that died before it could audit the outcome: the
                    # audit must still say the irreversible action happened
                    self.audit.record(
                        f"step.{step.stage}.confirmed", actor=inc.actor, incident=inc.id,
                        inputs={"step": step.id, "aws_calls": list(calls)},
                        detail={"observed": "requested by an earlier run of this incident "
                                "and found done; not requested again"})
                else:
                    self.audit.record(f"step.{step.stage}.skipped", actor=inc.actor,
                                      incident=inc.id,
                                      inputs={"step": step.id, "aws_calls": list(calls)},
                                      outcome="skipped", detail=detail)
                self.progress(step.id, "done", "already done", detail)
                return None
            self.progress(step.id, "started", sentence, {})
            fault_point(f"{step.id}:before_apply")
            detail = step.apply(ctx)
            fault_point(f"{step.id}:after_apply")
            self.store.append(inc.id, "step", step.id, "done", detail, **journal)
            self.audit.record(f"step.{step.stage}.applied", actor=inc.actor, incident=inc.id,
                              inputs={"step": step.id, "aws_calls": list(calls)}, detail=detail)
            self.progress(step.id, "done", detail.get("note") or sentence, detail)
            log.info("step.done", incident=inc.id, step=step.id)
            return None
        except StaleLease:
            raise
        except Exception as exc:  # noqa: BLE001 (every failure is journaled, then decided on)
            if deferred_region is not None:
                self._defer(inc, step, token, deferred_region,
                            str(exc).strip().splitlines()[0] if str(exc).strip()
                            else type(exc).__name__, calls)
                return None
            region = step.api_region(ctx)
            if region is not None and not isinstance(exc, StepFailed):
                exc = StepFailed(f"could not reach {region}'s {step.api} API: {exc}")
            detail = {"error": str(exc), "type": type(exc).__name__,
                      **(exc.detail if isinstance(exc, StepFailed) else {})}
            self.store.append(inc.id, "step", step.id, "failed", detail, **journal)
            self.audit.record(f"step.{step.stage}.failed", actor=inc.actor, incident=inc.id,
                              inputs={"step": step.id, "aws_calls": list(calls)},
                              outcome="failed", detail=detail)
            self.progress(step.id, "failed", str(exc), detail)
            log.error("step.failed", incident=inc.id, step=step.id, error=str(exc))
            return step, exc

    def _roll_back(self, inc: Incident, plan: list[Stage], ctx: StepContext,
                   token: int) -> str | None:
        """Undo done steps in reverse; returns the first undo error (the rest stay done).
        A best-effort call still in flight is waited for first: one that lands late is
        journaled done, and undone with the rest."""
        if not self._settle():
            return ("a call to the failed region's API is still in flight and may land "
                    "after the rollback: check that region's write flag and secrets")
        done = [s for stage in plan for s in stage.steps
                if self.store.step_status(inc.id, s.id) == "done"]
        for step in reversed(done):
            try:
                detail = step.undo(ctx)
            except Exception as exc:  # noqa: BLE001 (journaled, then the incident halts)
                self.store.append(inc.id, "step", step.id, "undo_failed", {"error": str(exc)},
                                  lease=self.lease_name, token=token)
                self.audit.record(f"step.{step.stage}.undo_failed", actor=inc.actor,
                                  incident=inc.id, inputs={"step": step.id}, outcome="failed",
                                  detail={"error": str(exc)})
                return f"undo of {step.id}: {exc}"
            if detail is None:
                continue
            self.store.append(inc.id, "step", step.id, "rolled_back", detail,
                              lease=self.lease_name, token=token)
            self.audit.record(f"step.{step.stage}.rolled_back", actor=inc.actor,
                              incident=inc.id, inputs={"step": step.id}, detail=detail)
            self.progress(step.id, "rolled_back", "undone", detail)
        return None
