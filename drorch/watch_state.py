"""The watcher's pure half: what it remembers between runs and what it decides each tick.

Nothing here does I/O or reads a clock. ``drorch.watch`` observes (probe rounds, the
alarm queue, the replica's lag, the journal), builds one frozen ``TickView``, asks
``decide`` for one ``WatchDecision`` and acts on it; between ticks it persists a
``WatchRecord`` (``to_json``/``from_json``) under ``store.put("watch:<runbook>")``
so a restarted watcher continues the same count instead of starting over. Whether a
count may continue across the restart is the window's rule (``RegionHealth.max_gap_s``),
not the watcher's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from drorch.health import (
    Decision,
    HealthPolicy,
    LagReading,
    RegionHealth,
    Verdict,
    WindowState,
    decide_failover,
    fmt_duration,
    initial_state,
    next_probe_at,
)
from drorch.health.probes import ProbeResult
from drorch.health.window import AlarmStatus

RECORD_VERSION = 1
MAX_CHANGES = 50
"""Verdict changes kept in the record for ``drorch status`` (the audit log keeps all)."""

WatchState = Literal["monitoring", "degraded", "failing_over", "stopped"]
_SQS_HOST = re.compile(r"^(?:sqs\.)?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\.com")


@dataclass(frozen=True)
class WatchRecord:
    """Everything a restarted watcher (and ``drorch status``) needs to know.

    ``incident`` is the failover this watcher started, written before ``Engine.run``
    so a watcher killed mid-failover resumes it instead of starting another.
    """

    windows: Mapping[str, WindowState] = field(default_factory=dict)
    probes: Mapping[str, tuple[ProbeResult, ...]] = field(default_factory=dict)
    state: WatchState = "monitoring"
    primary: str | None = None
    decision: Decision | None = None
    incident: str | None = None
    changes: tuple[dict[str, Any], ...] = ()
    updated_at: float | None = None
    last_lag: tuple[int, float] | None = None
    """(bytes, when) of the last lag read while the primary answered."""
    hold: Hold | None = None
    """The recovery hold in force at the last tick (for ``drorch status``)."""


@dataclass(frozen=True)
class LastFailover:
    """The latest completed failover, as the journal tells it: what a recovery hold is
    about. ``acked_by``/``acked_at`` come from ``drorch ack`` (fact ``ack``)."""

    incident: str
    completed_at: float
    from_region: str
    to_region: str
    acked_by: str | None = None
    acked_at: float | None = None


@dataclass(frozen=True)
class Hold:
    """No automatic failover now, and why. ``acked``/``period_over`` are what can change
    while the same incident holds it: each change is journaled once."""

    incident: str
    reason: str
    acked: bool
    period_over: bool

    @property
    def key(self) -> tuple[str, bool, bool]:
        return (self.incident, self.acked, self.period_over)


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def hold_for(last: LastFailover | None, policy: HealthPolicy, now: float) -> Hold | None:
    """The recovery hold after ``last``: in force until a human acknowledged it *and*
    ``policy.recovery_period_s`` has passed since it completed; ``None`` once both hold
    (or when nothing failed over). Pure: ``now`` is the caller's clock."""
    if last is None:
        return None
    ends = last.completed_at + policy.recovery_period_s
    acked, over = last.acked_by is not None, now >= ends
    if acked and over:
        return None
    until = [] if acked else [f"a human runs `drorch ack {last.incident}`"]
    if not over:
        until.append(f"the recovery period of {fmt_duration(policy.recovery_period_s)} "
                     f"ends at {_clock(ends)}")
    by = f", acknowledged by {last.acked_by}" if acked else ""
    reason = (f"incident {last.incident} failed over {last.from_region} -> {last.to_region} "
              f"at {_clock(last.completed_at)}{by}: no automatic failover until "
              + " and ".join(until))
    return Hold(last.incident, reason, acked, over)


def hold_changed(before: Hold | None, after: Hold | None) -> bool:
    """Whether the hold started, ended or moved on (acknowledged, period over)."""
    return (before.key if before else None) != (after.key if after else None)


@dataclass(frozen=True)
class TickView:
    """One tick's snapshot: the windows after this tick's observations, and the world.

    ``fresh`` names the regions this run has observed itself; a verdict carried over
    from before a restart is never acted on until it has been refreshed.
    """

    at: float
    primary: str
    secondary: str
    windows: Mapping[str, WindowState]
    fresh: frozenset[str]
    busy: bool
    lag_bytes: int | None
    last_lag: tuple[int, float] | None = None
    hold: Hold | None = None


@dataclass(frozen=True)
class WatchDecision:
    """What to do now and why; ``trigger`` is set only for ``failover``."""

    action: Literal["none", "wait", "refuse", "failover"]
    reason: str
    guard: str | None = None
    trigger: dict[str, Any] | None = None

    def as_decision(self) -> Decision:
        return Decision(self.action, self.reason, self.guard)  # type: ignore[arg-type]


def decide(view: TickView, policy: HealthPolicy) -> WatchDecision:
    """The one decision of a tick, from the view alone (see ``decide_failover``); a
    failover the guards allow is refused while a recovery hold is in force."""
    primary = view.windows.get(view.primary)
    if primary is None or view.primary not in view.fresh:
        return WatchDecision("none", f"{view.primary}: not observed by this watcher yet")
    secondary = view.windows.get(view.secondary)
    if secondary is not None and view.secondary not in view.fresh:
        secondary = None
    d = decide_failover(primary.verdict, secondary.verdict if secondary else None,
                        view.lag_bytes, view.busy, policy,
                        last_lag_before(primary, view.last_lag, policy))
    if d.action != "failover":
        return WatchDecision(d.action, d.reason, d.guard)
    if view.hold is not None:
        return WatchDecision("refuse", f"{d.reason.removesuffix(': failing over')}; "
                             f"{view.hold.reason}", "recovery_hold")
    return WatchDecision("failover", d.reason, None, trigger_for(primary, policy, d.reason))


def last_lag_before(state: WindowState, last_lag: tuple[int, float] | None,
                    policy: HealthPolicy) -> LagReading | None:
    """The last lag reading when it is from just before the primary's count began (at
    most ``spec.lag_reading_max_age_s`` earlier: two probe rounds) or during it; older
    ones say nothing of now."""
    since = state.verdict.failing_since
    if last_lag is None or since is None:
        return None
    spec = next((r for r in policy.regions if r.region == state.region), None)
    if spec is None:
        return None
    lag_bytes, at = last_lag
    before = since - at
    return LagReading(lag_bytes, round(before, 3)) if before <= spec.lag_reading_max_age_s else None


def trigger_for(state: WindowState, policy: HealthPolicy, reason: str) -> dict[str, Any]:
    """The incident's trigger: ``first_failure_at`` is where the count began (RTO's start).

    ``kind`` is ``"alarm"`` when a firing alarm started the count on its own
    (``alarm_may_trigger_alone`` and the alarm came before any failing round),
    otherwise ``"health"``. ``alarm_events`` details the alarms in ``ALARM`` (CloudWatch's
    ``StateChangeTime`` as ``changed_at``, when drorch read it as ``received_at``, both
    unix seconds, and its reason); ``probe_failing_since`` is when the probes' own count
    began (``None`` when only an alarm counted), out of ``probes`` with ``quorum``: the
    report's ``detection`` section is built from these.
    """
    v = state.verdict
    firing = state.firing
    first_alarm = min((a.since for a in firing), default=None)
    probe_since = state.probe_failing_since
    alarm_led = (policy.alarm_may_trigger_alone and first_alarm is not None
                 and (probe_since is None or first_alarm < probe_since))
    return {
        "kind": "alarm" if alarm_led else "health",
        "detail": reason,
        "region": state.region,
        "first_failure_at": v.failing_since,
        "decided_at": v.decided_at,
        "down": list(v.down),
        "alarms": list(v.alarms),
        "alarm_events": [{"name": a.name, "state": a.state, "changed_at": a.changed_at,
                          "received_at": a.since, "reason": a.reason} for a in firing],
        "probe_failing_since": probe_since,
        "probes": v.total,
        "quorum": v.quorum,
    }


def needs_lag(view_primary: WindowState, spec: RegionHealth) -> bool:
    """Whether the lag is worth reading: only for a failed primary whose PostgreSQL
    probes still answer (a dead primary has no LSN to compare; asking would only wait)."""
    if not view_primary.verdict.failed:
        return False
    pg_probes = {p.name for p in spec.probes if p.kind == "postgres"}
    return not (pg_probes & set(view_primary.down))


def lag_worth_keeping(results: list[ProbeResult] | None, spec: RegionHealth,
                      policy: HealthPolicy) -> bool:
    """Read the lag on every round where the primary's PostgreSQL probes all answered,
    when the runbook limits the lag: if the primary dies, that last reading is what
    the guard can still go on (see ``last_lag_before``)."""
    if policy.max_replica_lag_bytes is None or not results:
        return False
    pg_probes = {p.name for p in spec.probes if p.kind == "postgres"}
    answered = {r.probe for r in results if r.ok}
    return bool(pg_probes) and pg_probes <= answered


def old_primary_answers(results: Sequence[ProbeResult] | None, spec: RegionHealth) -> bool:
    """Whether this round shows the old primary's database answering again: one of its
    region's PostgreSQL probes passed (any probe, when the region has none). Only then
    is the fence tried: a dead node is not dialled every tick."""
    if not results:
        return False
    pg_probes = {p.name for p in spec.probes if p.kind == "postgres"}
    return any(r.ok and (not pg_probes or r.probe in pg_probes) for r in results)


def restart_count(windows: Mapping[str, WindowState], fresh: frozenset[str],
                  region: str) -> tuple[dict[str, WindowState], frozenset[str]]:
    """After a rolled-back failover: ``region``'s count starts again from its next round,
    so the retry comes after a whole new failing window, not on the next tick."""
    return ({**windows, region: initial_state(region)}, fresh - {region})


def due_regions(windows: Mapping[str, WindowState], specs: Mapping[str, RegionHealth],
                now: float, fresh: frozenset[str]) -> list[str]:
    """Regions whose next probe round is due (always those not yet observed by this run)."""
    due = []
    for name, spec in specs.items():
        state = windows.get(name)
        when = next_probe_at(state, spec) if state is not None else None
        if name not in fresh or when is None or when <= now:
            due.append(name)
    return due


def seconds_until_due(windows: Mapping[str, WindowState],
                      specs: Mapping[str, RegionHealth], now: float, cap: float) -> float:
    """How long the loop may sleep before some region is due (at most ``cap``)."""
    wait = cap
    for name, spec in specs.items():
        state = windows.get(name)
        when = next_probe_at(state, spec) if state is not None else None
        wait = min(wait, 0.0 if when is None else max(0.0, when - now))
    return wait


def verdict_changes(before: Mapping[str, WindowState],
                    after: Mapping[str, WindowState]) -> list[tuple[str | None, Verdict]]:
    """(old status, new verdict) for each region whose status or firing alarms changed."""
    out: list[tuple[str | None, Verdict]] = []
    for name, new in after.items():
        old = before.get(name)
        if old is None or (old.verdict.status, old.verdict.alarms) != (
                new.verdict.status, new.verdict.alarms):
            out.append((old.verdict.status if old else None, new.verdict))
    return out


def is_news(previous: Decision | None, current: WatchDecision) -> bool:
    """A refusal is journaled and audited when it starts or its guard changes, not
    every tick it persists."""
    return previous is None or (previous.action, previous.guard) != (current.action,
                                                                     current.guard)


def watch_state_for(primary: WindowState | None) -> WatchState:
    if primary is not None and primary.verdict.status in ("degraded", "failed"):
        return "degraded"
    return "monitoring"


def sqs_region(queue_url: str, fallback: str) -> str:
    """The AWS region in an SQS queue URL (``https://sqs.eu-west-1.amazonaws.com/...``);
    ``fallback`` when the URL does not say (moto, LocalStack, a VPC endpoint)."""
    host = queue_url.split("://", 1)[-1].split("/", 1)[0]
    m = _SQS_HOST.match(host)
    return m.group(1) if m else fallback


def summary_rows(record: WatchRecord, specs: Mapping[str, RegionHealth]) -> list[dict[str, Any]]:
    """Per region: last round's probes and the window's progress sentence."""
    rows = []
    for name, spec in specs.items():
        state = record.windows.get(name)
        v = state.verdict if state is not None else None
        rows.append({
            "region": name,
            "role": "primary" if name == record.primary else "secondary",
            "status": v.status if v else "unknown",
            "progress": v.reason if v else f"{name}: not watched yet",
            "failing_since": v.failing_since if v else None,
            "elapsed_s": v.elapsed_s if v else 0.0,
            "needed_s": spec.fail_after_s,
            "alarms": list(v.alarms) if v else [],
            "observed_at": v.at if v else None,
            "probes": [{"probe": r.probe, "ok": r.ok, "latency_s": round(r.latency_s, 4),
                        "error": r.error} for r in record.probes.get(name, ())],
        })
    return rows


# -- persistence: plain JSON, versioned; anything unreadable starts afresh ------------
def to_json(record: WatchRecord) -> dict[str, Any]:
    return {
        "version": RECORD_VERSION,
        "state": record.state,
        "primary": record.primary,
        "incident": record.incident,
        "updated_at": record.updated_at,
        "decision": asdict(record.decision) if record.decision else None,
        "windows": {k: asdict(v) for k, v in record.windows.items()},
        "probes": {k: [asdict(r) for r in v] for k, v in record.probes.items()},
        "changes": list(record.changes[-MAX_CHANGES:]),
        "last_lag": list(record.last_lag) if record.last_lag else None,
        "hold": asdict(record.hold) if record.hold else None,
    }


def from_json(doc: Any) -> WatchRecord:
    """The record ``to_json`` wrote; an empty record for anything else (other version,
    damaged): losing the count is safe (it restarts), misreading it is not."""
    if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
        return WatchRecord()
    try:
        return WatchRecord(
            windows={k: _window(v) for k, v in doc["windows"].items()},
            probes={k: tuple(ProbeResult(**r) for r in v) for k, v in doc["probes"].items()},
            state=doc["state"],
            primary=doc.get("primary"),
            decision=Decision(**doc["decision"]) if doc.get("decision") else None,
            incident=doc.get("incident"),
            changes=tuple(doc.get("changes", ())),
            updated_at=doc.get("updated_at"),
            last_lag=tuple(doc["last_lag"]) if doc.get("last_lag") else None,  # type: ignore[arg-type]
            hold=Hold(**doc["hold"]) if doc.get("hold") else None,
        )
    except (KeyError, TypeError, ValueError):
        return WatchRecord()


def _window(d: dict[str, Any]) -> WindowState:
    v = d["verdict"]
    verdict = Verdict(**{**v, "down": tuple(v["down"]), "alarms": tuple(v["alarms"])})
    return WindowState(**{
        **d, "verdict": verdict, "down": tuple(d["down"]),
        "alarms": tuple(AlarmStatus(**a) for a in d["alarms"]),
    })


def with_change(record: WatchRecord, change: dict[str, Any]) -> WatchRecord:
    return replace(record, changes=(*record.changes, change)[-MAX_CHANGES:])
