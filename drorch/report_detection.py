"""The report's ``detection`` section: which alarm raised the outage, which probes
confirmed it, which signal came first. Pure; built from the incident's trigger as the
watcher recorded it (``drorch.watch_state.trigger_for``).

``first_signal`` compares the earliest alarm's ``StateChangeTime`` (CloudWatch's clock)
with the moment drorch's probes began failing (drorch's clock): ``alarm`` when the alarm
changed state first or at the same instant, ``probes`` otherwise, ``manual`` for an
incident a human opened. The two clocks are different hosts' clocks: a difference of
less than their skew says nothing about order.

Incidents recorded before the trigger carried ``alarm_events`` (only alarm names) still
get a section: the names, with the times unknown (``null``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def _iso(at: Any) -> str | None:
    if not isinstance(at, int | float):
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _alarms(trigger: Mapping[str, Any]) -> list[dict[str, Any]]:
    events = trigger.get("alarm_events")
    if events is None:  # an older trigger: names only
        events = [{"name": n, "state": "ALARM"} for n in trigger.get("alarms") or []]
    return [{"name": ev.get("name"), "state": ev.get("state"),
             "changed_at": ev.get("changed_at"), "changed_at_iso": _iso(ev.get("changed_at")),
             "received_at": ev.get("received_at"),
             "received_at_iso": _iso(ev.get("received_at")), "reason": ev.get("reason")}
            for ev in events]


def _probe_since(trigger: Mapping[str, Any]) -> float | None:
    if "probe_failing_since" in trigger:
        return trigger["probe_failing_since"]
    # older triggers: a health trigger's count was the probes'
    return trigger.get("first_failure_at") if trigger.get("kind") == "health" else None


def detection(trigger: Mapping[str, Any]) -> dict[str, Any]:
    """The section (see ``docs/report-json.md``, ``detection``)."""
    kind = trigger.get("kind") or "manual"
    alarms = _alarms(trigger) if kind != "manual" else []
    since = _probe_since(trigger) if kind != "manual" else None
    down = list(trigger.get("down") or [])
    confirmed = None
    if since is not None and down:
        confirmed = {"probes_down": down, "probes": trigger.get("probes"),
                     "quorum": trigger.get("quorum"), "failing_since": since,
                     "failing_since_iso": _iso(since)}
    times = [a["changed_at"] if a["changed_at"] is not None else a["received_at"]
             for a in alarms]
    first_alarm = min((t for t in times if t is not None), default=None)
    if kind == "manual":
        first = "manual"
    elif alarms and (since is None or (first_alarm is not None and first_alarm <= since)):
        first = "alarm"
    else:
        first = "probes"
    return {"region": trigger.get("region"), "first_signal": first, "alarms": alarms,
            "confirmed_by": confirmed, "alarm_alone": kind == "alarm",
            "sentence": _sentence(first, alarms, confirmed, kind)}


def _sentence(first: str, alarms: list[dict[str, Any]], confirmed: Mapping[str, Any] | None,
              kind: str) -> str:
    if first == "manual":
        return "opened by a human: no alarm or probe decided it"
    names = ", ".join(str(a["name"]) for a in alarms)
    probes = (f"probes {', '.join(confirmed['probes_down'])} failing "
              f"({len(confirmed['probes_down'])}/{confirmed.get('probes') or '?'}, "
              f"quorum {confirmed.get('quorum') or '?'})") if confirmed else None
    if first == "alarm":
        text = f"alarm {names} fired first"
        if probes:
            return f"{text}; {probes} confirmed it"
        return text + (" and counted alone (alarm_may_trigger_alone)" if kind == "alarm"
                       else "; no probe confirmed it")
    text = f"{probes or 'the probes'} found it"
    return text + (f"; alarm {names} fired after them" if names else "; no alarm fired")
