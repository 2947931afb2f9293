"""Finding divergent writes on the issue's story: exact from the WAL, same by full comparison."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from drorch.reconcile import (
    DivergenceReport,
    ReconcileSpec,
    ReconcileTable,
    find_divergence,
    store,
    verify_fenced,
    walparse,
)
from drorch.reconcile._db import connect
from drorch.reconcile.model import Change, Divergence, TableReport
from tests.integration.reconcile.reconcile_story import SECRET_MARK, Story, expected, spec

pytestmark = pytest.mark.postgres
KEYED = ("accounts", "orders", "events", "ledger")


def _kinds(report: DivergenceReport, table: str) -> dict[str, set[int]]:
    tr = report.table(f"public.{table}")
    return {k: {c.key["id"] for c in tr.changes if c.kind == k}
            for k in ("old-only", "new-only", "conflict", "collision")}


def test_wal_method_finds_every_acknowledged_divergent_write_exactly(
        shared_story: Story, tmp_path: Path) -> None:
    """Every key in the writers' lists is classified exactly; nothing unacknowledged appears."""
    st = shared_story
    rep = find_divergence(st.a.dsn(), st.b.dsn(), spec(tmp_path / "c.json"), st.divergence,
                          capture=False)
    assert rep.method == "wal" and rep.attribution == {"old": "wal", "new": "wal"}
    for table in KEYED:
        assert _kinds(rep, table) == expected(st, table), table
    found = {c.key.get("id") for t in rep.tables for c in t.changes}
    assert not found & {11002, 12001, 13001}  # rolled back, aborted, in flight at the crash
    assert {5, 9001} <= {c.key["id"] for t in rep.tables[:2] for c in t.changes}  # straddler
    assert rep.transactions["old_touching_tables"] == st.wa.transactions
    assert rep.transactions["new_committed"] == st.wb.transactions
    orders = {c.key["id"]: c for c in rep.table("public.orders").changes}
    assert (orders[70].old_op, orders[70].new_op) == ("update", "delete")
    assert (orders[80].old_op, orders[80].new_op) == ("delete", "update")
    assert (orders[20001].old_op, orders[20001].new_op) == ("insert", "insert")
    assert (orders[20001].kind, orders[20001].action) == ("collision", "manual")  # old-wins
    assert orders[10001].columns == ["account_id", "amount", "id", "status"]
    assert rep.table("public.events").converged == 1  # events 7: both set the same value
    no_pk = rep.tables_without_pk[0]
    assert no_pk["table"] == "public.audit_log" and no_pk["rows_written_by_old"] == 2
    assert rep.unconfigured_tables == []
    text = json.dumps(rep.to_dict())
    assert SECRET_MARK not in text and "a-note" not in text


def test_full_comparison_classifies_the_same(shared_story: Story, tmp_path: Path) -> None:
    """method='full' (COPY both sides, sorted diff) finds the same keys in the same classes."""
    st = shared_story
    rep = find_divergence(st.a.dsn(), st.b.dsn(), spec(tmp_path / "c.json", "full"),
                          st.divergence, capture=False)
    assert rep.method == "full" and "configured" in rep.method_reason
    for table in KEYED:
        assert _kinds(rep, table) == expected(st, table), table
    assert rep.tables_without_pk[0]["rows_only_on_old"] == 2
    assert rep.tables_without_pk[0]["rows_only_on_new"] == 1


def test_divergence_point_and_fence_of_the_story(shared_story: Story) -> None:
    """The split is on the new primary's timeline 2, known in time; region-a is fenced."""
    st = shared_story
    assert (st.divergence.timeline, st.divergence.parent_timeline) == (2, 1)
    assert st.divergence.at is not None
    status = verify_fenced(st.a.dsn())
    assert (status.state, status.fenced, status.alarm) == ("fenced", True, False)


def test_auto_falls_back_to_full_when_the_old_wal_is_gone_and_resyncs_by_base_backup(
        story: Story, tmp_path: Path) -> None:
    """With region-a's WAL removed, auto says why it compared tables, and classifies the same."""
    from drorch.reconcile import resync_as_replica, walbytes, walparse

    seg = 16 * 1024 * 1024
    segno = walparse.lsn_to_int(story.divergence.lsn) // seg
    (story.a.datadir / "pg_wal" / walbytes.wal_file_name(1, segno, seg)).unlink()
    rep = find_divergence(story.a.dsn(), story.b.dsn(), spec(tmp_path / "c.json"),
                          story.divergence)
    assert rep.method == "full"
    assert "old primary's WAL" in rep.method_reason and "removed" in rep.method_reason
    assert rep.attribution == {"old": "commit-ts", "new": "wal"}
    for table in KEYED:
        assert _kinds(rep, table) == expected(story, table), table
    result = resync_as_replica(story.a, story.b, captured=True, no_sync=True, timeout_s=60)
    assert result.method == "basebackup" and "pg_rewind failed" in result.reason
    assert result.kept_datadir and Path(result.kept_datadir).is_dir()
    for table in (*KEYED, "audit_log"):
        assert story.checksum(story.a, table) == story.checksum(story.b, table)


def test_a_listed_partition_is_reconciled_once(shared_story: Story, tmp_path: Path) -> None:
    """Listing one partition (ledger_a) and not its table: ledger_a is judged with its own
    policy, ledger_b (the other partition) with the table's, and no key appears twice
    (the partitioned table no longer stands for all of its partitions again)."""
    st = shared_story
    base = spec(tmp_path / "c.json")
    tables = [t for t in base.tables if t.name != "public.ledger"] + [
        ReconcileTable(name="public.ledger_a", policy="manual")]
    split = ReconcileSpec(tables=tables, conflict_file=base.conflict_file)
    whole = find_divergence(st.a.dsn(), st.b.dsn(), base, st.divergence, capture=False)
    parts = find_divergence(st.a.dsn(), st.b.dsn(), split, st.divergence, capture=False)
    names = [t.table for t in parts.tables]
    assert "public.ledger" not in names and names.count("public.ledger_a") == 1
    assert "public.ledger_b" in parts.unlisted_tables
    keys = [(c.key["id"], c.key["region"]) for t in parts.tables if "ledger" in t.table
            for c in t.changes]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted((c.key["id"], c.key["region"])
                                  for c in whole.table("public.ledger").changes)


@pytest.mark.parametrize("commit_times", [True, False], ids=["commit-ts", "no-clock"])
def test_new_primary_wal_gone_never_reverts_what_only_the_new_side_changed(
        story: Story, tmp_path: Path, commit_times: bool) -> None:
    """With region-b's WAL since the split removed, a row only region-b changed is never
    overwritten by an ``old-wins`` table: commit timestamps attribute it to region-b
    (kept), and without a usable clock it is undetermined and goes to a human (conflict
    file, with the reason) instead of being reverted to its value at the split."""
    import dataclasses

    from drorch.reconcile import apply_reconciliation, conflicts, walbytes, walparse

    seg = 16 * 1024 * 1024
    segno = walparse.lsn_to_int(story.divergence.lsn) // seg
    with psycopg.connect(story.b.dsn(), autocommit=True) as c:  # region-b moves on
        c.execute("SELECT pg_switch_wal()")
        c.execute("CHECKPOINT")
    for f in (story.b.datadir / "pg_wal").glob(walbytes.wal_file_name(2, segno, seg)):
        f.unlink()  # and the segment holding the split is gone (recycled, or removed)
    div = story.divergence if commit_times else dataclasses.replace(story.divergence, at=None)
    new_rows = {t: story.rows(story.b, t) for t in KEYED}
    sp = spec(tmp_path / "c.jsonl")
    rep = find_divergence(story.a.dsn(), story.b.dsn(), sp, div)
    assert rep.method == "full" and "new primary's WAL" in rep.method_reason
    assert rep.attribution["new"] == ("commit-ts" if commit_times else "none")
    touched_by_b = {t: expected(story, t)["new-only"] for t in KEYED}
    for table in KEYED:
        for c in rep.table(f"public.{table}").changes:
            if c.key["id"] in touched_by_b[table]:
                assert c.action != "apply-old", (table, c.key, c.kind)
    res = apply_reconciliation(rep, story.b.dsn(), sp)
    pending = {(e.table, json.dumps(e.key, sort_keys=True)): e
               for e in conflicts.load(sp.conflict_file).conflicts} \
        if res.in_conflict_file else {}
    for table in KEYED:
        after = story.rows(story.b, table)
        for k in touched_by_b[table]:
            assert after.get(k) == new_rows[table].get(k), (table, k)  # never reverted
    undetermined = [c for t in rep.tables for c in t.changes
                    if c.undetermined and c.kind != "unkeyed"]
    for c in undetermined:  # shown to a human with the reason, never applied
        entry = pending[(c.table, json.dumps(c.key, sort_keys=True))]
        assert "could not tell which side changed it" in entry.reason
    b_only = {(f"public.{t}", k) for t in KEYED for k in touched_by_b[t]}
    b_only_undetermined = {(c.table, c.key["id"]) for c in undetermined} & b_only
    if commit_times:  # region-b's commits after the split are attributed to it
        assert not b_only_undetermined
    else:  # the case: an old-wins table used to revert these to the split's value
        assert b_only_undetermined


def _report(run_id: str) -> DivergenceReport:
    tables = []
    for name, ids in (("public.t1", (3, 1)), ("public.t2", (2,))):
        tr = TableReport(name, ["id"], "old-wins")
        tr.changes = [Change(f"{name}-{i}", name, {"id": i}, "old-only", "apply-old", ["id", "v"],
                             "insert", None, False, json.dumps({"id": i, "v": "a\tb\\c"}), None)
                      for i in ids]
        tables.append(tr)
    return DivergenceReport(run_id, "db", "wal", "test", Divergence("0/1", 2, 1), tables=tables)


def _stored(dsn: str, run_id: str) -> tuple[int, list[tuple[int, str, str, str]]]:
    with psycopg.connect(dsn) as c:
        runs = c.execute("SELECT count(*) FROM drorch_reconcile.runs WHERE run_id = %s",
                         (run_id,)).fetchone()
        rows = c.execute("SELECT seq, tbl, change_id, old_row->>'v' FROM drorch_reconcile.changes "
                         "WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
    assert runs is not None
    return runs[0], rows


def test_a_capture_streamed_while_finding_is_kept_only_when_finished(shared_story: Story
                                                                      ) -> None:
    """Changes are written as they are found, in report order (seq), in one transaction:
    a capture not finished (a blocked run) or ended by an error leaves nothing, so a
    retry finds afresh; a finished one is kept once with its report."""
    dsn = shared_story.b.dsn()
    run_id = "test-streamed-capture@2:0/1"
    rep = _report(run_id)
    with connect(dsn) as conn:
        with store.capturing(conn, run_id) as cap:
            assert cap is not None
            cap.add("public.t1", rep.tables[0].changes)  # never finished: blocked
        assert _stored(dsn, run_id) == (0, [])
        with pytest.raises(RuntimeError), store.capturing(conn, run_id) as cap:
            assert cap is not None
            cap.add("public.t1", rep.tables[0].changes)
            raise RuntimeError("found something wrong half-way")
        assert _stored(dsn, run_id) == (0, [])
        with store.capturing(conn, run_id) as cap:
            assert cap is not None
            cap.add("public.t1", rep.tables[0].changes[:1])
            cap.add("public.t1", rep.tables[0].changes[1:])
            cap.add("public.t2", rep.tables[1].changes)
            cap.finish(rep)
        try:
            v = "a\tb\\c"
            assert _stored(dsn, run_id) == (1, [(1, "public.t1", "public.t1-3", v),
                                                (2, "public.t1", "public.t1-1", v),
                                                (3, "public.t2", "public.t2-2", v)])
            kept = conn.execute("SELECT report FROM drorch_reconcile.runs WHERE run_id = %s",
                                (run_id,)).fetchone()
            assert kept is not None and kept[0] == json.loads(json.dumps(
                rep.to_dict(with_changes=False), default=str))
            with store.capturing(conn, run_id) as cap:
                assert cap is None  # captured once
            assert not store.capture(conn, rep)
        finally:
            conn.execute("DELETE FROM drorch_reconcile.runs WHERE run_id = %s", (run_id,))


def test_server_side_record_fields_match_the_python_parser(shared_story: Story) -> None:
    """Every heap data record of both nodes' WAL since the split: the fields the server
    extracts (``HEAP_FIELDS_SQL``) build the same record as ``parse_heap_record`` does
    from pg_walinspect's text (the story has inserts, HOT and cross-page updates, deletes
    and bulk inserts)."""
    from drorch.reconcile import walparse as wp

    q = (f"SELECT (start_lsn - '0/0'::pg_lsn)::bigint, xid::text::bigint, resource_manager, "
         f"record_type, coalesce(description, ''), block_ref, record_length, "
         f"main_data_length, {wp.HEAP_FIELDS_SQL.replace('%', '%%')} "
         f"FROM (SELECT *, {wp.HEAP_OP_SQL} AS op "
         f"FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn) OFFSET 0) w "
         f"WHERE op IS NOT NULL")
    ops: set[str] = set()
    for node in (shared_story.a, shared_story.b):
        with connect(node.dsn()) as c:
            end = c.execute("SELECT CASE WHEN pg_is_in_recovery() THEN "
                            "pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text"
                            ).fetchone()
            assert end is not None
            rows = c.execute(q, (shared_story.divergence.lsn, end[0])).fetchall()
        assert rows
        for lsn, xid, rm, rt, desc, bref, rlen, mlen, *fields in rows:
            parsed = wp.parse_heap_record(lsn, xid, rm, rt, desc, bref, rlen, mlen)
            assert parsed is not None
            assert wp.heap_record(lsn, xid, rlen, mlen, *fields) == parsed, (rt, desc, bref)
            ops.add(rt.split("+")[0])
    assert {"INSERT", "UPDATE", "HOT_UPDATE", "DELETE", "MULTI_INSERT"} <= ops


def test_a_record_in_an_unexpected_format_is_a_format_error() -> None:
    """A block reference that does not start with block #0 of the main fork."""
    from drorch.reconcile import walparse as wp

    with pytest.raises(wp.WalFormatError):
        wp.heap_record(1, 2, 10, 3, "insert", False, "1/2/3", 0, 1, None, None, 0, False, None)


def test_wal_read_in_pieces_gives_every_record_once(shared_story: Story,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut into pieces that meet at record starts (8 pieces of a few kB here), the WAL
    read over two connections gives the same records, in the same order, as one read."""
    from drorch.reconcile import walread

    with connect(shared_story.a.dsn()) as c, connect(shared_story.a.dsn()) as helper:
        end = c.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()
        assert end is not None
        dboid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()"
                          ).fetchone()
        assert dboid is not None
        args = (shared_story.divergence.lsn, end[0], f"%rel %/{dboid[0]}/%")
        whole = [r for piece in walread._record_chunks(c, *args, None) for r in piece]
        span = walparse.lsn_to_int(end[0]) - walparse.lsn_to_int(shared_story.divergence.lsn)
        monkeypatch.setattr(walread, "CHUNK_BYTES", max(1, span // 8))
        pieces = list(walread._record_chunks(c, *args, helper))
    assert len(pieces) > 2
    assert [r for piece in pieces for r in piece] == whole and len(whole) > 100


def test_an_old_primary_that_gives_no_second_connection_is_read_with_one(
        shared_story: Story, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second connection that reads the WAL in pieces is a spare: refused (the node's
    connection limit), the one connection reads it all and finds the same."""
    from drorch.reconcile import find as find_mod

    st = shared_story
    asked: list[str] = []

    def refuse(dsn: str, **_kw: object) -> object:
        asked.append(dsn)
        raise psycopg.OperationalError("FATAL: sorry, too many clients already")

    monkeypatch.setattr(find_mod, "open_conn", refuse)
    rep = find_divergence(st.a.dsn(), st.b.dsn(), spec(tmp_path / "c.json"), st.divergence,
                          capture=False)
    assert asked == [st.a.dsn()]
    assert rep.method == "wal"
    for table in KEYED:
        assert _kinds(rep, table) == expected(st, table), table
