"""The old primary's plain inserts, applied as one set per table while they are captured.

Most of a large divergence is rows the old primary inserted after the split and never
touched again (the traffic of the minutes before the region died). When the new primary
neither has their keys nor touched them, classification can only say *old-only, apply*
(``classify.decide``), whatever the table's policy: judging, capturing and applying
them one by one only spends time. Such a set is copied server to server instead (binary
``COPY`` from the fenced old primary straight into the table on the new primary), in
the capture's transaction, under a savepoint:

* the set is recorded in ``drorch_reconcile.bulk_sets`` with every key (an
  ``int8multirange``),
  the row count and the SHA-256 of the rows as copied (the binary COPY stream), and it
  commits with the run's report or not at all (a kill before the capture commits
  leaves neither rows nor record; a rerun finds them afresh);
* anything the new primary refuses (a key inserted there meanwhile, another unique
  column, a check, a lock wait past ``lock_timeout``) rolls the savepoint back, and the
  whole set goes row by row like any change (refusals then reach the conflict file with
  the database's words).

Only tables where the shortcut cannot change an outcome take it (:func:`ineligible`):
one integer key column, the same columns with the same types on both nodes (binary COPY
needs them), no foreign key of their own (a child row may name a parent that is
re-keyed or gone: the row path carries or holds it), and no trigger or rule enabled
``ALWAYS`` or ``REPLICA`` (one could change or skip a set's rows unseen). Writes run as
the apply's do: ``session_replication_role = replica`` (other triggers do not fire
again).

The copy's rows never pass through drorch as values: it only forwards the stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import pq, sql

from drorch.reconcile._db import Conn
from drorch.reconcile.catalog import TableMeta
from drorch.reconcile.tidfetch import number_array, tid_array
from drorch.reconcile.walread import BulkRows

MIN_ROWS = 1_000
"""Smaller sets go row by row: the per-row report and capture cost little there, and
each such row stays visible in ``drorch_reconcile.changes``."""

FLUSH_BYTES = 1 << 18
"""Bytes forwarded per write to the new primary's COPY (the old side's COPY hands over
one row per read)."""


class BulkRefused(Exception):
    """The new primary refused the set (its error text), or the set changed underneath."""


def _types(conn: Conn, meta: TableMeta) -> dict[str, str]:
    return {str(n): str(t) for n, t in conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (meta.oid,))}


def ineligible(old: Conn, new: Conn, mo: TableMeta, mn: TableMeta) -> str | None:
    """Why the table's plain inserts cannot go as a set (None: they can)."""
    if not mo.int_key:
        return "not a one-column integer key"
    if mo.pk != mn.pk:
        return "primary keys differ"
    # the table and, partitioned, every partition (a key, trigger or rule may be declared
    # on one partition only; pg_partition_tree gives no row for a plain table)
    tree = "(SELECT %(oid)s::oid UNION SELECT relid FROM pg_partition_tree(%(oid)s::regclass))"
    if new.execute(f"SELECT 1 FROM pg_constraint WHERE conrelid IN {tree} AND contype = 'f' "
                   "LIMIT 1", {"oid": mn.oid}).fetchone():
        return "has foreign keys (a parent may be re-keyed or gone)"
    if new.execute(f"SELECT 1 FROM pg_trigger WHERE tgrelid IN {tree} "
                   "AND tgenabled IN ('A', 'R') UNION ALL SELECT 1 FROM pg_rewrite "
                   f"WHERE ev_class IN {tree} AND ev_enabled IN ('A', 'R') "
                   "AND rulename <> '_RETURN' LIMIT 1", {"oid": mn.oid}).fetchone():
        # PostgreSQL 15, "ALTER TABLE ... ENABLE ALWAYS | REPLICA TRIGGER / RULE": these
        # fire under session_replication_role = replica and may change or skip a row
        return "has triggers or rules enabled ALWAYS or REPLICA (they may change a set's rows)"
    to, tn = _types(old, mo), _types(new, mn)
    if any(tn.get(c) != t for c, t in to.items()):
        return "column types differ between the nodes"
    if set(mo.generated) != {c for c in mn.generated if c in mo.columns}:
        return "generated columns differ between the nodes"
    return None


def columns(mo: TableMeta, mn: TableMeta) -> list[str]:
    """The columns a set writes: the old table's, less generated ones (computed again)."""
    return [c for c in mo.columns if c not in mo.generated | mn.generated]


def apply_set(old: Conn, cap: Conn, run_id: str, mo: TableMeta, mn: TableMeta,
              rows: BulkRows, skip: set[int]) -> tuple[int, str]:
    """Copy the set's rows (``rows`` less the keys in ``skip``) into the new primary's table
    and record them, under a savepoint of ``cap``'s open transaction (the capture's).
    Returns (rows, SHA-256 hex of the copied stream). Raises :class:`BulkRefused` with the
    database's error when the new primary refuses any row (nothing of the set is kept)."""
    cols = sql.SQL(", ").join(map(sql.Identifier, columns(mo, mn)))
    skip = skip | rows.handed_back
    keys = sorted(k for by in rows.keys.values() for ks in by.values() for k in ks
                  if k not in skip)
    digest = hashlib.sha256()
    copied = 0
    with _savepoint(old, cap):
        for rel, by_xmin in rows.keys.items():
            xids = [x for x, ks in by_xmin.items() if any(k not in skip for k in ks)]
            if not xids:
                continue
            scan = rows.scan(rel, mo.rels[rel].qualified, cols, sql.SQL(
                "xmin = ANY({xids}::xid[]) AND NOT ({k} = ANY({skip}::bigint[]))").format(
                k=sql.Identifier(mo.pk[0]), xids=sql.Literal(number_array(xids)),
                skip=sql.Literal(number_array(skip))))
            copied += _copy(old, cap, sql.SQL("COPY ({s}) TO STDOUT (FORMAT binary)").format(
                s=scan), sql.SQL(
                "COPY {tbl} ({cols}) FROM STDIN (FORMAT binary)").format(
                tbl=mn.ident, cols=cols), digest)
        if copied != len(keys):
            raise BulkRefused(f"{copied} rows copied for {len(keys)} keys")
        if keys:
            _record(cap, run_id, mn.name, "insert", keys, digest.hexdigest())
    return copied, digest.hexdigest()


@contextmanager
def _savepoint(old: Conn, cap: Conn) -> Iterator[None]:
    """A savepoint of ``cap``'s open transaction, writing as the apply does
    (``session_replication_role = replica``); what the new primary refuses rolls it back
    and becomes :class:`BulkRefused` with the database's words (a broken connection is
    raised as it is)."""
    try:
        with cap.transaction():
            if cap.execute("SELECT current_setting('session_replication_role')"
                           ).fetchone() != ("replica",):
                cap.execute("SET LOCAL session_replication_role = replica")
            yield
    except psycopg.Error as e:
        if cap.broken or old.broken:
            raise
        raise BulkRefused(f"{e.sqlstate}: {str(e).splitlines()[0]}") from e


def _record(cap: Conn, run_id: str, table: str, op: str, keys: list[int], digest: str
            ) -> None:
    cap.execute("INSERT INTO drorch_reconcile.bulk_sets (run_id, tbl, op, rows, first_key, "
                "last_key, keys, rows_sha256) VALUES (%s, %s, %s, %s, %s, %s, "
                "%s::int8multirange, %s)",
                (run_id, table, op, len(keys), keys[0], keys[-1], key_ranges(keys), digest))


def apply_changed(old: Conn, cap: Conn, run_id: str, mo: TableMeta, mn: TableMeta,
                  updated: dict[str, list[tuple[int, int]]], deleted: list[int],
                  new_xmin: dict[int, int]) -> tuple[list[int], list[int]]:
    """Apply the old primary's updates and deletes of rows both nodes had at the split and
    the new primary never touched, as one set each, under a savepoint of ``cap``'s open
    transaction (the capture's).

    ``updated``: per old relation, (TID block, offset) of each updated key's live tuple;
    ``deleted``: keys the old primary deleted; ``new_xmin``: the ``xmin`` each key's row
    had on the new primary when it was read (after its WAL said it was untouched). Every
    row must still be that version (else the set is refused, as a stale row would be):
    the writes name the version they replace, so a row the application changed meanwhile
    is skipped by them, and afterwards every updated key must hold the old primary's
    version (a trigger or rule that skipped or altered a write fails this too, though
    :func:`ineligible` keeps tables with such triggers off sets). An update whose old row
    equals the new one is no change. Returns the keys updated and the keys deleted.
    Raises :class:`BulkRefused`."""
    key = sql.Identifier(mn.pk[0])
    cols = columns(mo, mn)
    writable = [c for c in cols if c not in mn.identity_always]
    digest = hashlib.sha256()
    ident = sql.Identifier("drorch_lane")
    versions = sql.SQL("unnest({k}::bigint[], {x}::xid[]) AS u(k, x)").format(
        k=sql.Literal(number_array(new_xmin)), x=sql.Literal(number_array(new_xmin.values())))
    row_t = sql.SQL("row({})::text").format(sql.SQL(", ").join(
        sql.SQL("t.{}").format(sql.Identifier(c)) for c in cols))
    row_s = sql.SQL("row({})::text").format(sql.SQL(", ").join(
        sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols))
    with _savepoint(old, cap):
        if updated:
            cap.execute(sql.SQL("CREATE TEMP TABLE {s} ON COMMIT DROP AS SELECT {c} FROM {t} "
                                "WITH NO DATA").format(
                s=ident, c=sql.SQL(", ").join(map(sql.Identifier, cols)), t=mn.ident))
            copied = 0
            for rel, tids in updated.items():
                copied += _copy(old, cap, sql.SQL(
                    "COPY (SELECT {c} FROM ONLY {rel} AS t WHERE ctid = ANY({tids}::tid[])) "
                    "TO STDOUT (FORMAT binary)").format(
                    c=sql.SQL(", ").join(map(sql.Identifier, cols)),
                    rel=sql.SQL(mo.rels[rel].qualified), tids=sql.Literal(tid_array(tids))),
                    sql.SQL("COPY {s} FROM STDIN (FORMAT binary)").format(s=ident), digest)
            if copied != sum(len(t) for t in updated.values()):
                raise BulkRefused(f"{copied} rows read for "
                                  f"{sum(len(t) for t in updated.values())} updated keys")
        upd: list[int] = []
        if updated:
            upd = sorted(r[0] for r in cap.execute(sql.SQL(
                "UPDATE {t} t SET {sets} FROM {s} s, {v} WHERE t.{k} = s.{k} "
                "AND u.k = s.{k} AND t.xmin = u.x AND {rt} IS DISTINCT FROM {rs} "
                "RETURNING t.{k}").format(
                t=mn.ident, k=key, s=ident, v=versions, rt=row_t, rs=row_s,
                sets=sql.SQL(", ").join(sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c))
                                        for c in writable))).fetchall())
            # every updated key now holds the old primary's version: written here, or
            # equal already. A row the application changed meanwhile (skipped by the
            # version named) or a write something kept from a row is not
            same = cap.execute(sql.SQL(
                "SELECT count(*) FROM {s} s JOIN {t} t ON t.{k} = s.{k} "
                "WHERE {rt} IS NOT DISTINCT FROM {rs}").format(
                s=ident, t=mn.ident, k=key, rt=row_t, rs=row_s)).fetchone()
            if same is None or same[0] != copied:
                raise BulkRefused("the new primary changed some of these rows meanwhile, or "
                                  "something kept drorch's write from them")
            cap.execute(sql.SQL("DROP TABLE {}").format(ident))
            if upd:
                _record(cap, run_id, mn.name, "update", upd, digest.hexdigest())
        gone: list[int] = []
        if deleted:
            gone = sorted(r[0] for r in cap.execute(sql.SQL(
                "DELETE FROM {t} t USING unnest({d}::bigint[], {x}::xid[]) AS u(k, x) "
                "WHERE t.{k} = u.k AND t.xmin = u.x RETURNING t.{k}").format(
                t=mn.ident, k=key, d=sql.Literal(number_array(deleted)),
                x=sql.Literal(number_array(new_xmin[k] for k in deleted)))).fetchall())
            if len(gone) != len(deleted):
                raise BulkRefused("the new primary changed some of these rows meanwhile "
                                  f"({len(gone)} of {len(deleted)} deleted)")
            _record(cap, run_id, mn.name, "delete", gone,
                    hashlib.sha256(",".join(map(str, gone)).encode()).hexdigest())
    return upd, gone


INT8_MAX = 2**63 - 1


def key_runs(keys: list[int]) -> tuple[list[int], list[int]]:
    """Sorted distinct keys as runs of consecutive keys: (first keys, last keys)."""
    first: list[int] = []
    last: list[int] = []
    for k in keys:
        if last and k == last[-1] + 1:
            last[-1] = k
        else:
            first.append(k)
            last.append(k)
    return first, last


def key_ranges(keys: list[int]) -> str:
    """Sorted distinct keys as an ``int8multirange`` literal: a sequence's keys come in
    long runs, so a million keys are a few ranges (a ``bigint[]`` of them cost ~0.8 s to
    store)."""
    # the largest bigint has no successor: its range is open above
    return "{" + ",".join(f"[{lo},{hi + 1})" if hi < INT8_MAX else f"[{lo},)"
                          for lo, hi in zip(*key_runs(keys), strict=True)) + "}"


def _copy(old: Conn, cap: Conn, out: sql.Composable, into: sql.Composable,
          digest: hashlib._Hash) -> int:
    """Forward one binary COPY from ``old`` into ``cap``; rows copied.

    The old side's rows are taken from libpq directly (``PQgetCopyData``, blocking, then
    the COPY's final result): psycopg's ``Copy.read`` costs a few microseconds per row,
    the largest part of forwarding a million rows."""
    buf = bytearray()
    with old.cursor() as oc, oc.copy(out), cap.cursor() as cc:
        with cc.copy(into) as dst:
            pg = old.pgconn
            while True:
                n, data = pg.get_copy_data(0)
                if n > 0:
                    buf += data
                    if len(buf) >= FLUSH_BYTES:
                        digest.update(buf)
                        dst.write(bytes(buf))
                        buf.clear()
                elif n == -1:
                    break
                else:
                    raise psycopg.OperationalError(pg.error_message.decode(errors="replace"))
            _end_copy_out(old)
            if buf:
                digest.update(buf)
                dst.write(bytes(buf))
        return max(cc.rowcount, 0)


def _end_copy_out(conn: Conn) -> None:
    """Collect the COPY's final result (libpq: ``PQgetResult`` until NULL); its error,
    if any, raised as psycopg would."""
    pg = conn.pgconn
    failed = None
    while (res := pg.get_result()) is not None:
        if res.status != pq.ExecStatus.COMMAND_OK and failed is None:
            failed = psycopg.errors.error_from_result(res, encoding=conn.info.encoding)
    if failed is not None:
        raise failed
