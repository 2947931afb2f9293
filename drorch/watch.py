"""``drorch watch``: observe -> decide -> act, one tick at a time, until told to stop.

Each tick runs the probe rounds that are due (both regions at once, each bounded by
its slowest probe's timeout), reads the alarm queue, folds both into the failure
windows (``drorch.health``), builds one ``TickView`` and lets the pure
``drorch.watch_state.decide`` pick one action; one ``watch.tick`` log event says
which and why. Side effects, in order:

- every verdict change (and the count starting: ``degraded``) is journaled in
  ``store.put("watch:<runbook>")`` and audited as ``watch.verdict``;
- the recovery hold (after a completed failover: no automatic failover before
  ``drorch ack INCIDENT`` and the end of ``health.recovery_period_s``) is journaled
  and audited as ``watch.hold`` when it starts, moves on or ends;
- a refusal by a guard (secondary unhealthy, lag, failover already running or done,
  recovery hold) is audited as ``watch.refused`` when it starts or its reason changes;
- while a failover is in force, the old primary is fenced the round it answers again
  and its write flag raised (``drorch.watch_fence``);
- a failover is opened with ``Engine.start_failover(actor="auto", trigger=...)``,
  audited as ``watch.failover_started``, its id journaled, then run to its end.

After a failover the watcher goes on: the journal says which region serves writes
now, so the regions swap roles on the next tick. A rolled-back attempt restarts the
failed region's count: the retry comes after a whole new failing window.

Stopping: only ``stop`` (SIGTERM/SIGINT in the CLI) or ``max_seconds``. ``stop`` is
checked between ticks, so a tick in hand finishes (at most one probe timeout). A
failover in hand is driven to its end (completed, rolled back or halted): the engine
has no safe stopping point short of that, and its journal makes a resume safe if the
process is killed anyway. Restart: the windows, the last decision and the id of a
failover this watcher started are read back; that failover is resumed if it was
interrupted, and the count continues if the gap allows it. ``watch`` (for drills)
returns after the first failover it drove; ``serve`` is the service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import structlog

from drorch import watch_state as ws
from drorch.adapters import postgres as pg
from drorch.audit import AuditLog
from drorch.config import Runbook
from drorch.engine import Engine, IncidentHalted, IncidentRolledBack, ProgressFn, fault_point
from drorch.health import (
    AlarmEvent,
    AlarmQueue,
    HealthPolicy,
    Observation,
    Received,
    RegionHealth,
    WindowState,
    advance,
    initial_state,
    region_for_alarm,
    run_round,
)
from drorch.machine import State
from drorch.readiness.drift import ReadinessWatch
from drorch.steps.base import Clients
from drorch.store.sqlite import SqliteStore
from drorch.watch_fence import ReturnFence, in_force, latest_failover
from drorch.watch_state import Hold, TickView, WatchDecision, WatchRecord

log = structlog.get_logger("drorch.watch")

TICK_CAP_S = 1.0
"""Longest sleep between ticks: the alarm queue is read at least this often."""


def record_key(runbook: Runbook) -> str:
    return f"watch:{runbook.name}"


def health_specs(runbook: Runbook) -> tuple[HealthPolicy, dict[str, RegionHealth]]:
    """The runbook's health policy with each region's AWS region filled in.

    Raises ``ValueError`` when a region has no health section: a watcher that cannot
    judge the secondary could only ever refuse, so that is a runbook error.
    """
    if runbook.health is None:
        raise ValueError(f"runbook {runbook.name}: no health section, nothing to watch")
    specs: dict[str, RegionHealth] = {}
    for region in runbook.regions:
        spec = runbook.region_health(region.name)
        if spec is None:
            raise ValueError(f"runbook {runbook.name}: health has no entry for {region.name}")
        specs[region.name] = spec
    return runbook.health.model_copy(update={"regions": list(specs.values())}), specs


def health_summary(runbook: Runbook, store: SqliteStore) -> list[dict[str, Any]]:
    """For ``drorch status``: per region, the last round's probe results and the window's
    sentence ("region-a failing for 4s of 6s (2/3 probes down: db, app)"), as of
    ``observed_at``. Empty when the runbook has no health section. Read-only."""
    specs = {r.name: spec for r in runbook.regions
             if (spec := runbook.region_health(r.name)) is not None}
    return ws.summary_rows(ws.from_json(store.get(record_key(runbook))), specs)


def watch_status(runbook: Runbook, store: SqliteStore, now: float) -> tuple[Hold | None,
                                                                          WatchRecord]:
    """For ``drorch status``: the recovery hold in force now, from the journal (the
    watcher may not be running), and the watcher's record (its last decision)."""
    hold = (ws.hold_for(latest_failover(store, runbook.name), runbook.health, now)
            if runbook.health is not None else None)
    return hold, ws.from_json(store.get(record_key(runbook)))


def watch(runbook: Runbook, store: SqliteStore, audit: AuditLog, aws: Clients, *,
          stop: threading.Event, progress: ProgressFn | None = None,
          max_seconds: float | None = None, readiness_every_s: float = 0) -> str | None:
    """For drills: run until the first failover this watcher starts (or resumes) has
    ended and return its id; ``None`` when ``stop`` or ``max_seconds`` came first."""
    driven = _Watcher(runbook, store, audit, aws, progress, readiness_every_s).run(
        stop, max_seconds, once=True)
    return driven[0] if driven else None


def serve(runbook: Runbook, store: SqliteStore, audit: AuditLog, aws: Clients, *,
          stop: threading.Event, progress: ProgressFn | None = None,
          max_seconds: float | None = None, readiness_every_s: float = 0) -> list[str]:
    """The service: watch, fail over when the window says so, keep watching after it
    (fencing the old primary when it returns), until ``stop`` is set or
    ``max_seconds`` have passed. Returns the ids of the failovers it drove.
    ``readiness_every_s`` > 0: the readiness checks run that often in the background,
    a change journaled as drift (:mod:`drorch.readiness.drift`)."""
    return _Watcher(runbook, store, audit, aws, progress, readiness_every_s).run(
        stop, max_seconds, once=False)


class _Watcher:
    def __init__(self, runbook: Runbook, store: SqliteStore, audit: AuditLog, aws: Clients,
                 progress: ProgressFn | None, readiness_every_s: float = 0) -> None:
        self.runbook, self.store, self.audit, self.aws = runbook, store, audit, aws
        self.progress = progress
        self.policy, self.specs = health_specs(runbook)
        self.engine = Engine(runbook, store, audit, aws, progress)
        self.engine.warm_up()  # client creation must not sit inside the RTO
        self.key = record_key(runbook)
        saved = ws.from_json(store.get(self.key))
        self.record = replace(saved, windows={k: v for k, v in saved.windows.items()
                                              if k in self.specs})
        self.fresh: frozenset[str] = frozenset()
        self.alarms = self._alarm_queue()
        self.fence = ReturnFence(runbook, store, audit, aws, self.engine)
        self.readiness = ReadinessWatch(runbook, store, audit, aws, readiness_every_s)

    def _alarm_queue(self) -> AlarmQueue | None:
        url = self.policy.alarm_queue_url
        if not url:
            return None
        region = ws.sqs_region(url, self.runbook.secondary.aws_region)
        # The queue may sit in the region that failed (Route 53's alarms live in
        # us-east-1): a poll that hangs there must not stall the probe rounds past the
        # window's max gap. One attempt within the failed-region deadline; a missed poll
        # is retried next tick.
        quick = getattr(self.aws, "with_deadline", None)
        clients = quick(self.runbook.aws.failed_region_deadline_s) if quick else self.aws
        return AlarmQueue(clients("sqs", region), url)

    # -- the loop ------------------------------------------------------------
    def run(self, stop: threading.Event, max_seconds: float | None, *,
            once: bool) -> list[str]:
        """The loop; with ``once`` it returns after the first failover it drove."""
        driven: list[str] = []
        resumed = self._resume_own_incident()
        if resumed is not None:
            driven.append(resumed)
            if once:
                return driven
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        log.info("watch.started", runbook=self.runbook.name, regions=list(self.specs),
                 carried_over=sorted(self.record.windows))
        with ThreadPoolExecutor(max_workers=len(self.specs),
                                thread_name_prefix="watch-round") as pool:
            try:
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    decision = self._tick(pool)
                    if decision is not None and decision.action == "failover":
                        incident_id = self._failover(decision)
                        if incident_id is not None:
                            driven.append(incident_id)
                            if once:
                                return driven
                    now = time.time()
                    nap = ws.seconds_until_due(self.record.windows, self.specs, now, TICK_CAP_S)
                    if deadline is not None:
                        nap = min(nap, max(0.0, deadline - time.monotonic()))
                    stop.wait(nap)
            finally:
                self.fence.close()
                if self.record.state != "failing_over":
                    self._save(replace(self.record, state="stopped"))
        reason = "stop requested" if stop.is_set() else "max seconds reached"
        self.audit.record("watch.stopped", actor="auto", reason=reason,
                          detail={"failovers_driven": driven,
                                  "held": "nothing (no lease, no alarm in hand)"})
        log.info("watch.stopped", runbook=self.runbook.name, reason=reason,
                 released="nothing held: no lease, no alarm in hand")
        return driven

    def _tick(self, pool: ThreadPoolExecutor) -> WatchDecision | None:
        """One observe -> decide pass; ``None`` when nothing was due and no alarm came."""
        self.readiness.poll(self.engine.active_region, self._busy)
        now = time.time()
        due = ws.due_regions(self.record.windows, self.specs, now, self.fresh)
        alarms, received = self._poll_alarms()
        if not alarms:
            self._ack(received)  # nothing in them for the window
        if not due and not alarms:
            return None
        rounds = dict(zip(due, pool.map(lambda r: run_round(self.specs[r], self.aws), due),
                          strict=True))
        before = self.record.windows
        windows = dict(before)
        for name, spec in self.specs.items():
            results, events = rounds.get(name, []), alarms.get(name, ())
            if not results and not events:
                continue
            state = windows.get(name) or initial_state(name)
            windows[name] = advance(state, Observation(name, now, tuple(results), events),
                                    spec, self.policy)
        self.fresh = self.fresh | set(due)
        primary = self.engine.active_region()
        secondary = next(r.name for r in self.runbook.regions if r.name != primary)
        current = windows.get(primary)
        spec = self.specs[primary]
        lag = (self._lag(primary, secondary)
               if current is not None and (ws.needs_lag(current, spec) or ws.lag_worth_keeping(
                   rounds.get(primary), spec, self.policy)) else None)
        last_lag = (lag, now) if lag is not None else self.record.last_lag
        self._fence_returned(rounds)
        hold = ws.hold_for(latest_failover(self.store, self.runbook.name), self.policy, now)
        view = TickView(now, primary, secondary, windows, self.fresh, self._busy(), lag,
                        last_lag, hold)
        decision = ws.decide(view, self.policy)
        if ws.hold_changed(self.record.hold, hold):
            self._hold_changed(self.record.hold, hold)
        record = replace(self.record, windows=windows, primary=primary, updated_at=now,
                         last_lag=last_lag, hold=hold,
                         state=ws.watch_state_for(windows.get(primary)),
                         probes={**self.record.probes,
                                 **{k: tuple(v) for k, v in rounds.items()}})
        record = self._journal_changes(record, before, windows)
        if decision.action == "refuse" and ws.is_news(self.record.decision, decision):
            self._refused(decision, primary)
        self._save(replace(record, decision=decision.as_decision()))
        if alarms:
            fault_point("watch:alarms_read")
            self._ack(received)  # only now: killed before, the alarms come back
        log.info("watch.tick", action=decision.action, reason=decision.reason,
                 guard=decision.guard, primary=primary, probed=due,
                 status={k: v.verdict.status for k, v in windows.items()})
        return decision

    # -- observing -----------------------------------------------------------
    def _poll_alarms(self) -> tuple[dict[str, tuple[AlarmEvent, ...]], Received | None]:
        if self.alarms is None:
            return {}, None
        try:
            received = self.alarms.receive(max_messages=50)
        except Exception as exc:  # noqa: BLE001 (a missed poll is retried next tick)
            log.warning("watch.alarm_queue_unreadable", error=str(exc).splitlines()[0][:200])
            return {}, None
        by_region: dict[str, list[AlarmEvent]] = {}
        for ev in received.events:
            region = region_for_alarm(ev, self.policy)
            if region is None:
                log.warning("watch.alarm_unmapped", alarm=ev.alarm_name, state=ev.state)
                continue
            log.info("watch.alarm", alarm=ev.alarm_name, state=ev.state, region=region)
            by_region.setdefault(region, []).append(ev)
        return {k: tuple(v) for k, v in by_region.items()}, received

    def _ack(self, received: Received | None) -> None:
        if self.alarms is None or received is None or not received.receipts:
            return
        try:
            self.alarms.ack(received)
        except Exception as exc:  # noqa: BLE001 (unacknowledged alarms come back: harmless)
            log.warning("watch.alarm_ack_failed", error=str(exc).splitlines()[0][:200])

    def _lag(self, primary: str, secondary: str) -> int | None:
        """Worst replay lag in bytes over the database pairs; ``None`` when any side
        does not answer or the roles are not primary -> standby."""
        worst = 0
        for db in self.runbook.databases:
            quick = {"connect_timeout": 2, "tcp_user_timeout": 2000}
            try:
                p = pg.status(db.endpoints[primary].dsn(**quick))
                s = pg.status(db.endpoints[secondary].dsn(**quick))
            except Exception as exc:  # noqa: BLE001 (unknown lag is a guard input, not a crash)
                log.info("watch.lag_unknown", database=db.name, error=str(exc).splitlines()[0])
                return None
            if p.in_recovery or not s.in_recovery:
                return None
            worst = max(worst, pg.lsn_to_int(p.lsn) - pg.lsn_to_int(s.lsn))
        return max(0, worst)

    def _busy(self) -> bool:
        """A failover is running, halted, or done: the same rule ``start_failover`` keeps."""
        if self.engine.open_incident() is not None:
            return True
        incidents = self.store.incidents(self.runbook.name)
        return bool(incidents) and incidents[-1].state == State.FAILED_OVER

    def _fence_returned(self, rounds: Mapping[str, list[Any]]) -> None:
        """While a failover is in force: fence the old primary in the round it answers
        again, and keep trying to raise its write flag and to do the failover's deferred
        steps (``drorch.watch_fence``)."""
        fo = in_force(self.engine)
        if fo is None:
            return
        self.fence.raise_flag(fo)
        self.fence.retry_deferred(fo)
        spec = self.specs.get(fo.from_region)
        if spec is not None and ws.old_primary_answers(rounds.get(fo.from_region), spec):
            for sentence in self.fence.fence(fo):
                if self.progress is not None:
                    self.progress(f"fence:{fo.from_region}", "done", sentence, {})

    # -- journaling ----------------------------------------------------------
    def _hold_changed(self, before: Hold | None, after: Hold | None) -> None:
        """Journaled (the record's ``hold``) and audited once per change, not per tick."""
        reason = after.reason if after is not None else (
            f"incident {before.incident if before else '?'}: automatic failover allowed "
            "again (acknowledged, recovery period over)")
        self.audit.record("watch.hold", actor="auto", reason=reason,
                          incident=(after or before).incident if (after or before) else None,
                          outcome="held" if after is not None else "released",
                          inputs={"acked": after.acked if after else True,
                                  "period_over": after.period_over if after else True})
        log.warning("watch.hold", held=after is not None, reason=reason)

    def _save(self, record: WatchRecord) -> None:
        self.record = record
        self.store.put(self.key, ws.to_json(record))

    def _journal_changes(self, record: WatchRecord, before: Mapping[str, WindowState],
                         after: Mapping[str, WindowState]) -> WatchRecord:
        for old, v in ws.verdict_changes(before, after):
            change = {"at": v.at, "region": v.region, "from": old, "to": v.status,
                      "reason": v.reason, "failing_since": v.failing_since,
                      "alarms": list(v.alarms)}
            record = ws.with_change(record, change)
            self.audit.record("watch.verdict", actor="auto", reason=v.reason,
                              inputs={"region": v.region, "from": old, "to": v.status},
                              detail={"failing_since": v.failing_since, "down": list(v.down),
                                      "alarms": list(v.alarms)})
            log.info("watch.verdict", region=v.region, previous=old, status=v.status,
                     reason=v.reason)
            if self.progress is not None:
                self.progress(f"health:{v.region}", v.status, v.reason, {})
        return record

    def _refused(self, d: WatchDecision, primary: str) -> None:
        self.audit.record("watch.refused", actor="auto", reason=d.reason, outcome="refused",
                          inputs={"primary": primary, "guard": d.guard})
        log.warning("watch.refused", guard=d.guard, reason=d.reason)

    # -- acting --------------------------------------------------------------
    def _failover(self, d: WatchDecision) -> str | None:
        assert d.trigger is not None
        try:
            incident_id = self.engine.start_failover(actor="auto", reason=d.reason,
                                                     trigger=d.trigger)
        except IncidentHalted as exc:  # raced with another actor between tick and start
            refusal = WatchDecision("refuse", f"{d.reason}; engine refused: {exc}",
                                    "already_failing_over")
            self._refused(refusal, str(d.trigger.get("region")))
            self._save(replace(self.record, decision=refusal.as_decision()))
            return None
        self.audit.record("watch.failover_started", actor="auto", incident=incident_id,
                          reason=d.reason, inputs={"trigger": d.trigger})
        log.warning("watch.failover_started", incident=incident_id, reason=d.reason)
        self._save(replace(self.record, incident=incident_id, state="failing_over"))
        return self._drive(incident_id)

    def _drive(self, incident_id: str) -> str:
        rolled_back = False
        try:
            final = self.engine.run(incident_id)
            log.info("watch.failover_ended", incident=incident_id, state=final)
        except (IncidentHalted, IncidentRolledBack) as exc:
            rolled_back = isinstance(exc, IncidentRolledBack)
            log.error("watch.failover_ended", incident=incident_id, state=type(exc).__name__,
                      reason=str(exc))
        finally:
            self._save(replace(self.record, state="monitoring",
                               primary=self.engine.active_region()))
        if rolled_back:
            self._retry_later(incident_id)
        return incident_id

    def _retry_later(self, incident_id: str) -> None:
        """A rolled-back failover is tried again, after a whole new failing window of
        the region it left (not on the next tick, not never)."""
        inc = self.store.incident(incident_id)
        region = self.store.fact(incident_id, "from_region") if inc else None
        if region is None or region not in self.specs:
            return
        windows, self.fresh = ws.restart_count(self.record.windows, self.fresh, region)
        self._save(replace(self.record, windows=windows))
        reason = (f"failover {incident_id} rolled back: {region}'s count starts again, "
                  "the next failing window retries it")
        self.audit.record("watch.retry_armed", actor="auto", incident=incident_id,
                          reason=reason, inputs={"region": region})
        log.warning("watch.retry_armed", incident=incident_id, region=region)

    def _resume_own_incident(self) -> str | None:
        """Finish a failover this watcher started and did not see to its end (killed
        mid-way). A halted one is left alone: a human decides, with ``drorch resume``."""
        incident_id = self.record.incident
        inc = self.store.incident(incident_id) if incident_id else None
        if inc is None or inc.actor != "auto":
            return None
        never_ran = inc.state == State.MONITORING and not self.store.events(inc.id)
        if inc.state != State.FAILING_OVER and not never_ran:
            return None
        log.warning("watch.resuming_failover", incident=inc.id, state=inc.state)
        self.audit.record("watch.failover_resumed", actor="auto", incident=inc.id,
                          reason="the watcher stopped before this failover ended",
                          inputs={"state": inc.state})
        self._save(replace(self.record, state="failing_over"))
        return self._drive(inc.id)


__all__ = ["health_specs", "health_summary", "record_key", "serve", "watch", "watch_status"]
