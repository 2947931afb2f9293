"""Self-managed PostgreSQL, through psycopg: the only module that talks to it for steps.

Every connection bounds its own time (connect_timeout, tcp_user_timeout,
statement_timeout): a vanished peer must fail a step, not hang it.
All functions are safe to call twice unless their docstring says otherwise.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

Unreachable = psycopg.OperationalError
"""The server did not answer (or dropped the connection): a region may be down."""
Error = psycopg.Error
"""Anything the server or the driver raised, ``Unreachable`` included."""


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def open_conn(dsn: str, statement_timeout_ms: int = 10000) -> psycopg.Connection[Any]:
    """A connection the caller closes. drorch's own sessions are exempt from the
    read-only default its freeze sets.

    The exemption is a ``SET`` in the session, not a ``-c`` startup option: a
    startup option also becomes the session's *reset* value, and
    ``pg_settings.reset_val`` is how :func:`is_frozen` and :func:`writes_open` read
    what a new session gets from the server's configuration. A ``SET`` changes
    only the current value (source ``session``); a configuration reload still
    updates ``reset_val`` (https://www.postgresql.org/docs/15/view-pg-settings.html,
    https://www.postgresql.org/docs/15/config-setting.html). Allowed on a hot
    standby too (its transactions stay read-only regardless)."""
    conn = psycopg.connect(dsn, autocommit=True,
                           options=f"-c statement_timeout={statement_timeout_ms}")
    try:
        conn.execute("SET default_transaction_read_only = off")
    except BaseException:
        conn.close()
        raise
    return conn


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
        # pg_last_committed_xact() raises when track_commit_timestamp is off: no time then
        row = c.execute(
            "SELECT pg_current_wal_flush_lsn()::text, CASE WHEN "
            "current_setting('track_commit_timestamp') = 'on' THEN "
            "extract(epoch from (pg_last_committed_xact()).timestamp)::float8 END").fetchone()
        assert row is not None
        return NodeStatus(False, row[0], None, row[1])


# -- freeze --------------------------------------------------------------
_READ_ONLY = "default_transaction_read_only"


SESSIONS_LEFT_OPEN = "superuser sessions left open"
"""How a freeze record's ``not_possible`` begins the sentence about sessions it could not
end (the promotion's RPO caveat looks for it)."""


class FreezeIncomplete(RuntimeError):
    """The freeze ran but an application session is still there: not frozen."""


@dataclass(frozen=True)
class FreezeRecord:
    """Exactly what a freeze changes, so unfreeze can undo exactly that.

    ``roles_locked``: application roles that could log in before the freeze (they
    get ``LOGIN`` back; a role that was ``NOLOGIN`` before stays so).
    ``auto_conf_read_only``: what ``postgresql.auto.conf`` (``ALTER SYSTEM``) said
    about ``default_transaction_read_only`` before the freeze, as written there
    (``"on"``, ``"off"``, or whatever spelling it had), or None when it had no
    entry; unfreeze writes that back or ``ALTER SYSTEM RESET``s it, so a server
    whose default was read-only (there or in ``postgresql.conf``) stays so.
    ``sessions_ended``: application sessions the freeze terminated.
    ``database_read_only``: set when the role drorch connects as may not ``ALTER
    SYSTEM`` (RDS and Aurora give ``rds_superuser``, not superuser): the read-only
    default was then set per database (``ALTER DATABASE … SET``), and this maps each
    database it was set on to its own setting before (as written, or None for none).
    Such a setting is a catalog row, so it replicates: the new primary starts with it
    too, and :func:`open_writes` restores it there from this record.
    ``not_possible``: what this role may not do on this node, one sentence each (a
    database it does not own keeps its default; superuser sessions, on RDS the
    service's own ``rdsadmin`` ones, stay).
    """

    roles_locked: list[str]
    auto_conf_read_only: str | None
    sessions_ended: int = 0
    database_read_only: dict[str, str | None] | None = None
    not_possible: list[str] = field(default_factory=list, compare=False)
    # What else the freeze found (not part of the undo): sessions of other roles it
    # ended, by role, and the prepared transactions waiting on the node (any of them
    # may still be committed by ``COMMIT PREPARED``).
    others_ended: dict[str, int] = field(default_factory=dict, compare=False)
    prepared: list[dict[str, Any]] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"roles_locked": self.roles_locked,
                               "auto_conf_read_only": self.auto_conf_read_only,
                               "sessions_ended": self.sessions_ended}
        if self.database_read_only is not None:
            out["database_read_only"] = dict(self.database_read_only)
        if self.not_possible:
            out["not_possible"] = list(self.not_possible)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FreezeRecord:
        """Also reads the older shape ``{"read_only_was": "on"|"off", ...}`` (the
        ``SHOW`` value of a drorch session, always "off"): its undo was "on" -> set
        it on, anything else -> ``ALTER SYSTEM RESET``, and so it stays."""
        if "auto_conf_read_only" in d:
            auto = d["auto_conf_read_only"]
            auto = None if auto is None else str(auto)
        else:
            auto = "on" if d.get("read_only_was") == "on" else None
        per_db = d.get("database_read_only")
        return cls(sorted(d.get("roles_locked") or []), auto, int(d.get("sessions_ended") or 0),
                   None if per_db is None else {str(k): (None if v is None else str(v))
                                                for k, v in per_db.items()},
                   list(d.get("not_possible") or []))

    def merged_with(self, now: FreezeRecord) -> FreezeRecord:
        """This record, taken before an earlier (maybe half-done) freeze, with what
        a later read ``now`` adds: roles that can log in now are locked too and get
        LOGIN back; the configuration before the freeze stays this record's (``now``
        may read a value the earlier freeze wrote)."""
        per_db = None
        if self.database_read_only is not None or now.database_read_only is not None:
            # a database this record knows keeps its value from before; one only ``now``
            # names (created since) takes what ``now`` read
            per_db = {**(now.database_read_only or {}), **(self.database_read_only or {})}
        return FreezeRecord(sorted(set(self.roles_locked) | set(now.roles_locked)),
                            self.auto_conf_read_only, self.sessions_ended + now.sessions_ended,
                            per_db, sorted(set(self.not_possible) | set(now.not_possible)))


def _auto_conf_read_only(c: psycopg.Connection[Any]) -> str | None:
    """The ``default_transaction_read_only`` entry of ``postgresql.auto.conf``
    (where ``ALTER SYSTEM`` writes), None when there is none. Read from the file as
    it is now, loaded or not: pg_file_settings
    (https://www.postgresql.org/docs/15/view-pg-file-settings.html; superusers
    only by default). ``ALTER SYSTEM`` keeps one line per setting; the last wins."""
    row = c.execute(
        "SELECT setting FROM pg_file_settings WHERE name = %s "
        "AND sourcefile = current_setting('data_directory') || '/postgresql.auto.conf' "
        "ORDER BY seqno DESC LIMIT 1", (_READ_ONLY,)).fetchone()
    return None if row is None else str(row[0])


def may_alter_system(c: psycopg.Connection[Any]) -> bool:
    """Whether this session's role may ``ALTER SYSTEM SET default_transaction_read_only``
    (a superuser, or a PostgreSQL 15 ``GRANT ALTER SYSTEM ON PARAMETER``:
    https://www.postgresql.org/docs/15/functions-info.html, ``has_parameter_privilege``).
    RDS and Aurora allow ``ALTER SYSTEM`` to nobody (configuration is the parameter
    group's): drorch then sets the default per database."""
    row = c.execute("SELECT has_parameter_privilege(%s, 'ALTER SYSTEM')",
                    (_READ_ONLY,)).fetchone()
    return bool(row and row[0])


def _database_read_only(c: psycopg.Connection[Any]) -> tuple[dict[str, str | None], list[str]]:
    """Each database a session may use that this role may ``ALTER DATABASE`` (it is a
    member of the owner: https://www.postgresql.org/docs/15/sql-alterdatabase.html), with
    its own ``default_transaction_read_only`` setting (None: none); and one sentence
    per database it may not alter."""
    rows = c.execute(
        "SELECT d.datname, pg_has_role(current_user, d.datdba, 'MEMBER'), "
        "pg_get_userbyid(d.datdba), (SELECT split_part(x, '=', 2) FROM "
        "pg_db_role_setting r, unnest(r.setconfig) x WHERE r.setdatabase = d.oid "
        "AND r.setrole = 0 AND x LIKE %s LIMIT 1) FROM pg_database d "
        "WHERE d.datallowconn AND NOT d.datistemplate ORDER BY d.datname",
        (_READ_ONLY + "=%",)).fetchall()
    mine = {str(name): (None if value is None else str(value))
            for name, owned, _owner, value in rows if owned}
    other = [f"database {name} (owner {owner}): its read-only default was not set (this "
             "role may not alter it); application roles are locked out and sessions ended "
             "all the same" for name, owned, owner, _value in rows if not owned]
    return mine, other


def _set_database_read_only(c: psycopg.Connection[Any], values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            c.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(
                sql.Identifier(name)))
        else:
            c.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(name), sql.Literal(value)))


def _baseline(c: psycopg.Connection[Any], app_roles: list[str]) -> FreezeRecord:
    """What a freeze by this session's role would change here, read without changing it."""
    roles = _roles_that_can_log_in(c, app_roles)
    if may_alter_system(c):
        return FreezeRecord(roles, _auto_conf_read_only(c))
    per_db, not_possible = _database_read_only(c)
    return FreezeRecord(roles, None, 0, per_db, not_possible)


def _configured_read_only(c: psycopg.Connection[Any]) -> bool:
    """Whether a new session on this server starts read-only: the setting's reset
    value (configuration files as last reloaded, then database/role settings of
    the connecting role), which :func:`open_conn`'s in-session ``SET`` leaves alone.
    pg_settings: https://www.postgresql.org/docs/15/view-pg-settings.html"""
    row = c.execute("SELECT reset_val FROM pg_settings WHERE name = %s",
                    (_READ_ONLY,)).fetchone()
    assert row is not None
    return str(row[0]) == "on"


def _roles_that_can_log_in(c: psycopg.Connection[Any], roles: list[str]) -> list[str]:
    return sorted(r[0] for r in c.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin", (roles,)))


def freeze_baseline(target: Target, app_roles: list[str]) -> FreezeRecord:
    """What a freeze of this node would change, read without changing anything."""
    with _use(target) as c:
        return _baseline(c, app_roles)


def freeze(target: Target, app_roles: list[str], previous: FreezeRecord | None = None, *,
           on_intent: Callable[[FreezeRecord], None] | None = None,
           on_roles_locked: Callable[[], None] | None = None,
           others_wait_s: float = 0.0) -> FreezeRecord:
    """Stop every write on this node; replication keeps streaming.

    Locks the application roles out (``ALTER ROLE … NOLOGIN``), makes read-only
    the default for new transactions (``ALTER SYSTEM``, reload; per database where the
    role may not ``ALTER SYSTEM``, as on RDS and Aurora), then ends the
    application roles' sessions and waits until they are gone (an open
    transaction dies uncommitted). ``default_transaction_read_only`` alone is no
    freeze: a client may ``SET`` it off
    (https://www.postgresql.org/docs/15/runtime-config-client.html). Then every
    other client session (an ETL job, an operator's superuser session: any of them
    may ``BEGIN READ WRITE`` and commit after the barrier) is ended too, after
    giving their open write transactions up to ``others_wait_s`` to finish (0: at
    once); walsenders (replication) and this session stay. Prepared transactions
    are listed in the record (ending sessions does not end them).

    ``previous`` is what an earlier, possibly half-done, freeze recorded before it
    changed anything: what was there before comes from it, never from this node,
    which that freeze may have changed already. ``on_intent(record)`` is called
    with the record of what is about to change *before* anything changes (the
    caller journals it: killed at any later line, the undo is still exact);
    ``on_roles_locked()`` right after the roles are locked (a test kill point).
    Returns the record; safe to call again with it as ``previous``.
    """
    with _use(target) as c:
        now = _baseline(c, app_roles)
        intent = now if previous is None else previous.merged_with(now)
        if on_intent is not None:
            on_intent(intent)
        for role in now.roles_locked:
            c.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
        if on_roles_locked is not None:
            on_roles_locked()
        if now.database_read_only is None:
            c.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            c.execute("SELECT pg_reload_conf()")
        else:
            _set_database_read_only(c, dict.fromkeys(now.database_read_only, "on"))
        # With a timeout pg_terminate_backend waits until the backend has exited
        # (https://www.postgresql.org/docs/15/functions-admin.html): no session of
        # an application role can commit after this returns.
        ended = c.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
            "FROM pg_stat_activity WHERE usename = ANY(%s) AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'", (app_roles,)).fetchone()[0]  # type: ignore[index]
        left = c.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s) "
                         "AND pid <> pg_backend_pid()", (app_roles,)).fetchone()[0]  # type: ignore[index]
        if left:
            raise FreezeIncomplete(f"{left} session(s) of {app_roles} still connected after "
                                   "pg_terminate_backend waited 5 s for each: writes not "
                                   "stopped")
        others, kept = _end_other_sessions(c, others_wait_s)
        prepared = prepared_transactions(c)
    not_possible = list(intent.not_possible)
    if kept:
        not_possible.append(
            f"{SESSIONS_LEFT_OPEN} (this role may not end them; on RDS and Aurora "
            "they are the service's own, rdsadmin): "
            + ", ".join(f"{role} x{n}" for role, n in sorted(kept.items())))
    return FreezeRecord(intent.roles_locked, intent.auto_conf_read_only,
                        intent.sessions_ended + int(ended), intent.database_read_only,
                        not_possible, others, prepared)


def prepared_transactions(target: Target) -> list[dict[str, Any]]:
    """Transactions prepared for two-phase commit and not yet finished (``gid``,
    ``owner``, ``database``, ``prepared_at``). Ending sessions does not end them, they
    replicate, and they keep their row locks until someone runs ``COMMIT PREPARED`` or
    ``ROLLBACK PREPARED`` (PostgreSQL 15 docs, PREPARE TRANSACTION)."""
    with _use(target, 3000) as c:
        return [{"gid": r[0], "owner": r[1], "database": r[2], "prepared_at": r[3]}
                for r in c.execute("SELECT gid, owner, database, prepared::text "
                                   "FROM pg_prepared_xacts ORDER BY prepared")]


_OTHER_SESSIONS = ("FROM pg_stat_activity WHERE backend_type = 'client backend' "
                   "AND pid <> pg_backend_pid()")


def _end_other_sessions(c: psycopg.Connection[Any], wait_s: float
                        ) -> tuple[dict[str, int], dict[str, int]]:
    """End every client session but this one (application roles are gone already);
    first wait up to ``wait_s`` for their open write transactions (those holding a
    transaction id) to end by themselves. Returns the sessions ended, and the sessions
    left because this role may not end them, by role.

    Only a superuser may end a superuser's session (PostgreSQL 15,
    https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-ADMIN-SIGNAL; asked
    anyway, it raises an error for the whole statement): a role that is not one leaves
    them. On RDS and Aurora those are the service's own (``rdsadmin``), and nobody else
    is a superuser there."""
    superuser = scalar_setting(c, "is_superuser") == "on"
    scope = _OTHER_SESSIONS if superuser else (
        _OTHER_SESSIONS + " AND NOT coalesce((SELECT rolsuper FROM pg_roles "
        "WHERE oid = usesysid), true)")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and c.execute(
            "SELECT count(*) " + scope + " AND backend_xid IS NOT NULL"
            ).fetchone()[0]:  # type: ignore[index]
        time.sleep(0.05)
    ended: dict[str, int] = {}
    left = 0
    for role, ok in c.execute("SELECT coalesce(usename, '?'), pg_terminate_backend(pid, 5000) "
                              + scope):
        if ok:
            ended[role] = ended.get(role, 0) + 1
        else:
            left += 1
    # Only the sessions asked to end count: one that connects after this (a health
    # probe, say) starts under the read-only default already in force, like any session
    # after the freeze; counting it again made the freeze fail on a busy node.
    if left:
        raise FreezeIncomplete(f"{left} other session(s) still connected after "
                               "pg_terminate_backend waited 5 s for each: writes not stopped")
    kept = {str(role): int(n) for role, n in c.execute(
        "SELECT coalesce(usename, '?'), count(*) " + _OTHER_SESSIONS + " GROUP BY 1")}
    return ended, kept


def scalar_setting(c: psycopg.Connection[Any], name: str) -> str:
    row = c.execute("SELECT current_setting(%s)", (name,)).fetchone()
    return str(row[0]) if row else ""


def is_frozen(target: Target, app_roles: list[str]) -> bool:
    """No application role can log in, none has a session, and a new session starts
    read-only by the server's configuration (not what drorch's own, exempted,
    session shows)."""
    with _use(target) as c:
        read_only = _configured_read_only(c)
        can_login = _roles_that_can_log_in(c, app_roles)
        sessions = c.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = ANY(%s)",
                             (app_roles,)).fetchone()[0]  # type: ignore[index]
    return read_only and not can_login and sessions == 0


def unfreeze(target: Target, record: FreezeRecord) -> None:
    """Undo exactly ``record``: the roles it locked regain LOGIN, and
    ``postgresql.auto.conf`` gets back its entry as it was (or none), then reload."""
    with _use(target) as c:
        for role in record.roles_locked:
            c.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        if record.database_read_only is not None:
            _set_database_read_only(c, _existing(c, record.database_read_only))
            return
        if record.auto_conf_read_only is None:
            c.execute("ALTER SYSTEM RESET default_transaction_read_only")
        else:
            c.execute(sql.SQL("ALTER SYSTEM SET default_transaction_read_only = {}").format(
                sql.Literal(record.auto_conf_read_only)))
        c.execute("SELECT pg_reload_conf()")


def _existing(c: psycopg.Connection[Any], values: dict[str, str | None]
              ) -> dict[str, str | None]:
    """``values`` for the databases that exist now (one dropped since is skipped)."""
    names = {r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                     (list(values),))}
    return {k: v for k, v in values.items() if k in names}


def open_writes(dsn: str, roles: list[str], freeze: FreezeRecord | None = None) -> list[str]:
    """On a new primary: let the application roles in (a freeze on the old
    primary replicated their NOLOGIN here) and make writes the default.
    ``freeze``: the old primary's freeze record; a read-only default it set per database
    replicated here too and is put back as it was before. Returns the roles that were
    changed."""
    with connect(dsn) as c:
        locked = [r[0] for r in c.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND NOT rolcanlogin", (roles,))]
        for role in locked:
            c.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role)))
        if freeze is not None and freeze.database_read_only is not None:
            _set_database_read_only(c, _existing(c, freeze.database_read_only))
        if may_alter_system(c):
            c.execute("ALTER SYSTEM RESET default_transaction_read_only")
            c.execute("SELECT pg_reload_conf()")
    return locked


def writes_open(dsn: str, roles: list[str], freeze: FreezeRecord | None = None) -> bool:
    """A primary the application roles can log in to, whose configuration does not
    make new sessions read-only; with ``freeze`` (a per-database freeze, replicated
    here), every database it set has its own setting from before again (not only the
    one ``dsn`` names: :func:`open_writes` restores them one by one, and may be killed
    between two)."""
    with connect(dsn) as c:
        locked = c.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) "
                           "AND NOT rolcanlogin", (roles,)).fetchone()[0]  # type: ignore[index]
        read_only = _configured_read_only(c)
        recovery = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
        restored = True
        if freeze is not None and freeze.database_read_only is not None:
            now, _others = _database_read_only(c)
            restored = all(now.get(name) == value for name, value in
                           _existing(c, freeze.database_read_only).items())
    return locked == 0 and not read_only and not recovery and restored


# -- sequences ---------------------------------------------------------------
_SEQUENCES = ("SELECT format('%I.%I', schemaname, sequencename), "
              "coalesce(last_value, start_value - increment_by), max_value "
              "FROM pg_sequences WHERE increment_by > 0 AND schemaname <> 'drorch_reconcile' "
              "AND has_sequence_privilege(format('%I.%I', schemaname, sequencename)::regclass, "
              "'UPDATE')")
_SEQUENCES_OUT_OF_REACH = (
    "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences "
    "WHERE increment_by > 0 AND schemaname <> 'drorch_reconcile' "
    "AND NOT has_sequence_privilege(format('%I.%I', schemaname, sequencename)::regclass, "
    "'UPDATE') ORDER BY 1")


def sequences_out_of_reach(target: Target) -> list[str]:
    """Ascending sequences the connecting role may not ``setval`` (no UPDATE privilege:
    on RDS and Aurora the master user does not own what an application role created)."""
    with _use(target) as c:
        return [str(r[0]) for r in c.execute(_SEQUENCES_OUT_OF_REACH)]


def sequence_positions(target: Target) -> dict[str, int]:
    """Every ascending sequence of the database the connecting role may ``setval``
    (``schema.name``, quoted as needed) -> the value it last handed out (``start -
    increment`` when never used). From ``pg_sequences``
    (https://www.postgresql.org/docs/15/view-pg-sequences.html); descending sequences,
    and those out of the role's reach (:func:`sequences_out_of_reach`), are left out."""
    with _use(target) as c:
        return {str(r[0]): int(r[1]) for r in c.execute(_SEQUENCES)}


_INT_KEYED_TABLES = """
SELECT n.nspname || '.' || c.relname, format('%I.%I', n.nspname, c.relname),
       quote_ident(a.attname)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
WHERE i.indisprimary AND i.indnatts = 1 AND c.relkind IN ('r', 'p')
  AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
  AND has_table_privilege(c.oid, 'SELECT')
"""


def recovery_end(target: Target) -> tuple[str | None, float | None]:
    """On a node promoted since it started: the end of the WAL it replayed (where its new
    timeline begins) and the commit time of the last transaction it replayed (unix
    seconds; None when it replayed none since it started). Both stay readable after the
    promotion (``pg_last_wal_replay_lsn``, ``pg_last_xact_replay_timestamp``:
    https://www.postgresql.org/docs/15/functions-admin.html#FUNCTIONS-RECOVERY-INFO-TABLE)."""
    with _use(target) as c:
        row = c.execute("SELECT pg_last_wal_replay_lsn()::text, "
                        "extract(epoch FROM pg_last_xact_replay_timestamp())::float8"
                        ).fetchone()
    assert row is not None
    return row[0], row[1]


SPLIT_KEYS_BUDGET_S = 1.0
"""At most this long reading the split's largest keys: it sits before the promotion."""


def split_key_maxima(target: Target, budget_s: float = SPLIT_KEYS_BUDGET_S) -> dict[str, int]:
    """Each table with a one-column integer primary key (``schema.table``) -> its largest
    key now, read on a node just promoted: the split's state. A key
    above it did not exist at the split, which a full comparison, unable to read the
    WAL, needs to tell an insert made after the split from a row one side deleted. An
    empty table gets the smallest ``bigint`` (every key is above it).

    Best effort, bounded by ``budget_s``: one index probe per table (``max`` over the
    primary key) under a short ``lock_timeout`` (an application may already hold a
    lock on a table of the new primary); a table not read in
    time, or that this role may not read, is left out (its keys stay unknown: a full
    comparison sends what it cannot tell apart to a human)."""
    out: dict[str, int] = {}
    deadline = time.monotonic() + budget_s
    with _use(target, int(budget_s * 1000) + 1000) as c:
        c.execute("SET lock_timeout = 100")
        for name, ident, col in c.execute(_INT_KEYED_TABLES).fetchall():
            if time.monotonic() > deadline:
                break
            try:
                row = c.execute(sql.SQL(
                    "SELECT coalesce(max({})::bigint, -9223372036854775808) FROM {}").format(
                        sql.SQL(col), sql.SQL(ident))).fetchone()
            except psycopg.errors.LockNotAvailable:
                continue
            out[str(name)] = int(row[0])  # type: ignore[index]
    return out


def advance_sequences(target: Target, targets: dict[str, int]) -> dict[str, int]:
    """``setval`` each named sequence to its target unless it is already past it (so a
    rerun with the same targets changes nothing). Never moves a sequence back: its
    position is read from the sequence itself (``pg_sequences.last_value`` is NULL after
    ``setval(.., false)`` or ``RESTART``). A target past the sequence's maximum is cut to
    half the room left, so the new primary can still insert. Returns sequence -> value."""
    out: dict[str, int] = {}
    with _use(target) as c, c.transaction():
        known = {str(r[0]): (int(r[1]), int(r[2])) for r in c.execute(
            "SELECT format('%%I.%%I', schemaname, sequencename), max_value, increment_by "
            "FROM pg_sequences WHERE format('%%I.%%I', schemaname, sequencename) = ANY(%s)",
            (list(targets),))}
        for name, wanted in targets.items():
            if name not in known:
                continue  # dropped since: nothing to move
            max_value, _inc = known[name]
            # ``name`` is PostgreSQL's own format('%I.%I') of an existing sequence: quoted.
            row = c.execute(sql.SQL("SELECT last_value FROM {}").format(sql.SQL(name))).fetchone()
            now = int(row[0])  # type: ignore[index]
            goal = max(now, min(wanted, now + (max_value - now) // 2))
            c.execute("SELECT setval(%s::regclass, %s)", (name, goal))
            out[name] = goal
    return out


def split_slot_name(database: str) -> str:
    """The physical slot that pins a promoted primary's WAL from the split (slot names:
    lower-case letters, digits, underscores)."""
    return "drorch_split_" + re.sub(r"[^a-z0-9_]", "_", database.lower())[:40]


def pin_wal(target: Target, slot: str) -> str:
    """Keep this primary's WAL from now on: a physical slot reserved at once
    (``pg_create_physical_replication_slot(slot, immediately_reserve => true)``, which
    reserves from the last checkpoint's redo pointer; see
    https://www.postgresql.org/docs/15/functions-admin.html). Kept until
    :func:`release_wal`, capped by ``max_slot_wal_keep_size``. Idempotent; returns the
    slot's ``restart_lsn``."""
    with _use(target) as c:
        c.execute("SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                  "(SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)", (slot, slot))
        row = c.execute("SELECT restart_lsn::text FROM pg_replication_slots "
                        "WHERE slot_name = %s", (slot,)).fetchone()
    return str(row[0]) if row else ""


def wal_pinned(target: Target, slot: str) -> bool:
    with _use(target) as c:
        row = c.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                        (slot,)).fetchone()
    return bool(row and row[0])


def slot_wal_cap_mb(target: Target) -> int:
    """``max_slot_wal_keep_size`` in MB: the most WAL any slot may hold before the server
    invalidates it; -1 is unlimited, the default ("Replication", PostgreSQL 15 docs,
    20.6.1)."""
    with _use(target) as c:
        row = c.execute("SELECT setting::bigint FROM pg_settings "
                        "WHERE name = 'max_slot_wal_keep_size'").fetchone()
    return int(row[0]) if row else -1


def slot_wal_cap_altered(target: Target) -> bool:
    """Whether ``max_slot_wal_keep_size`` comes from ``ALTER SYSTEM``
    (``postgresql.auto.conf``) rather than the configuration file or the default."""
    with _use(target) as c:
        row = c.execute("SELECT coalesce(sourcefile, '') LIKE '%%postgresql.auto.conf' "
                        "FROM pg_settings WHERE name = 'max_slot_wal_keep_size'").fetchone()
    return bool(row and row[0])


def set_slot_wal_cap_mb(target: Target, mb: int | None) -> None:
    """Set ``max_slot_wal_keep_size`` (``ALTER SYSTEM`` + reload: it is a sighup
    setting); None resets it to what the configuration file or the default says.
    Server-wide: every slot of the node gets the cap."""
    with _use(target) as c:
        if mb is None:
            c.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        else:
            c.execute(sql.SQL("ALTER SYSTEM SET max_slot_wal_keep_size = {}").format(
                sql.Literal(f"{int(mb)}MB" if mb >= 0 else "-1")))
        c.execute("SELECT pg_reload_conf()")


def slot_retained_bytes(target: Target, slot: str) -> int | None:
    """WAL bytes the slot holds back now (current position minus its ``restart_lsn``);
    None when there is no such slot or it has lost its WAL."""
    with _use(target) as c:
        row = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                        "FROM pg_replication_slots WHERE slot_name = %s "
                        "AND restart_lsn IS NOT NULL", (slot,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def release_wal(target: Target, slot: str) -> bool:
    """Drop the pin (idempotent); True when a slot was dropped."""
    with _use(target) as c:
        row = c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                        "WHERE slot_name = %s", (slot,)).fetchall()
    return bool(row)


# -- synchronous replication -------------------------------------------------
@dataclass(frozen=True)
class SyncStandbys:
    """``synchronous_standby_names`` parsed ("Replication", PostgreSQL 15 docs, 20.6.2):
    ``[FIRST|ANY] num_sync (name, ...)`` or a bare list (``FIRST 1``); ``*`` matches any
    standby; names compare case-insensitively unless double-quoted (``names`` keep
    their quotes)."""

    method: str
    num_sync: int
    names: tuple[str, ...]

    def matches(self, application_name: str) -> bool:
        return any(n == "*" or (n[1:-1] == application_name if n.startswith('"')
                                else n.lower() == application_name.lower())
                   for n in self.names)


_SYNC_RE = re.compile(r"^\s*(?:(FIRST|ANY)\s+)?(?:(\d+)\s*\((.*)\)|(.*))\s*$",
                      re.IGNORECASE | re.DOTALL)


def parse_sync_standbys(value: str) -> SyncStandbys | None:
    """None when empty (asynchronous replication); ValueError when it cannot be read."""
    if not value.strip():
        return None
    m = _SYNC_RE.match(value)
    if m is None:
        raise ValueError(f"cannot read synchronous_standby_names {value!r}")
    method = (m.group(1) or "FIRST").upper()
    listed = m.group(3) if m.group(2) is not None else m.group(4)
    names = tuple(n.strip() for n in listed.split(",") if n.strip())  # quotes kept
    if not names:
        raise ValueError(f"cannot read synchronous_standby_names {value!r}")
    return SyncStandbys(method, int(m.group(2) or 1), names)


def sync_standby_names(target: Target) -> tuple[str, bool]:
    """The node's ``synchronous_standby_names`` and whether it comes from ``ALTER SYSTEM``
    (``postgresql.auto.conf``)."""
    with _use(target, 3000) as c:
        row = c.execute("SELECT setting, coalesce(sourcefile, '') LIKE '%%postgresql.auto.conf' "
                        "FROM pg_settings WHERE name = 'synchronous_standby_names'").fetchone()
    return (str(row[0]), bool(row[1])) if row else ("", False)


def streaming_standbys(target: Target) -> list[str]:
    """``application_name`` of every standby streaming from the node now."""
    with _use(target, 3000) as c:
        return [str(r[0]) for r in c.execute(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")]


def set_sync_standby_names(target: Target, value: str | None) -> None:
    """``ALTER SYSTEM`` + reload (a sighup setting); None resets it to the configuration
    file's value or the default. Emptying it releases commits already waiting for a
    standby (the checkpointer wakes them when it sees no synchronous standby is
    defined, ``SyncRepUpdateSyncStandbysDefined`` in ``src/backend/replication/syncrep.c``)."""
    with _use(target, 3000) as c:
        if value is None:
            c.execute("ALTER SYSTEM RESET synchronous_standby_names")
        else:
            c.execute(sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                sql.Literal(value)))
        c.execute("SELECT pg_reload_conf()")


def user_writes_since(target: Target, lsn: str) -> int:
    """Transactions that wrote rows of user tables (relation file number >= 16384,
    ``FirstNormalObjectId``) in this primary's WAL from ``lsn`` to its end: writes
    another node that left at ``lsn`` has not got. Catalog-only work (autoanalyze's
    statistics, say) does not count. Needs ``pg_walinspect`` in the database."""
    with _use(target, 60000) as c:
        ahead = c.execute("SELECT %s::pg_lsn >= pg_current_wal_flush_lsn()", (lsn,)).fetchone()
        if ahead and ahead[0]:
            return 0  # nothing written since (the other node's WAL went further on its own)
        row = c.execute(
            "SELECT count(DISTINCT xid::text) FROM pg_get_wal_records_info(%s::pg_lsn, "
            "pg_current_wal_flush_lsn()) WHERE resource_manager IN ('Heap', 'Heap2') "
            "AND substring(block_ref from 'rel [0-9]+/[0-9]+/([0-9]+)')::bigint >= 16384",
            (lsn,)).fetchone()
    return int(row[0]) if row else 0


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


class CommitNotAcknowledged(RuntimeError):
    """A commit waited for a synchronous standby past its deadline."""


def canary_write(dsn: str, marker: str) -> str:
    """Write one row and read it back in a new transaction: proves writes work
    for the credentials in ``dsn`` (the application's, from its secret)."""
    notices: list[str] = []
    with connect(dsn, 5000) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        c.execute("INSERT INTO drorch.canary(marker) VALUES (%s) ON CONFLICT (marker) DO UPDATE "
                  "SET written_at = now()", (marker,))
        if any("synchronous replication" in n for n in notices):
            # statement_timeout cancelled the commit's wait for a standby; PostgreSQL says
            # "canceling wait for synchronous replication ... committed locally"
            raise CommitNotAcknowledged(
                "the canary's commit did not return within 5 s: it waits for a synchronous "
                "standby that does not acknowledge (synchronous_standby_names); the "
                "application's commits hang the same way")
        row = c.execute("SELECT marker FROM drorch.canary WHERE marker=%s", (marker,)).fetchone()
    if not row:
        raise RuntimeError("canary row written but not read back")
    return str(row[0])


def system_identifier(dsn: Target) -> int:
    with _use(dsn, 3000) as c:
        return int(c.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])  # type: ignore[index]
