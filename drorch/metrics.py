"""RPO and RTO arithmetic: pure functions over numbers and the incident record.

Times are unix seconds (floats). Nothing here reads a clock or the world.

- **RTO** runs from the first failing observation (or, when there was none, as
  in a drill or a manual failover, from the decision) to the moment all
  validation flows had passed: the latest ``ended_at`` of the flows when every
  one of them is ok. A failed or missing flow means the service was not shown
  to be back, so RTO is unknown (None), not "short". With no flows declared the
  end is ``completed_at`` and ``end_basis`` says so. A failback's RTO starts at its
  freeze (``start_basis`` ``writes_frozen``): until then the failed-over region
  serves; fencing, reconcile and resync are ``preparation_s``.
- **Phases**: ``detect`` (first failure -> decision), ``decide`` (decision ->
  first step start), one per step, and ``validate`` (first flow start -> last
  flow end; left out when a step of stage ``validate`` already covers it).
- **Waits**: steps report unavoidable waits in ``detail["wait_s"]`` (a number,
  or a mapping of named waits: promotion, INSYNC, DNS TTL/propagation).
  ``overhead_s = RTO - detect - waits``: the time drorch itself spent deciding,
  acting and validating. Detection is left out because its length is the
  runbook's failing window, not drorch's work. Never below zero.
- **RPO**: seconds = primary's last commit time - replica's last replayed
  commit time; bytes = LSN distance. Both never below zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def lsn_to_int(lsn: str) -> int:
    """``'0/3000060'`` -> 50331744. Raises ValueError on anything else."""
    high, sep, low = lsn.strip().partition("/")
    if not sep or not high or not low:
        raise ValueError(f"not an LSN: {lsn!r}")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    if value < 0:
        raise ValueError("an LSN is never negative")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_diff(ahead: str, behind: str) -> int:
    """Bytes of WAL from ``behind`` to ``ahead`` (negative when ``behind`` is in front)."""
    return lsn_to_int(ahead) - lsn_to_int(behind)


def rpo_estimate(
    *,
    primary_last_commit: float | None = None,
    replica_last_replay: float | None = None,
    primary_lsn: str | None = None,
    replica_lsn: str | None = None,
) -> dict[str, float | int | None]:
    """``{"seconds", "bytes"}`` of data the replica lacks; None where an input is unknown."""
    seconds = None
    if primary_last_commit is not None and replica_last_replay is not None:
        seconds = max(0.0, primary_last_commit - replica_last_replay)
    lag_bytes = None
    if primary_lsn and replica_lsn:
        lag_bytes = max(0, lsn_diff(primary_lsn, replica_lsn))
    return {"seconds": seconds, "bytes": lag_bytes}


def compare(value: float | None, target: float | None) -> dict[str, Any]:
    """``{"value", "target", "met"}``: met is None without a target, False without a value."""
    if target is None:
        met = None
    elif value is None:
        met = False
    else:
        met = value <= target
    return {"value": value, "target": target, "met": met}


def _duration(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)


def step_wait(detail: Mapping[str, Any] | None) -> float:
    """The unavoidable wait a step reported (``wait_s``: a number or named numbers)."""
    if not detail:
        return 0.0
    value = detail.get("wait_s")
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return max(0.0, float(value))
    if isinstance(value, Mapping):
        return sum(max(0.0, float(v)) for v in value.values()
                   if isinstance(v, int | float) and not isinstance(v, bool))
    return 0.0


def flows_passed_at(flows: Iterable[Mapping[str, Any]]) -> float | None:
    """When the last flow passed, or None when any failed (or there are none)."""
    flows = list(flows)
    if not flows or not all(f.get("ok") for f in flows):
        return None
    ends = [f.get("ended_at") for f in flows]
    return None if any(e is None for e in ends) else max(ends)  # type: ignore[type-var]


def rto(incident: Mapping[str, Any]) -> dict[str, Any]:
    """``{"seconds", "start", "end", "start_basis", "end_basis"}`` (see module docstring)."""
    first = incident.get("first_failure_at")
    start = first if first is not None else incident.get("decided_at")
    start_basis = "first_failure" if first is not None else "decision"
    preparation = None
    if incident.get("kind") == "failback":
        # A failback serves from the failed-over region while it fences, reconciles and
        # resyncs: writes are refused only from the freeze on. That is its RTO; the
        # preparation is reported apart.
        frozen = [s["started_at"] for s in incident.get("steps") or []
                  if s.get("stage") == "freeze" and s.get("started_at") is not None]
        if frozen:
            preparation = _duration(start, min(frozen))
            start, start_basis = min(frozen), "writes_frozen"
    flows = incident.get("flows") or []
    if flows:
        end = flows_passed_at(flows)
        end_basis = "flows_passed" if end is not None else None
    else:
        end = incident.get("completed_at")
        end_basis = "completed_no_flows" if end is not None else None
    return {
        "seconds": _duration(start, end),
        "start": start,
        "end": end,
        "start_basis": start_basis if start is not None else None,
        "end_basis": end_basis,
        **({"preparation_s": preparation} if preparation is not None else {}),
    }


def phases(incident: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Detect, decide, each step, validate: ``{"name", "kind", "started_at", "ended_at",
    "duration_s", "wait_s"}`` in that order; phases without a known start are kept with
    None times so a pending step still shows."""
    out: list[dict[str, Any]] = []
    first = incident.get("first_failure_at")
    decided = incident.get("decided_at")
    steps = list(incident.get("steps") or [])
    if first is not None:
        out.append(_phase("detect", "detect", first, decided))
    starts = [s["started_at"] for s in steps if s.get("started_at") is not None]
    if decided is not None:
        out.append(_phase("decide", "decide", decided, min(starts) if starts else None))
    for step in steps:
        out.append(_phase(step.get("id", "?"), "step", step.get("started_at"),
                          step.get("ended_at"), wait=step_wait(step.get("detail")),
                          stage=step.get("stage"), status=step.get("status")))
    flows = list(incident.get("flows") or [])
    has_validate_step = any(s.get("stage") == "validate" for s in steps)
    if flows and not has_validate_step:
        f_starts = [f["started_at"] for f in flows if f.get("started_at") is not None]
        f_ends = [f["ended_at"] for f in flows if f.get("ended_at") is not None]
        out.append(_phase("validate", "validate", min(f_starts) if f_starts else None,
                          max(f_ends) if f_ends else None))
    return out


def _phase(name: str, kind: str, start: float | None, end: float | None, *, wait: float = 0.0,
           stage: str | None = None, status: str | None = None) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "started_at": start,
        "ended_at": end,
        "duration_s": _duration(start, end),
        "wait_s": round(wait, 3),
    }
    if kind == "step":
        phase["stage"] = stage
        phase["status"] = status
    return phase


def summarize(incident: Mapping[str, Any]) -> dict[str, Any]:
    """RTO and RPO against the runbook's targets, phases, waits and drorch's overhead."""
    targets = incident.get("targets") or {}
    rpo_in = incident.get("rpo") or {}
    rto_info = rto(incident)
    phase_list = phases(incident)
    # Steps of one stage run in parallel: a stage waits as long as its longest wait.
    stage_waits: dict[str, float] = {}
    for p in phase_list:
        if p["kind"] == "step":
            stage = p.get("stage") or p["name"]
            stage_waits[stage] = max(stage_waits.get(stage, 0.0), p["wait_s"])
    waits = round(sum(stage_waits.values()), 3)
    detect = next((p["duration_s"] for p in phase_list if p["kind"] == "detect"), None)
    overhead = None
    if rto_info["seconds"] is not None:
        overhead = round(max(0.0, rto_info["seconds"] - (detect or 0.0) - waits), 3)
    return {
        "rto": {**compare(rto_info["seconds"], targets.get("rto_seconds")),
                **{k: v for k, v in rto_info.items() if k != "seconds"}},
        "rpo": {
            "seconds": _rpo_seconds(rpo_in.get("seconds"), targets.get("rpo_seconds")),
            "bytes": rpo_in.get("bytes"),
            "transactions": rpo_in.get("transactions"),
            "rows": rpo_in.get("rows"),
            "after_failover": rpo_in.get("after_failover"),
            "method": rpo_in.get("method"),
            "caveats": list(rpo_in.get("caveats") or []),
            "replica_last_commit_at": rpo_in.get("replica_last_commit_at"),
            "replica_behind_s": replica_behind(rpo_in.get("replica_last_commit_at"),
                                        rto_info["start"]),
        },
        "phases": phase_list,
        "detect_s": detect,
        "waits_s": waits,
        "overhead_s": overhead,
    }


def replica_behind(last_commit: float | None, start: float | None) -> float | None:
    """How much older the replica's newest commit is than the first sign of the outage
    (or the decision): a fact about the replica, not a bound on the loss (a region cut
    off from drorch, not dead, may go on committing)."""
    if last_commit is None or start is None:
        return None
    return round(start - last_commit, 3)


def _rpo_seconds(value: float | None, target: float | None) -> dict[str, Any]:
    """An RPO not measured yet (the old primary was unreachable at promotion) is
    unknown, not missed: failback reads the old primary's WAL and corrects it."""
    block = compare(value, target)
    if value is None and target is not None:
        block["met"] = None
        block["unknown"] = True
    return block
