"""Read-only PostgreSQL facts for the readiness checks: is a node a standby, does it
stream, how far behind its primary is it.

Functions (PostgreSQL 15, https://www.postgresql.org/docs/15/functions-admin.html and
monitoring-stats.html): ``pg_is_in_recovery()``, ``pg_last_wal_replay_lsn()`` (NULL on
a node that never replayed WAL, and on Aurora, whose replicas read shared storage),
``pg_stat_wal_receiver.status`` (``streaming`` while the standby streams),
``pg_current_wal_lsn()`` on the primary. Errors are psycopg's (the caller says the node
did not answer).
"""

from __future__ import annotations

from dataclasses import dataclass

from drorch.adapters.postgres import connect, lsn_to_int


@dataclass(frozen=True)
class NodeFacts:
    in_recovery: bool
    lsn: int | None
    """Primary: its current WAL LSN. Standby: its last replayed LSN (None: none)."""
    receiver: str | None
    """Standby: ``pg_stat_wal_receiver.status`` (None: no WAL receiver running)."""


def node_facts(dsn: str) -> NodeFacts:
    with connect(dsn, 5000) as c:
        row = c.execute("SELECT pg_is_in_recovery()").fetchone()
        in_recovery = bool(row and row[0])
        if not in_recovery:
            lsn = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            return NodeFacts(False, lsn_to_int(lsn[0]) if lsn else None, None)
        replay = c.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
        receiver = c.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
        return NodeFacts(True, lsn_to_int(replay[0]) if replay and replay[0] else None,
                         str(receiver[0]) if receiver else None)
