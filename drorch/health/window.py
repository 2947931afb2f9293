"""The N-minute failure window: observations in, verdict out. Pure.

Nothing here reads a clock: time is ``Observation.at`` (seconds, any epoch, as long
as the caller uses one), so a test can replay hours of observations in
milliseconds. ``advance`` returns a new ``WindowState`` and never mutates.

Rules, per region (``RegionHealth``):
- A probe round is *failing* when at least ``quorum`` of the region's probes failed
  (a probe with no result in the round counts as failed).
- The region is *failed* once it has been failing continuously for
  ``fail_after_s``, measured from the first failing round; it is *degraded* before.
- A failing streak ends after ``healthy_rounds_to_reset`` consecutive healthy rounds;
  fewer healthy rounds do not stop the count (hysteresis against flapping probes).
- Observations further apart than ``spec.max_gap_s`` break a streak: drorch cannot
  claim "continuously" across a gap it did not watch. Out-of-order observations
  (earlier than the last one) are ignored.

Alarms (our choice, documented for the runbook):
- By default an alarm in ``ALARM`` does not start or shorten the count: it marks the
  region *suspect*, which makes ``next_probe_at`` ask for a round at once and then
  every ``suspect_interval_s`` until the alarm clears. Only probes fail a region.
- With ``HealthPolicy.alarm_may_trigger_alone`` a firing alarm counts as failing
  on its own; the count then runs from when drorch first learned of the alarm
  (never from an older ``StateChangeTime``, so a stale notification read after a
  restart cannot fail a region at once). The window N applies all the same.
- Only the newest state change per alarm counts (SQS is unordered, at least once).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from drorch.health.alarms import AlarmEvent
from drorch.health.config import HealthPolicy, RegionHealth
from drorch.health.probes import ProbeResult

Status = Literal["unknown", "healthy", "degraded", "failed"]

_DEFAULT_POLICY = HealthPolicy()


@dataclass(frozen=True)
class Observation:
    """What one tick saw for one region: a probe round and/or alarm events.

    ``results`` empty means an alarm-only observation: probe counters are untouched.
    ``alarms`` holds only events already mapped to this region.
    """

    region: str
    at: float
    results: tuple[ProbeResult, ...] = ()
    alarms: tuple[AlarmEvent, ...] = ()


@dataclass(frozen=True)
class AlarmStatus:
    """Newest known state of one alarm: ``changed_at`` orders events (the alarm's own
    clock), ``since`` is when drorch learned of this state (the caller's clock)."""

    name: str
    state: str
    changed_at: float
    since: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    """One region's health now, with the sentence that explains it."""

    region: str
    status: Status
    reason: str
    at: float | None = None
    failing_since: float | None = None
    elapsed_s: float = 0.0
    needed_s: float = 0.0
    decided_at: float | None = None
    down: tuple[str, ...] = ()
    total: int = 0
    quorum: int = 0
    alarms: tuple[str, ...] = ()

    @property
    def suspect(self) -> bool:
        return bool(self.alarms)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass(frozen=True)
class WindowState:
    region: str
    verdict: Verdict
    last_at: float | None = None
    last_probe_at: float | None = None
    probe_failing_since: float | None = None
    healthy_streak: int = 0
    down: tuple[str, ...] = ()
    alarms: tuple[AlarmStatus, ...] = ()

    @property
    def firing(self) -> tuple[AlarmStatus, ...]:
        return tuple(a for a in self.alarms if a.state == "ALARM")


def initial_state(region: str) -> WindowState:
    return WindowState(region, Verdict(region, "unknown", f"{region}: no observations yet"))


def fmt_duration(seconds: float) -> str:
    """``130 -> "2m10s"``, ``180 -> "3m"``, ``2.5 -> "2.5s"``."""
    if seconds < 60:
        text = f"{seconds:.1f}".rstrip("0").rstrip(".")
        return f"{text}s"
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s else ""]
    return "".join(parts)


def _merge_alarms(
    known: tuple[AlarmStatus, ...], events: tuple[AlarmEvent, ...], now: float
) -> tuple[AlarmStatus, ...]:
    by_name = {a.name: a for a in known}
    for ev in sorted(events, key=lambda e: e.at if e.at is not None else now):
        changed = ev.at if ev.at is not None else now
        old = by_name.get(ev.alarm_name)
        if old is not None and old.changed_at > changed:
            continue  # an older notification delivered late
        if old is not None and old.state == ev.state:
            by_name[ev.alarm_name] = replace(old, changed_at=max(old.changed_at, changed))
            continue
        by_name[ev.alarm_name] = AlarmStatus(ev.alarm_name, ev.state, changed, now, ev.reason)
    return tuple(sorted(by_name.values(), key=lambda a: a.name))


def advance(
    state: WindowState,
    obs: Observation,
    spec: RegionHealth,
    policy: HealthPolicy = _DEFAULT_POLICY,
) -> WindowState:
    """Fold one observation into the window; the new state carries the new verdict."""
    if obs.region != spec.region or state.region != spec.region:
        raise ValueError(f"observation for {obs.region!r} given to window of {spec.region!r}")
    if state.last_at is not None and obs.at < state.last_at:
        return state
    alarms = _merge_alarms(state.alarms, obs.alarms, obs.at)
    since, streak, down = state.probe_failing_since, state.healthy_streak, state.down
    last_probe_at = state.last_probe_at
    if obs.results:
        if last_probe_at is not None and obs.at - last_probe_at > spec.max_gap_s:
            since, streak = None, 0
        ok = {r.probe for r in obs.results if r.ok and r.region in (spec.region, "")}
        down = tuple(p.name for p in spec.probes if p.name not in ok)
        if len(down) >= spec.quorum:
            since, streak = (obs.at if since is None else since), 0
        else:
            streak += 1
            if streak >= spec.healthy_rounds_to_reset:
                since = None
        last_probe_at = obs.at
    new = WindowState(
        region=state.region,
        verdict=state.verdict,
        last_at=obs.at,
        last_probe_at=last_probe_at,
        probe_failing_since=since,
        healthy_streak=streak,
        down=down,
        alarms=alarms,
    )
    return replace(new, verdict=_verdict(new, state.verdict, obs.at, spec, policy))


def _verdict(
    st: WindowState, previous: Verdict, now: float, spec: RegionHealth, policy: HealthPolicy
) -> Verdict:
    firing = st.firing
    names = tuple(a.name for a in firing)
    base = Verdict(
        region=st.region, status="unknown", reason="", at=now, needed_s=spec.fail_after_s,
        down=st.down, total=len(spec.probes), quorum=spec.quorum, alarms=names,
    )
    if st.last_probe_at is None and not (policy.alarm_may_trigger_alone and firing):
        return replace(base, reason=f"{st.region}: no probe round yet" + _alarm_note(firing))
    since = st.probe_failing_since
    alarm_counts = policy.alarm_may_trigger_alone and bool(firing)
    if alarm_counts:
        first_alarm = min(a.since for a in firing)
        since = first_alarm if since is None else min(since, first_alarm)
    detail = _detail(st, spec, alarm_counts)
    if since is None:
        reason = f"{st.region} healthy ({detail})" + _alarm_note(firing, suspect=True)
        return replace(base, status="healthy", reason=reason)
    elapsed = now - since
    window = f"failing for {fmt_duration(elapsed)} of {fmt_duration(spec.fail_after_s)}"
    if elapsed < spec.fail_after_s:
        return replace(
            base, status="degraded", failing_since=since, elapsed_s=elapsed,
            reason=f"{st.region} {window} ({detail})" + _alarm_note(firing),
        )
    keep = previous.status == "failed" and previous.failing_since == since
    decided = previous.decided_at if keep and previous.decided_at is not None else now
    return replace(
        base, status="failed", failing_since=since, elapsed_s=elapsed, decided_at=decided,
        reason=f"{st.region} failed: {window} ({detail})" + _alarm_note(firing),
    )


def _detail(st: WindowState, spec: RegionHealth, alarm_counts: bool) -> str:
    text = f"{len(st.down)}/{len(spec.probes)} probes down"
    if st.down:
        text += ": " + ", ".join(st.down)
    if st.probe_failing_since is not None and st.healthy_streak:
        text += f"; {st.healthy_streak}/{spec.healthy_rounds_to_reset} healthy rounds to reset"
    if alarm_counts:
        text += "; alarm may trigger alone"
    return text


def _alarm_note(firing: tuple[AlarmStatus, ...], suspect: bool = False) -> str:
    if not firing:
        return ""
    names = ", ".join(a.name for a in firing)
    return f"; suspect, alarm in ALARM: {names}" if suspect else f"; alarm in ALARM: {names}"


def next_probe_at(state: WindowState, spec: RegionHealth) -> float | None:
    """When the loop should run the region's next probe round (``None``: at once).

    Every ``interval_s`` normally; every ``suspect_interval_s`` while an alarm fires
    or the region is degraded or failed; at once when an alarm began firing after
    the last round (the alarm *starts* evaluation, it does not replace it).
    """
    if state.last_probe_at is None:
        return None
    firing = state.firing
    if any(a.since > state.last_probe_at for a in firing):
        return max(a.since for a in firing)
    hurried = bool(firing) or state.verdict.status in ("degraded", "failed")
    step = spec.effective_suspect_interval_s if hurried else spec.interval_s
    return state.last_probe_at + step
