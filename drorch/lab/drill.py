"""``drorch lab drill``: the whole story on the lab, unattended.

Lab up; traffic against the primary region through DNS; the primary region is
killed (with ``trigger="alarm"`` its CloudWatch alarm fires too and reaches the
watcher through SNS and SQS: the watcher probes at once and its probes confirm); ``drorch
watch`` notices, waits out the window and fails over by itself; flows validate; the
report is written (its ``detection`` names the alarm and the probes); the acknowledged
checkouts are looked up in the new primary to count what was really lost, and kept as
evidence next to the report (``reports/<incident>-checkouts.json``: every
acknowledged checkout and the lost ones), so the count can be checked against
the databases; lab down unless ``keep``. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drorch.adapters import postgres as pg
from drorch.config import Runbook

if TYPE_CHECKING:
    from drorch.lab.traffic import Checkout

Say = Callable[[str], None]

TRIGGERS = ("probes", "alarm")
"""How the drill's outage reaches the watcher: its probes alone, or the region's alarm
first (``drorch.lab.alarms``), then the probes."""


@dataclass
class DrillResult:
    incident_id: str | None
    state: str | None
    record: dict[str, Any] | None
    traffic: dict[str, Any]
    lost_checkouts: int | None
    reports: dict[str, str] = field(default_factory=dict)
    checkouts_evidence: str | None = None
    """``reports/<incident>-checkouts.json``: every acknowledged checkout, the lost ones."""
    failback: dict[str, Any] | None = None
    """With ``failback``: the failback's incident record, reports and
    ``lost_checkouts`` (acknowledged by the old region, missing from it afterwards)."""


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: {what} did not happen within {timeout_s:.0f}s")
        time.sleep(0.05)


def missing_checkouts(runbook: Runbook, region_from: str, region_to: str,
                      acknowledged: Sequence[Checkout], user: str) -> list[Checkout]:
    """Checkouts acknowledged by the old region that the new primary does not have.

    An order is found only when a row has its id *and* the region that wrote it, the
    amount and the user: an id alone is no identity across a failover (sequences are
    WAL-logged 32 values ahead, so the new primary can hand a lost order's id to a new
    order of its own)."""
    mine = [c for c in acknowledged if c.region == region_from]
    if not mine:
        return []
    dsn = runbook.databases[0].endpoints[region_to].dsn()
    with pg.connect(dsn) as c:
        rows = c.execute(
            "SELECT o.id, o.region, o.amount_cents FROM orders o JOIN users u ON u.id = o.user_id"
            " WHERE u.email = %s AND o.id = ANY(%s)",
            (user, [x.order_id for x in mine])).fetchall()
    found = {(int(i), str(r), int(a)) for i, r, a in rows}
    return [x for x in mine if (x.order_id, x.region, x.amount_cents) not in found]


def lost_checkouts(runbook: Runbook, region_from: str, region_to: str,
                   acknowledged: Sequence[Checkout], user: str) -> int:
    """How many checkouts acknowledged by the old region the new primary does not have."""
    return len(missing_checkouts(runbook, region_from, region_to, acknowledged, user))


def write_checkouts_evidence(path: Path, *, incident_id: str, database: str, user: str,
                             region_from: str, region_to: str,
                             acknowledged: Sequence[Checkout],
                             lost: Sequence[Checkout] | None) -> None:
    """What the lost-checkout count was computed from, to check it again later."""
    doc = {
        "incident_id": incident_id, "database": database, "user": user,
        "region_from": region_from, "region_to": region_to,
        "matched_on": ["order_id", "region", "amount_cents", "user"],
        "acknowledged": [c.to_dict() for c in acknowledged],
        "lost_count": None if lost is None else len(lost),
        "lost": None if lost is None else [c.to_dict() for c in lost],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def _detected(trigger: dict[str, Any]) -> str:
    """One sentence: which alarms fired and which probes confirmed the failover (the
    report's ``detection``)."""
    from drorch.report_detection import detection

    return f"detection: {detection(trigger)['sentence']}"


def _fail_back(runbook: Runbook, store: Any, audit: Any, aws: Any, say: Say,
               progress: Callable[..., None] | None, acknowledged: Sequence[Checkout],
               user: str) -> dict[str, Any]:
    """The drill's second half: the dead region comes back as it was left (a primary,
    unfenced, holding whatever it wrote that never replicated), ``drorch failback``
    returns to it, and every checkout it acknowledged before it died is looked for there
    again."""
    from drorch.adapters.nodes import node_control_for
    from drorch.engine import Engine, IncidentHalted, IncidentRolledBack
    from drorch.incident import incident_record
    from drorch.lab import faults
    from drorch.report import write_reports

    source, target = runbook.primary.name, runbook.secondary.name
    say(faults.heal(runbook, source, audit=audit, actor="drill"))
    engine = Engine(runbook, store, audit, aws, progress=progress,
                    nodes=node_control_for(runbook))
    engine.warm_up()
    reason = f"lab drill: {source} is back"
    incident_id = engine.start_failback(actor="drill", reason=reason,
                                        trigger={"kind": "manual", "detail": reason})
    say(f"failback {incident_id}: {target} -> {source}")
    try:
        engine.run(incident_id, actor="drill", reason=reason)
    except (IncidentRolledBack, IncidentHalted) as exc:
        say(f"failback did not complete: {exc}")
    record = incident_record(store, runbook, incident_id)
    lost = None
    if record["state"] == "monitoring":
        lost = len(missing_checkouts(runbook, source, source, acknowledged, user))
    return {"incident_id": incident_id, "state": record["state"], "record": record,
            "reports": write_reports(record, Path(runbook.state_dir) / "reports"),
            "lost_checkouts": lost}


def run_drill(runbook: Runbook, *, keep: bool, say: Say,
              progress: Callable[..., None] | None = None,
              mode: str = "stop", watch_timeout_s: float = 90,
              trigger: str = "probes", failback: bool = False) -> DrillResult:
    from drorch import logs
    from drorch.adapters.aws import AwsClients
    from drorch.audit import AuditLog
    from drorch.incident import incident_record
    from drorch.lab import faults, lab
    from drorch.lab.alarms import alarms_of
    from drorch.lab.traffic import Traffic
    from drorch.report import write_reports
    from drorch.store.sqlite import SqliteStore
    from drorch.watch import watch

    if runbook.lab is None or runbook.dns is None or not runbook.dns.nameservers:
        raise ValueError("a drill needs a lab runbook with dns.nameservers and a lab section")
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown drill trigger {trigger!r}: use one of {', '.join(TRIGGERS)}")
    if trigger == "alarm" and not alarms_of(runbook, runbook.primary.name):
        raise ValueError(f"a drill with trigger alarm needs an alarm for "
                         f"{runbook.primary.name} (health.alarm_queue_url, alarm_regions)")
    state = Path(runbook.state_dir)
    source, target = runbook.primary.name, runbook.secondary.name
    say(f"lab up ({runbook.name}): PostgreSQL {source} -> {target}, moto, DNS, apps, SMTP")
    lab.up(runbook)
    traffic: Traffic | None = None
    try:
        store = SqliteStore(state / "journal.db")
        audit = AuditLog(state / "audit.jsonl", redactor=logs.REDACTOR)
        aws = AwsClients.for_runbook(runbook)
        variables = runbook.validation.variables if runbook.validation else {}
        user = variables.get("user", "")
        traffic = Traffic(runbook.dns.records[0].name, runbook.lab.app_port,
                          runbook.dns.nameservers[0], user=user,
                          password=variables.get("password", ""))
        traffic.start()
        _wait(lambda: traffic.successes(source) >= 20, 30, f"traffic served by {source}")
        say(f"traffic flowing: {traffic.successes(source)} checkouts acknowledged by {source}")
        say(f"killing {source} (mode {mode})"
            + (": its alarm fires and is published to SNS" if trigger == "alarm" else ""))
        say(faults.fail(runbook, source, mode, audit=audit, actor="drill",  # type: ignore[arg-type]
                        alarm=trigger == "alarm"))
        say("watching health: the failover starts when the window says so")
        incident_id = watch(runbook, store, audit, aws, stop=threading.Event(),
                            progress=progress, max_seconds=watch_timeout_s)
        if incident_id is None:
            raise RuntimeError(f"drill: no failover within {watch_timeout_s:.0f}s")
        record = incident_record(store, runbook, incident_id)
        say(_detected(record.get("trigger") or {}))
        if record["state"] == "failed_over":
            _wait(lambda: traffic.successes(target) >= 20, 30, f"traffic served by {target}")
        stats = traffic.stop()
        traffic = None
        acknowledged = list(stats.acknowledged)
        evidence = state / "reports" / f"{incident_id}-checkouts.json"

        def keep_evidence(lost: list[Checkout] | None) -> None:
            write_checkouts_evidence(evidence, incident_id=incident_id,
                                     database=runbook.databases[0].name, user=user,
                                     region_from=source, region_to=target,
                                     acknowledged=acknowledged, lost=lost)

        try:
            missing = missing_checkouts(runbook, source, target, acknowledged, user)
        except Exception:
            keep_evidence(None)  # what was acknowledged is kept even when this fails
            raise
        keep_evidence(missing)
        reports = write_reports(record, state / "reports")
        back = None
        if failback and record["state"] == "failed_over":
            back = _fail_back(runbook, store, audit, aws, say, progress, acknowledged, user)
        return DrillResult(incident_id, record["state"], record, stats.to_dict(), len(missing),
                           reports, str(evidence), back)
    finally:
        if traffic is not None:
            traffic.stop()
        if not keep:
            say("lab down")
            lab.down(runbook)
