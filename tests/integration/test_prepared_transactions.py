"""A prepared transaction on region-a at freeze time (found by review).

Ending sessions does not end it; it replicates and sits on the promoted region-b with
its row locks. Whether it commits is its coordinator's decision, not drorch's: the
freeze journals it and the promotion names it on the new primary, in the journal, the
audit and the report's summary, for a human.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from drorch.lab import lab as lab_mod
from tests.conftest import Lab

pytestmark = pytest.mark.postgres


def test_a_prepared_transaction_does_not_survive_into_the_new_primary(lab: Lab) -> None:
    a_ep = lab.runbook.database("main").endpoints["region-a"]
    b_ep = lab.runbook.database("main").endpoints["region-b"]
    for region in ("region-a", "region-b"):
        ep = lab.runbook.database("main").endpoints[region]
        with psycopg.connect(ep.dsn(), autocommit=True) as c:
            c.execute("ALTER SYSTEM SET max_prepared_transactions = 5")
    for region in ("region-b", "region-a"):  # standby first: it needs >= the primary's
        node = lab_mod.node_for(lab.runbook, "main", region)
        node.stop()
        node.start()
    with psycopg.connect(a_ep.dsn(), autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS review_pt (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO review_pt VALUES (1, 'before')")
    with psycopg.connect(a_ep.dsn(), autocommit=True) as c:
        c.execute("BEGIN")
        c.execute("UPDATE review_pt SET v = 'prepared' WHERE id = 1")
        c.execute("PREPARE TRANSACTION 'etl-42'")

    result = lab.cli("failover", "--reason", "planned", "--actor", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(lab.cli("report", "--format", "json").stdout)

    with psycopg.connect(b_ep.dsn(), autocommit=True) as c:
        left = [r[0] for r in c.execute("SELECT gid FROM pg_prepared_xacts")]
    assert left == ["etl-42"]  # replicated: drorch does not decide a 2PC outcome
    # ...but a human is told, where and why, in the report and the journal
    assert "etl-42 (main)" in report["summary"] and "need a human" in report["summary"]
    promote = next(s for s in report["steps"] if s["id"] == "promote:main")
    assert [p["gid"] for p in promote["detail"]["prepared_transactions"]] == ["etl-42"]
    freeze = next(s for s in report["steps"] if s["id"] == "freeze:main")
    assert [p["gid"] for p in freeze["detail"]["prepared_transactions"]] == ["etl-42"]
    with psycopg.connect(b_ep.dsn(), autocommit=True) as c:
        c.execute("ROLLBACK PREPARED 'etl-42'")
