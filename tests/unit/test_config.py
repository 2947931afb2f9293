"""The runbook model: every kind of malformed runbook gets one readable message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drorch.config import RunbookError, load_runbook
from tests.conftest import LAB_RUNBOOK, ROOT

GOOD = LAB_RUNBOOK.read_text()


def _line(text: str) -> int:
    """The shipped runbook's line holding ``text`` (1-based)."""
    return next(i for i, line in enumerate(GOOD.splitlines(), 1) if text in line)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rb.yaml"
    path.write_text(text)
    return path


def test_lab_runbook_loads() -> None:
    """The shipped lab runbook is valid and names region-a as primary."""
    rb = load_runbook(LAB_RUNBOOK)
    assert rb.primary.name == "region-a" and rb.secondary.name == "region-b"
    assert [d.name for d in rb.databases] == ["main"]


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda t: t.replace("role: secondary", "role: boss"),
     f":{_line('role: secondary')}: regions.1.role: Input should be 'primary' or 'secondary'"),
    (lambda t: t.replace("aws_region: us-west-2", "aws_region: [1, 2]"),
     f":{_line('aws_region: us-west-2')}: regions.1.aws_region: Input should be a valid string"),
    (lambda t: t.replace("  insync_timeout_s: 30", "  insync_timeout_s: 30\n  colour: red"),
     f":{_line('insync_timeout_s: 30') + 1}: dns.colour: unknown field"),
    (lambda t: t.replace("    aws_region: us-east-1\n", ""),
     "regions.0.aws_region: required field is missing"),
    (lambda t: t.replace("  - {secret_id: lab/main/db, region: region-b",
                         "  - {secret_id: lab/main/db, region: region-z"),
     "unknown region 'region-z'"),
    (lambda t: t.replace("port: \"${DRORCH_LAB_PG_B_PORT:-25433}\"", "port: many"),
     "databases.0.endpoints.region-b.port: Input should be a valid integer"),
    (lambda t: t.replace("regions:\n", "regions:\n  - [unclosed\n"),
     "invalid YAML"),
])
def test_malformed_runbook_names_file_field_and_problem(tmp_path: Path, mutate, expected) -> None:
    """Each malformed runbook raises RunbookError naming the file, field and problem."""
    path = _write(tmp_path, mutate(GOOD))
    with pytest.raises(RunbookError) as info:
        load_runbook(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_cli_reports_runbook_error_without_traceback(tmp_path: Path) -> None:
    """`drorch plan` on a bad runbook exits 2 with the message and no traceback."""
    path = _write(tmp_path, GOOD.replace("role: secondary", "role: boss"))
    result = subprocess.run([sys.executable, "-m", "drorch.cli", "plan", "-r", str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert f"{path}:{_line('role: secondary')}: regions.1.role" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_runbook_file(tmp_path: Path) -> None:
    """A runbook path that does not exist is a clear error, not a traceback."""
    with pytest.raises(RunbookError, match="cannot read runbook"):
        load_runbook(tmp_path / "nope.yaml")


def test_unset_environment_variable_is_named(tmp_path: Path) -> None:
    """A ${VAR} without default that is unset is named in the error."""
    path = _write(tmp_path, GOOD.replace("name: lab\n", "name: ${DRORCH_NO_SUCH_VAR}\n"))
    with pytest.raises(RunbookError, match="DRORCH_NO_SUCH_VAR"):
        load_runbook(path)


def test_two_databases_cannot_share_a_conflict_file() -> None:
    """Their reconcile steps run side by side: one file would lose one side's entries."""
    from pydantic import ValidationError

    from drorch.config import Runbook

    doc = load_runbook(LAB_RUNBOOK).model_dump()
    doc["databases"][0]["reconcile"]["conflict_file"] = "/tmp/conflicts.jsonl"
    second = {**doc["databases"][0], "name": "second"}
    doc["databases"].append(second)
    with pytest.raises(ValidationError, match="more than one database"):
        Runbook.model_validate(doc)
