"""Applying, resolving and resyncing on the issue's story; killing an apply halfway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from drorch.reconcile import (
    apply_conflict_file,
    apply_reconciliation,
    find_divergence,
    resync_as_replica,
    verify_fenced,
)
from drorch.reconcile.conflicts import load as load_conflicts
from tests.integration.reconcile.reconcile_story import (
    SECRET_MARK,
    Story,
    expected,
    spec,
    wait_for,
)

pytestmark = pytest.mark.postgres
KEYED = ("accounts", "orders", "events", "ledger")


def _q(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def test_story_apply_resolve_resync(story: Story, tmp_path: Path) -> None:
    """Old-only rows land, conflicts follow policy or wait in the file; resync leaves twins."""
    st, cfile = story, tmp_path / "conflicts.json"
    sp = spec(cfile)
    old_rows = {t: st.rows(st.a, t) for t in KEYED}
    exp = {t: expected(st, t) for t in KEYED}
    rep = find_divergence(st.a.dsn(), st.b.dsn(), sp, st.divergence)
    assert find_divergence(st.a.dsn(), st.b.dsn(), sp, st.divergence).to_dict()[
        "totals"] == rep.to_dict()["totals"]  # captured once, returned as stored
    st.wb.txn([("orders", 31, "UPDATE orders SET status = 'b-late' WHERE id = 31", ())])

    res = apply_reconciliation(rep, st.b.dsn(), sp)
    to_apply = [c for t in rep.tables for c in t.changes if c.action == "apply-old"]
    assert res.applied == len(to_apply) - 1 and res.stale == 1 and res.errors == 0
    assert "public.accounts_id_seq" in res.sequences_advanced
    again = apply_reconciliation(rep.run_id, st.b.dsn(), sp)
    assert again.applied == 0 and again.already_applied == res.applied

    new_rows = {t: st.rows(st.b, t) for t in KEYED}
    for t in KEYED:
        for k in exp[t]["old-only"] - {31}:
            assert new_rows[t].get(k) == old_rows[t].get(k), (t, k)
    orders_policy = {k: new_rows["orders"].get(k) for k in exp["orders"]["conflict"]}
    assert orders_policy == {k: old_rows["orders"].get(k) for k in exp["orders"]["conflict"]}
    assert new_rows["events"][8]["payload"] == "b-8"  # new-wins kept region-b's row

    doc = load_conflicts(cfile).model_dump()
    assert SECRET_MARK not in cfile.read_text()
    in_file = {(c["table"], c["key"].get("id")) for c in doc["conflicts"]}
    assert exp["orders"]["collision"] == {20001}  # both inserted it: never old-wins
    assert new_rows["orders"][20001]["status"] == "from-b"
    assert in_file == {("public.accounts", k) for k in exp["accounts"]["conflict"]} | {
        ("public.orders", 31), ("public.orders", 20001), ("public.audit_log", None)}
    assert all(c["old"]["secret_token"] == "***" for c in doc["conflicts"]
               if c["table"] == "public.accounts")
    assert {c["old"]["msg"] for c in doc["conflicts"] if c["kind"] == "unkeyed"} == {"a-1", "a-2"}

    for c in doc["conflicts"]:
        c["resolution"] = "new" if c["key"].get("id") == 62 else "old"
    cfile.write_text(json.dumps(doc))
    first = apply_conflict_file(cfile, st.b.dsn())
    assert (first.applied, first.kept_new, first.stale) == (len(doc["conflicts"]) - 1, 1, 0)
    second = apply_conflict_file(cfile, st.b.dsn())
    assert second.applied == 0 and second.already_applied == len(doc["conflicts"])

    # Every row whose commit region-a acknowledged is on region-b now, or region-b's
    # version was kept by a decision the report names (new-wins, or 'new' in the file).
    kept_new = {("events", 8), ("accounts", 62)}
    final = {t: st.rows(st.b, t) for t in KEYED}
    for t in KEYED:
        for k in st.wa.keys(t):
            if (t, k) not in kept_new:
                assert final[t].get(k) == old_rows[t].get(k), (t, k)
    logged = {r[0] for r in _q(st.b.dsn(), "SELECT msg FROM audit_log")}
    assert {"a-1", "a-2", "b-1"} <= logged

    result = resync_as_replica(st.a, st.b, captured=True, no_sync=True, timeout_s=60)
    assert result.method == "rewind" and result.caught_up_lsn
    assert verify_fenced(st.a.dsn()).state == "following"
    for t in (*KEYED, "audit_log"):
        assert st.checksum(st.a, t) == st.checksum(st.b, t), t
    assert int(_q(st.b.dsn(), "SELECT nextval('accounts_id_seq')")[0][0]) > 5000
    assert resync_as_replica(st.a, st.b, captured=True).method == "already-replica"


_APPLY_CHILD = """
import sys
from drorch.reconcile import apply_reconciliation
from tests.integration.reconcile.reconcile_story import spec
apply_reconciliation(sys.argv[1], sys.argv[2], spec(sys.argv[3]), batch_size=1)
"""

_COUNTING_TRIGGER = """
CREATE TABLE hits (tbl text, id bigint);
CREATE FUNCTION hit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO hits VALUES (regexp_replace(TG_TABLE_NAME, '_[ab]$', ''),  -- partitions: ledger
                           CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
  PERFORM pg_sleep(0.002);
  RETURN NULL;
END $$;
"""


def test_kill_during_apply_then_rerun_applies_no_row_twice(story: Story, tmp_path: Path) -> None:
    """A SIGKILLed apply leaves each change applied once or not at all; a rerun finishes it."""
    st, cfile = story, tmp_path / "conflicts.json"
    rep = find_divergence(st.a.dsn(), st.b.dsn(), spec(cfile), st.divergence)
    _q(st.b.dsn(), _COUNTING_TRIGGER)
    for t in KEYED:  # ALWAYS: fires even under session_replication_role = replica
        _q(st.b.dsn(), f"CREATE TRIGGER hit AFTER INSERT OR UPDATE OR DELETE ON {t} "
                       f"FOR EACH ROW EXECUTE FUNCTION hit(); "
                       f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER hit")
    to_apply = {(c.table.split(".")[1], c.key["id"]) for t in rep.tables for c in t.changes
                if c.action == "apply-old"}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.Popen([sys.executable, "-c", _APPLY_CHILD, rep.run_id, st.b.dsn(),
                              str(cfile)], env=env)
    try:
        wait_for(lambda: _q(st.b.dsn(), "SELECT count(*) FROM drorch_reconcile.outcomes")[0][0]
                 >= 40 or child.poll() is not None)
        assert child.poll() is None, "apply finished before it could be killed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    done_before = _q(st.b.dsn(), "SELECT count(*) FROM drorch_reconcile.outcomes "
                                 "WHERE outcome = 'applied'")[0][0]
    assert 0 < done_before < len(to_apply)

    res = apply_reconciliation(rep.run_id, st.b.dsn(), spec(cfile))
    assert res.already_applied + res.applied == len(to_apply)
    assert res.already_applied >= done_before and res.applied > 0
    hits = _q(st.b.dsn(), "SELECT tbl, id, count(*) FROM hits GROUP BY 1, 2")
    assert {(t, int(i)) for t, i, _n in hits} == to_apply
    assert all(n == 1 for _t, _i, n in hits)
