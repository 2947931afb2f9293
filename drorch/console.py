"""How drorch shows progress, incident summaries and health on a terminal."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from drorch.cli_common import out
from drorch.config import Runbook
from drorch.metrics import replica_behind
from drorch.metrics import rto as rto_of


def show_progress(step: str, status: str, sentence: str, detail: dict[str, Any]) -> None:
    style = {"started": "cyan", "done": "green", "failed": "bold red",
             "rolled_back": "yellow", "deferred": "magenta", "healthy": "green",
             "degraded": "yellow", "waiting": "dim"}.get(status, "white")
    wait = f" (waited {detail['wait_s']:.2f}s)" if "wait_s" in detail else ""
    out.print(f"  [{style}]{status:>11}[/] {escape(step):<28} {escape(sentence)}{wait}",
              highlight=False)


def print_summary(record: dict[str, Any], runbook: Runbook | None = None) -> None:
    """The incident's steps, RTO and RPO. ``runbook``: says, for an RPO not measurable at
    promotion, whether a failback can correct it (kind postgres) or not yet."""
    table = Table(title=f"incident {record['incident_id']}: {record['state']}")
    for col in ("step", "status", "seconds", "of which waiting"):
        table.add_column(col)
    for s in record["steps"]:
        d = s["detail"] or {}
        dur = "" if s["duration_s"] is None else f"{s['duration_s']:.3f}"
        wait = f"{d['wait_s']:.3f}" if "wait_s" in d else ""
        table.add_row(s["id"], s["status"], dur, wait)
    out.print(table)
    rto_info = rto_of(record)
    rto = rto_info["seconds"]
    rpo = record["rpo"]
    targets = record["targets"]
    out.print(f"RTO: {'n/a' if rto is None else f'{rto:.2f} s'}"
              f"{_vs(rto, targets.get('rto_seconds'), 's')}")
    promoted = any(s["id"].startswith("promote:") and s["status"] == "done"
                   for s in record.get("steps") or [])
    if rpo["seconds"] is None and rpo["bytes"] is None and not rpo.get("rows") \
            and not promoted:
        out.print("RPO: not measured (no promotion has finished)")
        return
    if rpo["seconds"] is None and rpo["bytes"] is None and not rpo.get("rows"):
        behind = replica_behind(rpo.get("replica_last_commit_at"), rto_info["start"])
        start = "first failing probe" if rto_info["start_basis"] == "first_failure" \
            else "decision"
        since = "" if behind is None else \
            f"; the replica's newest commit is {behind:.2f} s older than the {start}"
        then = ("`drorch failback` reads the old primary (its WAL, a full comparison "
                "where the WAL cannot be read, or Aurora's snapshot of its volume) and "
                "accounts for every row it wrote")
        out.print(f"RPO: not measurable at promotion ({record.get('from_region')} was "
                  f"unreachable){since}; {then}")
        return
    rows = f", {rpo['rows']} rows in {rpo['transactions']} transactions" \
        if rpo.get("rows") is not None else ""
    for caveat in rpo.get("caveats") or []:
        rows += f" (but: {caveat})"
    out.print(f"RPO: {_fmt(rpo['seconds'], 's')}, {_fmt(rpo['bytes'], 'bytes')}{rows} "
              f"({rpo['method']}){_vs(rpo['seconds'], targets.get('rpo_seconds'), 's')}")


def print_health(rb: Runbook, store: Any, active: str) -> None:
    """What the watcher saw last: each region's verdict, window progress and probes.
    ``active`` is the region serving writes now (the journal knows, the watcher may not)."""
    if rb.health is None:
        return
    from drorch.watch import health_summary

    for row in health_summary(rb, store):
        role = "primary" if row["region"] == active else "secondary"
        probes = ", ".join(f"{p['probe']} {'ok' if p['ok'] else 'FAIL'}"
                           for p in row.get("probes", []))
        out.print(f"  {row['region']} ({role}): {row['status']} - "
                  f"{row.get('progress') or 'no observation yet'}"
                  + (escape(f" [{probes}]") if probes else ""), highlight=False)


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return f"unknown {unit}"
    return f"{value:.3f} {unit}" if isinstance(value, float) else f"{value} {unit}"


def _vs(value: float | None, target: float | None, unit: str) -> str:
    if value is None or target is None:
        return ""
    ok = value <= target
    return f" [{'green' if ok else 'bold red'}](target {target:g} {unit}: " \
           f"{'met' if ok else 'MISSED'})[/]"
