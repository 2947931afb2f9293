"""``drorch plan`` and ``--dry-run``: what a failover or failback would do now, as data
(:class:`~drorch.cli_output.PlanOutput`), then shown as text or JSON. Changes nothing:
the engine is read-only (no state directory, journal or audit entry is created)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from drorch.cli_common import out
from drorch.cli_output import PlannedStage, PlannedStep, PlanOutput
from drorch.config import Runbook
from drorch.exitcodes import ExitCode


def build_plan(rb: Runbook, engine: Any, kind: str = "failover") -> PlanOutput:
    """The plan for ``kind`` from the journal's view of who serves now. A run that would
    be refused (already failed over, nothing to fail back from, an incident in flight,
    no node control) has no stages, only the refusal: a plan in the wrong direction is
    worse than none."""
    src = engine.active_region()
    if kind == "failback":  # always back to the runbook's primary
        dst = rb.primary.name
    else:
        dst = next(r.name for r in rb.regions if r.name != src)
    refused = engine.refusal(kind)
    stages: list[PlannedStage] = []
    if refused is None:
        ctx = _dry_ctx(rb, src, dst, engine.aws)
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
    return PlanOutput(kind=kind, runbook=rb.name, from_region=src, to_region=dst,  # type: ignore[arg-type]
                      allowed=refused is None, refusal=None if refused is None else str(refused),
                      stages=stages, warnings=warnings, notes=notes)


def plan_exit_code(rb: Runbook, engine: Any, plan: PlanOutput) -> ExitCode:
    """0 when the run would be allowed; 3 (refused) or 6 (nothing to do) otherwise."""
    if plan.allowed:
        return ExitCode.OK
    refused = engine.refusal(plan.kind)
    return ExitCode.NOTHING_TO_DO if refused is not None and refused.nothing_to_do \
        else ExitCode.REFUSED


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


def split_pin_warnings(rb: Runbook, region: str) -> tuple[list[str], list[str]]:
    """(warnings, notes): a failed-over primary should keep its WAL from the split until
    the failback reads it (a slot drorch made at promotion): without it, rows only it
    changed cannot be told apart and go to a human. A pin that holds is a note (how
    much WAL it holds, and its bound)."""
    from drorch.adapters import postgres as pg

    said: list[str] = []
    notes: list[str] = []
    for db in rb.databases:
        slot = pg.split_slot_name(db.name)
        try:
            pinned = pg.wal_pinned(db.endpoints[region].dsn(), slot)
        except Exception as exc:  # noqa: BLE001 (a plan must still print)
            said.append(f"{db.name} in {region}: could not check the split's WAL pin "
                        f"({str(exc).strip().splitlines()[0]})")
            continue
        if not pinned:
            said.append(f"{db.name} in {region}: its WAL from the split is not pinned (no "
                        f"slot {slot}); a failback may not tell which side changed a row, "
                        "and such rows go to a human")
            continue
        held = pg.slot_retained_bytes(db.endpoints[region].dsn(), slot) or 0
        cap = pg.slot_wal_cap_mb(db.endpoints[region].dsn())
        bound = (f"at most {cap:,} MB (max_slot_wal_keep_size)" if cap >= 0 else
                 "no limit: the disk fills if the failback waits; set the database's "
                 "split_wal_max_mb")
        notes.append(f"{db.name} in {region}: the split's WAL pin holds "
                     f"{held / 2**20:,.0f} MB, {bound}")
    return said, notes


def wal_retention_warnings(rb: Runbook, region: str) -> list[str]:
    """Exact reconciliation after an unplanned failover needs the old primary's WAL
    back to the split: say now, not at failback, when a database would not keep it."""
    from drorch.reconcile.retention import wal_retention_warning

    said: list[str] = []
    for db in rb.databases:
        try:
            warning = wal_retention_warning(db.endpoints[region].dsn())
        except Exception as exc:  # noqa: BLE001 (a plan must still print)
            warning = f"could not check ({str(exc).strip().splitlines()[0]})"
        if warning:
            said.append(f"{db.name} in {region}: divergent writes could not be found "
                        f"exactly after an unplanned failover: {warning}")
    return said


def _dry_ctx(rb: Runbook, src: str, dst: str, aws: Any) -> Any:
    from drorch.steps.base import StepContext

    class _NoFacts:
        def get(self, key: str, default: Any = None) -> Any:
            return default

        def set(self, key: str, value: Any) -> None:
            raise RuntimeError("dry run: nothing is recorded")

    return StepContext(rb, "dry-run", "dry-run", src, dst, aws, _NoFacts())
