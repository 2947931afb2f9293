"""``drorch plan`` and ``--dry-run``: what a failover or failback would do now, as data
(:class:`~drorch.cli_output.PlanOutput`), then shown as text or JSON. Changes nothing:
the engine is read-only (no state directory, journal or audit entry is created)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from drorch.cli_common import out
from drorch.cli_output import PlannedStage, PlannedStep, PlanOutput, ReadinessOut
from drorch.config import Runbook
from drorch.exitcodes import ExitCode
from drorch.readiness.wal import split_pin_warnings, wal_retention_warnings

_STATUS_STYLE = {"pass": "green", "warn": "bold yellow", "fail": "bold red", "skip": "dim"}


def build_plan(rb: Runbook, engine: Any, kind: str = "failover", *,
               readiness: bool = False) -> PlanOutput:
    """The plan for ``kind`` from the journal's view of who serves now. A run that would
    be refused (already failed over, nothing to fail back from, an incident in flight,
    no node control) has no stages, only the refusal: a plan in the wrong direction is
    worse than none. With ``readiness`` (``drorch plan``), every readiness check's
    verdict too (:mod:`drorch.readiness`), made from the same view of who serves."""
    src = engine.active_region()
    if kind == "failback":  # always back to the runbook's primary
        dst = rb.primary.name
    else:
        dst = next(r.name for r in rb.regions if r.name != src)
    refused = engine.refusal(kind)
    stages: list[PlannedStage] = []
    if refused is None:
        last = engine.last_failover() if kind == "failback" else None
        ctx = _dry_ctx(rb, src, dst, engine.aws,
                       {"failover_incident": last.id} if last is not None else {})
        for stage in engine.plan(src, dst, kind):
            stages.append(PlannedStage(
                name=stage.name, parallel=len(stage.steps) > 1,
                steps=[PlannedStep(id=s.id, description=s.describe(ctx),
                                   irreversible=bool(s.irreversible)) for s in stage.steps]))
    # About the databases as they are, refused or not: said either way.
    warnings, notes = wal_retention_warnings(rb, src), []
    if refused is None:
        warnings += unreachable_targets(rb, dst)
    if kind == "failback" or src != rb.primary.name:
        pin_warnings, notes = split_pin_warnings(rb, src)
        warnings += pin_warnings
    checks: list[ReadinessOut] = []
    ready = None
    if readiness:
        from drorch.readiness import readiness as run_checks
        from drorch.readiness import verdict

        results = run_checks(rb, engine.aws, src)
        checks = [ReadinessOut(**r.as_dict()) for r in results]
        ready = verdict(results)
    return PlanOutput(kind=kind, runbook=rb.name, from_region=src, to_region=dst,  # type: ignore[arg-type]
                      allowed=refused is None, refusal=None if refused is None else str(refused),
                      stages=stages, warnings=warnings, notes=notes, readiness=checks,
                      ready=ready)


def plan_exit_code(rb: Runbook, engine: Any, plan: PlanOutput) -> ExitCode:
    """3 (refused) or 6 (nothing to do) when the run would not be allowed, whatever the
    readiness; else, by the readiness checks (when they ran): 2 not ready (a check
    failed), 1 warnings only, 0 ready (see :data:`drorch.exitcodes.MEANING`)."""
    if not plan.allowed:
        refused = engine.refusal(plan.kind)
        return ExitCode.NOTHING_TO_DO if refused is not None and refused.nothing_to_do \
            else ExitCode.REFUSED
    if plan.ready == "not_ready":
        return ExitCode.NOT_READY
    if plan.ready == "warnings":
        return ExitCode.WARNINGS
    return ExitCode.OK


def print_plan(plan: PlanOutput) -> None:
    out.print(f"[bold]{plan.kind} plan[/] for runbook {plan.runbook}: {plan.from_region} -> "
              f"{plan.to_region}")
    if not plan.allowed:
        out.print(f"[bold red]would be refused:[/] {escape(str(plan.refusal))}", highlight=False)
    for i, stage in enumerate(plan.stages, 1):
        out.print(f"{i}. {stage.name}{' (in parallel)' if stage.parallel else ''}")
        for step in stage.steps:
            irrev = " [bold yellow](irreversible)[/]" if step.irreversible else ""
            out.print(f"   - {escape(step.id)}: {escape(step.description)}{irrev}", highlight=False)
    for warning in plan.warnings:
        out.print(f"[bold yellow]warning[/] {escape(warning)}", highlight=False)
    for note in plan.notes:
        out.print(escape(note), highlight=False)
    if plan.ready is not None:
        print_readiness(plan)


def print_readiness(plan: PlanOutput) -> None:
    """The readiness table (check, target, status, reason, fix) and its verdict."""
    from rich.table import Table

    table = Table(title="readiness", title_justify="left", show_lines=False)
    for column in ("check", "target", "status", "reason", "fix"):
        table.add_column(column, overflow="fold")
    for r in plan.readiness:
        table.add_row(escape(r.check), escape(r.target),
                      f"[{_STATUS_STYLE[r.status]}]{r.status}[/]", escape(r.reason),
                      escape(r.fix))
    out.print(table)
    said = {"ready": "[bold green]ready[/]: every check passed (or does not apply)",
            "warnings": "[bold yellow]ready with warnings[/]: read the warn rows",
            "not_ready": "[bold red]not ready[/]: a failover now would fail or do harm "
                         "(the fail rows say why and what to do)"}
    out.print(said[str(plan.ready)], highlight=False)


def unreachable_targets(rb: Runbook, dst: str) -> list[str]:
    """The databases the run would promote in ``dst`` that do not answer now: the run
    would freeze the serving region, fail at the promotion and roll back."""
    from drorch.adapters import postgres as pg

    out = []
    for db in rb.databases:
        if not pg.reachable(db.endpoints[dst].dsn()):
            out.append(f"{db.name} in {dst} does not answer: a run now would freeze the "
                       "serving region, fail at the promotion and roll back (check "
                       f"{dst} first, e.g. `drorch status`)")
    return out


def _dry_ctx(rb: Runbook, src: str, dst: str, aws: Any,
             known: dict[str, Any] | None = None) -> Any:
    """``known``: facts a real run would start with (a failback's ``failover_incident``,
    which names what it restores and keeps)."""
    from drorch.steps.base import StepContext

    class _NoFacts:
        def get(self, key: str, default: Any = None) -> Any:
            return (known or {}).get(key, default)

        def set(self, key: str, value: Any) -> None:
            raise RuntimeError("dry run: nothing is recorded")

    return StepContext(rb, "dry-run", "dry-run", src, dst, aws, _NoFacts())
