"""Divergent-write reconciliation: the WAL method and the full comparison side by side.

For each table size: a primary holds a table of N rows (id bigint primary key,
an int, a text, a timestamp), a replica is base-backed-up from it and cut off,
the primary takes 0.1 % of N in changes (25 % inserts, 60 % updates, 15 %
deletes, in transactions of 10) and is killed; the replica is promoted and
takes its own updates, some on keys the primary also changed (conflicts). The
old primary is fenced as a standby; then ``find_divergence`` runs once with
``method='wal'`` and once with ``method='full'`` (nothing captured).

Prints time, rows shipped to drorch and rows diverged for both; never asserts
a timing. Exits 1 if the two methods disagree on any key's classification.

    .venv/bin/python bench/bench_reconcile.py                  # 1M and 10M rows
    .venv/bin/python bench/bench_reconcile.py --sizes 1000000  # just 1M
    .venv/bin/python bench/bench_reconcile.py --sizes 10000000 --changes 1000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode
from drorch.reconcile import (
    DivergenceReport,
    ReconcileSpec,
    ReconcileTable,
    divergence_point,
    fence_as_standby,
    find_divergence,
)


def _q(node: PgNode, query: str, params: object = None) -> list[tuple]:
    with psycopg.connect(node.dsn(), autocommit=True) as c:
        cur = c.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def _build(workdir: Path, rows: int) -> tuple[PgNode, PgNode, float]:
    a = PgNode("region-a", workdir / "region-a" / "data", free_port(), workdir / "region-a",
               {"max_wal_size": "'4GB'", "shared_buffers": "'256MB'"})
    b = PgNode("region-b", workdir / "region-b" / "data", free_port(), workdir / "region-b",
               {"max_wal_size": "'4GB'", "shared_buffers": "'256MB'"})
    a.init_primary()
    a.start()
    t0 = time.monotonic()
    _q(a, "CREATE EXTENSION pg_walinspect")
    _q(a, "CREATE TABLE t (id bigint NOT NULL, k int NOT NULL, v text NOT NULL, "
          "updated_at timestamptz NOT NULL DEFAULT now())")
    _q(a, "INSERT INTO t SELECT g, g %% 1000, md5(g::text), now() FROM generate_series(1, %s) g",
       (rows,))
    _q(a, "ALTER TABLE t ADD PRIMARY KEY (id)")
    _q(a, "VACUUM (FREEZE, ANALYZE) t")
    _q(a, "CHECKPOINT")
    b.init_replica_of(a)
    built = time.monotonic() - t0
    b.start()
    return a, b, built


def _diverge(a: PgNode, b: PgNode, rows: int, seed: int, changes: int | None
             ) -> dict[str, int]:
    """Cut the replica off, change 0.1 % of the rows (or ``changes``) on the primary, kill
    it, promote the replica and change some rows there too."""
    rnd = random.Random(seed)
    n = changes or max(10, rows // 1000)
    ins, upd, dele = n * 25 // 100, n * 60 // 100, n - n * 25 // 100 - n * 60 // 100
    picks = rnd.sample(range(1, rows + 1), upd + dele)
    updated, deleted = picks[:upd], picks[upd:]
    ops = ([("INSERT INTO t VALUES (%s, 1, 'a-new', now())", (rows + i + 1,)) for i in range(ins)]
           + [("UPDATE t SET v = 'a-upd', updated_at = now() WHERE id = %s", (i,))
              for i in updated]
           + [("DELETE FROM t WHERE id = %s", (i,)) for i in deleted])
    rnd.shuffle(ops)
    b.stop()
    with psycopg.connect(a.dsn()) as c:
        c.execute("SET synchronous_commit = on")
        for i in range(0, len(ops), 10):
            for q, p in ops[i: i + 10]:
                c.execute(q, p)
            c.commit()
    a.kill()
    b.start()
    _q(b, "SELECT pg_promote(true, 120)")
    untouched = [i for i in rnd.sample(range(1, rows + 1), n // 10) if i not in set(picks)]
    b_ids = updated[: n // 100 + 5] + deleted[: n // 300 + 2] + untouched[: n // 20]
    with psycopg.connect(b.dsn()) as c:
        for i in b_ids:
            c.execute("UPDATE t SET v = 'b-upd' WHERE id = %s", (i,))
        c.commit()
    fence_as_standby(a, timeout_s=600)
    return {"changes_on_old": len(ops), "changes_on_new": len(b_ids)}


def _classes(rep: DivergenceReport) -> dict[str, set[int]]:
    tr = rep.table("public.t")
    return {k: {c.key["id"] for c in tr.changes if c.kind == k}
            for k in ("old-only", "new-only", "conflict")}


def run_size(rows: int, seed: int, changes: int | None) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="drorch-bench-reconcile-"))
    os.chmod(workdir, 0o755)
    a = b = None
    try:
        a, b, built = _build(workdir, rows)
        made = _diverge(a, b, rows, seed, changes)
        div = divergence_point(b.dsn())
        results = {}
        for method in ("wal", "full"):
            spec = ReconcileSpec(tables=[ReconcileTable(name="public.t", policy="old-wins")],
                                 method=method)  # type: ignore[arg-type]
            t0 = time.monotonic()
            rep = find_divergence(a.dsn(), b.dsn(), spec, div, capture=False)
            results[method] = (time.monotonic() - t0, rep)
        print(f"\n== {rows:,} rows: built and base-backed-up in {built:.1f} s; "
              f"{made['changes_on_old']:,} changes on the old primary, "
              f"{made['changes_on_new']:,} on the new one")
        print(f"{'method':<6} {'seconds':>8} {'s/1000 chg':>10} {'rows shipped':>13} "
              f"{'diverged':>9} {'old-only':>9} {'new-only':>9} {'conflicts':>9}")
        for method, (secs, rep) in results.items():
            c = rep.totals()
            per_k = secs / (made["changes_on_old"] / 1000)
            print(f"{method:<6} {secs:>8.3f} {per_k:>10.3f} {rep.rows_shipped:>13,} "
                  f"{c['rows_diverged']:>9,} {c['old_only']:>9,} {c['new_only']:>9,} "
                  f"{c['conflicts']:>9,}")
        same = _classes(results["wal"][1]) == _classes(results["full"][1])
        print(f"same classification from both methods: {'yes' if same else 'NO'}")
        return same
    finally:
        for n in (a, b):
            if n is not None:
                n.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000",
                    help="comma-separated table sizes in rows (default 1M and 10M)")
    ap.add_argument("--changes", type=int, default=None,
                    help="changes on the old primary (default 0.1 %% of the rows)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    ok = True
    for size in (int(s) for s in args.sizes.split(",")):
        ok = run_size(size, args.seed, args.changes) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
