"""Bad input to `audit ship`, `audit verify s3://...`, `lab alarm` and `lab drill
--trigger` is refused at once (exit 2, one sentence), before any AWS call or lab."""

from __future__ import annotations

from pathlib import Path

import pytest

from drorch.exitcodes import ExitCode
from drorch.lab import lab
from tests.conftest import LAB_RUNBOOK
from tests.unit.cli_rig import Rig, rig


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    def must_not_start(*_: object, **__: object) -> None:
        raise AssertionError("the lab was started")

    monkeypatch.setattr(lab, "up", must_not_start)
    return rig(tmp_path, monkeypatch)


def _without(tmp_path: Path, section: str) -> Path:
    """runbooks/lab.yaml without one top-level section (or health key) and its block."""
    out, skipping = [], False
    for line in LAB_RUNBOOK.read_text().splitlines(keepends=True):
        if line.startswith(section):
            skipping = True
            continue
        if skipping and line.startswith(" " * (len(section) - len(section.lstrip()) + 1)):
            continue
        skipping = False
        out.append(line)
    path = tmp_path / "variant.yaml"
    path.write_text("".join(out))
    return path


def test_audit_ship_needs_an_archive_and_a_log(r: Rig, tmp_path: Path) -> None:
    no_archive = _without(tmp_path, "audit:")
    result = r.cli("audit", "ship", "-r", str(no_archive))
    assert result.exit_code == ExitCode.USAGE
    assert "has no audit.archive: give --bucket" in result.stderr
    bad = r.cli("audit", "ship", "--bucket", "s3://No_Such", "--retention-days", "1")
    assert bad.exit_code == ExitCode.USAGE and "is not s3://BUCKET[/PREFIX]" in bad.stderr
    nothing = r.cli("audit", "ship")
    assert nothing.exit_code == ExitCode.NOTHING_TO_DO and "no audit log to ship" in (
        nothing.stderr)
    assert not (r.state / "audit.jsonl").exists()


def test_audit_verify_of_a_bad_archive_url_is_bad_input(r: Rig) -> None:
    result = r.cli("audit", "verify", "s3://x")
    assert result.exit_code == ExitCode.USAGE and "Traceback" not in result.stderr


def test_lab_alarm_and_drill_trigger_arguments(r: Rig, tmp_path: Path) -> None:
    assert r.cli("lab", "alarm", "region-z").exit_code == ExitCode.USAGE
    state = r.cli("lab", "alarm", "region-a", "--state", "MAYBE")
    assert state.exit_code == ExitCode.USAGE and "--state must be ALARM or OK" in state.stderr
    trigger = r.cli("lab", "drill", "--trigger", "smoke")
    assert trigger.exit_code == ExitCode.USAGE and "--trigger must be one of" in trigger.stderr
    no_alarms = _without(tmp_path, "  alarm_regions:")
    unwired = r.cli("lab", "drill", "--trigger", "alarm", "-r", str(no_alarms))
    assert unwired.exit_code == ExitCode.USAGE
    assert "wires no alarm for region-a" in unwired.stderr
    assert r.audit() == []
