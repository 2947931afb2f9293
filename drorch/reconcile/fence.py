"""Fence the old primary as a standby with no upstream, and check that it stays fenced.

A standby fence (``standby.signal``, empty ``primary_conninfo`` and
``restore_command``, ``recovery_target_timeline='current'``) is read-only for
every client, writes no WAL, prunes nothing, and both pg_walinspect and
pg_rewind accept it. ``default_transaction_read_only`` is not a fence: any
session may turn it off, and a plain read then writes WAL and prunes the
deleted tuples reconciliation needs. A node that is not running is fenced too
("kept stopped").
"""

from __future__ import annotations

import time

import psycopg

from drorch.reconcile._db import Conn, connect
from drorch.reconcile.model import FenceStatus
from drorch.reconcile.node import PgNodeLike, set_conf_lines, write_owned

FENCE_MARKER = "drorch fence: standby with no upstream (do not edit while fenced)"
FENCE_SETTINGS = {
    "primary_conninfo": "''",
    "primary_slot_name": "''",
    "restore_command": "''",
    "recovery_target_timeline": "'current'",
    "hot_standby": "on",
}


class FenceError(RuntimeError):
    """The node could not be fenced, or was found unfenced where it must be."""


def verify_fenced(target: str | PgNodeLike) -> FenceStatus:
    """What the node is now. Read-only; a DSN or a node (a node also tells "stopped").

    ``alarm`` is set when the node accepts writes. An unreachable node (given by
    DSN) is not proven fenced: it may be running behind a partition.
    """
    if not isinstance(target, str):
        if not target.is_running():
            return FenceStatus("stopped", True, False, "not running: nothing can write to it")
        target = target.dsn()
    try:
        with connect(target) as c:
            row = c.execute(
                "SELECT pg_is_in_recovery(), current_setting('primary_conninfo') <> '', "
                "current_setting('restore_command') <> '', "
                "EXISTS (SELECT 1 FROM pg_stat_wal_receiver)").fetchone()
    except psycopg.OperationalError as e:
        return FenceStatus("unreachable", False, False,
                           f"cannot connect ({str(e).splitlines()[0][:120]}): not proven fenced")
    assert row is not None
    in_recovery, conninfo, restore, receiving = (bool(x) for x in row)
    if not in_recovery:
        return FenceStatus("writable", False, True,
                           "ALARM: the node is a primary and accepts writes", False, None, None)
    upstream = conninfo or restore
    if upstream or receiving:
        return FenceStatus("following", False, False,
                           "standby with an upstream: it may still change", True, upstream,
                           receiving)
    return FenceStatus("fenced", True, False, "standby with no upstream: read-only, writes no WAL",
                       True, False, False)


def verify_locked_out(dsn: str, app_roles: list[str]) -> FenceStatus:
    """A primary that cannot be made a standby (RDS: the old primary comes back as a
    standalone instance) fenced by lockout: no application role may log in or has a
    session, and new sessions start read-only by the server's configuration (per
    database included). ``locked-out`` counts as fenced: a full comparison reads live
    rows only (a read that prunes dead tuples changes nothing it compares), and the WAL
    method checks each live tuple's ``xmin`` and needs deleted rows' keys from the WAL
    itself (``wal_level=logical``), not from the heap. Read-only."""
    try:
        with connect(dsn) as c:
            row = c.execute(
                "SELECT pg_is_in_recovery(), "
                "(SELECT reset_val FROM pg_settings "
                " WHERE name = 'default_transaction_read_only') = 'on', "
                "(SELECT array_agg(rolname::text) FROM pg_roles "
                " WHERE rolname = ANY(%s) AND rolcanlogin), "
                "(SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s))",
                (app_roles, app_roles)).fetchone()
    except psycopg.OperationalError as e:
        return FenceStatus("unreachable", False, False,
                           f"cannot connect ({str(e).splitlines()[0][:120]}): not proven fenced")
    assert row is not None
    in_recovery, read_only, can_login, sessions = row
    if in_recovery:
        return verify_fenced(dsn)
    if read_only and not can_login and not sessions:
        return FenceStatus("locked-out", True, False,
                           "a primary with the application roles locked out and read-only "
                           "sessions", False, None, None)
    why = [w for w, bad in (("new sessions are not read-only", not read_only),
                            (f"roles {can_login} may log in", bool(can_login)),
                            (f"{sessions} application session(s)", bool(sessions))) if bad]
    return FenceStatus("writable", False, True,
                       "ALARM: the node is a primary the applications may write to: "
                       + ", ".join(why), False, None, None)


def wait_replay_idle(dsn: str | Conn, timeout_s: float = 60) -> str:
    """Wait until a fenced standby has replayed all its local WAL; returns the replay LSN.

    With no upstream, the startup process only waits in
    ``RecoveryRetrieveRetryInterval`` after it failed to read a next record:
    everything in its pg_wal is replayed and nothing can add more. Raises
    TimeoutError.
    """
    if isinstance(dsn, str):
        with connect(dsn) as c:
            return wait_replay_idle(c, timeout_s)
    c, deadline = dsn, time.monotonic() + timeout_s
    while True:
        row = c.execute(
            "SELECT pg_last_wal_replay_lsn()::text, EXISTS (SELECT 1 FROM pg_stat_activity "
            "WHERE backend_type = 'startup' AND wait_event = 'RecoveryRetrieveRetryInterval')"
        ).fetchone()
        assert row is not None
        if row[1]:
            return str(row[0])
        if time.monotonic() > deadline:
            raise TimeoutError("the fenced standby did not finish replaying its WAL")
        time.sleep(0.02)


def fence_as_standby(node: PgNodeLike, *, start: bool = True, timeout_s: float = 60) -> FenceStatus:
    """Make ``node`` a standby with no upstream; idempotent.

    A node already fenced is left alone. A running primary (split brain) or a
    standby that follows someone is stopped first (fast shutdown: its clients
    are cut off, its committed writes stay in its WAL). With ``start=False`` the
    node is left stopped, fenced for when it starts. Raises :class:`FenceError`
    when the node does not come up fenced.
    """
    if node.is_running():
        status = verify_fenced(node.dsn())
        if status.state == "fenced":
            wait_replay_idle(node.dsn(), timeout_s)
            return status
        node.stop("fast")
    datadir = node.datadir
    (datadir / "recovery.signal").unlink(missing_ok=True)
    set_conf_lines(datadir / "postgresql.auto.conf", FENCE_SETTINGS, FENCE_MARKER, datadir)
    signal = datadir / "standby.signal"
    if not signal.exists():
        write_owned(signal, "", datadir)
    if not start:
        return verify_fenced(node)
    node.start()
    status = verify_fenced(node.dsn())
    if not status.fenced:
        raise FenceError(f"node did not come up fenced: {status.reason}")
    wait_replay_idle(node.dsn(), timeout_s)
    return status


def unfence_settings(node: PgNodeLike) -> None:
    """Remove exactly the fence's lines from ``postgresql.auto.conf``; idempotent.

    Only lines equal to what :func:`fence_as_standby` wrote go, so a
    ``primary_conninfo`` that pg_rewind or pg_basebackup appended stays."""
    conf = node.datadir / "postgresql.auto.conf"
    if not conf.exists():
        return
    fence_lines = {f"# {FENCE_MARKER}", *(f"{k} = {v}" for k, v in FENCE_SETTINGS.items())}
    lines = conf.read_text().splitlines()
    kept = [ln for ln in lines if ln.strip() not in fence_lines]
    if kept != lines:
        write_owned(conf, "\n".join(kept) + "\n", node.datadir)
