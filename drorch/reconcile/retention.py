"""Warn, before any failure, when a primary would not keep what reconciliation needs.

After an unplanned failover the old primary's WAL from the split is the exact
record of its divergent commits, and pg_rewind needs it back to the last common
checkpoint. The primary keeps it only through a physical replication slot (kept
from where the replica stopped, capped by ``max_slot_wal_keep_size``) or
``wal_keep_size``. Deletes are only named in the WAL under
``wal_level=logical``; the reader needs ``pg_walinspect`` created before the
split; pg_rewind needs ``wal_log_hints`` or data checksums.
"""

from __future__ import annotations

from dataclasses import dataclass

from drorch.reconcile._db import Conn, connect


@dataclass(frozen=True)
class RetentionFacts:
    wal_level: str
    wal_keep_size_mb: int
    max_slot_wal_keep_size_mb: int
    """-1: unlimited"""
    physical_slots: int
    has_walinspect: bool
    wal_log_hints: bool
    data_checksums: bool
    track_commit_timestamp: bool


def retention_problems(f: RetentionFacts, required_mb: int) -> list[str]:
    """Pure: one sentence per reason reconciliation would fall back or fail."""
    out = []
    if f.physical_slots > 0 and f.max_slot_wal_keep_size_mb < 0:
        kept_mb: float = float("inf")
    elif f.physical_slots > 0:
        kept_mb = max(f.wal_keep_size_mb, f.max_slot_wal_keep_size_mb)
    else:
        kept_mb = f.wal_keep_size_mb
    if kept_mb < required_mb:
        out.append(f"keeps only {kept_mb:.0f} MB of WAL for a lost replica (wal_keep_size, "
                   f"slots); reconciliation and pg_rewind need the WAL from the split: set "
                   f"wal_keep_size >= {required_mb}MB or give the replica a physical slot")
    if f.wal_level != "logical":
        out.append(f"wal_level is {f.wal_level}: deleted rows are not named in the WAL, "
                   "reconciliation falls back to a full comparison (set wal_level=logical)")
    if not f.has_walinspect:
        out.append("extension pg_walinspect is missing: create it before any split")
    if not f.wal_log_hints and not f.data_checksums:
        out.append("neither wal_log_hints nor data checksums: pg_rewind cannot run, resync "
                   "needs a full base backup")
    if not f.track_commit_timestamp:
        out.append("track_commit_timestamp is off: a full comparison cannot tell which side "
                   "changed a row without WAL")
    return out


def gather(conn: Conn) -> RetentionFacts:
    s = dict(conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'wal_keep_size', "
        "'max_slot_wal_keep_size', 'wal_log_hints', 'data_checksums', "
        "'track_commit_timestamp')").fetchall())
    slots = conn.execute("SELECT count(*) FROM pg_replication_slots "
                         "WHERE slot_type = 'physical'").fetchone()[0]  # type: ignore[index]
    ext = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_walinspect'"
                       ).fetchone()[0]  # type: ignore[index]
    return RetentionFacts(s["wal_level"], int(s["wal_keep_size"]),
                          int(s["max_slot_wal_keep_size"]), int(slots), bool(ext),
                          s["wal_log_hints"] == "on", s["data_checksums"] == "on",
                          s["track_commit_timestamp"] == "on")


def wal_retention_warning(conn: Conn | str, required_mb: int = 512) -> str | None:
    """None when the database keeps what reconciliation needs, else why not (one string).

    ``required_mb``: WAL the old primary may write after losing its replica and
    before it dies or is fenced (write rate x detection time); 512 suits the lab.
    Read-only.
    """
    if isinstance(conn, str):
        with connect(conn) as c:
            facts = gather(c)
    else:
        facts = gather(conn)
    problems = retention_problems(facts, required_mb)
    return "; ".join(problems) if problems else None
