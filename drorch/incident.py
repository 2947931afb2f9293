"""The incident record: everything the journal knows about one incident, as one
JSON-able dict (the input of the report, of ``status`` and of the RPO/RTO summary).
Derived from the journal every time; never stored separately.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drorch.config import Runbook
from drorch.plan import plan_for
from drorch.store.sqlite import SqliteStore


def incident_record(store: SqliteStore, runbook: Runbook, incident_id: str) -> dict[str, Any]:
    inc = store.incident(incident_id)
    if inc is None:
        raise KeyError(f"no incident {incident_id}")
    facts = store.facts(incident_id)
    events = store.events(incident_id)
    from_region, to_region = facts.get("from_region"), facts.get("to_region")
    steps: dict[str, dict[str, Any]] = {}
    for stage in plan_for(inc.kind, runbook, from_region, to_region,
                          facts.get("failover_aurora_paths")):
        for step in stage.steps:
            steps[step.id] = {"id": step.id, "stage": stage.name, "status": "pending",
                              "started_at": None, "ended_at": None, "detail": {}}
    transitions = []
    for ev in events:
        if ev.kind == "transition":
            transitions.append({"at": ev.at, "trigger": ev.name, "state": ev.status,
                                "detail": ev.detail})
            continue
        step = steps.setdefault(ev.name, {"id": ev.name, "stage": ev.name.split(":")[0],
                                          "status": "pending", "started_at": None,
                                          "ended_at": None, "detail": {}})
        if ev.status == "started":
            step["started_at"] = ev.at
        else:
            step["ended_at"] = ev.at
            if step["started_at"] is None:
                step["started_at"] = ev.at
            step["detail"] = ev.detail
        step["status"] = ev.status
    for step in steps.values():
        if step["started_at"] is not None and step["ended_at"] is not None:
            step["duration_s"] = round(step["ended_at"] - step["started_at"], 4)
        else:
            step["duration_s"] = None
    completed_at = facts.get("completed")
    first_failure = inc.trigger.get("first_failure_at")
    return {
        "incident_id": inc.id,
        "kind": inc.kind,
        "runbook": inc.runbook,
        "actor": inc.actor,
        "reason": inc.reason,
        "trigger": inc.trigger,
        "state": inc.state,
        "from_region": from_region,
        "to_region": to_region,
        "first_failure_at": first_failure,
        "decided_at": inc.created_at,
        "completed_at": completed_at,
        "steps": list(steps.values()),
        "transitions": transitions,
        "flows": facts.get("flows", []),
        "rpo": _rpo(store, inc.id, inc.kind, list(steps.values()), facts),
        "reconcile": reconcile_section(facts, list(steps.values())),
        "targets": runbook.targets.model_dump(),
        "audit": facts.get("audit"),
        **({"old_region": _old_region(runbook, steps, facts, from_region)}
           if inc.kind == "failover" else {}),
    }


def _old_region(runbook: Runbook, steps: dict[str, dict[str, Any]], facts: dict[str, Any],
                region: str | None) -> dict[str, Any]:
    """What a failover knew about the region it left: whether each database answered
    its freeze, whether (and when) the watcher fenced it when it came back, and
    whether its write flag was raised on return. Nothing here is assumed: a key is
    None until something was observed."""
    dbs = {}
    for db in runbook.databases:
        freeze = steps.get(f"freeze:{db.name}", {})
        dbs[db.name] = {
            "reachable_at_freeze": (freeze.get("detail") or {}).get("reachable")
            if freeze.get("status") == "done" else None,
            "fenced_on_return": facts.get(f"fenced_on_return:{db.name}")}
    return {"region": region, "databases": dbs,
            "write_flag_on_return": facts.get(f"write_flag_on_return:{region}")}


def rpo_from_steps(steps: list[dict[str, Any]],
                   facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Worst RPO over the promoted databases (bytes and seconds at promotion). A
    promotion a resumed run found done has no measurement in its step: the one journaled
    before the request (``promote:<db>:measured``) stands for it."""
    byte_values, second_values, replica_commits, exact = [], [], [], True
    caveats: set[str] = set()
    for step in steps:
        if step["stage"] != "promote" or step["status"] != "done":
            continue
        d = step["detail"]
        if d.get("observed"):
            d = (facts or {}).get(f"promote:{step['id'].split(':', 1)[1]}:measured") or {}
            if not d:
                continue
        exact &= bool(d.get("rpo_exact"))
        if d.get("rpo_caveat"):
            caveats.add(str(d["rpo_caveat"]))
        if d.get("rpo_bytes") is not None:
            byte_values.append(d["rpo_bytes"])
        if d.get("rpo_seconds") is not None:
            second_values.append(d["rpo_seconds"])
        if d.get("replica_last_commit_at") is not None:
            replica_commits.append(d["replica_last_commit_at"])
    return {
        "bytes": max(byte_values) if byte_values else None,
        "seconds": max(second_values) if second_values else None,
        "transactions": None,
        "rows": None,
        "method": "lsn-at-promotion" if exact else "estimate (old primary unreachable)",
        # What the replicas certainly had: the furthest behind one's newest commit.
        "replica_last_commit_at": min(replica_commits) if replica_commits else None,
        "caveats": sorted(caveats),
    }


def _reconcile_facts(facts: dict[str, Any]) -> dict[str, Any]:
    return {k.split(":")[1]: v for k, v in facts.items()
            if k.startswith("reconcile:") and k.endswith(":applied")}


def _rds_evidence(facts: dict[str, Any], steps: list[dict[str, Any]], db: str) -> str | None:
    """A managed database's evidence: RDS: the old primary's snapshot and the instance
    kept under a new identifier; Aurora: the copy of its snapshot of the old writer's
    volume (None before any exists)."""
    restored = facts.get(f"restore:{db}:cluster") or {}
    if restored.get("snapshot"):
        return (f"Aurora snapshot copy {restored['snapshot']} of the old writer's volume "
                "(kept until a human deletes it; restored to the temporary cluster "
                f"{restored.get('cluster')} for the reconcile, then deleted)")
    snap = facts.get(f"evidence:{db}:snapshot") or {}
    kept = next((s["detail"].get("kept") for s in steps if s["id"] == f"resync:{db}"
                 and s["status"] == "done" and s.get("detail")), None)
    parts = ([f"RDS snapshot {snap['id']} in {snap.get('region')}"] if snap.get("id") else [])
    parts += [f"the old primary kept as DB instance {kept}"] if kept else []
    return "; ".join(parts) + " (kept until a human deletes them)" if parts else None


def reconcile_section(facts: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per reconciled database, for the failback report: how divergent writes were found
    and why, rows per table by kind and outcome, the conflict file, the evidence archive,
    the re-keyed collisions (count, the CSV mapping old -> new keys and its first rows),
    and ``acknowledged_rows_lost``: changes found with no recorded outcome (applied,
    re-keyed, kept, or waiting in the conflict file), counted from the journaled
    outcomes."""
    out: dict[str, Any] = {}
    for key, report in facts.items():
        if not (key.startswith("reconcile:") and key.endswith(":report")):
            continue
        db = key.split(":")[1]
        accounting = facts.get(f"reconcile:{db}:accounting") or {}
        resync = next((s["detail"] for s in steps if s["id"] == f"resync:{db}"
                       and s["status"] == "done"), {})
        totals = accounting.get("totals") or {}
        out[db] = {
            "method": report.get("method"), "method_reason": report.get("method_reason"),
            "divergence": report.get("divergence"),
            "old_transactions": (report.get("transactions") or {}).get("old_committed"),
            "unlisted_tables": report.get("unlisted_tables", []),
            "notes": report.get("notes", []),
            "default_policy": report.get("default_policy"),
            "tables": accounting.get("tables", []), "totals": totals,
            "blocked": accounting.get("blocked", []),
            "invariant_holds": accounting.get("holds"),
            "conflict_file": accounting.get("conflict_file"),
            "rekeyed": totals.get("rekeyed", 0),
            "applied_as_set": (facts.get(f"reconcile:{db}:applied") or {}).get(
                "applied_as_set", 0),
            "key_mapping_file": (facts.get(f"reconcile:{db}:applied") or {}).get(
                "mapping_file"),
            "rekeyed_sample": (facts.get(f"reconcile:{db}:applied") or {}).get(
                "rekeyed_sample", []),
            "evidence": resync.get("evidence") or _rds_evidence(facts, steps, db),
            # Unknown (None) while the invariant does not hold: blocked tables were not
            # compared, so no count of them can be given.
            "acknowledged_rows_lost": (totals.get("unaccounted")
                                       if accounting.get("holds") is True else None),
            "old_versions_not_kept": totals.get("old_versions_not_kept", 0),
        }
    return out


def _rpo(store: SqliteStore, incident_id: str, kind: str, steps: list[dict[str, Any]],
         facts: dict[str, Any]) -> dict[str, Any]:
    """RPO at promotion; for a failover, corrected to the exact counts once a failback
    reconciled the old primary's WAL (transactions and rows diverged, rows recovered)."""
    rpo = rpo_from_steps(steps, facts)
    if kind != "failover":
        return rpo
    for inc in store.incidents():
        if inc.kind != "failback" or store.fact(inc.id, "failover_incident") != incident_id:
            continue
        back = store.facts(inc.id)
        reports = [v for k, v in back.items() if k.startswith("reconcile:")
                   and k.endswith(":report")]
        applied = _reconcile_facts(back)
        if not reports:
            continue
        totals = [r.get("totals", {}) for r in reports]
        rpo.update({
            "transactions": sum((r.get("transactions") or {}).get("old_committed") or 0
                                for r in reports),
            "rows": sum(t.get("old_only", 0) + t.get("conflicts", 0) + t.get("collisions", 0)
                        for t in totals),
            "rows_recovered": sum(a.get("rows_recovered", 0) for a in applied.values()),
            "method": "exact: old primary's WAL read at failback (" +
                      ", ".join(r.get("summary", "") for r in reports) + ")",
        })
        timed = [r for r in reports if (r.get("in_time") or {}).get("before")]
        if timed and len(timed) == len(reports):
            _attribute_in_time(rpo, timed)
    return rpo


def _attribute_in_time(rpo: dict[str, Any], reports: list[dict[str, Any]]) -> None:
    """Only what the old primary committed before the failover's promotion was lost at the
    failover; what it took after (it came back unfenced) is reported apart. The RPO in
    seconds becomes its last lost commit's distance from the split (both the old
    primary's clock)."""
    before = [r["in_time"]["before"] for r in reports]
    after = [r["in_time"]["after"] for r in reports]
    rpo["transactions"] = sum(b["transactions"] for b in before)
    rpo["rows"] = sum(b["rows"] for b in before)
    seconds = []
    for r, b in zip(reports, before, strict=True):
        split_at = (r.get("divergence") or {}).get("at")
        if b["last"] and split_at:
            seconds.append(max(0.0, (datetime.fromisoformat(b["last"])
                                     - datetime.fromisoformat(split_at)).total_seconds()))
        elif not b["transactions"]:
            seconds.append(0.0)
    if len(seconds) == len(reports):
        rpo["seconds"] = round(max(seconds), 3)
    written_after = [a for a in after if a["transactions"]]
    rpo["after_failover"] = {
        "transactions": sum(a["transactions"] for a in after),
        "rows": sum(a["rows"] for a in after),
        "first": min((a["first"] for a in written_after), default=None),
        "last": max((a["last"] for a in written_after), default=None),
        "note": "written to the old primary after the failover's promotion (it came back "
                "unfenced): not part of the failover's RPO",
    }
