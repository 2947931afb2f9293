"""``drorch.archive.verify.check``: what the archived objects alone show, from a real
hash-chained log cut into segments as ``audit ship`` cuts it."""

from __future__ import annotations

import json
from pathlib import Path

from drorch.archive.layout import ArchiveUrl, head_key, report_key, segment_key
from drorch.archive.verify import check
from drorch.audit import AuditLog


def _archive(tmp_path: Path, n: int = 5, cut: int = 3) -> tuple[dict[str, bytes], list[str]]:
    """Entries 1..cut and cut+1..n as two segments with their heads, plus one report."""
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.record("watch.verdict", actor="auto", reason=f"tick {i}")
    lines = log.path.read_bytes().splitlines(keepends=True)
    hashes = [json.loads(line)["hash"] for line in lines]

    def head(seq: int) -> bytes:
        return json.dumps({"format": "drorch-audit-head/1", "runbook": "lab", "seq": seq,
                           "hash": hashes[seq - 1]}).encode()

    report = json.dumps({"incident_id": "inc-1", "audit": {"head": hashes[1]}}).encode()
    return {segment_key(1, cut): b"".join(lines[:cut]), head_key(cut): head(cut),
            segment_key(cut + 1, n): b"".join(lines[cut:]), head_key(n): head(n),
            report_key("inc-1", report): report}, hashes


def test_an_intact_archive_verifies(tmp_path: Path) -> None:
    objects, hashes = _archive(tmp_path)
    result = check(objects, expected_head=hashes[2])
    assert result.ok, result.problems
    assert (result.entries, result.heads, result.reports, result.head) == (5, 2, 1, hashes[-1])


def test_each_kind_of_damage_is_named(tmp_path: Path) -> None:
    """Altered, reordered and missing entries, a gap, a head that is not the chain's, no
    head for the newest entries, a planted object, a report from elsewhere."""
    objects, _ = _archive(tmp_path)
    first, second = segment_key(1, 3), segment_key(4, 5)

    altered = dict(objects)
    altered[first] = objects[first].replace(b"tick 1", b"tick 9")
    assert check(altered).problems[0] == f"{first} line 2 was altered: its hash does not " \
        "match its content"

    lines = objects[first].splitlines(keepends=True)
    swapped = dict(objects, **{first: lines[1] + lines[0] + lines[2]})
    assert "has seq 2, expected 1" in check(swapped).problems[0]

    gap = {k: v for k, v in objects.items() if k != first}
    assert check(gap).problems[0] == f"{second}: starts at entry 4, expected 1 (a gap in the " \
        "chain)"

    short = dict(objects, **{second: objects[second].splitlines(keepends=True)[0]})
    assert f"{second}: its name says entries 4-5, it holds 4-4" in check(short).problems

    headless = {k: v for k, v in objects.items() if k != head_key(5)}
    assert "entries 4-5 come after the newest head" in check(headless).problems[0]

    wrong_head = dict(objects, **{head_key(3): objects[head_key(5)]})
    assert any(p.startswith(f"{head_key(3)}: head") for p in check(wrong_head).problems)

    planted = dict(objects, **{"chain/notes.txt": b"x"})
    assert check(planted).problems == ["chain/notes.txt: not an object the archive's layout "
                                       "names"]

    foreign = json.dumps({"incident_id": "inc-1", "audit": {"head": "a" * 64}}).encode()
    stray = dict(objects, **{report_key("inc-1", foreign): foreign})
    assert any("is not an entry of the chain" in p for p in check(stray).problems)
    assert not check(objects, expected_head="b" * 64).ok


def test_archive_urls() -> None:
    url = ArchiveUrl.parse("s3://drorch-audit/prod/app/")
    assert (url.bucket, url.prefix, str(url)) == ("drorch-audit", "prod/app/",
                                                  "s3://drorch-audit/prod/app/")
    assert ArchiveUrl.parse("s3://drorch-audit").prefix == ""
    for bad in ("s3://", "https://x/y", "s3://A_b/x"):
        try:
            ArchiveUrl.parse(bad)
        except ValueError as exc:
            assert "is not s3://BUCKET[/PREFIX]" in str(exc)
        else:
            raise AssertionError(bad)
