"""The lab application's database: role ``app``, database ``app``, three tables, seed users.

Everything here is idempotent (``IF NOT EXISTS``, ``ON CONFLICT DO NOTHING``, role
created only when missing), so ``create_database_and_schema`` may run again on a
primary that already has it. It runs once on the region-a primary; streaming
replication carries it to the replica.

The tables belong to the superuser that ran this; the ``app`` role only gets the
data privileges it needs, so freezing writes can lock it out (``NOLOGIN``) without
touching ownership. Passwords are stored as salted PBKDF2-SHA256 hashes (stdlib).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import psycopg
from psycopg import sql

APP_DB = "app"
APP_ROLE = "app"
PBKDF2_ITERATIONS = 100_000

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS users (
    id            bigserial PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS orders (
    id           bigserial PRIMARY KEY,
    user_id      bigint NOT NULL,
    amount_cents bigint NOT NULL,
    region       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS emails (
    id         bigserial PRIMARY KEY,
    message_id text NOT NULL,
    recipient  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

# Lab users and their passwords (lab only: drills and tests log in with these).
SEED_USERS: dict[str, str] = {
    "alice@example.com": "wonderland",
    "bob@example.com": "builder",
    "carol@example.com": "christmas",
}


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Return ``pbkdf2_sha256$<iterations>$<salt>$<hash>`` with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join(
        ["pbkdf2_sha256", str(iterations), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a ``hash_password`` string; False for any malformed hash."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(expected, actual)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def seed(conn: psycopg.Connection) -> None:
    """Create the tables and the seed users in the connected database, then commit.

    Existing users are left alone (their hashes are not rewritten on a second run).
    """
    with conn.cursor() as cur:
        cur.execute(SCHEMA_SQL)
        for email, password in SEED_USERS.items():
            cur.execute(
                "INSERT INTO users (email, password_hash) VALUES (%s, %s)"
                " ON CONFLICT (email) DO NOTHING",
                (email, hash_password(password)),
            )
    conn.commit()


def grant_app_role(conn: psycopg.Connection, role: str = APP_ROLE) -> None:
    """Give ``role`` the data privileges the app needs on the public schema, then commit."""
    ident = sql.Identifier(role)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        cur.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(ident)
        )
        cur.execute(
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident)
        )
    conn.commit()


def ensure_role(conn: psycopg.Connection, role: str, password: str) -> None:
    """Create the login role if missing, else (re)set its password; autocommit connection.

    The password goes to the server as a literal in the statement; it is never logged
    here. (A server with ``log_statement=all`` would log it: the lab does not set that.)
    """
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    conn.execute(
        sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )


def create_database_and_schema(
    admin_dsn: str, app_password: str, *, dbname: str = APP_DB, role: str = APP_ROLE
) -> None:
    """Create role, database, tables, grants and seed users on a primary; safe to rerun.

    ``admin_dsn`` must name a superuser on the primary (any database; ``dbname`` in it
    is replaced). Raises ``psycopg.Error`` when the server refuses (e.g. a standby).
    """
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        ensure_role(conn, role, app_password)
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(role)
            )
        )
    with psycopg.connect(admin_dsn, dbname=dbname) as conn:
        seed(conn)
        grant_app_role(conn, role)
