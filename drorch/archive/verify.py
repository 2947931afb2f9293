"""``drorch audit verify s3://BUCKET/PREFIX``: is the archive the log it claims to be?

``check`` (pure) takes the archive's objects (relative key -> bytes) and finds:
- a chain entry that was altered, removed, inserted or reordered (each entry's hash,
  ``seq`` and ``prev``, continued across segments), a segment whose name does not say
  which entries it holds, a gap or overlap between segments, a chain that does not start
  at entry 1;
- a head that does not match the chain's entry at its ``seq``, and entries after the
  newest head (a ship interrupted before its head: ship again), or no head at all;
- a report whose content does not match its name's SHA-256, or whose ``audit.head`` is
  not an entry of the chain (a report from another log, or the chain cut short);
- an object the layout does not name (planted);
- with ``expected_head`` (a head kept elsewhere, e.g. a report's ``audit.head``): its
  absence from the chain (the archive cut short or replaced).

``verify_archive`` reads the bucket (every version of every key under the prefix) and
adds what only the bucket shows: a key with more than one version or a delete marker (it
was overwritten or deleted after shipping: Object Lock keeps the shipped version, which
is named, but readers get the latest), and an object without COMPLIANCE retention. The
chain is checked on the *latest* versions, what a reader of the bucket gets.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drorch.adapters import s3
from drorch.archive.layout import (
    HEAD_FORMAT,
    ArchiveUrl,
    parse_head,
    parse_report,
    parse_segment,
)
from drorch.audit import GENESIS, check_entry


@dataclass
class ArchiveCheck:
    """What ``check``/``verify_archive`` found. ``entries``: chain entries that verified;
    ``head``: the chain's last hash; ``problems``: one sentence each, empty when intact."""

    entries: int = 0
    head: str | None = None
    reports: int = 0
    heads: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self, url: str) -> str:
        if self.ok:
            return (f"{url}: archive intact: {self.entries} audit entries, head {self.head}, "
                    f"{self.heads} head object(s), {self.reports} incident report(s)")
        return f"{url}: archive NOT intact ({len(self.problems)} problem(s)): " + "; ".join(
            self.problems)


def _chain(objects: Mapping[str, bytes], out: ArchiveCheck) -> dict[int, str]:
    """Check the segments in order; returns seq -> hash of every entry read."""
    segments = sorted((parse_segment(k), k) for k in objects if parse_segment(k))
    hashes: dict[int, str] = {}
    seq, prev = 0, GENESIS
    for (first, last), key in segments:  # type: ignore[misc]
        if first != seq + 1:
            out.problems.append(f"{key}: starts at entry {first}, expected {seq + 1} "
                                f"({'a gap' if first > seq + 1 else 'an overlap'} in the chain)")
            return hashes
        for n, raw in enumerate(objects[key].splitlines(keepends=True), start=1):
            try:
                entry: Any = json.loads(raw)
            except ValueError:
                entry = None
            problem = check_entry(entry, seq=seq + 1, prev=prev) if raw.endswith(b"\n") \
                else "is incomplete (no newline at its end)"
            if problem is not None:
                out.problems.append(f"{key} line {n} {problem}")
                return hashes
            seq, prev = entry["seq"], entry["hash"]
            hashes[seq] = prev
            out.entries += 1
        if seq != last:
            out.problems.append(f"{key}: its name says entries {first}-{last}, it holds "
                                f"{first}-{seq}")
            return hashes
    out.head = prev if seq else None
    return hashes


def _heads(objects: Mapping[str, bytes], hashes: Mapping[int, str],
           out: ArchiveCheck) -> None:
    heads = sorted((parse_head(k), k) for k in objects if parse_head(k) is not None)
    out.heads = len(heads)
    for seq, key in heads:
        try:
            doc = json.loads(objects[key])
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != HEAD_FORMAT:
            out.problems.append(f"{key} is not a head object ({HEAD_FORMAT})")
        elif doc.get("seq") != seq or hashes.get(seq) != doc.get("hash"):
            out.problems.append(f"{key}: head {doc.get('hash')} at entry {doc.get('seq')} is "
                                "not the chain's entry there")
    last = max(hashes, default=0)
    if not heads and last:
        out.problems.append("no head object: the chain's end cannot be checked")
    elif heads and heads[-1][0] is not None and heads[-1][0] < last:
        out.problems.append(f"entries {heads[-1][0] + 1}-{last} come after the newest head "
                            "(a ship was interrupted before its head: ship again)")


def _reports(objects: Mapping[str, bytes], hashes: Mapping[int, str],
             out: ArchiveCheck) -> None:
    chain = set(hashes.values())
    for key in sorted(k for k in objects if parse_report(k)):
        incident, digest = parse_report(key)  # type: ignore[misc]
        body = objects[key]
        if hashlib.sha256(body).hexdigest()[:16] != digest:
            out.problems.append(f"{key}: its content does not match its name (altered)")
            continue
        try:
            report = json.loads(body)
        except ValueError:
            out.problems.append(f"{key} is not JSON")
            continue
        if report.get("incident_id") != incident:
            out.problems.append(f"{key}: holds the report of {report.get('incident_id')!r}")
        head = (report.get("audit") or {}).get("head")
        if head and head not in chain:
            out.problems.append(f"{key}: its audit head {head} is not an entry of the chain")
        out.reports += 1


def check(objects: Mapping[str, bytes], expected_head: str | None = None) -> ArchiveCheck:
    """Everything the objects themselves show (see the module docstring). Pure."""
    out = ArchiveCheck()
    hashes = _chain(objects, out)
    _heads(objects, hashes, out)
    _reports(objects, hashes, out)
    for key in sorted(objects):
        if not (parse_segment(key) or parse_head(key) is not None or parse_report(key)):
            out.problems.append(f"{key}: not an object the archive's layout names")
    if expected_head is not None and expected_head not in hashes.values():
        out.problems.append(f"the expected head {expected_head} is not in the archived chain "
                            "(cut short or replaced)")
    return out


def verify_archive(client: Any, url: ArchiveUrl,
                   expected_head: str | None = None) -> ArchiveCheck:
    """Read every object under ``url`` and check it (``check``, plus versions and
    retention). Raises ``s3.ArchiveUnavailable`` when the bucket cannot be read."""
    versions = s3.list_versions(client, url.bucket, url.prefix)
    by_key: dict[str, list[s3.Version]] = defaultdict(list)
    for v in versions:
        by_key[url.relative(v.key)].append(v)
    problems: list[str] = []
    objects: dict[str, bytes] = {}
    for rel, vs in sorted(by_key.items()):
        latest = next((v for v in vs if v.is_latest), None)
        if len(vs) > 1 or any(v.delete_marker for v in vs):
            kept = ", ".join(v.version_id for v in vs if not v.delete_marker)
            problems.append(f"{rel}: {len(vs)} versions (overwritten or deleted after it was "
                            f"shipped; versions kept: {kept})")
        if latest is None or latest.delete_marker:
            continue
        stored = s3.get(client, url.bucket, url.key(rel), latest.version_id)
        objects[rel] = stored.body
        if stored.lock_mode != "COMPLIANCE" or stored.retain_until is None:
            problems.append(f"{rel}: not under COMPLIANCE retention "
                            f"({stored.lock_mode or 'no retention'})")
    result = check(objects, expected_head)
    result.problems = problems + result.problems
    if not by_key:  # nothing there is no intact archive: a mistyped prefix, say
        result.problems.append("nothing has been shipped here (no object under this "
                               "prefix): check the bucket and prefix")
    return result
