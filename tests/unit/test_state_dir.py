"""The state directory never depends on the current directory: relative to the runbook
file, or a per-user default; so the journal (who serves writes) is the same one from
wherever drorch runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drorch.config import load_runbook
from drorch.exitcodes import ExitCode
from drorch.state_dir import default_state_dir, resolve_state_dir
from tests.conftest import LAB_RUNBOOK
from tests.unit.cli_rig import Rig, rig


def test_relative_to_the_runbook_absolute_as_is_default_per_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`state` beside the runbook, an absolute path kept, none: $XDG_STATE_HOME (or
    ~/.local/state) /drorch/<runbook>."""
    assert resolve_state_dir("state", "lab", tmp_path / "rb") == str(tmp_path / "rb" / "state")
    assert resolve_state_dir("/srv/drorch", "lab", tmp_path) == "/srv/drorch"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_state_dir(None, "lab", tmp_path) == str(tmp_path / "xdg" / "drorch" / "lab")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir("lab") == Path.home() / ".local" / "state" / "drorch" / "lab"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert default_state_dir("lab") == Path.home() / ".local" / "state" / "drorch" / "lab"


def test_the_lab_runbook_without_drorch_state_dir_uses_the_per_user_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """runbooks/lab.yaml loaded from any directory: the same absolute state directory."""
    monkeypatch.delenv("DRORCH_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    here = load_runbook(LAB_RUNBOOK).state_dir
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_runbook(LAB_RUNBOOK).state_dir == here == str(tmp_path / "xdg/drorch/lab")


def test_status_from_another_directory_sees_the_same_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runbook naming a relative state_dir: a failover run from one directory, then
    `status` from another, says region-b serves (the journal was found)."""
    r: Rig = rig(tmp_path, monkeypatch)
    monkeypatch.delenv("DRORCH_STATE_DIR")
    book = tmp_path / "books" / "lab.yaml"
    book.parent.mkdir()
    book.write_text(LAB_RUNBOOK.read_text().replace("${DRORCH_STATE_DIR:-}", "state"))
    monkeypatch.setenv("DRORCH_RUNBOOK", str(book))
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert r.cli("failover", "--reason", "x", "--yes").exit_code == ExitCode.OK
    monkeypatch.chdir(tmp_path / "b")
    status = r.cli("status")
    assert "writes served by region-b" in status.output
    assert os.listdir(tmp_path / "a") == [] and os.listdir(tmp_path / "b") == []
    assert (tmp_path / "books" / "state" / "journal.db").exists()
