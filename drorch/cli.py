"""The ``drorch`` command line. Commands record intents (who, why) and let the
engine act; output is for people (rich), logs are for machines (structlog)."""

from __future__ import annotations

import getpass
import logging
import re
import sys
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from drorch import logs
from drorch.audit import verify
from drorch.cli_audit import AwsRegionOpt, audit_ship, verify_s3
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
from drorch.cli_incident import (
    NoNodeControl,
    confirm_or_exit,
    drive,
    exit_refused,
    open_incident,
)
from drorch.cli_lab import lab_app
from drorch.cli_runbook import runbook_app
from drorch.config import Runbook
from drorch.console import print_summary, show_progress
from drorch.exitcodes import ExitCode
from drorch.exitcodes import table as exit_table
from drorch.incident import incident_record

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="drorch: multi-region disaster-recovery orchestrator.",
                  epilog="Exit codes:\n\n" + exit_table().replace("\n", "\n\n"))
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")
audit_app.command("ship")(audit_ship)
app.add_typer(lab_app, name="lab")
app.add_typer(runbook_app, name="runbook")
reconcile_app = typer.Typer(no_args_is_help=True, help="Divergent writes after a failover.")
app.add_typer(reconcile_app, name="reconcile")

def _version(value: bool) -> None:
    if value:
        out.print(f"drorch {package_version('drorch')}", highlight=False)
        raise typer.Exit(ExitCode.OK)


@app.callback()
def main(
    json_logs: Annotated[bool | None, typer.Option("--json-logs/--pretty-logs",
                                                   help="Log format (default: pretty on a "
                                                   "terminal, JSON otherwise).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print drorch's version and exit.")] = False,
) -> None:
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        err.print(f"--log-level: unknown level {log_level!r}")
        raise typer.Exit(ExitCode.USAGE)
    logs.configure(json_logs, level)


OutputOpt = Annotated[str, typer.Option("--output", help="text or json (schema: "
                                        "docs/cli-json.md).")]


def _check_output(output: str, allowed: tuple[str, ...] = ("text", "json")) -> None:
    if output not in allowed:
        err.print(f"--output must be one of {', '.join(allowed)}")
        raise typer.Exit(ExitCode.USAGE)


@app.command()
def plan(runbook: RunbookOpt, output: OutputOpt = "text",
         readiness: Annotated[bool, typer.Option(
             "--readiness/--no-readiness", help="Run the readiness checks (default).")] = True,
         ) -> None:
    """Print what a failover would do now, step by step, and whether the estate is ready
    for it: every resource the runbook names checked (replica and lag, secrets, DNS
    records, health checks and TTL, alarms, write flag, WAL, journal, IAM), each pass /
    warn / fail with the reason and the fix. Changes nothing. Exits 3 (or 6) when the
    run would be refused now; else 0 ready, 1 warnings, 2 not ready."""
    _check_output(output)
    _plan(load_or_exit(runbook), "failover", output, readiness=readiness)


def _plan(rb: Runbook, kind: str, output: str, *, dry_run: bool = False,
          readiness: bool = False) -> None:
    from drorch.cli_plan import build_plan, plan_exit_code, print_plan

    try:
        engine = read_only_engine(rb)
    except typer.Exit as exc:
        if readiness and exc.exit_code == ExitCode.FAILED:  # the journal cannot be read
            err.print("not ready: drorch cannot act without its journal", highlight=False)
            raise typer.Exit(ExitCode.NOT_READY) from None
        raise
    planned = build_plan(rb, engine, kind, readiness=readiness)
    if output == "json":
        sys.stdout.write(planned.model_dump_json(indent=2) + "\n")
    else:
        print_plan(planned)
        if dry_run:
            out.print("[yellow]dry run: nothing was changed[/]")
    raise typer.Exit(plan_exit_code(rb, engine, planned))


ReasonOpt = Annotated[str | None, typer.Option(
    help="Required (except with --dry-run): why; goes to the journal and audit.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing "
                                         "(exit 3 when the run would be refused).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation "
                                      "(scripts). Without it and without a terminal the "
                                      "command is refused.")]


@app.command()
def failover(runbook: RunbookOpt, reason: ReasonOpt = None, actor: ActorOpt = None,
             dry_run: DryRunOpt = False, yes: YesOpt = False,
             output: OutputOpt = "text") -> None:
    """Fail over now, by hand: skips the health window, records who and why.
    Irreversible: asks for confirmation unless --yes."""
    _manual("failover", runbook, reason, actor, dry_run, yes, output)


@app.command()
def failback(runbook: RunbookOpt, reason: ReasonOpt = None, actor: ActorOpt = None,
             dry_run: DryRunOpt = False, yes: YesOpt = False,
             output: OutputOpt = "text") -> None:
    """Return to the original primary region: fence it, reconcile its divergent writes,
    rebuild it as a replica, then switch back with zero loss. Kind postgres needs node
    control of the old primary (endpoints.<region>.node); kind rds goes through the RDS
    API (fence, snapshot, a new replica); kind aurora-global switches over back (after a
    managed failover, its snapshot restored and reconciled first). Irreversible: asks
    for confirmation unless --yes."""
    _manual("failback", runbook, reason, actor, dry_run, yes, output)


def _manual(kind: str, runbook: Path, reason: str | None, actor: str | None,
            dry_run: bool, yes: bool, output: str) -> None:
    _check_output(output)
    rb = load_or_exit(runbook)
    if dry_run:
        _plan(rb, kind, output, dry_run=True)
    if output != "text":
        err.print("--output json is for --dry-run; a run prints its progress as text "
                  "(`drorch report --output json` afterwards)")
        raise typer.Exit(ExitCode.USAGE)
    if not reason:
        err.print(f"a manual {kind} needs --reason (it goes to the audit log)")
        raise typer.Exit(ExitCode.USAGE)
    who = actor or getpass.getuser()
    # Nothing is asked, and nothing written but the refusal's audit entry, for a run
    # that would be refused anyway.
    refused = read_only_engine(rb).refusal(kind)
    if refused is not None:
        exit_refused(open_context(rb)[1], kind, who, reason, refused)
    confirm_or_exit(rb, runbook, kind, read_only_engine(rb), yes)
    engine, store = engine_for(rb, show_progress)
    incident_id = open_incident(engine, rb, kind, who, reason)
    drive(engine, store, rb, incident_id)


@app.command()
def drill(
    runbook: RunbookOpt,
    actor: ActorOpt = None,
    reason: Annotated[str, typer.Option(help="Why (goes to the audit log).")] = "DR drill",
    yes: YesOpt = False,
) -> None:
    """A planned failover and failback cycle, each with zero loss, then the reports.
    The failover is planned only (nothing is promoted if the old primary does not
    answer). Kind postgres needs node control for the failback (endpoints.*.node; kinds
    rds and aurora-global go through the AWS API; otherwise the drill is refused before
    anything is done). Asks for confirmation unless --yes."""
    rb = load_or_exit(runbook)
    who = actor or getpass.getuser()
    from drorch.adapters.nodes import node_control_problems

    # a drill's failover is planned only: an Aurora database's is a switchover
    problems = node_control_problems(rb, rb.primary.name, switched_over=[
        db.name for db in rb.databases if db.kind == "aurora-global"])
    if problems:
        exit_refused(open_context(rb)[1], "drill", who, reason, NoNodeControl(problems))
    refused = read_only_engine(rb).refusal("failover")
    if refused is not None:
        exit_refused(open_context(rb)[1], "drill", who, reason, refused)
    confirm_or_exit(rb, runbook, "drill", read_only_engine(rb), yes)
    engine, store = engine_for(rb, show_progress)
    for kind in ("failover", "failback"):  # each writes its reports (drive)
        label = "planned failover" if kind == "failover" else "failback"
        incident_id = open_incident(engine, rb, kind, who, f"{reason}: {label}", "drill")
        drive(engine, store, rb, incident_id)


@app.command()
def resume(
    runbook: RunbookOpt,
    incident: Annotated[str | None, typer.Option(help="Incident id (default: the open one).")]
    = None,
    actor: ActorOpt = None,
    reason: Annotated[str | None, typer.Option(help="Why (goes to the audit log).")] = None,
    yes: YesOpt = False,
) -> None:
    """Continue an interrupted or halted incident from its journal; the audit names you
    for everything done from here on. Exits 6 when there is nothing to resume. Asks for
    confirmation unless --yes."""
    rb = load_or_exit(runbook)
    ro = read_only_engine(rb)
    inc = ro.store.incident(incident) if incident else ro.open_incident()
    if inc is None:
        err.print("nothing to resume: no incident is in flight or halted"
                  if not incident else f"no incident {incident}")
        raise typer.Exit(ExitCode.NOTHING_TO_DO if not incident else ExitCode.USAGE)
    if ro.store.fact(inc.id, "completed"):
        err.print(f"nothing to resume: {inc.id} is {inc.state}")
        raise typer.Exit(ExitCode.NOTHING_TO_DO)
    confirm_or_exit(rb, runbook, "resume", ro, yes, inc.id)
    engine, store = engine_for(rb, show_progress)
    out.print(f"[bold]resuming {inc.id}[/] (state {inc.state})")
    drive(engine, store, rb, inc.id, actor=actor or getpass.getuser(), reason=reason)


@app.command()
def status(runbook: RunbookOpt, output: OutputOpt = "text") -> None:
    """Who serves writes, the watcher's last verdict and its age, the latest incident
    (reads only: on a fresh directory it creates no state directory or journal). Exits
    5 while the latest incident is halted, 7 when a running watcher's verdict is
    stale."""
    from drorch.cli_status import build_status, print_status

    _check_output(output)
    rb = load_or_exit(runbook)
    engine = read_only_engine(rb)
    shown = build_status(rb, engine)
    if output == "json":
        sys.stdout.write(shown.model_dump_json(indent=2) + "\n")
    else:
        print_status(shown, rb, engine)
    raise typer.Exit(shown.exit_code)


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
        raise typer.Exit(ExitCode.USAGE)
    if inc.kind != "failover" or not store.fact(inc.id, "completed"):
        err.print(f"{incident} is a {inc.kind} in state {inc.state}: only a completed "
                  "failover holds automatic failover, so there is nothing to acknowledge")
        raise typer.Exit(ExitCode.NOTHING_TO_DO)
    if not reason:
        err.print("ack needs --reason (it goes to the audit log)")
        raise typer.Exit(ExitCode.USAGE)
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
    readiness_every: Annotated[float, typer.Option(
        min=0, help="Run the readiness checks (as `drorch plan`) this often, in seconds, "
        "in the background; a change is journaled and audited as drift. 0: never.")]
    = 1800,
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
                       max_seconds=max_seconds, readiness_every_s=readiness_every)
    except ValueError as exc:
        err.print(f"[bold red]cannot watch:[/] {escape(str(exc))}")
        raise typer.Exit(ExitCode.USAGE) from None
    for incident_id in driven:
        print_summary(incident_record(store, rb, incident_id), rb)
    why = received[0] if received else "--max-seconds reached"
    out.print(f"watch stopped ({why}): {len(driven)} failover(s) driven; nothing held "
              "(no lease, no alarm in hand)", highlight=False)


@app.command()
def report(
    runbook: RunbookOpt,
    incident: Annotated[str | None, typer.Argument(help="Incident id (default: the latest).")]
    = None,
    output: Annotated[str | None, typer.Option(
        "--output", help="json, md or html (json: docs/report-json.md).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="The same as --output "
                                            "(kept for old scripts).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file "
                                                  "instead of standard output (- is "
                                                  "standard output; without --output the "
                                                  "file's .json/.md/.html picks the "
                                                  "format).")] = None,
) -> None:
    """The incident report: timeline, decisions, steps, flows, RPO/RTO against targets."""
    from drorch.report import FORMATS, build_report, render

    if out_file is not None and str(out_file) == "-":
        out_file = None  # the usual spelling of standard output
    suffix = out_file.suffix.lstrip(".").lower() if out_file is not None else ""
    if out_file is not None and not suffix and str(out_file) in FORMATS:
        err.print(f"-o/--out names a file; for the format use --output {out_file} "
                  f"(or -o report.{out_file})", highlight=False)
        raise typer.Exit(ExitCode.USAGE)
    chosen = output or fmt or (suffix if suffix in FORMATS else "md")
    if chosen not in FORMATS:
        err.print(f"--output must be one of {', '.join(FORMATS)}")
        raise typer.Exit(ExitCode.USAGE)
    if out_file is not None and (out_file.is_dir() or not out_file.parent.is_dir()):
        err.print(f"cannot write the report to {escape(str(out_file))}: "
                  + ("it is a directory" if out_file.is_dir() else
                     f"{escape(str(out_file.parent))} is not a directory"), highlight=False)
        raise typer.Exit(ExitCode.USAGE)
    rb = load_or_exit(runbook)
    store = read_only_engine(rb).store
    incidents = store.incidents(rb.name)
    if not incidents:
        err.print("no incidents recorded")
        raise typer.Exit(ExitCode.NOTHING_TO_DO)
    incident_id = incident or incidents[-1].id
    if store.incident(incident_id) is None:
        err.print(f"no incident {incident_id}")
        raise typer.Exit(ExitCode.USAGE)
    text = render(build_report(incident_record(store, rb, incident_id)), chosen)
    if out_file:
        try:
            out_file.write_text(text)
        except OSError as exc:
            err.print(f"cannot write the report to {escape(str(out_file))}: "
                      f"{escape(exc.strerror or str(exc))}", highlight=False)
            raise typer.Exit(ExitCode.FAILED) from None
        out.print(f"report written to {out_file}", highlight=False)
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
        err.print(f"nothing applied: {escape(str(exc))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
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
        raise typer.Exit(ExitCode.FAILED)


@audit_app.command("verify")
def audit_verify(
    where: Annotated[str | None, typer.Argument(
        metavar="[PATH|s3://BUCKET/PREFIX]",
        help="The log (default: the runbook's, <state_dir>/audit.jsonl), or an archive "
             "`drorch audit ship` wrote.")] = None,
    runbook: Annotated[Path | None, typer.Option(
        "--runbook", "-r", envvar="DRORCH_RUNBOOK", help="Runbook YAML file (for the "
        "default log; for an archive: its AWS endpoints and region).")] = None,
    expected_head: Annotated[str | None, typer.Option(
        help="A head kept elsewhere (a report's audit.head): the log must still contain "
             "it, so entries cut off its end are found.")] = None,
    aws_region: AwsRegionOpt = None,
) -> None:
    """Exit 0 when the audit log (or the archive in S3) is intact; 1, naming the first
    bad line (every problem of an archive), when not."""
    if expected_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expected_head):
        err.print(f"--expected-head {escape(expected_head)!r} is not a sha256 (64 lowercase "
                  "hex digits, as a report's audit.head)", highlight=False)
        raise typer.Exit(ExitCode.USAGE)
    if where is not None and where.lower().startswith("s3:"):
        verify_s3(where, runbook, aws_region, expected_head)  # a malformed s3: URL: exit 2
    path = Path(where) if where is not None else None
    if path is None:
        if runbook is None:
            err.print("give the log's path, or a runbook (--runbook or DRORCH_RUNBOOK)")
            raise typer.Exit(ExitCode.USAGE)
        path = Path(load_or_exit(runbook).state_dir) / "audit.jsonl"
    result = verify(path, expected_head=expected_head)
    (out if result.ok else err).print(f"{path}: {result.message()}", highlight=False)
    raise typer.Exit(ExitCode.OK if result.ok else ExitCode.FAILED)


if __name__ == "__main__":
    sys.exit(app())
