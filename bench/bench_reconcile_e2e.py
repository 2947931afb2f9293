"""Reconcile end to end (find + capture + apply + account) at volume: rows per second.

For each size N: a primary and its replica share an ``orders`` table (bigserial key,
max(10,000, 0.3 N) rows); the replica is cut off; the primary takes N divergent rows
through the sequence (70 % inserts by COPY in transactions of 1,000, then 20 % updates
and 10 % deletes of distinct shared rows) and is killed; the replica is promoted and
inserts N/100 rows through the same sequence (their ids collide with the primary's, as
default ids do after a failover without drorch's sequence gap) and updates a few shared
rows. Then, timed separately:
``find_divergence`` (capture on), ``apply_reconciliation``, ``account``.

Prints seconds, rows per second end to end, the audit bytes the failback step would
write (one entry per table: measured by writing them) and the conflict file's bytes;
never asserts a timing. The target (issue 14) is >= 50,000 rows/s end to end.

    .venv/bin/python bench/bench_reconcile_e2e.py --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode
from drorch.reconcile import (
    ReconcileSpec,
    ReconcileTable,
    apply_reconciliation,
    divergence_point,
    fence_as_standby,
    find_divergence,
    wait_caught_up,
)
from drorch.reconcile.accounting import account

BASE_ROWS = 10_000


def _q(node: PgNode, query: str, params: object = None) -> list[tuple]:
    with psycopg.connect(node.dsn(), autocommit=True) as c:
        cur = c.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _pair(workdir: Path, base_rows: int = BASE_ROWS) -> tuple[PgNode, PgNode]:
    conf = {"max_wal_size": "'4GB'", "shared_buffers": "'256MB'"}
    a = PgNode("region-a", workdir / "region-a" / "data", free_port(), workdir / "region-a",
               conf)
    b = PgNode("region-b", workdir / "region-b" / "data", free_port(), workdir / "region-b",
               conf)
    a.init_primary()
    a.start()
    _q(a, "CREATE EXTENSION pg_walinspect")
    _q(a, "CREATE TABLE orders (id bigserial PRIMARY KEY, amount int NOT NULL, "
          "note text NOT NULL)")
    _q(a, "INSERT INTO orders (amount, note) SELECT g, 'base' FROM generate_series(1, %s) g",
       (base_rows,))
    b.init_replica_of(a)
    b.start()
    wait_caught_up(b.dsn(), a.dsn(), 120)
    return a, b


def _base_rows(n: int) -> int:
    """Shared rows enough for the updates and deletes to touch distinct rows."""
    return max(BASE_ROWS, n - n * 70 // 100)


def _diverge(a: PgNode, b: PgNode, n: int) -> None:
    inserts, updates = n * 70 // 100, n * 20 // 100
    deletes = n - inserts - updates
    shared = _base_rows(n)
    b.stop()
    with psycopg.connect(a.dsn()) as c:
        for start in range(0, inserts, 1000):
            buf = io.StringIO("".join(f"{i}\ta-new\n" for i in range(start, min(start + 1000,
                                                                                   inserts))))
            with c.cursor().copy("COPY orders (amount, note) FROM STDIN") as cp:
                cp.write(buf.getvalue())
            c.commit()
        c.execute("UPDATE orders SET note = 'a-upd' WHERE id <= %s", (updates,))
        c.execute("DELETE FROM orders WHERE id > %s AND id <= %s", (shared - deletes, shared))
        c.commit()
    a.kill()
    b.start()
    _q(b, "SELECT pg_promote(true, 120)")
    _q(b, "INSERT INTO orders (amount, note) SELECT g, 'b-new' FROM generate_series(1, %s) g",
       (max(1, n // 100),))
    _q(b, "UPDATE orders SET note = 'b-upd' WHERE id <= 5")
    fence_as_standby(a, timeout_s=600)


def run(n: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="drorch-bench-e2e-"))
    os.chmod(workdir, 0o755)
    a = b = None
    try:
        a, b = _pair(workdir, _base_rows(n))
        _diverge(a, b, n)
        spec = ReconcileSpec(tables=[ReconcileTable(name="public.orders", policy="old-wins")],
                             conflict_file=str(workdir / "conflicts.json"))
        t0 = time.monotonic()
        report = find_divergence(a.dsn(), b.dsn(), spec, divergence_point(b.dsn()))
        t1 = time.monotonic()
        applied = apply_reconciliation(report, b.dsn(), spec)
        t2 = time.monotonic()
        acc = account(report.to_dict(with_changes=False), applied.to_dict())
        t3 = time.monotonic()
        audit = "".join(json.dumps({"action": "reconcile.table", **t.to_dict()}) + "\n"
                        for t in acc.tables)
        conflict_bytes = Path(spec.conflict_file).stat().st_size \
            if Path(spec.conflict_file or "").exists() else 0  # type: ignore[arg-type]
        rows = acc.totals()["found"]
        total = t3 - t0
        print(f"\n== {n:,} divergent rows asked, {rows:,} found "
              f"({report.totals().get('collisions', 0):,} collisions), method {report.method}")
        print(f"{'find+capture s':>15} {'apply s':>8} {'account s':>9} {'total s':>8} "
              f"{'rows/s':>9} {'audit B':>8} {'conflict file B':>15} {'invariant':>9}")
        print(f"{t1 - t0:>15.2f} {t2 - t1:>8.2f} {t3 - t2:>9.3f} {total:>8.2f} "
              f"{rows / total if total else 0:>9,.0f} {len(audit.encode()):>8,} "
              f"{conflict_bytes:>15,} {'holds' if acc.holds else 'FAILS':>9}")
    finally:
        for node in (a, b):
            if node is not None:
                node.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000",
                    help="comma-separated divergent row counts (1000000: about a minute in all)")
    args = ap.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        run(n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
