"""Reference pages generated from the code, so they cannot drift from it:

- ``docs/runbook-reference.md``: every runbook field, from the pydantic model
  (``drorch.config.Runbook`` and the models it nests), with type, default and
  description;
- ``docs/cli-json.md``: the JSON Schemas of ``drorch status`` and ``drorch plan``
  ``--output json`` (``drorch.cli_output``) and the exit codes.

``python -m drorch.docgen`` rewrites both; ``tests/unit/test_docgen.py`` fails when
a committed page differs from what this module generates.
"""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from drorch import exitcodes
from drorch.cli_output import PlanOutput, StatusOutput
from drorch.config import Runbook

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _type_name(annotation: Any, nested: list[type[BaseModel]]) -> str:
    """A readable type, collecting the models it mentions into ``nested``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation not in nested:
            nested.append(annotation)
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], nested)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a, nested) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0], nested)}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[0], nested)} to {_type_name(args[1], nested)}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(its defaults)"
    return f"`{json.dumps(value, default=str)}`"


def _cell(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def runbook_reference() -> str:
    """The runbook field reference, Markdown."""
    nested: list[type[BaseModel]] = [Runbook]
    out = ["# Runbook field reference", "",
           "Generated from the pydantic model by `python -m drorch.docgen` (do not edit by "
           "hand; `tests/unit/test_docgen.py` checks it is current). A runbook is YAML; "
           "unknown keys are refused; `${VAR}` and `${VAR:-default}` are replaced inside "
           "values (see the README). `runbooks/lab.yaml` is a complete example.", ""]
    i = 0
    while i < len(nested):
        model = nested[i]
        i += 1
        doc = " ".join((model.__doc__ or "").split())
        out += [f"## {model.__name__}", ""]
        if doc and not doc.startswith(("Usage docs", "!!!")):
            out += [doc, ""]
        out += ["| Field | Type | Default | Meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = field.alias or name
            out.append(f"| `{key}` | {_type_name(field.annotation, nested)} | "
                       f"{_default(field)} | {_cell(field.description)} |")
        out.append("")
    return "\n".join(out)


def exit_code_rows() -> list[str]:
    """The exit codes as Markdown table rows (here and in the README)."""
    return [f"| {int(code)} | `{code.name.lower()}` | {_cell(exitcodes.MEANING[code])} |"
            for code in exitcodes.ExitCode]


def cli_json() -> str:
    """The JSON forms of status and plan, and the exit codes, Markdown."""
    out = ["# `--output json` forms and exit codes", "",
           "Generated from `drorch/cli_output.py` and `drorch/exitcodes.py` by "
           "`python -m drorch.docgen` (do not edit by hand). The report's JSON is "
           "documented in [report-json.md](report-json.md).", "",
           "Within `schema_version` 1 keys are only ever added. Every document is "
           "validated against its model before it is printed; the tests check each form "
           "against the schema below (`tests/unit/test_cli_output.py`).", "",
           "## Exit codes", "", "| Code | Name | Meaning |", "|---|---|---|",
           *exit_code_rows()]
    for title, model in (("`drorch status --output json`", StatusOutput),
                         ("`drorch plan --output json`, `drorch failover|failback "
                          "--dry-run --output json`", PlanOutput)):
        out += ["", f"## {title}", "", "```json",
                json.dumps(model.model_json_schema(), indent=2), "```"]
    return "\n".join(out) + "\n"


PAGES = {"runbook-reference.md": runbook_reference, "cli-json.md": cli_json}


def main() -> int:
    for name, build in PAGES.items():
        (DOCS / name).write_text(build())
        print(f"wrote {DOCS / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
