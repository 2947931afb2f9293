"""`drorch lab drill`, the README's main job, end to end on the real lab."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from drorch.adapters import dns as dnsq
from drorch.config import load_runbook
from drorch.lab import lab as lab_mod
from drorch.lab.drill import lost_checkouts
from drorch.lab.postgres import pg_available
from drorch.lab.smtp_sink import list_messages
from drorch.lab.traffic import Checkout
from drorch.store.sqlite import SqliteStore
from tests.conftest import LAB_RUNBOOK, ROOT, lab_env

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not pg_available(),
                                                  reason="PostgreSQL 15 not installed")]

LOST_LINE = re.compile(r"^acknowledged checkouts lost in the failover: (\d+)$", re.M)
TRAFFIC_LINE = re.compile(r"^traffic: (\{.*?\}) acknowledged checkouts per region", re.M)
EVIDENCE_LINE = re.compile(r"^checkouts evidence \(.*?\): (\S+)$", re.M)
RTO_LINE = re.compile(r"^RTO: ([0-9.]+) s", re.M)


def _orders(dsn: str) -> dict[int, tuple[int, str, int, str, float]]:
    """Every order in a database as (id, region, amount, user's e-mail, commit time)."""
    with psycopg.connect(dsn) as c:
        return {r[0]: r for r in c.execute(
            "SELECT o.id, o.region, o.amount_cents, u.email, "
            "extract(epoch FROM pg_xact_commit_timestamp(o.xmin))::float8 "
            "FROM orders o JOIN users u ON u.id = o.user_id")}


def _recount_lost(evidence: dict[str, Any], orders: dict[int, tuple]) -> list[dict[str, Any]]:
    """The lost checkouts, counted again from the evidence and the new primary's rows:
    an acknowledged order is there only when a row has its id, region, amount and user."""
    lost = []
    for ack in evidence["acknowledged"]:
        if ack["region"] != evidence["region_from"]:
            continue
        row = orders.get(ack["order_id"])
        if row is None or row[:4] != (ack["order_id"], ack["region"], ack["amount_cents"],
                                      evidence["user"]):
            lost.append(ack)
    return lost


def test_lab_drill_fails_over_by_itself_and_reports(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The drill kills region-a under traffic; afterwards DNS answers region-b, a new
    checkout lands in region-b's database, the flows' email is in the sink, the report's
    JSON has every step with a duration and real RPO/RTO values, and the lost-checkout
    count it prints is the one region-b's database gives for the acknowledged checkouts
    the drill kept as evidence."""
    env = lab_env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runbook = load_runbook(LAB_RUNBOOK)
    state = Path(env["DRORCH_STATE_DIR"])
    try:
        result = subprocess.run([sys.executable, "-m", "drorch.cli", "lab", "drill", "--keep"],
                                env={**os.environ, **env}, capture_output=True, text=True,
                                timeout=240, cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout

        ns = runbook.dns.nameservers[0]
        assert dnsq.answers(ns, "app.lab.drorch.test.")[0] == {"127.0.2.1"}
        base = f"http://127.0.2.1:{runbook.lab.app_port}"
        with httpx.Client(trust_env=False, timeout=5) as client:
            token = client.post(f"{base}/login", json={"email": "alice@example.com",
                                                       "password": "wonderland"}).json()["token"]
            order = client.post(f"{base}/checkout", json={"amount_cents": 101},
                                headers={"Authorization": f"Bearer {token}"}).json()
        dsn_b = runbook.database("main").endpoints["region-b"].dsn()
        with psycopg.connect(dsn_b) as c:
            assert c.execute("SELECT region FROM orders WHERE id=%s",
                             (order["order_id"],)).fetchone() == ("region-b",)
        assert list_messages(lab_mod.mail_dir(runbook))

        # The evidence the drill kept: every acknowledged checkout, and the lost ones.
        found = sorted((state / "reports").glob("*-checkouts.json"))
        assert len(found) == 1, found
        printed_path = EVIDENCE_LINE.search(out)
        assert printed_path and Path(printed_path.group(1)) == found[0], out
        evidence = json.loads(found[0].read_text())
        assert (evidence["region_from"], evidence["region_to"]) == ("region-a", "region-b")
        assert evidence["user"] == "alice@example.com"
        acked = evidence["acknowledged"]
        per_region = {r: sum(1 for a in acked if a["region"] == r) for r in ("region-a",
                                                                              "region-b")}
        assert per_region["region-a"] >= 20 and per_region["region-b"] >= 20, per_region
        traffic = TRAFFIC_LINE.search(out)
        assert traffic, out
        assert ast.literal_eval(traffic.group(1)) == per_region  # printed "ok" counts

        # Recount from region-b's database, independently of the drill's code.
        orders_b = _orders(dsn_b)
        lost = _recount_lost(evidence, orders_b)
        printed = LOST_LINE.search(out)
        assert printed, out
        assert int(printed.group(1)) == len(lost) == evidence["lost_count"], (
            printed.group(1), lost, evidence["lost"])
        assert evidence["lost"] == lost
        # Every checkout region-b acknowledged after the failover is in its database.
        for ack in acked:
            if ack["region"] == "region-b":
                assert orders_b[ack["order_id"]][:4] == (
                    ack["order_id"], "region-b", ack["amount_cents"], "alice@example.com")

        incident_id = evidence["incident_id"]
        report = json.loads((state / "reports" / f"{incident_id}.json").read_text())
        assert report["incident_id"] == incident_id
        assert report["state"] == "failed_over" and report["outcome"] == "completed"
        assert report["decided_by"]["automatic"] is True
        assert report["decided_by"]["trigger"]["kind"] == "health"
        assert report["steps"] and all(s["duration_s"] is not None for s in report["steps"])
        assert {s["id"] for s in report["steps"]} >= {"promote:main", "dns:lab.drorch.test.",
                                                      "validate:flows"}

        # RTO: a real value, judged against the runbook's target, the one printed. (How
        # fast is a benchmark's question, not a test's: bench/bench_failover.py --drill.)
        rto = report["rto"]
        assert rto["start_basis"] == "first_failure" and rto["end_basis"] == "flows_passed"
        assert rto["target"] == runbook.targets.rto_seconds
        assert rto["value"] is not None and rto["value"] > 0, rto
        assert rto["met"] is (rto["value"] <= rto["target"])
        assert rto["value"] == pytest.approx(rto["end"] - rto["start"], abs=1e-3)
        printed_rto = RTO_LINE.search(out)
        assert printed_rto and float(printed_rto.group(1)) == pytest.approx(rto["value"],
                                                                           abs=0.01), out

        # RPO: region-a was unreachable, so the facts are how current the replica was.
        rpo = report["rpo"]
        store = SqliteStore(state / "journal.db")
        try:
            measured = store.fact(incident_id, "promote:main:measured")
        finally:
            store.close()
        assert measured["old_reachable"] is False and measured["rpo_exact"] is False
        assert rpo["method"], rpo
        last_commit = rpo["replica_last_commit_at"]
        assert isinstance(last_commit, float), rpo
        assert last_commit == pytest.approx(measured["replica_last_commit_at"], abs=1e-3)
        assert isinstance(rpo["replica_behind_s"], float), rpo
        assert rpo["replica_behind_s"] == pytest.approx(rto["start"] - last_commit, abs=1e-3)
        assert rpo["replica_behind_s"] >= 0, rpo
        # ... and those facts agree with the databases: every region-a order region-b has
        # was committed no later than the newest commit the replica had replayed (commit
        # timestamps of concurrent sessions can be out of WAL order by a scheduling delay:
        # 0.1 s of slack), and every lost checkout was acknowledged after it (its commit
        # record follows the last replayed one in the WAL).
        replicated = [r for r in orders_b.values() if r[1] == "region-a"]
        assert replicated
        assert max(r[4] for r in replicated) <= last_commit + 0.1, last_commit
        assert all(a["at"] > last_commit for a in lost), (last_commit, lost)

        # lost_checkouts matches the order the client was told about, not just an id: a
        # region-b order under an id region-a had acknowledged is no proof that region-a's
        # order survived.
        t = time.time()
        assert lost_checkouts(runbook, "region-a", "region-b",
                              [Checkout(t, "region-a", order["order_id"], 1999)],
                              "alice@example.com") == 1
        assert lost_checkouts(runbook, "region-b", "region-b",
                              [Checkout(t, "region-b", order["order_id"], 101)],
                              "alice@example.com") == 0
        assert lost_checkouts(runbook, "region-b", "region-b",
                              [Checkout(t, "region-b", order["order_id"], 101)],
                              "bob@example.com") == 1
    finally:
        lab_mod.down(runbook)


MISSING_AFTER = re.compile(
    r"^acknowledged checkouts missing from region-a after the failback: (\d+)$", re.M)


@pytest.mark.parametrize("runbook_name", ["aws-rds.yaml", "aws-aurora-global.yaml"])
def test_lab_drill_with_failback_on_managed_databases_comes_back_with_every_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runbook_name: str) -> None:
    """`drorch lab drill --runbook runbooks/aws-rds.yaml --failback` (and the Aurora
    runbook): region-a dies under traffic, the watcher fails over (PromoteReadReplica;
    FailoverGlobalCluster with data loss), region-a comes back (RDS: as it was left;
    Aurora: rebuilt as a secondary), and the failback (RDS: fence, snapshot, full
    comparison, a new replica under the old identifier, the switch back, a new replica in
    region-b; Aurora: the snapshot restored to a temporary cluster, reconciled, deleted,
    a switchover back) ends with every checkout region-a acknowledged in region-a's
    database again, recounted here from the evidence the drill kept."""
    path = ROOT / "runbooks" / runbook_name
    env = {**lab_env(tmp_path), "DRORCH_RUNBOOK": str(path)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runbook = load_runbook(path)
    state = Path(env["DRORCH_STATE_DIR"])
    try:
        result = subprocess.run(
            [sys.executable, "-m", "drorch.cli", "lab", "drill", "--keep", "--failback",
             "--runbook", f"runbooks/{runbook_name}"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
        printed = MISSING_AFTER.search(result.stdout)
        assert printed and printed.group(1) == "0", result.stdout
        [found] = sorted((state / "reports").glob("*-checkouts.json"))
        evidence = json.loads(found.read_text())
        orders_a = _orders(runbook.database("main").endpoints["region-a"].dsn())
        assert _recount_lost({**evidence, "region_from": "region-a"}, orders_a) == []
        assert sum(1 for a in evidence["acknowledged"] if a["region"] == "region-a") >= 20
        reports = sorted(p for p in (state / "reports").glob("*.json")
                         if not p.name.endswith("-checkouts.json"))
        back = json.loads(reports[-1].read_text())
        assert (back["kind"], back["state"]) == ("failback", "monitoring")
        assert back["reconcile"]["main"]["acknowledged_rows_lost"] == 0
        assert back["rto"]["value"] is not None and back["rpo"]["seconds"]["value"] == 0
    finally:
        lab_mod.down(runbook)
