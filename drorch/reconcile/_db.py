"""Connections for reconciliation: fixed session settings so both nodes render rows alike.

Rows are compared as ``to_jsonb`` text produced by each node; the rendering of
timestamps, floats and bytea depends on session settings, so every connection
sets them the same way. No statement timeout: reading a whole table (the full
comparison) may take minutes; the connect timeout still bounds an unreachable
node. DSNs may hold passwords: never log them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

LOCK_TIMEOUT_MS = 30_000
"""How long a statement waits for a row or table lock the application holds (then
LockNotAvailable: apply retries the batch, see ``apply.RETRIES``)."""

STATEMENT_TIMEOUT_MS = 600_000
"""No reconcile statement may run (or wait, e.g. a commit for a synchronous standby)
longer than this: generous for a batch of 10,000 rows or a WAL read of millions of
records, and still a deadline."""

SESSION_OPTIONS = (
    "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1 "
    f"-c bytea_output=hex -c statement_timeout={STATEMENT_TIMEOUT_MS} "
    f"-c lock_timeout={LOCK_TIMEOUT_MS} -c jit=off"
)
"""``jit=off``: reconciliation runs many short set-based statements (a batch of 10,000
changes each), and once autovacuum has analysed the freshly captured changes their cost
estimates cross ``jit_above_cost``: compiling took 50-100 ms per statement, more than
the statement itself."""

Conn = psycopg.Connection[Any]


def open_conn(dsn: str, *, autocommit: bool = True) -> Conn:
    kwargs: dict[str, Any] = {"autocommit": autocommit, "options": SESSION_OPTIONS}
    if "connect_timeout" not in dsn:
        kwargs["connect_timeout"] = 5
    return psycopg.connect(dsn, **kwargs)


@contextmanager
def connect(dsn: str, *, autocommit: bool = True) -> Iterator[Conn]:
    conn = open_conn(dsn, autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def scalar(conn: Conn, query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def adopt(conn: Conn) -> None:
    """Give a caller's connection the same rendering settings (session-wide SETs)."""
    for name, value in (("TimeZone", "UTC"), ("DateStyle", "ISO"), ("IntervalStyle", "postgres"),
                        ("extra_float_digits", "1"), ("bytea_output", "hex")):
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
