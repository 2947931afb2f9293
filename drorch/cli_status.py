"""``drorch status``: who serves writes, the watcher's last verdict and its age, the
recovery hold, the latest incident; as data (:class:`~drorch.cli_output.StatusOutput`),
then shown as text or JSON. Reads only.

Its exit status is for scripts and monitors: 5 while the latest incident is halted
(a human must look) or in flight with nobody running it (its process was stopped or
killed: `drorch resume`), 7 when a watcher that is not stopped has not ticked for longer
than its health window allows (its verdict is stale: it shows a past that may not
hold any more), 0 otherwise."""

from __future__ import annotations

import time
from typing import Any

from drorch.cli_common import out
from drorch.cli_output import (
    IncidentOut,
    ProbeOut,
    RegionHealthOut,
    StatusOutput,
    StepOut,
    WatchDecisionOut,
    WatcherOut,
)
from drorch.config import Runbook
from drorch.console import print_summary
from drorch.exitcodes import ExitCode
from drorch.incident import incident_record
from drorch.metrics import rto as rto_of

IN_FLIGHT = ("failing_over", "failing_back")
"""Incident states a running engine holds its lease through."""
NOT_TICKING_STATES = ("stopped", "failing_over")
"""Watcher states in which no tick is expected: stopped on purpose, or driving a
failover (its progress is the incident's)."""


STALE_FLOOR_S = 10.0
"""Never stale sooner: a busy host may delay a tick by seconds, which is not a watcher
that stopped ticking (it matters with the lab's one-second intervals)."""


def stale_after_s(rb: Runbook) -> float:
    """How old a running watcher's last tick may be: the gap that breaks a failing
    streak for the watcher itself (three probe intervals plus the slowest probe's
    timeout, ``RegionHealth.max_gap_s``) for the slowest region, at least
    :data:`STALE_FLOOR_S`."""
    gaps = [spec.max_gap_s for r in rb.regions
            if (spec := rb.region_health(r.name)) is not None]
    return max([STALE_FLOOR_S, *gaps])


def build_status(rb: Runbook, engine: Any, now: float | None = None) -> StatusOutput:
    from drorch.watch import health_summary, watch_status

    now = time.time() if now is None else now
    store = engine.store
    active = engine.active_region()
    health = []
    if rb.health is not None:
        for row in health_summary(rb, store):
            health.append(RegionHealthOut(
                region=row["region"], role="primary" if row["region"] == active else "secondary",
                status=row["status"], progress=row.get("progress") or "no observation yet",
                observed_at=row.get("observed_at"),
                probes=[ProbeOut(probe=p["probe"], ok=p["ok"]) for p in row.get("probes", [])]))
    hold, record = watch_status(rb, store, now)
    watcher = None
    if record.updated_at is not None:
        limit = stale_after_s(rb)
        age = round(max(0.0, now - record.updated_at), 3)
        d = record.decision
        watcher = WatcherOut(
            state=record.state, updated_at=record.updated_at, age_s=age, stale_after_s=limit,
            stale=record.state not in NOT_TICKING_STATES and age > limit,
            decision=None if d is None else WatchDecisionOut(action=d.action, guard=d.guard,
                                                             reason=d.reason))
    latest = None
    interrupted = False
    attention: list[str] = []
    incidents = store.incidents(rb.name)
    if incidents:
        record_ = incident_record(store, rb, incidents[-1].id)
        latest = _incident_out(record_)
        if latest.state == "halted":
            attention.append(f"incident {latest.incident_id} is halted: look at it, then "
                             "`drorch resume`")
        elif latest.state in IN_FLIGHT and not store.lease_held(f"runbook:{rb.name}"):
            interrupted = True
            attention.append(f"incident {latest.incident_id} is {latest.state} and nobody is "
                             "running it (the process that did was stopped or killed): "
                             "`drorch resume` carries it on from its journal")
    if watcher is not None and watcher.stale:
        attention.append(f"the watcher's last verdict is {watcher.age_s:.0f} s old (stale "
                         f"after {watcher.stale_after_s:g} s): is `drorch watch` running?")
    halted = latest is not None and latest.state == "halted"
    code = ExitCode.HALTED if halted or interrupted else \
        ExitCode.STALE if watcher is not None and watcher.stale else ExitCode.OK
    return StatusOutput(runbook=rb.name, state_dir=rb.state_dir, active_region=active,
                        health=health, watcher=watcher,
                        hold=None if hold is None else hold.reason, latest_incident=latest,
                        attention=attention, exit_code=int(code))


def _incident_out(record: dict[str, Any]) -> IncidentOut:
    steps = []
    for s in record["steps"]:
        wait = (s.get("detail") or {}).get("wait_s")
        steps.append(StepOut(id=s["id"], status=s["status"], duration_s=s["duration_s"],
                             wait_s=float(wait) if isinstance(wait, int | float) else None))
    return IncidentOut(incident_id=record["incident_id"], kind=record["kind"],
                       state=record["state"], actor=record["actor"],
                       from_region=record["from_region"], to_region=record["to_region"],
                       rto_s=rto_of(record)["seconds"], rpo_s=record["rpo"]["seconds"],
                       steps=steps)


def print_status(status: StatusOutput, rb: Runbook, engine: Any) -> None:
    out.print(f"runbook {status.runbook}: writes served by [bold]{status.active_region}[/] "
              f"(state in {status.state_dir})", highlight=False)
    for h in status.health:
        probes = ", ".join(f"{p.probe} {'ok' if p.ok else 'FAIL'}" for p in h.probes)
        out.print(f"  {h.region} ({h.role}): {h.status} - {h.progress}"
                  + (f" [{probes}]" if probes else ""), highlight=False)
    w = status.watcher
    if w is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.updated_at or 0))
        age = "" if w.age_s is None else f", {_age(w.age_s)} ago"
        stale = f" [bold red]STALE[/] (older than {w.stale_after_s:g} s)" if w.stale else ""
        out.print(f"watcher: {w.state}, last verdict at {when}{age}{stale}", highlight=False)
        if w.decision is not None and w.decision.action == "refuse":
            out.print(f"watcher [bold]refuses[/] ({w.decision.guard}): {w.decision.reason}",
                      highlight=False)
    elif rb.health is not None:
        out.print("watcher: no verdict recorded (`drorch watch` has not run here)")
    if status.hold is not None:
        out.print(f"[bold yellow]automatic failover held[/]: {status.hold}", highlight=False)
    if status.latest_incident is None:
        out.print("no incidents recorded")
    else:
        print_summary(incident_record(engine.store, rb, status.latest_incident.incident_id),
                      rb)
    for line in status.attention:
        out.print(f"[bold red]needs a human:[/] {line}", highlight=False)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
