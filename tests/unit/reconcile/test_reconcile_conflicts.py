"""The conflict file a human resolves: validation, atomic writes, resolutions kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from drorch.reconcile import conflicts


def _doc(run: str = "db@2:0/3000000", resolution: str | None = None) -> conflicts.ConflictFile:
    return conflicts.ConflictFile(run_id=run, database="db", conflicts=[
        conflicts.ConflictEntry(change_id="c1", table="public.t", key={"id": 1}, kind="conflict",
                                reason="both", columns=["v"], old={"v": "a"}, new={"v": "b"},
                                new_fingerprint="f", resolution=resolution),  # type: ignore[arg-type]
        conflicts.ConflictEntry(change_id="c2", table="public.t", key={"id": 2}, kind="conflict",
                                reason="both", columns=["v"], new_fingerprint="g")])


def test_round_trip_and_instructions(tmp_path: Path) -> None:
    """What is written loads back equal, with instructions for the human."""
    path = tmp_path / "c.json"
    conflicts.write(path, _doc())
    loaded = conflicts.load(path)
    assert loaded == _doc() and "resolution" in loaded.instructions
    assert not list(tmp_path.glob("*.tmp"))


def test_rewrite_keeps_resolutions_of_the_same_run_unless_reset(tmp_path: Path) -> None:
    """A rerun must not erase what a human chose; a stale entry is reset for a new look."""
    path = tmp_path / "c.json"
    conflicts.write(path, _doc(resolution="old"))
    conflicts.write(path, _doc())
    assert conflicts.load(path).conflicts[0].resolution == "old"
    conflicts.write(path, _doc(), reset=frozenset({"c1"}))
    assert conflicts.load(path).conflicts[0].resolution is None
    conflicts.write(path, _doc(run="other@3:0/1", resolution=None))
    assert conflicts.load(path).conflicts[0].resolution is None


def test_another_runs_file_is_kept_aside_never_overwritten(tmp_path: Path) -> None:
    """A second incident (or a second database) writing the same path must not erase
    the pending entries of the first: that file moves to ``<stem>.<run>.json``."""
    path = tmp_path / "c.json"
    conflicts.write(path, _doc(run="db@2:0/3000000", resolution="old"))
    conflicts.write(path, _doc(run="db@3:0/5000000"))
    conflicts.write(path, _doc(run="db@4:0/7000000"))
    aside = sorted(p.name for p in tmp_path.glob("c.*.json"))
    assert aside == ["c.db_2_0_3000000.json", "c.db_3_0_5000000.json"]
    first = conflicts.load(tmp_path / "c.db_2_0_3000000.json")
    assert first.run_id == "db@2:0/3000000" and first.conflicts[0].resolution == "old"
    assert conflicts.load(path).run_id == "db@4:0/7000000"
    path.write_text("{not json")
    conflicts.write(path, _doc())
    assert (tmp_path / "c.unreadable.json").read_text() == "{not json"


def test_only_old_or_new_are_resolutions_and_unknown_fields_fail(tmp_path: Path) -> None:
    """A typo in a resolution or an extra field is refused, not ignored."""
    path = tmp_path / "c.json"
    conflicts.write(path, _doc())
    text = path.read_text()
    path.write_text(text.replace('"resolution":null', '"resolution": "olde"', 1))
    with pytest.raises(ValueError, match=r"(?s)c.json:2: .*resolution"):
        conflicts.load(path)
    path.write_text(text.replace('"resolution":null', '"resolution":null, "x": 1', 1))
    with pytest.raises(ValueError, match=r"(?s)c.json:2: .*Extra inputs"):
        conflicts.load(path)
