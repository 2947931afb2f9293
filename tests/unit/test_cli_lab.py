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


def test_down_purge_deletes_only_what_drorch_wrote(r: Rig) -> None:
    """A file of someone else's in the state directory survives, and so does the
    directory holding it."""
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == 0
    (r.state / "notes.txt").write_text("mine")
    purged = r.cli("lab", "down", "--purge")
    assert purged.exit_code == 0
    assert sorted(p.name for p in r.state.iterdir()) == ["notes.txt"]
    assert "notes.txt" in purged.output


def test_down_purge_refuses_a_runbook_that_is_not_the_labs(r: Rig, tmp_path: Path) -> None:
    """--purge deletes a journal and an audit log: never on a production runbook."""
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == 0
    text = (Path(__file__).resolve().parents[2] / "runbooks" / "lab.yaml").read_text()
    prod = tmp_path / "prod.yaml"
    prod.write_text(text.split("\nlab:")[0] + "\n")
    refused = r.cli("lab", "down", "--purge", "-r", str(prod))
    assert refused.exit_code == ExitCode.REFUSED, refused.output
    assert "not a lab runbook" in refused.stderr
    assert (r.state / "journal.db").exists() and (r.state / "audit.jsonl").exists()


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


@pytest.mark.parametrize("command", [("fail", "region-z"), ("heal", "region-z")])
def test_an_unknown_region_is_bad_input(r: Rig, command: tuple[str, ...]) -> None:
    """A region the runbook does not name: exit 2, one sentence naming the real ones,
    nothing audited."""
    result = r.cli("lab", *command)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "unknown region 'region-z'" in result.stderr and "region-a" in result.stderr
    assert r.audit() == []
