"""What every drorch command shares: consoles, options, loading the runbook,
and the engine with its store, audit log, AWS clients and node control."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from drorch import logs
from drorch.audit import AuditLog
from drorch.config import Runbook, RunbookError, load_runbook
from drorch.exitcodes import ExitCode

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RunbookOpt = Annotated[Path, typer.Option("--runbook", "-r", envvar="DRORCH_RUNBOOK",
                                          help="Runbook YAML file.")]
ActorOpt = Annotated[str | None, typer.Option(help="Who decided (a named human); "
                                              "defaults to the login name.")]


def load_or_exit(path: Path) -> Runbook:
    try:
        return load_runbook(path)
    except RunbookError as exc:
        err.print(f"[bold red]runbook error[/]\n{escape(str(exc))}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None


def open_journal(opener: Any) -> Any:
    """``opener()``, or exit 1 with one sentence when the journal cannot be read."""
    from drorch.store.sqlite import JournalUnreadable

    try:
        return opener()
    except JournalUnreadable as exc:
        err.print(f"[bold red]journal unreadable:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None


def open_context(runbook: Runbook) -> tuple[Any, Any, Any]:
    from drorch.adapters.aws import AwsClients
    from drorch.store.sqlite import SqliteStore

    state = Path(runbook.state_dir)
    store = open_journal(lambda: SqliteStore(state / "journal.db"))
    audit = AuditLog(state / "audit.jsonl", redactor=logs.REDACTOR)
    return store, audit, AwsClients.for_runbook(runbook)


class _NoAudit:
    """The audit log of a command that records nothing."""

    def record(self, action: str, **_: Any) -> dict[str, Any]:
        raise RuntimeError(f"plan / dry run: {action} is not recorded (nothing changes)")


def read_only_engine(rb: Runbook) -> Any:
    """The engine for commands that change nothing on disk (``plan``, ``--dry-run``,
    ``status``): the
    journal read-only (an empty one in memory when there is none yet), no audit log, so no
    state directory, journal or audit entry is created."""
    from drorch.adapters.aws import AwsClients
    from drorch.adapters.nodes import node_control_for
    from drorch.engine import Engine
    from drorch.store.sqlite import SqliteStore

    store = open_journal(lambda: SqliteStore.read_only(Path(rb.state_dir) / "journal.db"))
    # node control as a failback would have it (so its plan is refused exactly when the
    # failback would be); describing a plan never starts, stops or rewrites a node
    return Engine(rb, store, _NoAudit(), AwsClients.for_runbook(rb),  # type: ignore[arg-type]
                  nodes=node_control_for(rb))


def engine_for(rb: Runbook, progress: Any = None) -> tuple[Any, Any]:
    """The engine with this runbook's store, audit log, AWS clients and node control
    (chosen per database by its kind: :mod:`drorch.adapters.nodes`)."""
    from drorch.adapters.nodes import node_control_for
    from drorch.engine import Engine

    store, audit, aws = open_context(rb)
    return Engine(rb, store, audit, aws, progress=progress,
                  nodes=node_control_for(rb)), store
