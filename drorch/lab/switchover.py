"""Lab only: the part of an Aurora switchover that happens inside AWS, done to the lab's
real clusters by its moto server (:mod:`drorch.lab.moto_rds`).

Aurora synchronizes the secondary with the primary, promotes the secondary and demotes
the old primary to a secondary of it (Aurora User Guide, "Performing switchovers for
Amazon Aurora global databases"); nothing is lost. In the lab the two regional clusters
are PostgreSQL primary and streaming standby, so the same is: a committed message on the
writer replayed by the target, a clean stop of the writer, the target promoted (by the
caller), then the old writer rebuilt as a standby of the target
(:func:`drorch.reconcile.resync.resync_as_replica`: ``pg_rewind``, else a base backup).
"""

from __future__ import annotations

import time

import psycopg

from drorch.reconcile.node import PgNodeLike
from drorch.reconcile.resync import resync_as_replica

CONNECT_TIMEOUT_S = 5


def sync_then_stop(old: PgNodeLike, old_dsn: str, target_dsn: str, wait_s: float) -> str:
    """Commit a message on the writer ``old`` (a superuser's session, past a frozen
    server's read-only default), wait until ``target`` has replayed it, then stop
    ``old`` cleanly. Returns the message's LSN; raises ``RuntimeError`` (``old`` left
    running) when the target does not replay it within ``wait_s``."""
    with psycopg.connect(old_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as c:
        c.execute("SET default_transaction_read_only = off")
        row = c.execute("SELECT pg_logical_emit_message(true, 'drorch-lab', "
                        "'switchover')::text").fetchone()
    assert row is not None
    lsn = str(row[0])
    deadline = time.monotonic() + wait_s
    with psycopg.connect(target_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as t:
        while t.execute("SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)",
                        (lsn,)).fetchone() != (True,):
            if time.monotonic() > deadline:
                raise RuntimeError(f"it did not replay the primary's {lsn} within "
                                   f"{wait_s:.0f} s")
            time.sleep(0.05)
    old.stop("fast")
    return lsn


def demote_and_follow(old: PgNodeLike, target_dsn: str, timeout_s: float = 60) -> str:
    """Rebuild the stopped old writer as a streaming standby of the promoted target and
    wait until it has caught up; returns how (``rewind`` or ``basebackup``). Every write
    of ``old`` was replayed by the target before it was stopped (:func:`sync_then_stop`),
    so nothing of it is lost. Raises ``RuntimeError`` when neither works."""
    return resync_as_replica(old, target_dsn, captured=True, timeout_s=timeout_s,
                             keep_old_datadir=False, no_sync=True).method
