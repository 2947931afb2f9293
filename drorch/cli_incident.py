"""What ``failover``, ``failback``, ``drill`` and ``resume`` share: ask before acting,
open the incident (auditing a refusal: who asked, why, and why not), run it, write its
report, and exit with the code that says how it ended (``drorch.exitcodes``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.markup import escape

from drorch.cli_common import err, out
from drorch.config import Runbook
from drorch.console import print_summary
from drorch.exitcodes import ExitCode
from drorch.incident import incident_record


def confirm_or_exit(rb: Runbook, path: Path, command: str, engine: Any, yes: bool,
                    incident: str | None = None) -> None:
    """Ask (or exit 2 without a terminal, 8 on any answer but yes). ``engine``: a
    read-only one is enough, so that nothing is created before the answer."""
    from drorch.confirm import Intent, NotConfirmed, confirm

    if incident is not None:
        src, dst = engine.store.fact(incident, "from_region"), \
            engine.store.fact(incident, "to_region")
    else:
        src = engine.active_region()
        dst = rb.primary.name if command == "failback" else \
            next(r.name for r in rb.regions if r.name != src)
    try:
        confirm(Intent(command, rb.name, str(path), src, dst, incident), yes=yes)
    except NotConfirmed as exc:
        err.print(f"[bold red]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(exc.code) from None


def exit_refused(audit: Any, kind: str, who: str, reason: str, exc: Any) -> NoReturn:
    """Audit a refused request (who asked, why, why not) and exit 3, or 6 when there
    is nothing to do."""
    audit.record("incident.refused", actor=who, reason=reason,
                 inputs={"kind": kind, "trigger": "manual"}, outcome="refused",
                 detail={"refusal": str(exc)})
    label = "nothing to do" if exc.nothing_to_do else "refused"
    err.print(f"[bold red]{label}:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(ExitCode.NOTHING_TO_DO if exc.nothing_to_do else ExitCode.REFUSED)


def open_incident(engine: Any, rb: Runbook, kind: str, who: str, reason: str,
                  trigger_kind: str = "manual") -> str:
    """Open the incident, or audit the refusal and exit (``refused``). ``trigger_kind``
    ``drill``: the failover is planned only (see ``Engine.start_failover``)."""
    from drorch.engine import IncidentRefused

    engine.warm_up()
    start = engine.start_failover if kind == "failover" else engine.start_failback
    try:
        incident_id = start(actor=who, reason=reason,
                            trigger={"kind": trigger_kind, "detail": reason})
    except IncidentRefused as exc:
        exit_refused(engine.audit, kind, who, reason, exc)
    out.print(f"[bold]incident {incident_id}[/]: {kind} {rb.name}")
    return incident_id


class NoNodeControl(Exception):
    """Why a drill is refused where its failback could not control the nodes (it has the
    shape of an ``IncidentRefused`` for :func:`exit_refused`)."""

    nothing_to_do = False

    def __init__(self, problems: list[str]) -> None:
        super().__init__("a drill fails back, which needs node control (fence, keep "
                         "evidence of and rebuild the old primary), so on this runbook it "
                         "would fail over for real and stop; nothing was done: "
                         + "; ".join(problems))


def drive(engine: Any, store: Any, rb: Runbook, incident_id: str,
          actor: str | None = None, reason: str | None = None) -> None:
    """Run the incident; print its summary; exit 4 rolled back or 5 halted. The report
    of an incident that ended is written to ``<state_dir>/reports/`` whatever the
    outcome."""
    from drorch.engine import IncidentHalted, IncidentRolledBack
    from drorch.report import write_reports

    code = ExitCode.OK
    try:
        engine.run(incident_id, actor=actor, reason=reason)
    except IncidentRolledBack as exc:
        err.print(f"[bold red]rolled back:[/] {escape(str(exc))}", highlight=False)
        code = ExitCode.ROLLED_BACK
    except IncidentHalted as exc:
        err.print(f"[bold red]halted:[/] {escape(str(exc))}", highlight=False)
        code = ExitCode.HALTED
    record = incident_record(store, rb, incident_id)
    print_summary(record, rb)
    paths = write_reports(record, Path(rb.state_dir) / "reports", ("json", "md"))
    out.print(f"report: {paths['md']}", highlight=False)
    if code:
        raise typer.Exit(code)
