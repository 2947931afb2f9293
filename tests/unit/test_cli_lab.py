"""`drorch lab` commands a new user meets: `down --purge` starts clean, `up` refuses a
journal left by an earlier lab that contradicts a fresh one, and fault commands end
in one sentence, never a traceback. No lab is started here."""

from __future__ import annotations

from pathlib import Path

import pytest

from drorch.exitcodes import ExitCode
from drorch.lab import faults, lab
from tests.unit.cli_rig import Rig, rig


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return rig(tmp_path, monkeypatch)


def test_down_purge_deletes_the_state_directory(r: Rig) -> None:
    """Without --purge the journal and audit log stay; with it they are gone."""
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == 0
    kept = r.cli("lab", "down")
    assert kept.exit_code == 0 and (r.state / "journal.db").exists()
    purged = r.cli("lab", "down", "--purge")
    assert purged.exit_code == 0 and f"purged {r.state}" in purged.output
    assert not r.state.exists()


def test_up_refuses_a_journal_from_an_earlier_lab(r: Rig,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal saying region-b serves would steer a fresh lab wrong: `lab up` and
    `lab drill` refuse (exit 3) and name `lab down --purge`, before starting anything."""
    def must_not_start(*_: object, **__: object) -> None:
        raise AssertionError("the lab was started")

    monkeypatch.setattr(lab, "up", must_not_start)
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == 0
    for command in ("up", "drill"):
        result = r.cli("lab", command)
        assert result.exit_code == ExitCode.REFUSED, result.output
        assert "writes are served by region-b" in result.stderr
        assert "drorch lab down --purge" in result.stderr


def test_fault_commands_fail_in_one_sentence(r: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault refused (no lab) and an unexpected error both exit 1 with one line
    naming the problem, no traceback."""
    for command in (["fail", "region-a"], ["heal", "region-a"]):
        result = r.cli("lab", *command)
        assert result.exit_code == ExitCode.FAILED
        assert "the lab is not up" in result.stderr and "Traceback" not in result.stderr

    def broken(*_: object, **__: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(faults, "heal", broken)
    result = r.cli("lab", "heal", "region-a")
    assert result.exit_code == ExitCode.FAILED
    assert result.stderr.strip() == "lab heal: OSError: [Errno 28] No space left on device"
    assert r.cli("lab", "fail", "region-a", "--mode", "melt").exit_code == ExitCode.USAGE
