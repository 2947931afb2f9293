"""Journal and lease in one SQLite file: the embedded default store.

Contract (what the engine relies on):
- every ``append`` is committed (WAL mode, synchronous=FULL) before it returns,
  so a ``kill -9`` right after loses nothing the engine was told was written;
- ``acquire_lease`` is compare-and-set inside ``BEGIN IMMEDIATE``: at most one
  holder at a time, and every grant to a new holder gets a larger fencing token;
- ``append`` with a token refuses (``StaleLease``) when that token is no longer
  the current one, so an orchestrator that lost its lease cannot journal progress.
A holder on this host whose process is gone (killed) loses its lease at once;
elsewhere the lease expires after its time to live.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drorch.procs import pid_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  runbook TEXT NOT NULL,
  actor TEXT NOT NULL,
  reason TEXT,
  trigger TEXT NOT NULL,
  state TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  incident_id TEXT NOT NULL REFERENCES incidents(id),
  at REAL NOT NULL,
  kind TEXT NOT NULL,
  name TEXT NOT NULL,
  status TEXT NOT NULL,
  detail TEXT NOT NULL,
  token INTEGER
);
CREATE INDEX IF NOT EXISTS events_incident ON events(incident_id, seq);
CREATE TABLE IF NOT EXISTS facts (
  incident_id TEXT NOT NULL,
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (incident_id, key)
);
CREATE TABLE IF NOT EXISTS kv (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lease (
  name TEXT PRIMARY KEY,
  holder TEXT NOT NULL,
  token INTEGER NOT NULL,
  expires_at REAL NOT NULL
);
"""


class LeaseHeld(Exception):
    """Another live orchestrator holds the lease."""


class StaleLease(Exception):
    """The fencing token is no longer current: stop acting."""


@dataclass(frozen=True)
class Incident:
    id: str
    kind: str
    runbook: str
    actor: str
    reason: str | None
    trigger: dict[str, Any]
    state: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Event:
    seq: int
    incident_id: str
    at: float
    kind: str
    name: str
    status: str
    detail: dict[str, Any]


def this_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder_is_dead(holder: str) -> bool:
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not pid_alive(int(pid))


class JournalUnreadable(RuntimeError):
    """The journal file is not one drorch can read (corrupt, truncated, another file);
    the message names it and what to do. Nothing was written to it."""


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> JournalUnreadable:
    return JournalUnreadable(
        f"journal {path} cannot be read ({exc}): it is the only record of which region "
        "serves writes, so drorch does not replace it. Keep it for a human (move it aside, "
        "e.g. to journal.db.broken) and restore it from a copy, or start with no journal "
        "only once you know which region is primary")


class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._db.execute("SELECT count(*) FROM incidents").fetchone()
        except sqlite3.DatabaseError as exc:
            raise _unreadable(path, exc) from None
        # One connection shared by a stage's parallel steps: serialise its use.
        self._lock = threading.RLock()

    @classmethod
    def read_only(cls, path: Path) -> SqliteStore:
        """The journal as it is, for commands that must change nothing (``plan``,
        ``--dry-run``): no directory is created, the journal is not written (every write
        raises ``sqlite3.OperationalError``). Without a journal, an empty one in memory:
        nothing has happened yet. (Reading a WAL-mode journal that no process has open,
        SQLite creates its empty ``-wal`` and ``-shm`` files beside it, as any reader
        does; the next writer uses them.)"""
        store = cls.__new__(cls)
        store.path = path
        if path.exists() and path.stat().st_size > 0:
            store._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                        timeout=30, isolation_level=None,
                                        check_same_thread=False)
            try:
                store._db.execute("SELECT count(*) FROM incidents").fetchone()
            except sqlite3.DatabaseError as exc:
                store._db.close()
                raise _unreadable(path, exc) from None
        else:  # none yet (or created empty and never written): nothing has happened
            store._db = sqlite3.connect(":memory:", isolation_level=None,
                                        check_same_thread=False)
            store._db.executescript(SCHEMA)
        store._db.execute("PRAGMA query_only=ON")
        store._lock = threading.RLock()
        return store

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, query: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    # -- lease -------------------------------------------------------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> int:
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT holder, token, expires_at FROM lease WHERE name=?",
                             (name,)).fetchone()
            if row is None:
                token = 1
                db.execute("INSERT INTO lease VALUES (?,?,?,?)", (name, holder, token, now + ttl_s))
                return token
            current, token, expires_at = row
            if current == holder:
                db.execute("UPDATE lease SET expires_at=? WHERE name=?", (now + ttl_s, name))
                return int(token)
            if expires_at > now and not _holder_is_dead(current):
                raise LeaseHeld(f"lease {name!r} is held by {current} until "
                                f"{time.strftime('%H:%M:%S', time.localtime(expires_at))}")
            token = int(token) + 1
            db.execute("UPDATE lease SET holder=?, token=?, expires_at=? WHERE name=?",
                       (holder, token, now + ttl_s, name))
            return token

    def lease_held(self, name: str) -> bool:
        """Is someone acting under lease ``name`` now (unexpired, holder alive)? Reads
        only: for ``status``, which must tell a running incident from an interrupted
        one."""
        row = self._read("SELECT holder, expires_at FROM lease WHERE name=?", (name,))
        if not row:
            return False
        holder, expires_at = row[0]
        return bool(expires_at > time.time() and not _holder_is_dead(holder))

    def renew_lease(self, name: str, token: int, ttl_s: float) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE lease SET expires_at=? WHERE name=? AND token=?",
                             (time.time() + ttl_s, name, token))
            if cur.rowcount != 1:
                raise StaleLease(f"lease {name!r}: token {token} is stale")

    def release_lease(self, name: str, token: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE lease SET expires_at=0 WHERE name=? AND token=?", (name, token))

    def _check_token(self, db: sqlite3.Connection, lease: str | None, token: int | None) -> None:
        if lease is None or token is None:
            return
        row = db.execute("SELECT token FROM lease WHERE name=?", (lease,)).fetchone()
        if row is None or int(row[0]) != token:
            raise StaleLease(f"lease {lease!r}: token {token} is stale (current {row and row[0]})")

    # -- incidents and events ---------------------------------------------
    def create_incident(self, incident: Incident) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO incidents VALUES (?,?,?,?,?,?,?,?,?)",
                (incident.id, incident.kind, incident.runbook, incident.actor, incident.reason,
                 json.dumps(incident.trigger), incident.state, incident.created_at,
                 incident.updated_at),
            )

    def incident(self, incident_id: str) -> Incident | None:
        rows = self._read("SELECT * FROM incidents WHERE id=?", (incident_id,))
        return _incident(rows[0]) if rows else None

    def incidents(self, runbook: str | None = None) -> list[Incident]:
        sql, args = "SELECT * FROM incidents", ()
        if runbook is not None:
            sql, args = sql + " WHERE runbook=?", (runbook,)
        return [_incident(r) for r in self._read(sql + " ORDER BY created_at", args)]

    def append(self, incident_id: str, kind: str, name: str, status: str,
               detail: dict[str, Any] | None = None, *, lease: str | None = None,
               token: int | None = None, state: str | None = None) -> int:
        """Journal one event (and optionally the incident's new state) atomically."""
        now = time.time()
        with self._tx() as db:
            self._check_token(db, lease, token)
            cur = db.execute(
                "INSERT INTO events (incident_id, at, kind, name, status, detail, token) "
                "VALUES (?,?,?,?,?,?,?)",
                (incident_id, now, kind, name, status, json.dumps(detail or {}, default=str),
                 token),
            )
            if state is not None:
                db.execute("UPDATE incidents SET state=?, updated_at=? WHERE id=?",
                           (state, now, incident_id))
            return int(cur.lastrowid or 0)

    def events(self, incident_id: str) -> list[Event]:
        rows = self._read(
            "SELECT seq, incident_id, at, kind, name, status, detail FROM events "
            "WHERE incident_id=? ORDER BY seq", (incident_id,))
        return [Event(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in rows]

    def step_status(self, incident_id: str, step: str) -> str | None:
        rows = self._read(
            "SELECT status FROM events WHERE incident_id=? AND kind='step' AND name=? "
            "ORDER BY seq DESC LIMIT 1", (incident_id, step))
        return rows[0][0] if rows else None

    # -- facts: values steps measured and later steps or reports need ------
    def set_fact(self, incident_id: str, key: str, value: Any, *, lease: str | None = None,
                 token: int | None = None) -> None:
        with self._tx() as db:
            self._check_token(db, lease, token)
            db.execute("INSERT INTO facts VALUES (?,?,?) ON CONFLICT(incident_id, key) "
                       "DO UPDATE SET value=excluded.value",
                       (incident_id, key, json.dumps(value, default=str)))

    def fact(self, incident_id: str, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM facts WHERE incident_id=? AND key=?",
                          (incident_id, key))
        return json.loads(rows[0][0]) if rows else default

    def facts(self, incident_id: str) -> dict[str, Any]:
        rows = self._read("SELECT key, value FROM facts WHERE incident_id=?", (incident_id,))
        return {k: json.loads(v) for k, v in rows}


    # -- long-lived state outside incidents (the watcher's window, per runbook) --
    def put(self, key: str, value: Any, *, lease: str | None = None,
            token: int | None = None) -> None:
        with self._tx() as db:
            self._check_token(db, lease, token)
            db.execute("INSERT INTO kv VALUES (?,?,?) ON CONFLICT(key) DO UPDATE SET "
                       "value=excluded.value, updated_at=excluded.updated_at",
                       (key, json.dumps(value, default=str), time.time()))

    def get(self, key: str, default: Any = None) -> Any:
        rows = self._read("SELECT value FROM kv WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else default


def _incident(row: tuple[Any, ...]) -> Incident:
    return Incident(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), row[6], row[7],
                    row[8])
