"""The CLI's contract with scripts and on-call engineers: each exit code, the
confirmation of irreversible commands, the audit's actor after a resume and for a
refused request, the report's audit head, ``audit verify``'s defaults, ``--version``.

In-process on the real engine, journal and audit log (``tests.unit.cli_rig``: only the
steps' world is replaced)."""

from __future__ import annotations

import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from drorch import confirm
from drorch.exitcodes import ExitCode
from tests.conftest import LAB_RUNBOOK
from tests.unit.cli_rig import Rig, rig


@pytest.fixture
def r(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return rig(tmp_path, monkeypatch)


def _failover(r: Rig, *extra: str) -> object:
    return r.cli("failover", "--reason", "drill", "--actor", "alice", "--yes", *extra)


def test_every_exit_code_has_a_meaning_in_help() -> None:
    """`drorch --help` lists each code with its meaning (from one table)."""
    from typer.testing import CliRunner

    from drorch.cli import app

    shown = " ".join(CliRunner().invoke(app, ["--help"]).output.replace("│", " ").split())
    for code in ExitCode:
        assert f"{int(code)} {code.name.lower()}:" in shown


def test_version(r: Rig) -> None:
    """`--version` prints the installed package's version and exits 0."""
    result = r.cli("--version")
    assert result.exit_code == ExitCode.OK
    assert result.output.strip() == f"drorch {version('drorch')}"


def test_without_yes_and_without_a_terminal_nothing_happens(r: Rig) -> None:
    """No terminal to ask on and no --yes: exit 2 at once, no step, no state directory."""
    for args in (["failover", "--reason", "x"], ["drill"]):
        result = r.cli(*args)
        assert result.exit_code == ExitCode.USAGE, result.output
        assert "pass --yes" in result.stderr
    assert r.applied == [] and not r.state.exists()


def test_the_prompt_names_runbook_regions_and_what_cannot_be_undone(
        r: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the prompt says what is at stake; anything but `yes` exits 8 and
    does nothing; `yes` goes on."""
    monkeypatch.setattr(confirm, "stdin_is_terminal", lambda: True)
    declined = r.cli("failover", "--reason", "x", input="y\n")
    assert declined.exit_code == ExitCode.NOT_CONFIRMED
    prompt = " ".join(declined.stderr.split())
    assert f"runbook lab ({LAB_RUNBOOK})" in prompt
    assert "writes move from region-a to region-b" in prompt
    assert "Cannot be undone: the promotion of region-b" in prompt
    assert r.applied == []
    accepted = r.cli("failover", "--reason", "x", input="yes\n")
    assert accepted.exit_code == ExitCode.OK, accepted.output
    assert "promote:main" in r.applied


def test_reason_is_required_and_marked_so(r: Rig) -> None:
    """No --reason: exit 2; --help says it is required."""
    assert r.cli("failover", "--yes").exit_code == ExitCode.USAGE
    shown = " ".join(r.cli("failover", "--help").output.replace("│", " ").split())
    assert "--reason <str> Required (except with --dry-run)" in shown


def test_a_completed_failover_exits_0_and_writes_its_report(r: Rig) -> None:
    """Exit 0; the report (JSON and Markdown) is in <state_dir>/reports/ and carries
    the audit log's path and the head after the incident's last entry."""
    result = _failover(r)
    assert result.exit_code == ExitCode.OK, result.output
    (report_file,) = (r.state / "reports").glob("*.json")
    report = json.loads(report_file.read_text())
    assert report_file.with_suffix(".md").exists()
    entries = r.audit()
    last = [e for e in entries if e["incident"] == report["incident_id"]][-1]
    assert report["audit"] == {"path": str(r.state / "audit.jsonl"), "head": last["hash"]}


def test_a_refused_failover_exits_3_and_is_audited(r: Rig) -> None:
    """A second failover while failed over: exit 3, nothing run, and the audit names
    who asked, why, and the refusal."""
    assert _failover(r).exit_code == ExitCode.OK
    ran = list(r.applied)
    again = r.cli("failover", "--reason", "again", "--actor", "bob", "--yes")
    assert again.exit_code == ExitCode.REFUSED
    assert "already failed over to region-b" in again.stderr
    assert r.applied == ran
    refused = [e for e in r.audit() if e["action"] == "incident.refused"]
    assert [(e["actor"], e["reason"], e["outcome"]) for e in refused] == [
        ("bob", "again", "refused")]
    assert "already failed over" in refused[0]["detail"]["refusal"]


def test_a_failback_with_no_failover_in_force_exits_6(r: Rig) -> None:
    """Nothing to fail back from is "nothing to do", not a failure; --dry-run says so
    too, with no plan in the wrong direction."""
    assert r.cli("failback", "--reason", "x", "--yes").exit_code == ExitCode.NOTHING_TO_DO
    dry = r.cli("failback", "--dry-run")
    assert dry.exit_code == ExitCode.NOTHING_TO_DO
    assert "nothing to fail back from" in dry.output and "fence:main" not in dry.output


def test_a_failure_before_promotion_exits_4(r: Rig) -> None:
    """The promotion fails before it is requested: rolled back, exit 4."""
    r.failing.add("promote:main")
    result = _failover(r)
    assert result.exit_code == ExitCode.ROLLED_BACK
    assert "rolled back" in result.stderr


def test_halted_exits_5_status_says_so_and_resume_names_the_resumer(r: Rig) -> None:
    """A failure after promotion halts (exit 5); `status` exits 5 while it is halted;
    `resume` by bob finishes it and every audit entry from the resume on names bob;
    afterwards there is nothing to resume (exit 6) and status exits 0."""
    r.failing.add("dns:lab.drorch.test.")
    assert _failover(r).exit_code == ExitCode.HALTED
    status = r.cli("status")
    assert status.exit_code == ExitCode.HALTED
    assert "is halted" in status.output
    before = len(r.audit())
    r.failing.clear()
    resumed = r.cli("resume", "--actor", "bob", "--reason", "DNS fixed", "--yes")
    assert resumed.exit_code == ExitCode.OK, resumed.output
    after = r.audit()[before:]
    assert after[0]["action"] == "incident.resumed"
    assert after[0]["inputs"]["opened_by"] == "alice" and after[0]["reason"] == "DNS fixed"
    assert {e["actor"] for e in after} == {"bob"}
    assert any(e["action"] == "step.dns.applied" for e in after)
    assert r.cli("resume", "--yes").exit_code == ExitCode.NOTHING_TO_DO
    assert r.cli("status").exit_code == ExitCode.OK


def test_resume_asks_for_confirmation_too(r: Rig) -> None:
    """A halted incident is not resumed without --yes when there is no terminal."""
    r.failing.add("dns:lab.drorch.test.")
    _failover(r)
    r.failing.clear()
    assert r.cli("resume").exit_code == ExitCode.USAGE
    assert "dns:lab.drorch.test." not in r.applied


def test_a_drill_without_node_control_is_refused_before_anything(
        r: Rig, tmp_path: Path) -> None:
    """Without node control (no endpoints.*.node) a drill would fail over for real and
    stop: refused (exit 3), audited, nothing run."""
    text = re.sub(r",\s*node: \{[^}]*\}", "", LAB_RUNBOOK.read_text())
    assert "node: {" not in text.split("\nlab:")[0]
    real = tmp_path / "real.yaml"
    real.write_text(text.split("\nlab:")[0] + "\n")
    result = r.cli("drill", "--yes", "-r", str(real))
    assert result.exit_code == ExitCode.REFUSED, result.output
    assert "node control" in result.stderr and r.applied == []
    assert "databases[main].endpoints.region-a.node.data_directory" in "".join(
        result.stderr.split())
    assert [e["action"] for e in r.audit()] == ["incident.refused"]


def test_audit_verify_defaults_to_the_runbooks_log_and_checks_the_expected_head(
        r: Rig) -> None:
    """`audit verify` with no path reads <state_dir>/audit.jsonl; --expected-head (a
    report's audit.head) finds entries cut off the end, which the chain cannot."""
    assert _failover(r).exit_code == ExitCode.OK
    head = json.loads(r.cli("report", "--output", "json").output)["audit"]["head"]
    assert r.cli("audit", "verify").exit_code == ExitCode.OK
    assert r.cli("audit", "verify", "--expected-head", head).exit_code == ExitCode.OK
    log = r.state / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-2]))  # still a valid chain, but cut short
    assert r.cli("audit", "verify").exit_code == ExitCode.OK
    cut = r.cli("audit", "verify", "--expected-head", head)
    assert cut.exit_code == ExitCode.FAILED
    assert "without reaching the expected head" in cut.stderr


def test_report_out_writes_a_file_and_output_chooses_the_format(r: Rig,
                                                                 tmp_path: Path) -> None:
    """`-o/--out` is a file; `--output` a format; a bad format exits 2; with no
    incident the report has nothing to do (exit 6)."""
    assert r.cli("report").exit_code == ExitCode.NOTHING_TO_DO
    _failover(r)
    target = tmp_path / "r.html"
    assert r.cli("report", "--output", "html", "-o", str(target)).exit_code == ExitCode.OK
    assert target.read_text().startswith("<!DOCTYPE html>")
    assert not (Path.cwd() / "json").exists()
    assert r.cli("report", "--output", "pdf").exit_code == ExitCode.USAGE


@pytest.mark.parametrize("command", [("status",), ("plan",), ("failover", "--dry-run"),
                                     ("report",), ("resume", "--yes"), ("lab", "up")])
def test_a_corrupt_journal_is_one_sentence_and_stays_as_it_was(
        r: Rig, command: tuple[str, ...]) -> None:
    """A journal that is not SQLite (or not drorch's) stops every command with exit 1 and
    a sentence naming it (``plan``: 2, not ready, since drorch cannot act without it); it
    is never replaced, and no traceback is printed."""
    r.state.mkdir(parents=True, exist_ok=True)
    journal = r.state / "journal.db"
    journal.write_bytes(b"\x00garbage, not a database\xff" * 100)
    before = journal.read_bytes()
    result = r.cli(*command)
    expected = ExitCode.NOT_READY if command == ("plan",) else ExitCode.FAILED
    assert result.exit_code == expected, result.output
    assert "journal unreadable" in result.stderr and str(journal) in "".join(
        result.stderr.split())
    assert "Traceback" not in result.output and journal.read_bytes() == before


def test_an_empty_journal_file_is_an_empty_journal(r: Rig) -> None:
    r.state.mkdir(parents=True, exist_ok=True)
    (r.state / "journal.db").write_bytes(b"")
    assert r.cli("status").exit_code == ExitCode.OK
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == ExitCode.OK


def test_report_out_is_a_file_and_a_bad_path_is_one_sentence(r: Rig, tmp_path: Path) -> None:
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == ExitCode.OK
    named = r.cli("report", "-o", "json")
    assert named.exit_code == ExitCode.USAGE and "--output json" in named.stderr
    missing = r.cli("report", "-o", str(tmp_path / "no" / "such" / "r.md"))
    assert missing.exit_code == ExitCode.USAGE and "Traceback" not in missing.output
    assert r.cli("report", "-o", str(tmp_path)).exit_code == ExitCode.USAGE
    by_suffix = r.cli("report", "-o", str(tmp_path / "r.json"))
    assert by_suffix.exit_code == ExitCode.OK
    assert json.loads((tmp_path / "r.json").read_text())["incident_id"]
    dash = r.cli("report", "-o", "-", "--output", "json")
    assert dash.exit_code == ExitCode.OK and json.loads(dash.stdout)["incident_id"]
