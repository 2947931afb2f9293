"""``drorch lab drill``: the whole story on the lab, unattended.

Lab up; traffic against the primary region through DNS; the primary region is
killed; ``drorch watch`` notices, waits out the window and fails over by
itself; flows validate; the report is written; the acknowledged checkouts
are looked up in the new primary to count what was really lost; lab down
unless ``keep``. Every wait has a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drorch.adapters import postgres as pg
from drorch.config import Runbook

Say = Callable[[str], None]


@dataclass
class DrillResult:
    incident_id: str | None
    state: str | None
    record: dict[str, Any] | None
    traffic: dict[str, Any]
    lost_checkouts: int | None
    reports: dict[str, str] = field(default_factory=dict)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: {what} did not happen within {timeout_s:.0f}s")
        time.sleep(0.05)


def lost_checkouts(runbook: Runbook, region_from: str, region_to: str,
                   acknowledged: list[tuple[float, str, int]]) -> int:
    """Checkouts acknowledged by the old region that the new primary does not have."""
    ids = [order for _, region, order in acknowledged if region == region_from]
    if not ids:
        return 0
    dsn = runbook.databases[0].endpoints[region_to].dsn()
    with pg.connect(dsn) as c:
        found = c.execute("SELECT count(*) FROM orders WHERE id = ANY(%s)", (ids,)).fetchone()
    return len(ids) - int(found[0] if found else 0)


def run_drill(runbook: Runbook, *, keep: bool, say: Say,
              progress: Callable[..., None] | None = None,
              mode: str = "stop", watch_timeout_s: float = 90) -> DrillResult:
    from drorch import logs
    from drorch.adapters.aws import AwsClients
    from drorch.audit import AuditLog
    from drorch.incident import incident_record
    from drorch.lab import faults, lab
    from drorch.lab.traffic import Traffic
    from drorch.report import build_report, render
    from drorch.store.sqlite import SqliteStore
    from drorch.watch import watch

    if runbook.lab is None or runbook.dns is None or not runbook.dns.nameservers:
        raise ValueError("a drill needs a lab runbook with dns.nameservers and a lab section")
    state = Path(runbook.state_dir)
    source, target = runbook.primary.name, runbook.secondary.name
    say(f"lab up ({runbook.name}): PostgreSQL {source} -> {target}, moto, DNS, apps, SMTP")
    lab.up(runbook)
    traffic: Traffic | None = None
    try:
        store = SqliteStore(state / "journal.db")
        audit = AuditLog(state / "audit.jsonl", redactor=logs.REDACTOR)
        aws = AwsClients(runbook.aws.endpoint_url)
        variables = runbook.validation.variables if runbook.validation else {}
        traffic = Traffic(runbook.dns.records[0].name, runbook.lab.app_port,
                          runbook.dns.nameservers[0], user=variables.get("user", ""),
                          password=variables.get("password", ""))
        traffic.start()
        _wait(lambda: traffic.successes(source) >= 20, 30, f"traffic served by {source}")
        say(f"traffic flowing: {traffic.successes(source)} checkouts acknowledged by {source}")
        say(f"killing {source} (mode {mode})")
        faults.fail(runbook, source, mode, audit=audit, actor="drill")  # type: ignore[arg-type]
        say("watching health: the failover starts when the window says so")
        incident_id = watch(runbook, store, audit, aws, stop=threading.Event(),
                            progress=progress, max_seconds=watch_timeout_s)
        if incident_id is None:
            raise RuntimeError(f"drill: no failover within {watch_timeout_s:.0f}s")
        record = incident_record(store, runbook, incident_id)
        if record["state"] == "failed_over":
            _wait(lambda: traffic.successes(target) >= 20, 30, f"traffic served by {target}")
        stats = traffic.stop()
        traffic = None
        lost = lost_checkouts(runbook, source, target, stats.acknowledged)
        reports = {}
        report = build_report(record)
        for fmt in ("json", "md", "html"):
            path = state / "reports" / f"{incident_id}.{fmt}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(report, fmt))
            reports[fmt] = str(path)
        return DrillResult(incident_id, record["state"], record, stats.to_dict(), lost, reports)
    finally:
        if traffic is not None:
            traffic.stop()
        if not keep:
            say("lab down")
            lab.down(runbook)
