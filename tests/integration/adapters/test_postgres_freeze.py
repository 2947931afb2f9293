"""freeze, is_frozen, unfreeze and writes_open against a real PostgreSQL 15 pair.

Every test starts from a state drorch did not set (a read-only default in
``postgresql.auto.conf`` or in ``postgresql.conf``, an explicit "off", an
application role that was ``NOLOGIN`` already) and checks the server itself,
from sessions that are not drorch's: what a new session gets as its default,
what ``postgresql.auto.conf`` holds, which roles may log in, which rows exist.
One primary and its streaming replica serve the whole module (no lab, no
failover); each test puts the primary back to the plain state first.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from drorch.adapters import postgres as pg
from drorch.config import Runbook, load_runbook
from drorch.lab.postgres import PgNode, make_pair, pg_available
from drorch.lab.schema import create_database_and_schema
from drorch.steps.base import StepContext, StepFailed
from drorch.steps.freeze import FreezeDatabase
from tests.conftest import LAB_RUNBOOK, needs_postgres

pytestmark = [pytest.mark.postgres, needs_postgres]

APP_PASSWORD = "freeze-test-pw"
DORMANT = "dormant"
"""An application role that was NOLOGIN before any freeze: it must stay so."""
ROLES = ["app", DORMANT]
EXTRA_CONF = "drorch_test_extra.conf"
"""Included at the end of postgresql.conf: the place a test writes a server-wide
setting that is not ALTER SYSTEM's (postgresql.auto.conf is read after it)."""

STARTS: dict[str, tuple[str | None, str | None]] = {
    # name: (postgresql.auto.conf entry, postgresql.conf entry)
    "plain": (None, None),
    "auto-conf-on": ("on", None),
    "auto-conf-off": ("off", None),
    "auto-conf-true": ("true", None),
    "postgresql-conf-on": (None, "on"),
    "both-conf-off-over-on": ("off", "on"),
}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PgNode, PgNode]]:
    """A primary with the lab's app database and a streaming replica of it."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries missing")
    workdir = Path(tempfile.mkdtemp(prefix="drorch-freeze-"))
    os.chmod(workdir, 0o755)  # the postgres user must traverse it
    primary = replica = None
    try:
        primary, replica = make_pair(workdir / "pg")
        with open(primary.datadir / "postgresql.conf", "a") as fh:
            fh.write(f"\ninclude_if_exists = '{EXTRA_CONF}'\n")
        create_database_and_schema(primary.dsn(), APP_PASSWORD)
        with psycopg.connect(primary.dsn(), autocommit=True) as c:
            c.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(DORMANT)))
        yield primary, replica
    finally:
        for node in (primary, replica):
            if node is not None:
                node.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def _admin(node: PgNode) -> psycopg.Connection[Any]:
    """A superuser session that writes whatever the server's default (the test's own
    hands, not drorch's)."""
    return psycopg.connect(node.dsn("app"), autocommit=True,
                           options="-c default_transaction_read_only=off")


def _reset(node: PgNode) -> None:
    """The plain state: no read-only entry anywhere, app may log in, dormant may not,
    no application session."""
    (node.datadir / EXTRA_CONF).unlink(missing_ok=True)
    with _admin(node) as c:
        c.execute("ALTER SYSTEM RESET default_transaction_read_only")
        c.execute("ALTER ROLE app LOGIN")
        c.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(DORMANT)))
        c.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                  "WHERE usename = ANY(%s)", (ROLES,))
        c.execute("SELECT pg_reload_conf()")


@pytest.fixture
def node(pair: tuple[PgNode, PgNode]) -> Iterator[PgNode]:
    primary = pair[0]
    _reset(primary)
    try:
        yield primary
    finally:
        _reset(primary)


def _set_start(node: PgNode, start: str) -> None:
    auto, conf = STARTS[start]
    if conf is not None:
        path = node.datadir / EXTRA_CONF
        path.write_text(f"default_transaction_read_only = {conf}\n")
        path.chmod(0o644)
    with _admin(node) as c:
        if auto is not None:
            c.execute(sql.SQL("ALTER SYSTEM SET default_transaction_read_only = {}").format(
                sql.Literal(auto)))
        c.execute("SELECT pg_reload_conf()")


def _world(node: PgNode) -> dict[str, Any]:
    """The server as anyone but drorch sees it, read from a plain new session."""
    with psycopg.connect(node.dsn("app"), autocommit=True) as c:
        return {
            "auto_conf": c.execute(
                "SELECT setting FROM pg_file_settings WHERE name = "
                "'default_transaction_read_only' AND sourcefile LIKE '%postgresql.auto.conf' "
                "ORDER BY seqno DESC LIMIT 1").fetchone(),
            "new_session_read_only": c.execute("SHOW default_transaction_read_only").fetchone()[0],
            "can_login": dict(c.execute("SELECT rolname, rolcanlogin FROM pg_roles "
                                        "WHERE rolname = ANY(%s)", (ROLES,)).fetchall()),
        }


def _app_dsn(node: PgNode) -> str:
    return f"{node.dsn('app', user='app')} password={APP_PASSWORD}"


@pytest.mark.parametrize("start", list(STARTS))
def test_freeze_then_unfreeze_restores_the_starting_state_exactly(node: PgNode,
                                                                  start: str) -> None:
    """From each starting state: not frozen before; frozen after ``freeze`` (app
    locked out, new sessions read-only); after ``unfreeze`` the auto.conf entry, the
    default a new session gets and every role's LOGIN are exactly as before, and the
    role that was NOLOGIN before stays NOLOGIN."""
    _set_start(node, start)
    dsn = node.dsn("app")
    before = _world(node)
    assert before["can_login"] == {"app": True, DORMANT: False}
    assert not pg.is_frozen(dsn, ROLES)

    record = pg.freeze(dsn, ROLES)

    assert pg.is_frozen(dsn, ROLES)
    frozen = _world(node)
    assert frozen["new_session_read_only"] == "on"
    assert frozen["can_login"] == {"app": False, DORMANT: False}
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(_app_dsn(node))
    assert record.roles_locked == ["app"]
    assert record.auto_conf_read_only == STARTS[start][0]

    pg.unfreeze(dsn, record)

    assert _world(node) == before
    assert not pg.is_frozen(dsn, ROLES)
    with psycopg.connect(_app_dsn(node)) as app:
        app.execute("SELECT 1")


def test_is_frozen_needs_every_part_of_the_freeze(node: PgNode) -> None:
    """A read-only default alone, or locked roles alone, is not a freeze; and an
    application session still connected means not frozen."""
    dsn = node.dsn("app")
    _set_start(node, "auto-conf-on")
    assert not pg.is_frozen(dsn, ROLES)  # read-only default, but app can log in
    _reset(node)
    with _admin(node) as c:
        c.execute("ALTER ROLE app NOLOGIN")
    assert not pg.is_frozen(dsn, ROLES)  # locked out, but writes are the default
    _set_start(node, "auto-conf-on")
    assert pg.is_frozen(dsn, ROLES)
    with _admin(node) as c:
        c.execute("ALTER ROLE app LOGIN")
    with psycopg.connect(_app_dsn(node)) as app:
        with _admin(node) as c:
            c.execute("ALTER ROLE app NOLOGIN")
        app.execute("SELECT 1")
        assert not pg.is_frozen(dsn, ROLES)  # a session of app is still there


def test_writes_open_reads_the_servers_default_not_drorchs_session(
        pair: tuple[PgNode, PgNode], node: PgNode) -> None:
    """``writes_open`` is False while the configuration makes new sessions read-only
    (auto.conf or postgresql.conf), while an application role cannot log in, and on
    a standby; ``open_writes`` clears what ALTER SYSTEM set, not postgresql.conf."""
    dsn, replica_dsn = node.dsn("app"), pair[1].dsn("app")
    assert pg.writes_open(dsn, ["app"])
    _set_start(node, "auto-conf-on")
    assert not pg.writes_open(dsn, ["app"])
    assert pg.open_writes(dsn, ["app"]) == []
    assert pg.writes_open(dsn, ["app"])
    _set_start(node, "postgresql-conf-on")
    assert not pg.writes_open(dsn, ["app"])
    pg.open_writes(dsn, ["app"])
    assert not pg.writes_open(dsn, ["app"])  # postgresql.conf is not ALTER SYSTEM's
    _reset(node)
    with _admin(node) as c:
        c.execute("ALTER ROLE app NOLOGIN")
    assert not pg.writes_open(dsn, ["app"])
    assert pg.open_writes(dsn, ["app"]) == ["app"]
    assert pg.writes_open(dsn, ["app"])
    assert not pg.writes_open(replica_dsn, ["app"])


def _orders(node: PgNode, region: str) -> int:
    with psycopg.connect(node.dsn("app"), autocommit=True) as c:
        return c.execute("SELECT count(*) FROM orders WHERE region = %s",
                         (region,)).fetchone()[0]


def test_session_inside_a_transaction_is_ended_and_its_insert_lost_everywhere(
        pair: tuple[PgNode, PgNode], node: PgNode) -> None:
    """An application session with an uncommitted insert when the freeze comes: its
    COMMIT fails (the session was terminated), the row is on neither node, and a new
    application login is refused."""
    primary, replica = pair
    dsn = primary.dsn("app")
    app = psycopg.connect(_app_dsn(primary))  # not autocommit: the insert stays open
    try:
        app.execute("INSERT INTO orders(user_id, amount_cents, region) "
                    "VALUES (1, 7, 'in-flight')")
        record = pg.freeze(dsn, ROLES)
        assert record.sessions_ended == 1
        with pytest.raises(psycopg.OperationalError):
            app.commit()
    finally:
        app.close()
    assert pg.is_frozen(dsn, ROLES)
    barrier = pg.write_barrier(dsn)
    assert pg.wait_replayed(replica.dsn("app"), barrier, 30, past=True)
    assert _orders(primary, "in-flight") == 0
    assert _orders(replica, "in-flight") == 0
    with pytest.raises(psycopg.OperationalError, match="not permitted to log in"):
        psycopg.connect(_app_dsn(primary))


def test_a_session_that_outlives_its_termination_fails_the_freeze(node: PgNode) -> None:
    """An application backend that cannot act on pg_terminate_backend within its 5 s
    (stopped here with SIGSTOP, as a wedged process would be) is not frozen out: the
    freeze raises instead of returning a record that claims it was, and is_frozen
    agrees."""
    dsn = node.dsn("app")
    app = psycopg.connect(_app_dsn(node), autocommit=True)
    try:
        backend = app.info.backend_pid
        os.kill(backend, signal.SIGSTOP)
        try:
            with pytest.raises(pg.FreezeIncomplete, match="still connected"):
                pg.freeze(dsn, ROLES)
            assert not pg.is_frozen(dsn, ROLES)
        finally:
            os.kill(backend, signal.SIGCONT)
    finally:
        app.close()


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the freeze may catch it."""


def test_intent_is_told_before_any_change_and_a_rerun_keeps_it(node: PgNode) -> None:
    """``on_intent`` sees the record before anything changed; killed after the roles
    were locked, a second freeze given that intent records the roles it locked and
    the auto.conf value before, which the half-frozen node no longer shows; a third
    freeze of a fully frozen node still keeps them; the unfreeze is exact."""
    _set_start(node, "auto-conf-off")
    dsn = node.dsn("app")
    before = _world(node)
    seen: list[tuple[pg.FreezeRecord, dict[str, Any]]] = []

    def kill() -> None:
        raise Killed

    with pytest.raises(Killed):
        pg.freeze(dsn, ROLES, on_intent=lambda rec: seen.append((rec, _world(node))),
                  on_roles_locked=kill)
    assert seen == [(pg.FreezeRecord(["app"], "off", 0), before)]
    intent = seen[0][0]
    # What re-deriving "before" from this half-frozen node would wrongly record:
    assert pg.freeze_baseline(dsn, ROLES) == pg.FreezeRecord([], "off", 0)

    record = pg.freeze(dsn, ROLES, intent)
    assert (record.roles_locked, record.auto_conf_read_only) == (["app"], "off")
    assert pg.is_frozen(dsn, ROLES)
    again = pg.freeze(dsn, ROLES, record)  # the node's auto.conf says "on" by now
    assert (again.roles_locked, again.auto_conf_read_only) == (["app"], "off")

    pg.unfreeze(dsn, again)
    assert _world(node) == before


# -- the freeze step itself, on this pair (no lab: a dict holds the facts) ----------
class DictFacts:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


@pytest.fixture
def ctx(node: PgNode, pair: tuple[PgNode, PgNode],
        monkeypatch: pytest.MonkeyPatch) -> StepContext:
    """The lab runbook pointed at this pair (database ``main``: region-a is ``node``)."""
    monkeypatch.setenv("DRORCH_LAB_PG_A_PORT", str(node.port))
    monkeypatch.setenv("DRORCH_LAB_PG_B_PORT", str(pair[1].port))
    runbook: Runbook = load_runbook(LAB_RUNBOOK)
    return StepContext(runbook, "test-incident", "tester", "region-a", "region-b",
                       lambda *_: None, DictFacts())


def _kill_at(monkeypatch: pytest.MonkeyPatch, point: str, exc: BaseException) -> None:
    def fault_point(name: str) -> None:
        if name == point:
            raise exc

    monkeypatch.setattr("drorch.steps.freeze.fault_point", fault_point)


def test_freeze_step_killed_after_locking_roles_resumes_from_its_intent(
        node: PgNode, ctx: StepContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between ALTER ROLE … NOLOGIN and the rest, the step has already journaled
    what it was about to change; run again, it merges with that (app locked, auto.conf
    "on" before), ``check`` then sees the node frozen, and ``undo`` restores exactly the
    read-only default the server had before and app's LOGIN."""
    _set_start(node, "auto-conf-on")
    before = _world(node)
    step = FreezeDatabase("main")
    assert not step.check(ctx)
    _kill_at(monkeypatch, "freeze:main:roles_locked", Killed())
    with pytest.raises(Killed):
        step.apply(ctx)
    assert ctx.facts.get("freeze:main") == {
        "phase": "intent", "roles_locked": ["app"], "auto_conf_read_only": "on",
        "sessions_ended": 0}
    assert _world(node)["can_login"]["app"] is False
    assert not step.check(ctx)  # an intent only: the step must run again

    monkeypatch.setattr("drorch.steps.freeze.fault_point", lambda _name: None)
    detail = step.apply(ctx)
    assert detail["roles_locked"] == ["app"] and detail["auto_conf_read_only"] == "on"
    assert ctx.facts.get("freeze:main")["phase"] == "done"
    assert step.check(ctx)

    assert step.undo(ctx) == {"restored": {"roles_locked": ["app"], "auto_conf_read_only": "on",
                                           "sessions_ended": 0}}
    assert _world(node) == before


def test_freeze_step_failing_midway_undoes_what_it_did(node: PgNode, ctx: StepContext,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A database error after the roles were locked fails the step (the engine will not
    undo a failed step): the step itself gives app its LOGIN back and leaves the
    auto.conf entry as it was."""
    _set_start(node, "auto-conf-off")
    before = _world(node)
    _kill_at(monkeypatch, "freeze:main:roles_locked",
             psycopg.errors.InsufficientPrivilege("simulated: ALTER SYSTEM refused"))
    with pytest.raises(StepFailed, match="was undone"):
        FreezeDatabase("main").apply(ctx)
    assert _world(node) == before
    assert ctx.facts.get("freeze:main") is None


RDS_MASTER = "rds_master"
"""Stands for the master user of an RDS or Aurora instance: not a superuser, a member of
``rds_superuser`` (here a group role with what RDS gives it for this: ending other
roles' sessions, reading their activity), CREATEROLE, owner of the databases it
created. ``ALTER SYSTEM`` is not allowed to it (RDS allows it to nobody)."""


def _as_rds(node: PgNode) -> str:
    """The master-user role, owner of ``app`` and of a ``reports`` database whose own
    default is read-only; its DSN on ``app``."""
    with _admin(node) as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (RDS_MASTER,)).fetchone() \
                is None:
            c.execute("CREATE ROLE rds_superuser NOLOGIN")
            c.execute("GRANT pg_signal_backend, pg_monitor TO rds_superuser")
            c.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB IN ROLE "
                              "rds_superuser").format(sql.Identifier(RDS_MASTER)))
            c.execute("CREATE ROLE etl LOGIN")
            c.execute(sql.SQL("CREATE DATABASE reports OWNER {}").format(
                sql.Identifier(RDS_MASTER)))
            c.execute("ALTER DATABASE reports SET default_transaction_read_only = on")
            c.execute(sql.SQL("CREATE DATABASE ledger OWNER {}").format(
                sql.Identifier(RDS_MASTER)))
        c.execute(sql.SQL("ALTER DATABASE app OWNER TO {}").format(sql.Identifier(RDS_MASTER)))
    return node.dsn("app", user=RDS_MASTER)


def _database_settings(node: PgNode) -> dict[str, list[str]]:
    with _admin(node) as c:
        return {name: list(conf) for name, conf in c.execute(
            "SELECT d.datname, s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE s.setrole = 0")}


def test_a_role_that_may_not_alter_system_freezes_per_database_as_on_rds(
        pair: tuple[PgNode, PgNode], node: PgNode) -> None:
    """RDS and Aurora give ``rds_superuser``, not superuser: no ``ALTER SYSTEM``, no
    ending a superuser's session. Frozen by such a role: the application role is locked
    out and its session ended, an ETL session of another role ended, each database the
    role owns starts read-only (a catalog setting: it reaches the replica too), the
    superuser session (RDS's own ``rdsadmin``) is left and said so, a database it does
    not own is named as not done; ``postgresql.auto.conf`` is never touched. Unfreeze and
    ``open_writes`` (on a new primary, where the setting arrived by replication) put
    every database's own setting back: ``reports`` stays read-only as it was."""
    master = _as_rds(node)
    before_settings = _database_settings(node)
    with psycopg.connect(master) as c:
        assert not pg.may_alter_system(c)
    app = psycopg.connect(_app_dsn(node), autocommit=True)
    etl = psycopg.connect(node.dsn("app", user="etl"), autocommit=True)
    rdsadmin = _admin(node)
    try:
        record = pg.freeze(master, ["app"])

        assert pg.is_frozen(master, ["app"])
        assert record.roles_locked == ["app"] and record.sessions_ended == 1
        assert record.others_ended == {"etl": 1}
        assert record.auto_conf_read_only is None
        assert record.database_read_only == {"app": None, "ledger": None, "reports": "on"}
        assert any("database postgres" in n for n in record.not_possible)
        assert any("superuser sessions left open" in n and "postgres x1" in n
                   for n in record.not_possible)
        assert rdsadmin.execute("SELECT 1").fetchone() == (1,)  # left alone
        for gone in (app, etl):
            with pytest.raises(psycopg.OperationalError):
                gone.execute("SELECT 1")
        with psycopg.connect(node.dsn("app", user="etl")) as fresh:
            assert fresh.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert _world(node)["auto_conf"] is None
        assert _database_settings(node)["app"] == ["default_transaction_read_only=on"]
        with psycopg.connect(pair[1].dsn("app"), autocommit=True) as standby:
            lsn = rdsadmin.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            for _ in range(200):
                if standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                   (lsn,)).fetchone() == (True,):
                    break
                standby.execute("SELECT pg_sleep(0.05)")
            assert standby.execute(
                "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
                "ON d.oid = s.setdatabase WHERE d.datname = 'app' AND s.setrole = 0"
            ).fetchone() == (["default_transaction_read_only=on"],)

        # killed after restoring app's setting, before ledger's: not open yet
        with _admin(node) as c:
            c.execute("ALTER DATABASE app RESET default_transaction_read_only")
            c.execute("ALTER ROLE app LOGIN")
        assert pg.writes_open(master, ["app"])  # what the database the dsn names shows
        assert not pg.writes_open(master, ["app"], record)  # ledger is still read-only
        assert pg.open_writes(master, ["app"], record) == []
        assert pg.writes_open(master, ["app"], record)
        assert _database_settings(node) == before_settings

        record = pg.freeze(master, ["app"])
        pg.unfreeze(master, record)
        assert _database_settings(node) == before_settings
        assert not pg.is_frozen(master, ["app"])
        with psycopg.connect(_app_dsn(node)) as back:
            assert back.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
    finally:
        for conn in (app, etl, rdsadmin):
            conn.close()
        with _admin(node) as c:
            c.execute("ALTER DATABASE app OWNER TO postgres")
