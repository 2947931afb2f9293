"""``drorch watch``: observe -> decide -> act, one tick at a time, until told to stop.

Each tick runs the probe rounds that are due (both regions at once, each bounded by
its slowest probe's timeout), reads the alarm queue, folds both into the failure
windows (``drorch.health``), builds one ``TickView`` and lets the pure
``drorch.watch_state.decide`` pick one action; one ``watch.tick`` log event says
which and why. Side effects, in order:

- every verdict change (and the count starting: ``degraded``) is journaled in
  ``store.put("watch:<runbook>")`` and audited as ``watch.verdict``;
- a refusal by a guard (secondary unhealthy, lag, failover already running or done)
  is audited as ``watch.refused`` when it starts or its reason changes;
- a failover is opened with ``Engine.start_failover(actor="auto", trigger=...)``,
  audited as ``watch.failover_started``, its id journaled, then run to its end.

Stopping: ``stop`` is checked between ticks, so a tick in hand finishes (at most one
probe timeout). A failover in hand is driven to its end (completed, rolled back or
halted): the engine has no safe stopping point short of that, and its journal makes
a resume safe if the process is killed anyway. Restart: the windows, the last
decision and the id of a failover this watcher started are read back; that failover
is resumed if it was interrupted, and the count continues if the gap allows it.
``watch`` returns after one failover (the regions' roles have changed; watching
again is a new decision for a human).
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
from drorch.steps.base import Clients
from drorch.store.sqlite import SqliteStore
from drorch.watch_state import TickView, WatchDecision, WatchRecord

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


def watch(runbook: Runbook, store: SqliteStore, audit: AuditLog, aws: Clients, *,
          stop: threading.Event, progress: ProgressFn | None = None,
          max_seconds: float | None = None) -> str | None:
    """Run until ``stop`` is set or ``max_seconds`` have passed; returns the id of the
    failover it started (or resumed) and drove to its end, else ``None``."""
    watcher = _Watcher(runbook, store, audit, aws, progress)
    return watcher.run(stop, max_seconds)


class _Watcher:
    def __init__(self, runbook: Runbook, store: SqliteStore, audit: AuditLog, aws: Clients,
                 progress: ProgressFn | None) -> None:
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

    def _alarm_queue(self) -> AlarmQueue | None:
        url = self.policy.alarm_queue_url
        if not url:
            return None
        region = ws.sqs_region(url, self.runbook.secondary.aws_region)
        return AlarmQueue(self.aws("sqs", region), url)

    # -- the loop ------------------------------------------------------------
    def run(self, stop: threading.Event, max_seconds: float | None) -> str | None:
        resumed = self._resume_own_incident()
        if resumed is not None:
            return resumed
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
                            return incident_id
                    now = time.time()
                    nap = ws.seconds_until_due(self.record.windows, self.specs, now, TICK_CAP_S)
                    if deadline is not None:
                        nap = min(nap, max(0.0, deadline - time.monotonic()))
                    stop.wait(nap)
            finally:
                if self.record.state != "failing_over":
                    self._save(replace(self.record, state="stopped"))
        log.info("watch.stopped", runbook=self.runbook.name,
                 reason="stop requested" if stop.is_set() else "max seconds reached")
        return None

    def _tick(self, pool: ThreadPoolExecutor) -> WatchDecision | None:
        """One observe -> decide pass; ``None`` when nothing was due and no alarm came."""
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
        view = TickView(now, primary, secondary, windows, self.fresh, self._busy(), lag,
                        last_lag)
        decision = ws.decide(view, self.policy)
        record = replace(self.record, windows=windows, primary=primary, updated_at=now,
                         last_lag=last_lag,
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

    # -- journaling ----------------------------------------------------------
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
        try:
            final = self.engine.run(incident_id)
            log.info("watch.failover_ended", incident=incident_id, state=final)
        except (IncidentHalted, IncidentRolledBack) as exc:
            log.error("watch.failover_ended", incident=incident_id, state=type(exc).__name__,
                      reason=str(exc))
        finally:
            self._save(replace(self.record, state="stopped",
                               primary=self.engine.active_region()))
        return incident_id

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


__all__ = ["health_specs", "health_summary", "record_key", "watch"]
