"""``drorch runbook ...``: runbooks made from what created the estate.

``from-terraform`` turns ``terraform output -json`` of
``terraform/examples/two-region`` into a runbook that loads
(:mod:`drorch.runbook_from_terraform`), so nobody copies identifiers by hand.
Every problem is one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from drorch.cli_common import err
from drorch.exitcodes import ExitCode

runbook_app = typer.Typer(no_args_is_help=True,
                          help="Make a runbook from what created the estate.")


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(ExitCode.USAGE)


@runbook_app.command("from-terraform")
def from_terraform(
    outputs: Annotated[Path, typer.Argument(
        metavar="OUTPUTS.json", help="What `terraform output -json` printed for "
        "terraform/examples/two-region (or a root with the same outputs); - reads stdin.")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the runbook to this file (default: stdout).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Write a runbook from `terraform output -json`.

    The runbook is loaded with drorch's loader before it is written; what the outputs
    cannot say (app roles, targets, validation flows) is listed in its header."""
    from drorch.config import RunbookError
    from drorch.runbook_from_terraform import (
        OutputsError,
        check_loads,
        read_outputs,
        render,
        runbook_from_outputs,
        write_runbook,
    )

    stdin = str(outputs) == "-"
    try:
        values = read_outputs(None, sys.stdin.read()) if stdin else read_outputs(outputs)
        text = render(runbook_from_outputs(values), "stdin" if stdin else outputs.name, values)
        target_dir = out.parent if out is not None else Path.cwd()
        if out is not None and not target_dir.is_dir():
            raise OutputsError(f"{out}: directory {target_dir} does not exist")
        check_loads(text, target_dir)
        if out is None:
            sys.stdout.write(text)
        else:
            write_runbook(text, out, force)
            err.print(f"runbook written to {escape(str(out))}", highlight=False)
    except OutputsError as exc:
        _fail(str(exc))
    except RunbookError as exc:
        _fail(f"the runbook made from {'stdin' if stdin else outputs} does not load:\n{exc}")
    except OSError as exc:
        _fail(f"{out}: cannot write it ({exc.strerror or type(exc).__name__})")
