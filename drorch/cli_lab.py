"""``drorch lab ...``: the local two-region lab (up, fail, heal, alarm, drill, down)."""

from __future__ import annotations

import getpass
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from drorch.cli_common import ActorOpt, RunbookOpt, err, load_or_exit, open_context, out
from drorch.config import Runbook
from drorch.console import print_summary, show_progress
from drorch.exitcodes import ExitCode

lab_app = typer.Typer(no_args_is_help=True, help="The local two-region lab.")


@lab_app.command("up")
def lab_up(runbook: RunbookOpt = Path("runbooks/lab.yaml")) -> None:
    """Start the lab the runbook describes (PostgreSQL pair, moto, records, secrets)."""
    from drorch.lab import lab

    rb = load_or_exit(runbook)
    if (stale := _journal_contradicts_a_fresh_lab(rb)) is not None:
        err.print(f"[bold red]lab up refused:[/] {stale}", highlight=False)
        raise typer.Exit(ExitCode.REFUSED)
    try:
        state = lab.up(rb)
    except Exception as exc:  # noqa: BLE001
        err.print(f"[bold red]lab up failed:[/] {escape(str(exc))}")
        raise typer.Exit(ExitCode.FAILED) from None
    out.print(f"lab up: moto on 127.0.0.1:{state.moto_port}; "
              + ", ".join(f"{n['name']} on :{n['port']}" for n in state.nodes))


def _journal_contradicts_a_fresh_lab(rb: Runbook) -> str | None:
    """A fresh lab serves writes from the runbook's primary with nothing in flight; a
    journal left by an earlier lab that says otherwise would steer every command wrong."""
    from drorch.cli_common import read_only_engine

    engine = read_only_engine(rb)
    active, inflight = engine.active_region(), engine.open_incident()
    if active == rb.primary.name and inflight is None:
        return None
    why = (f"incident {inflight.id} is {inflight.state}" if inflight is not None
           else f"writes are served by {active}")
    return (f"the journal in {rb.state_dir} is from an earlier lab and says {why}, but a "
            f"new lab starts with {rb.primary.name} primary: run `drorch lab down --purge` "
            "to start clean")


@lab_app.command("fail")
def lab_fail(
    region: str,
    runbook: RunbookOpt = Path("runbooks/lab.yaml"),
    mode: Annotated[str, typer.Option(
        help="stop, hang or flap (its databases and app), or aws-down (its AWS API only; "
             "combine with one of the others for a whole region)")] = "stop",
    period: Annotated[float, typer.Option(help="flap period in seconds")] = 4.0,
    alarm: Annotated[bool, typer.Option(
        "--alarm/--no-alarm",
        help="With stop or hang: also fire the region's CloudWatch alarm and publish "
             "its notification to SNS, as its Route 53 health check would (when the "
             "runbook wires an alarm chain)")] = True,
    actor: ActorOpt = None,
) -> None:
    """Inject a fault into a lab region (audited like any other action)."""
    from drorch.lab import faults

    rb = load_or_exit(runbook)
    if mode not in faults.MODES:
        err.print(f"--mode must be one of {', '.join(faults.MODES)}")
        raise typer.Exit(ExitCode.USAGE)
    _known_region_or_exit(rb, region)
    _store, audit, _aws = open_context(rb)
    try:
        out.print(faults.fail(rb, region, mode, period_s=period,  # type: ignore[arg-type]
                              audit=audit, actor=actor or getpass.getuser(), alarm=alarm))
    except Exception as exc:  # noqa: BLE001 (a clear sentence, never a traceback)
        err.print(f"[bold red]lab fail:[/] {_sentence(exc)}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None


def _known_region_or_exit(rb: Runbook, region: str) -> None:
    """A region the runbook does not name is bad input (exit 2), decided before anything
    is opened or audited."""
    names = [r.name for r in rb.regions]
    if region not in names:
        err.print(f"unknown region {escape(region)!r}: the runbook's regions are "
                  f"{', '.join(names)}", highlight=False)
        raise typer.Exit(ExitCode.USAGE)


@lab_app.command("heal")
def lab_heal(region: str, runbook: RunbookOpt = Path("runbooks/lab.yaml"),
             actor: ActorOpt = None) -> None:
    """Undo a lab fault: restart what was stopped, resume what was frozen."""
    from drorch.lab import faults

    rb = load_or_exit(runbook)
    _known_region_or_exit(rb, region)
    _store, audit, _aws = open_context(rb)
    try:
        out.print(faults.heal(rb, region, audit=audit, actor=actor or getpass.getuser()))
    except Exception as exc:  # noqa: BLE001 (a clear sentence, never a traceback)
        err.print(f"[bold red]lab heal:[/] {_sentence(exc)}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None


@lab_app.command("alarm")
def lab_alarm(
    region: str,
    runbook: RunbookOpt = Path("runbooks/lab.yaml"),
    state: Annotated[str, typer.Option(
        help="ALARM fires the region's alarm without any fault (a false alarm); OK "
             "clears it")] = "ALARM",
    actor: ActorOpt = None,
) -> None:
    """Set a lab region's CloudWatch alarm and publish CloudWatch's notification to its
    SNS topic, with no fault: see what the watcher makes of an alarm alone."""
    from drorch.lab import faults

    rb = load_or_exit(runbook)
    if state not in ("ALARM", "OK"):
        err.print("--state must be ALARM or OK")
        raise typer.Exit(ExitCode.USAGE)
    _known_region_or_exit(rb, region)
    _store, audit, _aws = open_context(rb)
    try:
        out.print(faults.set_alarm(rb, region, state, audit=audit,
                                   actor=actor or getpass.getuser()), highlight=False)
    except Exception as exc:  # noqa: BLE001 (a clear sentence, never a traceback)
        err.print(f"[bold red]lab alarm:[/] {_sentence(exc)}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None


def _sentence(exc: Exception) -> str:
    """A fault's own message, or the error's type and first line for anything else."""
    from drorch.lab import faults

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, faults.FaultError) else \
        f"{type(exc).__name__}: {text or 'no detail'}"


@lab_app.command("drill")
def lab_drill(
    runbook: RunbookOpt = Path("runbooks/lab.yaml"),
    keep: Annotated[bool, typer.Option("--keep", help="Leave the lab up afterwards.")] = False,
    mode: Annotated[str, typer.Option(help="How region-a dies: stop or hang.")] = "stop",
    trigger: Annotated[str, typer.Option(
        help="probes: the watcher's probes find the outage on their own; alarm: the "
             "region's CloudWatch alarm fires with it and reaches the watcher through "
             "SNS and SQS, the probes confirm (the report names both)")] = "probes",
    failback: Annotated[bool, typer.Option(
        "--failback", help="Then bring region-a back as it was left (a primary holding "
        "what never replicated) and fail back to it: fence, reconcile, rebuild, switch "
        "back; counts the acknowledged checkouts missing afterwards.")] = False,
) -> None:
    """Lab up, traffic, kill the primary region, automatic failover, validate, report
    (with --failback: then the way back, reported too)."""
    from drorch.lab import alarms as alarm_chain
    from drorch.lab.drill import TRIGGERS, run_drill

    rb = load_or_exit(runbook)
    if trigger not in TRIGGERS:
        err.print(f"--trigger must be one of {', '.join(TRIGGERS)}")
        raise typer.Exit(ExitCode.USAGE)
    if trigger == "alarm" and not alarm_chain.alarms_of(rb, rb.primary.name):
        err.print(f"--trigger alarm: {escape(str(runbook))} wires no alarm for "
                  f"{rb.primary.name} (health.alarm_queue_url and health.alarm_regions)",
                  highlight=False)
        raise typer.Exit(ExitCode.USAGE)
    if (stale := _journal_contradicts_a_fresh_lab(rb)) is not None:
        err.print(f"[bold red]lab drill refused:[/] {stale}", highlight=False)
        raise typer.Exit(ExitCode.REFUSED)
    start = time.monotonic()

    def say(text: str) -> None:
        out.print(f"[bold blue]{time.monotonic() - start:7.2f}s[/] {text}", highlight=False)

    try:
        result = run_drill(rb, keep=keep, say=say, progress=show_progress, mode=mode,
                           trigger=trigger, failback=failback)
    except Exception as exc:  # noqa: BLE001
        err.print(f"[bold red]drill failed:[/] {escape(str(exc))}")
        raise typer.Exit(ExitCode.FAILED) from None
    if result.record is not None:
        print_summary(result.record, rb)
    t = result.traffic
    out.print(f"traffic: {t['ok']} acknowledged checkouts per region, errors {t['errors']}")
    out.print(f"acknowledged checkouts lost in the failover: {result.lost_checkouts}")
    if result.checkouts_evidence:
        out.print("checkouts evidence (every acknowledged checkout, the lost ones): "
                  f"{result.checkouts_evidence}")
    for fmt, path in result.reports.items():
        out.print(f"report ({fmt}): {path}")
    if result.state != "failed_over":
        raise typer.Exit(ExitCode.FAILED)
    if failback:
        back = result.failback or {}
        if back.get("record") is not None:
            print_summary(back["record"], rb)
        lost = back.get("lost_checkouts")
        out.print("acknowledged checkouts missing from region-a after the failback: "
                  + ("unknown (the failback did not complete)" if lost is None else str(lost)))
        for fmt, path in (back.get("reports") or {}).items():
            out.print(f"failback report ({fmt}): {path}")
        if back.get("state") != "monitoring" or lost:
            raise typer.Exit(ExitCode.FAILED)


@lab_app.command("down")
def lab_down(
    runbook: RunbookOpt = Path("runbooks/lab.yaml"),
    purge: Annotated[bool, typer.Option(
        "--purge", help="Also delete the lab's state directory (journal, audit log, "
        "reports, evidence), so the next `lab up` starts clean.")] = False,
) -> None:
    """Stop exactly what `lab up` started; the journal and audit log are kept unless
    --purge."""
    from drorch.lab import lab

    rb = load_or_exit(runbook)
    if purge and rb.lab is None:
        err.print(f"[bold red]refused:[/] --purge deletes the journal and the audit log, "
                  f"and {escape(str(runbook))} is not a lab runbook (no lab: section): "
                  "nothing was stopped or deleted", highlight=False)
        raise typer.Exit(ExitCode.REFUSED)
    try:
        stopped = lab.down(rb)
    except Exception as exc:  # noqa: BLE001 (a clear sentence, never a traceback)
        err.print(f"[bold red]lab down:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    out.print("lab down: " + (", ".join(stopped) if stopped else "nothing was running"))
    if purge:
        _purge(rb)

PURGED = ("journal.db", "journal.db-wal", "journal.db-shm", "journal.db-journal",
          "audit.jsonl", "reports", "lab", "evidence", "conflicts-*.jsonl*", "rekeyed-*.csv")
"""What drorch writes in a state directory: all that ``lab down --purge`` deletes."""


def _purge(rb: Any) -> None:
    """Delete drorch's own files from the lab's state directory (never anything else
    there), then the directory itself if that leaves it empty."""
    state = Path(rb.state_dir)
    gone = []
    for pattern in PURGED:
        for path in sorted(state.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            gone.append(path.name)
    if state.is_dir() and not any(state.iterdir()):
        state.rmdir()
    kept = sorted(p.name for p in state.iterdir()) if state.is_dir() else []
    out.print(f"purged {state}: " + (", ".join(gone) if gone else "nothing of drorch's")
              + (f"; left what drorch did not write: {', '.join(kept)}" if kept else ""),
              highlight=False)
