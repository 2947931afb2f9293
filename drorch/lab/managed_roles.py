"""The lab's stand-in for the master user of an RDS or Aurora PostgreSQL instance.

On RDS and Aurora nobody is a superuser but the service's own ``rdsadmin``: the master
user is a member of ``rds_superuser`` and has CREATEROLE and CREATEDB (Amazon RDS User
Guide, "Understanding PostgreSQL roles and permissions"). ``ALTER SYSTEM`` is refused
(configuration lives in parameter groups), and only a superuser may end a superuser's
session. A lab runbook of kind ``rds`` or ``aurora-global`` connects as this role, so
drorch's SQL meets those limits here, not first in a customer's account.

Granted here, as RDS grants its ``rds_superuser``: ``pg_signal_backend`` (end other
roles' sessions), ``pg_monitor`` (read their activity and replication state) and the
right to set ``session_replication_role`` (PostgreSQL 15's ``GRANT SET ON PARAMETER``;
RDS's own grant is what AWS DMS's PostgreSQL target relies on), plus
what the lab must stand in for because its schema is made by the lab's superuser: the
ownership of the application database and its tables and sequences (on RDS the
master user creates them). Nothing more: ``pg_walinspect`` stays the superusers' (and
``pg_read_server_files``'s), as PostgreSQL ships it, since whether RDS extends it to
``rds_superuser`` is not documented where drorch could check it.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

MASTER_USER = "rds_master"


def emulate_master_user(admin_dsn: str, dbname: str, user: str = MASTER_USER) -> None:
    """Create ``rds_superuser`` and the master user ``user`` on the primary at
    ``admin_dsn`` (a superuser), and hand it ``dbname`` and its objects; safe to rerun."""
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rds_superuser'").fetchone():
            c.execute("CREATE ROLE rds_superuser NOLOGIN")
        c.execute("GRANT pg_signal_backend, pg_monitor TO rds_superuser")
        # RDS lets rds_superuser set session_replication_role (what AWS DMS and
        # pglogical rely on); drorch's reconcile applies rows with it set to replica
        c.execute("GRANT SET ON PARAMETER session_replication_role TO rds_superuser")
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone():
            c.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB IN ROLE rds_superuser"
                              ).format(sql.Identifier(user)))
        c.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dbname),
                                                                  sql.Identifier(user)))
    with psycopg.connect(admin_dsn, dbname=dbname, autocommit=True) as c:
        owner = sql.Identifier(user)
        for kind, name in c.execute(
                "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, "
                "format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                "AND c.relkind IN ('r', 'p', 'S') AND NOT EXISTS (SELECT 1 FROM pg_depend d "
                "WHERE d.objid = c.oid AND d.deptype IN ('a', 'i') "
                "AND d.classid = 'pg_class'::regclass)").fetchall():
            c.execute(sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kind), sql.SQL(name),
                                                               owner))
