"""Where each archived thing lives under ``s3://BUCKET/PREFIX/``. Pure.

- ``chain/<first>-<last>.jsonl``: audit entries ``first..last`` (12-digit seq numbers),
  the log's lines byte for byte. Each ``drorch audit ship`` that finds new entries writes
  one segment; the segments, in order, are the log.
- ``heads/<seq>.json``: the chain's head after a ship: ``{"format", "runbook", "seq",
  "hash", "segment", "shipped_at"}``. ``hash`` is the entry ``seq``'s hash; the newest
  head is what a verifier compares the last segment with (a chain alone cannot show that
  entries were cut off its end).
- ``incidents/<incident>/<sha256-16>.json``: an incident's report JSON as written to
  ``<state_dir>/reports/<incident>.json``, named by the first 16 hex digits of its
  SHA-256. One object per incident; a report written again with other content (the
  failover's RPO corrected at failback) adds one, and both are kept.

Every key is written once (``If-None-Match: *``) under COMPLIANCE retention.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

HEAD_FORMAT = "drorch-audit-head/1"
_SEGMENT = re.compile(r"^chain/(\d{12})-(\d{12})\.jsonl$")
_HEAD = re.compile(r"^heads/(\d{12})\.json$")
_REPORT = re.compile(r"^incidents/([A-Za-z0-9][A-Za-z0-9_.:-]*)/([0-9a-f]{16})\.json$")


@dataclass(frozen=True)
class ArchiveUrl:
    """``s3://bucket/prefix``: ``prefix`` is empty or ends with ``/``."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> ArchiveUrl:
        """``ValueError`` (one sentence) for anything but ``s3://BUCKET[/PREFIX]``."""
        m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", url)
        if not m:
            raise ValueError(f"{url!r} is not s3://BUCKET[/PREFIX] (a bucket name is 3-63 "
                             "lower-case letters, digits, dots and dashes)")
        prefix = (m.group(2) or "").strip("/")
        return cls(m.group(1), f"{prefix}/" if prefix else "")

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def relative(self, key: str) -> str:
        return key[len(self.prefix):]

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def segment_key(first: int, last: int) -> str:
    return f"chain/{first:012d}-{last:012d}.jsonl"


def head_key(seq: int) -> str:
    return f"heads/{seq:012d}.json"


def report_key(incident_id: str, body: bytes) -> str:
    return f"incidents/{incident_id}/{hashlib.sha256(body).hexdigest()[:16]}.json"


def parse_segment(relative: str) -> tuple[int, int] | None:
    m = _SEGMENT.match(relative)
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_head(relative: str) -> int | None:
    m = _HEAD.match(relative)
    return int(m.group(1)) if m else None


def parse_report(relative: str) -> tuple[str, str] | None:
    """(incident id, sha256 prefix) of a report key."""
    m = _REPORT.match(relative)
    return (m.group(1), m.group(2)) if m else None
