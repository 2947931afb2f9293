"""The generated reference pages are the ones committed: a runbook field, an output
key or an exit code changed in the code without `python -m drorch.docgen` fails here."""

from __future__ import annotations

import pytest

from drorch import docgen
from drorch.config import Runbook


@pytest.mark.parametrize("name", sorted(docgen.PAGES))
def test_the_committed_page_is_what_the_code_generates(name: str) -> None:
    """docs/<name> equals its generator's output (run `python -m drorch.docgen`)."""
    assert (docgen.DOCS / name).read_text() == docgen.PAGES[name](), \
        f"docs/{name} is stale: run `python -m drorch.docgen`"


def test_every_runbook_field_is_in_the_reference() -> None:
    """Each field of the top-level model has a row, with its default or "required"."""
    text = docgen.runbook_reference()
    for name, field in Runbook.model_fields.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert ("**required**" in row) is field.is_required()


def test_the_readme_lists_every_exit_code_as_the_code_defines_it() -> None:
    """Each exit code's row (code, name, meaning) is in the README as generated."""
    readme = (docgen.DOCS.parent / "README.md").read_text()
    for row in docgen.exit_code_rows():
        assert row in readme, row
