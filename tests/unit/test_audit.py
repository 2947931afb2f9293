"""Tests for drorch.audit: the hash chain, tamper detection, redaction on disk, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import structlog
from structlog.testing import capture_logs

from drorch.audit import (
    GENESIS,
    TORN_TAIL_ACTION,
    AuditError,
    AuditLog,
    canonical,
    entry_hash,
    export,
    seal,
    verify,
)
from drorch.redact import Redactor

N = 6


def _make_log(tmp_path: Path, n: int = N) -> Path:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(1, n + 1):
        log.record(
            f"step.s{i}.applied",
            actor="auto" if i % 2 else "alice",
            incident="inc-1",
            reason=f"reason {i}",
            inputs={"i": i, "region": "region-b"},
            outcome="ok",
            detail={"lsn": f"0/{i:X}"},
        )
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _line(entry: dict) -> bytes:
    return canonical(entry).encode() + b"\n"


def _append_many(path: str, tag: str, count: int, go: Any) -> None:
    log = AuditLog(Path(path))
    go.wait(30)  # a barrier: both writers start together, so their appends overlap
    for i in range(count):
        log.record("test.concurrent.append", actor=tag, inputs={"tag": tag, "i": i})


def _record_then_die(path: str) -> None:
    AuditLog(Path(path)).record("test.kill.after_record", actor="auto", inputs={"k": 1})
    os.kill(os.getpid(), signal.SIGKILL)


def test_intact_log_verifies_and_chains(tmp_path: Path) -> None:
    """An untouched log verifies, with seq 1..n, each prev the hash before it, UTC timestamps."""
    path = _make_log(tmp_path)
    result = verify(path)
    entries = export(path)
    assert result.ok and result.entries == N and result.first_bad_line is None
    assert result.head == entries[-1]["hash"] == AuditLog(path).head()
    assert [e["seq"] for e in entries] == list(range(1, N + 1))
    assert entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    ts = datetime.fromisoformat(entries[0]["ts"])
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0
    assert len(entries[0]["ts"].split(".")[1].split("+")[0]) == 6
    assert f"{N} entries" in result.message()


def test_record_returns_exactly_what_is_on_disk(tmp_path: Path) -> None:
    """The dict record() returns equals the line written, which is the entry's canonical form."""
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    returned = [
        log.record("step.freeze.applied", actor="auto", inputs={"when": datetime(2024, 1, 1)}),
        log.record("operator.failover.requested", actor="bob", reason="drill", outcome="refused"),
    ]
    assert export(path) == returned
    assert _lines(path) == [_line(e) for e in returned]
    assert returned[0]["inputs"]["when"] == "2024-01-01 00:00:00"
    assert entry_hash(returned[1]) == returned[1]["hash"]


@pytest.mark.parametrize("lineno", [1, 3, N])
@pytest.mark.parametrize(
    "field,value",
    [("outcome", "failed"), ("actor", "mallory"), ("inputs", {"i": 99}), ("ts", "2000-01-01")],
)
def test_edited_entry_is_detected_at_its_line(
    tmp_path: Path, lineno: int, field: str, value: object
) -> None:
    """Changing any field of any entry (hash left as is) breaks the log at that line."""
    path = _make_log(tmp_path)
    lines = _lines(path)
    entry = json.loads(lines[lineno - 1])
    entry[field] = value
    lines[lineno - 1] = _line(entry)
    _write_lines(path, lines)
    result = verify(path)
    assert not result.ok
    assert result.first_bad_line == lineno
    assert result.entries == lineno - 1
    assert "altered" in (result.problem or "")
    assert f"line {lineno}" in result.message()


def test_edited_and_rehashed_entry_is_detected_at_the_next_line(tmp_path: Path) -> None:
    """An edit whose own hash is recomputed still breaks the chain at the following entry."""
    path = _make_log(tmp_path)
    lines = _lines(path)
    entry = json.loads(lines[2])
    entry["outcome"] = "failed"
    entry["hash"] = entry_hash(entry)
    lines[2] = _line(entry)
    _write_lines(path, lines)
    result = verify(path)
    assert (result.ok, result.first_bad_line) == (False, 4)
    assert "chain" in (result.problem or "")


def test_deleted_middle_entry_is_detected(tmp_path: Path) -> None:
    """Removing line 3 makes line 3 (formerly 4) the first bad line."""
    path = _make_log(tmp_path)
    lines = _lines(path)
    del lines[2]
    _write_lines(path, lines)
    result = verify(path)
    assert (result.ok, result.first_bad_line, result.entries) == (False, 3, 2)


def test_swapped_entries_are_detected(tmp_path: Path) -> None:
    """Swapping lines 2 and 3 breaks the log at line 2."""
    path = _make_log(tmp_path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(path, lines)
    result = verify(path)
    assert (result.ok, result.first_bad_line) == (False, 2)


def test_duplicated_entry_is_detected(tmp_path: Path) -> None:
    """Inserting a copy of entry 2 at line 4 breaks the log at line 4."""
    path = _make_log(tmp_path)
    lines = _lines(path)
    lines.insert(3, lines[1])
    _write_lines(path, lines)
    result = verify(path)
    assert (result.ok, result.first_bad_line) == (False, 4)


def test_well_forged_insert_is_detected_at_the_entry_after_it(tmp_path: Path) -> None:
    """A forged entry with a correct seq, prev and hash is exposed by the genuine entry after it."""
    path = _make_log(tmp_path)
    lines = _lines(path)
    before = json.loads(lines[2])
    forged_body = {k: v for k, v in before.items() if k not in ("seq", "prev", "hash")}
    forged_body["action"] = "operator.approval.given"
    forged = seal(forged_body, seq=before["seq"] + 1, prev=before["hash"])
    lines.insert(3, _line(forged))
    _write_lines(path, lines)
    result = verify(path)
    assert (result.ok, result.first_bad_line) == (False, 5)


def test_non_json_and_empty_lines_are_detected(tmp_path: Path) -> None:
    """A line that is not JSON, or is empty, is named as the first bad line."""
    path = _make_log(tmp_path)
    lines = _lines(path)
    _write_lines(path, lines[:2] + [b"{not json\n"] + lines[2:])
    result = verify(path)
    assert (result.ok, result.first_bad_line) == (False, 3)
    assert "not valid JSON" in (result.problem or "")
    _write_lines(path, lines[:4] + [b"\n"] + lines[4:])
    assert verify(path).first_bad_line == 5


def test_truncation_needs_expected_head(tmp_path: Path) -> None:
    """Cutting the last entry passes the chain check but fails against the stored head."""
    path = _make_log(tmp_path)
    full = verify(path)
    earlier_head = export(path)[2]["hash"]
    _write_lines(path, _lines(path)[:-1])
    assert verify(path).ok  # the documented limitation of a bare chain
    result = verify(path, expected_head=full.head)
    assert not result.ok
    assert (result.entries, result.first_bad_line) == (N - 1, N)
    assert "expected head" in (result.problem or "")
    assert verify(path, expected_head=earlier_head).ok  # later entries are allowed


def test_emptied_log_fails_against_expected_head(tmp_path: Path) -> None:
    """A log emptied entirely is caught with the expected head; a missing file never verifies."""
    path = _make_log(tmp_path)
    head = AuditLog(path).head()
    path.write_bytes(b"")
    assert verify(path).ok and verify(path).entries == 0
    assert not verify(path, expected_head=head).ok
    assert not verify(tmp_path / "missing.jsonl").ok


def test_torn_last_line_is_reported_then_set_aside(tmp_path: Path) -> None:
    """A last line without newline fails verify; the next record saves it aside and chains on."""
    path = _make_log(tmp_path, 3)
    fragment = b'{"action":"step.dns.applied","seq":4,"ts":"20'
    with open(path, "ab") as f:
        f.write(fragment)
    result = verify(path)
    assert (result.ok, result.first_bad_line) == (False, 4)
    assert "torn" in (result.problem or "")

    entry = AuditLog(path).record("step.dns.applied", actor="auto")
    entries = export(path)
    torn = entries[3]
    assert verify(path).ok and verify(path).entries == 5
    assert torn["action"] == TORN_TAIL_ACTION and entry["seq"] == 5
    assert Path(torn["detail"]["saved_to"]).read_bytes() == fragment
    assert torn["detail"]["bytes"] == len(fragment)
    assert fragment not in path.read_bytes()


def test_refuses_to_chain_onto_a_bad_last_line(tmp_path: Path) -> None:
    """A complete last line that is not a sealed entry stops record() and changes nothing."""
    path = _make_log(tmp_path, 2)
    with open(path, "ab") as f:
        f.write(b'{"seq": 3}\n')
    before = path.read_bytes()
    with pytest.raises(AuditError, match="refusing"):
        AuditLog(path).record("step.validate.applied", actor="auto")
    assert path.read_bytes() == before


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    """Known secret values and secret-looking keys are redacted before hashing and writing."""
    secret = "Pa55/w0rd&x"
    redactor = Redactor()
    path = tmp_path / "a.jsonl"
    log = AuditLog(path, redactor)
    redactor.add(secret)  # learned after the log was opened
    log.record(
        "step.secrets.applied",
        actor="auto",
        reason=f"rotated to {secret}",
        inputs={
            "SecretId": "app/db",
            "dsn": f"host=127.0.0.1 user=app password={secret}",
            "url": f"postgresql://app:{quote(secret, safe='')}@127.0.0.1/app",
            "nested": [{"SecretString": json.dumps({"password": secret})}],
            "api_token": "tok-123456",
        },
        detail={"error": RuntimeError(f"connect failed with {secret}")},
    )
    raw = path.read_bytes()
    for needle in (secret, quote(secret, safe=""), "tok-123456"):
        assert needle.encode() not in raw
    entry = export(path)[0]
    assert entry["inputs"]["SecretId"] == "app/db"
    assert entry["inputs"]["api_token"] == "***"
    assert entry["inputs"]["dsn"] == "host=127.0.0.1 user=app password=***"
    assert verify(path).ok


def test_invalid_names_are_rejected_and_nothing_written(tmp_path: Path) -> None:
    """A malformed action, empty actor or odd outcome raises ValueError before any write."""
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    with pytest.raises(ValueError):
        log.record("Promote Now", actor="auto")
    with pytest.raises(ValueError):
        log.record("step.promote.applied", actor=" ")
    with pytest.raises(ValueError):
        log.record("step.promote.applied", actor="auto", outcome="OK!")
    assert not path.exists() or path.read_bytes() == b""


def test_global_structlog_config_is_neither_used_nor_changed(tmp_path: Path) -> None:
    """Entries reach the file even while global structlog is captured, and config is unchanged."""
    before = structlog.get_config()
    path = tmp_path / "a.jsonl"
    with capture_logs() as captured:
        AuditLog(path).record("step.freeze.applied", actor="auto")
    assert [e["action"] for e in export(path)] == ["step.freeze.applied"]
    assert not any(e.get("action") == "step.freeze.applied" for e in captured)
    assert structlog.get_config() == before


def test_two_processes_appending_do_not_interleave(tmp_path: Path) -> None:
    """Two processes appending 200 entries each leave one valid chain of 400 entries."""
    path = tmp_path / "a.jsonl"
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_many, args=(str(path), t, 200, go)) for t in ("p1", "p2")]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    result = verify(path)
    assert result.ok, result.message()
    assert result.entries == 400
    entries = export(path)
    for tag in ("p1", "p2"):
        assert sorted(e["inputs"]["i"] for e in entries if e["actor"] == tag) == list(range(200))


def test_entry_survives_kill_9_right_after_record(tmp_path: Path) -> None:
    """An entry whose record() returned is on disk even if the process is killed at once."""
    path = tmp_path / "a.jsonl"
    proc = multiprocessing.get_context("spawn").Process(target=_record_then_die, args=(str(path),))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert [e["action"] for e in export(path)] == ["test.kill.after_record"]
    assert verify(path).ok


def test_clock_is_injectable_and_converted_to_utc(tmp_path: Path) -> None:
    """The timestamp comes from the given clock, written in UTC with microseconds."""
    fixed = datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    entry = AuditLog(tmp_path / "a.jsonl", clock=lambda: fixed).record("x.y", actor="auto")
    assert entry["ts"] == "2024-05-01T10:00:00.000005+00:00"
    assert datetime.fromisoformat(entry["ts"]) == fixed.astimezone(UTC)
