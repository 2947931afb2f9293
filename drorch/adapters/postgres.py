"""Self-managed PostgreSQL, through psycopg: the only module that talks to it for steps.

Every connection bounds its own time (connect_timeout, tcp_user_timeout,
statement_timeout): a vanished peer must fail a step, not hang it.
All functions are safe to call twice unless their docstring says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

Unreachable = psycopg.OperationalError


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def open_conn(dsn: str, statement_timeout_ms: int = 10000) -> psycopg.Connection[Any]:
    """A connection the caller closes. drorch's own sessions are exempt from the
    read-only default its freeze sets."""
    return psycopg.connect(dsn, autocommit=True,
                           options=f"-c statement_timeout={statement_timeout_ms} "
                                   "-c default_transaction_read_only=off")


@contextmanager
def connect(dsn: str, statement_timeout_ms: int = 10000) -> Iterator[psycopg.Connection[Any]]:
    conn = open_conn(dsn, statement_timeout_ms)
    try:
        yield conn
    finally:
        conn.close()


Target = str | psycopg.Connection[Any]
"""A DSN (a connection is opened and closed) or an open connection to reuse."""


@contextmanager
def _use(target: Target, statement_timeout_ms: int = 10000) -> Iterator[psycopg.Connection[Any]]:
    if isinstance(target, str):
        with connect(target, statement_timeout_ms) as conn:
            yield conn
    else:
        yield target


def reachable(dsn: str) -> bool:
    try:
        with connect(dsn, 3000) as c:
            c.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


@dataclass(frozen=True)
class NodeStatus:
    in_recovery: bool
    lsn: str
    """Primary: current flush LSN. Standby: last replayed LSN."""
    receive_lsn: str | None
    last_commit_at: float | None
    """Primary: last commit time. Standby: last replayed commit time (unix seconds)."""


def status(dsn: Target) -> NodeStatus:
    with _use(dsn, 5000) as c:
        in_recovery = bool(c.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]
        if in_recovery:
            row = c.execute(
                "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, "
                "extract(epoch from pg_last_xact_replay_timestamp())::float8").fetchone()
            assert row is not None
            return NodeStatus(True, row[0] or "0/0", row[1], row[2])
        row = c.execute(
            "SELECT pg_current_wal_flush_lsn()::text, "
            "extract(epoch from (pg_last_committed_xact()).timestamp)::float8").fetchone()
        assert row is not None
        return NodeStatus(False, row[0], None, row[1])


# -- freeze --------------------------------------------------------------
@dataclass(frozen=True)
class FreezeRecord:
    """Exactly what a freeze changed, so unfreeze can undo exactly that."""

    roles_locked: list[str]
    read_only_was: str
    sessions_ended: int

    def to_dict(self) -> dict[str, Any]:
        return {"roles_locked": self.roles_locked, "read_only_was": self.read_only_was,
                "sessions_ended": self.sessions_ended}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FreezeRecord:
        return cls(list(d["roles_locked"]), str(d["read_only_was"]), int(d["sessions_ended"]))


def freeze(dsn: Target, app_roles: list[str], previous: FreezeRecord | None = None) -> FreezeRecord:
    """Stop every application write on this node; replication keeps streaming.

    Locks the application roles out (NOLOGIN), makes read-only the default for
    new transactions, reloads, then ends the application roles' sessions. A
    second call keeps the first call's record (``previous``) so unfreeze still
    restores the original settings.
    """
    with _use(dsn) as c:
        read_only_was = c.execute("SHOW default_transaction_read_only").fetchone()[0]  # type: ignore[index]
        can_login = {
            r[0] for r in c.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin",
                (app_roles,))
        }
        for role in sorted(can_login):
            c.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        c.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        c.execute("SELECT pg_reload_conf()")
        ended = c.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = ANY(%s) AND pid <> pg_backend_pid() AND backend_type='client backend'",
            (app_roles,)).fetchone()[0]  # type: ignore[index]
    if previous is not None:
        return FreezeRecord(sorted(set(previous.roles_locked) | can_login), previous.read_only_was,
                            previous.sessions_ended + int(ended))
    return FreezeRecord(sorted(can_login), str(read_only_was), int(ended))


def is_frozen(dsn: Target, app_roles: list[str]) -> bool:
    with _use(dsn) as c:
        ro = c.execute("SELECT setting FROM pg_settings "
                       "WHERE name='default_transaction_read_only'").fetchone()[0]  # type: ignore[index]
        can_login = c.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) "
                              "AND rolcanlogin", (app_roles,)).fetchone()[0]  # type: ignore[index]
        sessions = c.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s)",
                             (app_roles,)).fetchone()[0]  # type: ignore[index]
    return ro == "on" and can_login == 0 and sessions == 0


def unfreeze(dsn: str, record: FreezeRecord) -> None:
    """Undo exactly ``record``: roles it locked regain LOGIN, read-only default restored."""
    with connect(dsn) as c:
        for role in record.roles_locked:
            c.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        if record.read_only_was == "on":
            c.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            c.execute("ALTER SYSTEM RESET default_transaction_read_only")
        c.execute("SELECT pg_reload_conf()")


def open_writes(dsn: str, roles: list[str]) -> list[str]:
    """On a new primary: let the application roles in (a freeze on the old
    primary replicated their NOLOGIN here) and make writes the default.
    Returns the roles that were changed."""
    with connect(dsn) as c:
        locked = [r[0] for r in c.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND NOT rolcanlogin", (roles,))]
        for role in locked:
            c.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        c.execute("ALTER SYSTEM RESET default_transaction_read_only")
        c.execute("SELECT pg_reload_conf()")
    return locked


def writes_open(dsn: str, roles: list[str]) -> bool:
    with connect(dsn) as c:
        locked = c.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) "
                           "AND NOT rolcanlogin", (roles,)).fetchone()[0]  # type: ignore[index]
        ro = c.execute("SELECT setting FROM pg_settings "
                       "WHERE name='default_transaction_read_only'").fetchone()[0]  # type: ignore[index]
        recovery = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
    return locked == 0 and ro == "off" and not recovery


# -- promotion -------------------------------------------------------------
def write_barrier(dsn: Target) -> str:
    """Commit a WAL record on a (frozen) primary and return its LSN.

    The flush pointer is no target to wait for: it can sit on a page boundary
    in the middle of a record, which a standby cannot replay until the
    walwriter flushes the rest (up to ``wal_writer_delay`` later). A committed
    logical message is flushed whole; once a standby has replayed past it,
    it has everything committed before it."""
    with _use(dsn) as c:
        row = c.execute("SELECT pg_logical_emit_message(true, 'drorch', 'barrier')::text"
                        ).fetchone()
    assert row is not None
    return str(row[0])


def wait_replayed(dsn: Target, target_lsn: str, timeout_s: float, *, past: bool = False) -> bool:
    """Wait until a standby has replayed ``target_lsn`` (beyond it with ``past``, for a
    barrier's start LSN); False on timeout."""
    deadline = time.monotonic() + timeout_s
    target = lsn_to_int(target_lsn)
    with _use(dsn) as c:
        while True:
            row = c.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
            if row and row[0]:
                replayed = lsn_to_int(row[0])
                if replayed > target or (replayed == target and not past):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)


def promote(dsn: Target, timeout_s: float) -> bool:
    """Promote a standby and wait until it accepts writes. Not idempotent on its
    own: callers check ``in_recovery`` first (a second call errors).

    ``pg_promote(wait => true)`` polls every 100 ms; asking without waiting and
    polling ``pg_is_in_recovery()`` every 5 ms returns as soon as it is done."""
    deadline = time.monotonic() + timeout_s
    with _use(dsn, int(timeout_s * 1000) + 5000) as c:
        c.execute("SELECT pg_promote(false)")
        while time.monotonic() < deadline:
            if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                return True
            time.sleep(0.005)
    return False


def in_recovery(dsn: Target) -> bool:
    with _use(dsn, 3000) as c:
        return bool(c.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]


def timeline(dsn: Target) -> int:
    """The timeline a primary writes on now (``pg_control_checkpoint()`` lags until
    the next checkpoint after a promotion)."""
    with _use(dsn, 3000) as c:
        name = c.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]  # type: ignore[index]
    return int(name[:8], 16)


def ensure_canary(admin_dsn: str, grant_to: str) -> None:
    """Create the canary table validation writes to (idempotent, as an admin)."""
    with connect(admin_dsn, 5000) as c:
        c.execute("CREATE SCHEMA IF NOT EXISTS drorch")
        c.execute("CREATE TABLE IF NOT EXISTS drorch.canary "
                  "(marker text PRIMARY KEY, written_at timestamptz DEFAULT now())")
        c.execute(sql.SQL("GRANT USAGE ON SCHEMA drorch TO {}").format(sql.Identifier(grant_to)))
        c.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON drorch.canary TO {}").format(
            sql.Identifier(grant_to)))


def canary_write(dsn: str, marker: str) -> str:
    """Write one row and read it back in a new transaction: proves writes work
    for the credentials in ``dsn`` (the application's, from its secret)."""
    with connect(dsn, 5000) as c:
        c.execute("INSERT INTO drorch.canary(marker) VALUES (%s) ON CONFLICT (marker) DO UPDATE "
                  "SET written_at = now()", (marker,))
        row = c.execute("SELECT marker FROM drorch.canary WHERE marker=%s", (marker,)).fetchone()
    if not row:
        raise RuntimeError("canary row written but not read back")
    return str(row[0])


def system_identifier(dsn: Target) -> int:
    with _use(dsn, 3000) as c:
        return int(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]
