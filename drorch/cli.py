"""The ``drorch`` command line. Commands record intents (who, why) and let the
engine act; output is for people (rich), logs are for machines (structlog)."""

from __future__ import annotations

import getpass
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from drorch import logs
from drorch.audit import verify
from drorch.cli_common import (
    ActorOpt,
    RunbookOpt,
    engine_for,
    err,
    load_or_exit,
    open_context,
    out,
    read_only_engine,
)
from drorch.cli_lab import lab_app
from drorch.config import Runbook
from drorch.console import print_health, print_summary, show_progress
from drorch.incident import incident_record

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="drorch: multi-region disaster-recovery orchestrator.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")
app.add_typer(lab_app, name="lab")
reconcile_app = typer.Typer(no_args_is_help=True, help="Divergent writes after a failover.")
app.add_typer(reconcile_app, name="reconcile")

@app.callback()
def main(
    json_logs: Annotated[bool | None, typer.Option("--json-logs/--pretty-logs",
                                                   help="Log format (default: pretty on a "
                                                   "terminal, JSON otherwise).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        err.print(f"--log-level: unknown level {log_level!r}")
        raise typer.Exit(2)
    logs.configure(json_logs, level)


@app.command()
def plan(runbook: RunbookOpt) -> None:
    """Print what a failover would do now, step by step. Changes nothing."""
    _plan(load_or_exit(runbook))


def _plan(rb: Runbook, kind: str = "failover") -> None:
    engine = read_only_engine(rb)
    aws = engine.aws
    src = engine.active_region()
    dst = next(r.name for r in rb.regions if r.name != src)
    out.print(f"[bold]{kind} plan[/] for runbook {rb.name}: {src} -> {dst}")
    for i, stage in enumerate(engine.plan(src, dst, kind), 1):
        parallel = " (in parallel)" if len(stage.steps) > 1 else ""
        out.print(f"{i}. {stage.name}{parallel}")
        for step in stage.steps:
            irrev = " [bold yellow](irreversible)[/]" if step.irreversible else ""
            out.print(f"   - {step.id}: {step.describe(_dry_ctx(rb, src, dst, aws))}{irrev}",
                      highlight=False)
    _warn_wal_retention(rb, src)
    if kind == "failback" or src != rb.primary.name:
        _warn_split_unpinned(rb, src)


def _warn_split_unpinned(rb: Runbook, region: str) -> None:
    """A failed-over primary should keep its WAL from the split until the failback reads
    it (a slot drorch made at promotion): without it, rows only it changed cannot be
    told apart and go to a human."""
    from drorch.adapters import postgres as pg

    for db in rb.databases:
        slot = pg.split_slot_name(db.name)
        try:
            pinned = pg.wal_pinned(db.endpoints[region].dsn(), slot)
        except Exception as exc:  # noqa: BLE001 (a plan must still print)
            out.print(f"[bold yellow]warning[/] {db.name} in {region}: could not check the "
                      f"split's WAL pin ({str(exc).strip().splitlines()[0]})", highlight=False)
            continue
        if not pinned:
            out.print(f"[bold yellow]warning[/] {db.name} in {region}: its WAL from the split "
                      f"is not pinned (no slot {slot}); a failback may not tell which side "
                      "changed a row, and such rows go to a human", highlight=False)
            continue
        held = pg.slot_retained_bytes(db.endpoints[region].dsn(), slot) or 0
        cap = pg.slot_wal_cap_mb(db.endpoints[region].dsn())
        bound = (f"at most {cap:,} MB (max_slot_wal_keep_size)" if cap >= 0 else
                 "no limit: the disk fills if the failback waits; set the database's "
                 "split_wal_max_mb")
        out.print(f"{db.name} in {region}: the split's WAL pin holds "
                  f"{held / 2**20:,.0f} MB, {bound}", highlight=False)


def _warn_wal_retention(rb: Runbook, region: str) -> None:
    """Exact reconciliation after an unplanned failover needs the old primary's WAL
    back to the split: say now, not at failback, when a database would not keep it."""
    from drorch.reconcile.retention import wal_retention_warning

    for db in rb.databases:
        try:
            warning = wal_retention_warning(db.endpoints[region].dsn())
        except Exception as exc:  # noqa: BLE001 (a plan must still print)
            warning = f"could not check ({str(exc).strip().splitlines()[0]})"
        if warning:
            out.print(f"[bold yellow]warning[/] {db.name} in {region}: divergent writes could "
                      f"not be found exactly after an unplanned failover: {warning}",
                      highlight=False)


def _dry_ctx(rb: Runbook, src: str, dst: str, aws: Any) -> Any:
    from drorch.steps.base import StepContext

    class _NoFacts:
        def get(self, key: str, default: Any = None) -> Any:
            return default

        def set(self, key: str, value: Any) -> None:
            raise RuntimeError("dry run: nothing is recorded")

    return StepContext(rb, "dry-run", "dry-run", src, dst, aws, _NoFacts())


ReasonOpt = Annotated[str | None, typer.Option(help="Why (goes to the journal and audit).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]


@app.command()
def failover(runbook: RunbookOpt, reason: ReasonOpt = None, actor: ActorOpt = None,
             dry_run: DryRunOpt = False) -> None:
    """Fail over now, by hand: skips the health window, records who and why."""
    _manual("failover", runbook, reason, actor, dry_run)


@app.command()
def failback(runbook: RunbookOpt, reason: ReasonOpt = None, actor: ActorOpt = None,
             dry_run: DryRunOpt = False) -> None:
    """Return to the original primary region: fence it, reconcile its divergent writes,
    rebuild it as a replica, then switch back with zero loss."""
    _manual("failback", runbook, reason, actor, dry_run)


def _manual(kind: str, runbook: Path, reason: str | None, actor: str | None,
            dry_run: bool) -> None:
    rb = load_or_exit(runbook)
    if dry_run:
        _plan(rb, kind)
        out.print("[yellow]dry run: nothing was changed[/]")
        return
    if not reason:
        err.print(f"a manual {kind} needs --reason (it goes to the audit log)")
        raise typer.Exit(2)
    _start(rb, kind, actor, reason)


def _start(rb: Runbook, kind: str, actor: str | None, reason: str) -> None:
    engine, store = engine_for(rb, show_progress)
    engine.warm_up()
    start = engine.start_failover if kind == "failover" else engine.start_failback
    try:
        incident_id = start(actor=actor or getpass.getuser(), reason=reason,
                            trigger={"kind": "manual", "detail": reason})
    except Exception as exc:  # noqa: BLE001
        err.print(f"[bold red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    out.print(f"[bold]incident {incident_id}[/]: {kind} {rb.name}")
    _drive(engine, store, rb, incident_id)


@app.command()
def drill(
    runbook: RunbookOpt,
    actor: ActorOpt = None,
    reason: Annotated[str, typer.Option(help="Why (goes to the audit log).")] = "DR drill",
) -> None:
    """A planned failover and failback cycle, each with zero loss, then the reports."""
    rb = load_or_exit(runbook)
    _start(rb, "failover", actor, f"{reason}: planned failover")
    _start(rb, "failback", actor, f"{reason}: failback")
    from drorch.report import build_report, render

    store, _audit, _aws = open_context(rb)
    for inc in store.incidents(rb.name)[-2:]:
        path = Path(rb.state_dir) / "reports" / f"{inc.id}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(build_report(incident_record(store, rb, inc.id)), "md"))
        out.print(f"report: {path}")


def _drive(engine: Any, store: Any, rb: Runbook, incident_id: str) -> None:
    from drorch.engine import IncidentHalted, IncidentRolledBack

    code = 0
    try:
        engine.run(incident_id)
    except (IncidentHalted, IncidentRolledBack) as exc:
        err.print(f"[bold red]{type(exc).__name__.removeprefix('Incident').lower()}:[/] {exc}")
        code = 1
    print_summary(incident_record(store, rb, incident_id))
    if code:
        raise typer.Exit(code)


@app.command()
def resume(
    runbook: RunbookOpt,
    incident: Annotated[str | None, typer.Option(help="Incident id (default: the open one).")]
    = None,
) -> None:
    """Continue an interrupted or halted incident from its journal."""
    rb = load_or_exit(runbook)
    engine, store = engine_for(rb, show_progress)
    inc = store.incident(incident) if incident else engine.open_incident()
    if inc is None:
        err.print("no incident to resume")
        raise typer.Exit(1)
    out.print(f"[bold]resuming {inc.id}[/] (state {inc.state})")
    _drive(engine, store, rb, inc.id)


@app.command()
def status(runbook: RunbookOpt) -> None:
    """Show the state of the latest incident and its last steps (reads only: on a fresh
    directory it creates no state directory or journal)."""
    rb = load_or_exit(runbook)
    engine = read_only_engine(rb)
    store = engine.store
    incidents = store.incidents(rb.name)
    active = engine.active_region()
    out.print(f"runbook {rb.name}: writes served by [bold]{active}[/]")
    print_health(rb, store, active)
    _print_watch(rb, store)
    if not incidents:
        out.print("no incidents recorded")
        return
    print_summary(incident_record(store, rb, incidents[-1].id))


def _print_watch(rb: Runbook, store: Any) -> None:
    """The recovery hold (from the journal, now) and the watcher's last refusal."""
    import time

    from drorch.watch import watch_status

    hold, record = watch_status(rb, store, time.time())
    if hold is not None:
        out.print(f"[bold yellow]automatic failover held[/]: {hold.reason}", highlight=False)
    d = record.decision
    if d is not None and d.action == "refuse":
        when = time.strftime("%H:%M:%S", time.localtime(record.updated_at or 0))
        out.print(f"watcher ({record.state}, {when}) [bold]refuses[/] ({d.guard}): {d.reason}",
                  highlight=False)


@app.command()
def ack(
    incident: Annotated[str, typer.Argument(help="The failover incident to acknowledge.")],
    runbook: RunbookOpt,
    reason: ReasonOpt = None,
    actor: ActorOpt = None,
) -> None:
    """Acknowledge a completed failover: a human has looked at it, so `drorch watch` may
    fail over by itself again once the runbook's recovery period is over."""
    import time

    rb = load_or_exit(runbook)
    store, audit, _aws = open_context(rb)
    inc = store.incident(incident)
    if inc is None or inc.runbook != rb.name:
        err.print(f"no incident {incident} in runbook {rb.name}")
        raise typer.Exit(1)
    if inc.kind != "failover" or not store.fact(inc.id, "completed"):
        err.print(f"{incident} is a {inc.kind} in state {inc.state}: only a completed "
                  "failover holds automatic failover, so there is nothing to acknowledge")
        raise typer.Exit(1)
    if not reason:
        err.print("ack needs --reason (it goes to the audit log)")
        raise typer.Exit(2)
    if (done := store.fact(inc.id, "ack")) is not None:  # idempotent: the first ack stands
        out.print(f"{incident} was already acknowledged by {done['by']} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(done['at']))}",
                  highlight=False)
        return
    who = actor or getpass.getuser()
    store.set_fact(inc.id, "ack", {"by": who, "at": time.time(), "reason": reason})
    audit.record("incident.acknowledged", actor=who, incident=inc.id, reason=reason,
                 inputs={"kind": inc.kind, "state": inc.state})
    out.print(f"{incident} acknowledged by {who}", highlight=False)


@app.command()
def watch(
    runbook: RunbookOpt,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this long (drills).")]
    = None,
) -> None:
    """Watch region health as a service: fail over by itself when the runbook's window
    says so, keep watching the new primary after it, fence the old one when it answers
    again. Stops on SIGTERM/SIGINT or after --max-seconds."""
    import signal
    import threading

    from drorch.watch import serve

    rb = load_or_exit(runbook)
    store, audit, aws = open_context(rb)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        driven = serve(rb, store, audit, aws, stop=stop, progress=show_progress,
                       max_seconds=max_seconds)
    except ValueError as exc:
        err.print(f"[bold red]cannot watch:[/] {exc}")
        raise typer.Exit(2) from None
    for incident_id in driven:
        print_summary(incident_record(store, rb, incident_id))
    why = received[0] if received else "--max-seconds reached"
    out.print(f"watch stopped ({why}): {len(driven)} failover(s) driven; nothing held "
              "(no lease, no alarm in hand)", highlight=False)


@app.command()
def report(
    runbook: RunbookOpt,
    incident: Annotated[str | None, typer.Argument(help="Incident id (default: the latest).")]
    = None,
    fmt: Annotated[str, typer.Option("--format", help="json, md or html.")] = "md",
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """The incident report: timeline, decisions, steps, flows, RPO/RTO against targets."""
    from drorch.report import build_report, render

    rb = load_or_exit(runbook)
    store, _audit, _aws = open_context(rb)
    incidents = store.incidents(rb.name)
    if not incidents:
        err.print("no incidents recorded")
        raise typer.Exit(1)
    incident_id = incident or incidents[-1].id
    if store.incident(incident_id) is None:
        err.print(f"no incident {incident_id}")
        raise typer.Exit(1)
    if fmt not in ("json", "md", "html"):
        err.print("--format must be json, md or html")
        raise typer.Exit(2)
    text = render(build_report(incident_record(store, rb, incident_id)), fmt)
    if output:
        output.write_text(text)
        out.print(f"report written to {output}")
    else:
        sys.stdout.write(text)


@reconcile_app.command("apply")
def reconcile_apply(
    conflict_file: Path,
    runbook: RunbookOpt,
    database: Annotated[str | None, typer.Option(help="Database pair (default: the first).")]
    = None,
    actor: ActorOpt = None,
) -> None:
    """Apply the resolutions a human wrote into a conflict file (idempotent)."""
    from drorch.reconcile.resolve import apply_conflict_file

    rb = load_or_exit(runbook)
    engine, _store = engine_for(rb)
    db = rb.database(database) if database else rb.databases[0]
    dsn = db.endpoints[engine.active_region()].dsn()
    from drorch.reconcile.apply import ApplyBlocked, NotCaptured, SchemaChanged

    who = actor or getpass.getuser()
    inputs = {"file": str(conflict_file), "database": db.name}
    try:
        result = apply_conflict_file(conflict_file, dsn)
    except (ApplyBlocked, NotCaptured, SchemaChanged, ValueError, OSError) as exc:
        engine.audit.record("reconcile.conflicts_not_applied", actor=who, inputs=inputs,
                            detail={"error": str(exc)})
        err.print(f"nothing applied: {exc}", highlight=False)
        raise typer.Exit(1) from None
    engine.audit.record("reconcile.conflicts_applied", actor=who, inputs=inputs,
                        detail=result.to_dict())
    out.print(f"applied {result.applied + result.rekeyed} resolution(s) "
              f"({result.rekeyed} under a new key), kept the new primary's row for "
              f"{result.kept_new}, {result.already_applied} already decided, "
              f"{result.manual_pending} still unresolved")
    if result.errors or result.stale:
        err.print(f"{result.errors} refused by the new primary and {result.stale} changed "
                  f"there since you saw them: {conflict_file} now says why; resolve them "
                  "and apply it again", highlight=False)
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify(path: Path) -> None:
    """Exit 0 when the audit log is intact; 1, naming the first bad line, when not."""
    result = verify(path)
    (out if result.ok else err).print(result.message(), highlight=False)
    raise typer.Exit(0 if result.ok else 1)


if __name__ == "__main__":
    sys.exit(app())
