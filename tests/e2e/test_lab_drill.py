"""`drorch lab drill`, the README's main job, end to end on the real lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg
import pytest

from drorch.adapters import dns as dnsq
from drorch.config import load_runbook
from drorch.lab import lab as lab_mod
from drorch.lab.postgres import pg_available
from drorch.lab.smtp_sink import list_messages
from tests.conftest import LAB_RUNBOOK, ROOT, lab_env

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not pg_available(),
                                                  reason="PostgreSQL 15 not installed")]


def test_lab_drill_fails_over_by_itself_and_reports(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The drill kills region-a under traffic; afterwards DNS answers region-b, a new
    checkout lands in region-b's database, the flows' email is in the sink, and the
    report's JSON has every step with a duration and RPO/RTO values."""
    env = lab_env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runbook = load_runbook(LAB_RUNBOOK)
    try:
        result = subprocess.run([sys.executable, "-m", "drorch.cli", "lab", "drill", "--keep"],
                                env={**os.environ, **env}, capture_output=True, text=True,
                                timeout=240, cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "RTO:" in result.stdout and "RPO:" in result.stdout

        ns = runbook.dns.nameservers[0]
        assert dnsq.answers(ns, "app.lab.drorch.test.")[0] == {"127.0.2.1"}
        base = f"http://127.0.2.1:{runbook.lab.app_port}"
        with httpx.Client(trust_env=False, timeout=5) as client:
            token = client.post(f"{base}/login", json={"email": "alice@example.com",
                                                       "password": "wonderland"}).json()["token"]
            order = client.post(f"{base}/checkout", json={"amount_cents": 101},
                                headers={"Authorization": f"Bearer {token}"}).json()
        dsn = runbook.database("main").endpoints["region-b"].dsn()
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT region FROM orders WHERE id=%s",
                             (order["order_id"],)).fetchone() == ("region-b",)
        assert list_messages(lab_mod.mail_dir(runbook))

        reports = sorted((Path(env["DRORCH_STATE_DIR"]) / "reports").glob("*.json"))
        report = json.loads(reports[-1].read_text())
        assert report["state"] == "failed_over" and report["outcome"] == "completed"
        assert report["decided_by"]["automatic"] is True
        assert report["decided_by"]["trigger"]["kind"] == "health"
        assert report["steps"] and all(s["duration_s"] is not None for s in report["steps"])
        assert {s["id"] for s in report["steps"]} >= {"promote:main", "dns:lab.drorch.test.",
                                                      "validate:flows"}
        assert report["rto"]["value"] > 0 and report["rto"]["start_basis"] == "first_failure"
        assert set(report["rpo"]) >= {"seconds", "bytes", "method"}
        # region-a was killed under traffic: the replica had commits from just before
        assert 0 <= report["rpo"]["replica_behind_s"] < 5
    finally:
        lab_mod.down(runbook)
