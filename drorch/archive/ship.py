"""``drorch audit ship``: copy what the archive lacks, nothing else.

The archive (``drorch.archive.layout``) already holds entries ``1..N`` (its segments'
names say so). A ship:

1. refuses a local log that does not verify (``drorch.audit.verify``), a bucket without
   Object Lock enabled, an archive whose entry ``N`` is not the local log's entry ``N``
   (another log, or the local one replaced or cut short), and any entry or report that
   the redactor would change (a secret must never leave the host: the audit log is
   redacted when written, so this finds only what slipped past);
2. writes entries ``N+1..M`` as one segment, then the head ``M`` (or only the head,
   when an earlier ship was stopped between the two), then each incident report not yet
   there;
3. each object once (``If-None-Match: *``), under COMPLIANCE retention until now plus
   the runbook's ``audit.archive.retention_days``.

So shipping twice writes nothing the second time, and shipping after new entries adds
only them (one segment and one head). A ship is not itself audited in the log it ships:
its entry would be new again at every ship.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from drorch.adapters import s3
from drorch.archive.layout import (
    HEAD_FORMAT,
    ArchiveUrl,
    head_key,
    parse_head,
    parse_segment,
    report_key,
    segment_key,
)
from drorch.audit import GENESIS, check_entry
from drorch.redact import redact


class ShipRefused(RuntimeError):
    """Nothing was shipped (or only what is listed before the sentence): why, in one
    sentence."""


@dataclass
class ShipResult:
    """What a ship wrote (``dry_run``: would write); keys relative to the archive."""

    archive: str
    shipped_before: int
    entries: tuple[int, int] | None = None
    written: list[str] = field(default_factory=list)
    reports_already: int = 0
    retain_until: datetime | None = None
    dry_run: bool = False

    def message(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        if not self.written:
            return (f"{self.archive}: nothing new to ship (entries 1-{self.shipped_before} "
                    f"and {self.reports_already} report(s) already there)")
        what = (f"entries {self.entries[0]}-{self.entries[1]}" if self.entries
                else "no new entries")
        until = self.retain_until.isoformat(timespec="seconds") if self.retain_until else "?"
        return (f"{self.archive}: {verb} {len(self.written)} object(s) ({what}; "
                + ", ".join(self.written) + f"), COMPLIANCE retention until {until}")


def _verified_lines(log: Path) -> list[bytes]:
    """The log's lines, read under a shared ``flock`` (``AuditLog`` appends under an
    exclusive one, so no half-written line is read), each checked in place in the chain
    (``drorch.audit.check_entry``): what is shipped is exactly what was verified."""
    with open(log, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        lines = list(f)
    prev = GENESIS
    for n, raw in enumerate(lines, start=1):
        try:
            entry = json.loads(raw) if raw.endswith(b"\n") else None
        except ValueError:
            entry = None
        problem = check_entry(entry, seq=n, prev=prev) if entry is not None else (
            "is not a complete JSON line")
        if problem is not None:
            raise ShipRefused(f"the local audit log does not verify: {log} line {n} {problem}"
                              " (`drorch audit verify` says more)")
        prev = entry["hash"]
    return lines


def _secret_free(what: str, doc: Any) -> None:
    if redact(doc) != doc:
        raise ShipRefused(f"{what} holds something the redactor masks (a secret-looking key "
                          "or value): not shipped; nothing after it either")


def ship(client: Any, url: ArchiveUrl, *, runbook: str, log: Path,
         reports: Iterable[tuple[str, Path]], retention_days: int,
         now: datetime | None = None, dry_run: bool = False) -> ShipResult:
    """Ship what the archive lacks (see the module docstring). ``reports``: (incident id,
    report file) pairs, missing files skipped. Raises ``ShipRefused`` (nothing more was
    written) or ``s3.ArchiveUnavailable``."""
    lines = _verified_lines(log)
    lock = s3.object_lock(client, url.bucket)
    if not lock or lock.get("ObjectLockEnabled") != "Enabled":
        raise ShipRefused(f"s3://{url.bucket} has no Object Lock enabled: shipped objects "
                          "could be overwritten or deleted (terraform/modules/audit-bucket "
                          "makes a bucket with it)")
    keys = {url.relative(k) for k in s3.list_keys(client, url.bucket, url.prefix)}
    segments = sorted(s for k in keys if (s := parse_segment(k)))
    shipped = segments[-1][1] if segments else 0
    if shipped:
        _same_log(client, url, segments[-1], lines)
    at = (now or datetime.now(UTC)).astimezone(UTC)
    result = ShipResult(str(url), shipped, retain_until=at + timedelta(days=retention_days),
                        dry_run=dry_run)
    new = lines[shipped:]
    for raw in new:
        entry = json.loads(raw)
        _secret_free(f"audit entry {entry['seq']}", entry)
    last = shipped + len(new)
    plan: list[tuple[str, bytes, str]] = []
    if new:
        result.entries = (shipped + 1, last)
        plan.append((segment_key(shipped + 1, last), b"".join(new), "application/x-ndjson"))
    heads = {h for k in keys if (h := parse_head(k)) is not None}
    if last and last not in heads:
        head = {"format": HEAD_FORMAT, "runbook": runbook, "seq": last,
                "hash": json.loads(lines[last - 1])["hash"],
                "segment": url.key(segment_key(shipped + 1, last) if new
                                   else segment_key(*segments[-1])),
                "shipped_at": at.isoformat(timespec="seconds")}
        plan.append((head_key(last), json.dumps(head, indent=1).encode() + b"\n",
                     "application/json"))
    for incident, path in reports:
        if not path.is_file():
            continue
        body = path.read_bytes()
        key = report_key(incident, body)
        if key in keys:
            result.reports_already += 1
            continue
        _secret_free(f"the report of {incident} ({path})", json.loads(body))
        plan.append((key, body, "application/json"))
    for key, body, content_type in plan:
        if not dry_run:
            _put(client, url, key, body, result, content_type)
        result.written.append(key)
    return result


def _put(client: Any, url: ArchiveUrl, key: str, body: bytes, result: ShipResult,
         content_type: str) -> None:
    """Write once; a key that is already there must hold exactly ``body`` (a concurrent
    ship of the same log wrote it), else nothing more is shipped."""
    assert result.retain_until is not None
    made = s3.put_once(client, url.bucket, url.key(key), body,
                       retain_until=result.retain_until, content_type=content_type)
    if made is None and s3.get(client, url.bucket, url.key(key)).body != body:
        raise ShipRefused(f"{url.key(key)} already exists with other content (another ship "
                          "at the same time?); shipped before it: "
                          f"{', '.join(result.written) or 'nothing'}")


def _same_log(client: Any, url: ArchiveUrl, last_segment: tuple[int, int],
              lines: list[bytes]) -> None:
    """The archive's last entry must be the local log's entry of the same number."""
    first, last = last_segment
    if len(lines) < last:
        raise ShipRefused(f"the archive holds entries 1-{last} but the local log only "
                          f"{len(lines)}: the local log was cut short or replaced, or the "
                          "archive is another log's")
    body = s3.get(client, url.bucket, url.key(segment_key(first, last))).body
    archived = body.splitlines(keepends=True)
    if not archived or archived[-1] != lines[last - 1]:
        raise ShipRefused(f"the archive's entry {last} is not the local log's entry {last}: "
                          "the archive is another log's (or one of them was altered); run "
                          f"`drorch audit verify {url}`")
