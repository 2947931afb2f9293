"""Where the timelines split: the new primary's timeline history, and when (if known).

``pg_wal/0000000N.history`` on the new primary lists, one line per ancestor,
``parentTLI<TAB>switchpoint<TAB>reason``; its last line is the latest split.
The time is the commit time of the last transaction before the split, read
from the new primary's own copy of the shared WAL; it is the old primary's
clock, and None when that WAL is no longer kept.
"""

from __future__ import annotations

import re

import psycopg

from drorch.reconcile import walbytes as wb
from drorch.reconcile import walparse as wp
from drorch.reconcile._db import Conn, connect
from drorch.reconcile.model import Divergence

_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")


class NotPromoted(RuntimeError):
    """The node has no timeline history: it was never promoted, nothing diverged."""


def parse_history(text: str) -> tuple[int, str]:
    """(parent timeline, switch LSN) of the last entry of a timeline history file."""
    entries = [ln.split("\t") for ln in text.splitlines()
               if ln.strip() and not ln.lstrip().startswith("#")]
    if not entries or len(entries[-1]) < 2:
        raise ValueError("timeline history file has no entry")
    parent, lsn = entries[-1][0].strip(), entries[-1][1].strip()
    wp.lsn_to_int(lsn)
    return int(parent), lsn


def _wal_bounds(c: Conn) -> tuple[int, int]:
    seg = int(c.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"
                        ).fetchone()[0])  # type: ignore[index]
    segnos = [p[1] for (n,) in c.execute("SELECT name FROM pg_ls_waldir()")
              if (p := wb.parse_wal_file_name(n, seg))]
    return seg, (min(segnos) * seg if segnos else 0)


def _last_commit_before(c: Conn, split: int) -> str | None:
    seg, oldest = _wal_bounds(c)
    for lo in wb.lookback_starts(split, seg, oldest)[:4]:
        try:
            row = c.execute(
                "SELECT description FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn) "
                "WHERE resource_manager = 'Transaction' "
                "AND record_type IN ('COMMIT', 'COMMIT_PREPARED') "
                "ORDER BY start_lsn DESC LIMIT 1",
                (wp.int_to_lsn(lo), wp.int_to_lsn(split))).fetchone()
        except psycopg.Error:
            return None
        if row:
            at = wp.commit_time(row[0])
            return at.isoformat() if at else None
    return None


def divergence_point(new_primary_dsn: str) -> Divergence:
    """Read-only. Raises :class:`NotPromoted` when the node has no timeline history."""
    with connect(new_primary_dsn) as c:
        names = [r[0] for r in c.execute("SELECT name FROM pg_ls_waldir()")
                 if _HISTORY.match(r[0])]
        if not names:
            raise NotPromoted("no timeline history file: this node was never promoted")
        name = max(names)
        text = c.execute("SELECT pg_read_file('pg_wal/' || %s)", (name,)).fetchone()[0]  # type: ignore[index]
        parent, lsn = parse_history(text)
        at = _last_commit_before(c, wp.lsn_to_int(lsn))
    return Divergence(lsn, int(name[:8], 16), parent, at)
