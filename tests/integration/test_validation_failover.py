"""After the flip, the service must be proven: flows through real DNS, HTTP, SMTP."""

from __future__ import annotations

import json

import psycopg
import pytest

from drorch.adapters import dns as dnsq
from drorch.exitcodes import ExitCode
from drorch.lab import lab as lab_mod
from drorch.lab.schema import hash_password
from drorch.lab.smtp_sink import find_message
from drorch.store.sqlite import SqliteStore
from tests.conftest import Lab

pytestmark = pytest.mark.postgres


def _store(lab: Lab) -> SqliteStore:
    return SqliteStore(lab.state_dir / "journal.db")


def _last_step(lab: Lab, step: str) -> dict:
    store = _store(lab)
    inc = store.incidents()[-1]
    events = [e for e in store.events(inc.id) if e.kind == "step" and e.name == step]
    return {"state": inc.state, "status": events[-1].status, "detail": events[-1].detail}


def test_flows_pass_in_the_new_region(lab: Lab) -> None:
    """The login/checkout and email flows pass against region-b: DNS answers region-b,
    the checkout's order row is in region-b's database, the email is in the sink."""
    result = lab.cli("failover", "--yes", "--reason", "flows", "--actor", "alice")
    assert result.returncode == 0, result.stdout + result.stderr
    step = _last_step(lab, "validate:flows")
    assert step["status"] == "done"
    flows = _store(lab).fact(_store(lab).incidents()[-1].id, "flows")
    assert {f["name"]: f["ok"] for f in flows} == {"login-checkout": True, "email": True}
    checkout = next(s for f in flows for s in f["steps"] if s["name"] == "checkout")
    assert checkout["connected_to"] == lab_mod.region_address(lab.runbook, "region-b")
    order_id = checkout["response_body"]["order_id"]
    dsn = lab.runbook.database("main").endpoints["region-b"].dsn()
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT region FROM orders WHERE id=%s", (order_id,)).fetchone()
    assert row == ("region-b",)
    ns = lab.runbook.dns.nameservers[0]
    assert dnsq.answers(ns, "app.lab.drorch.test.")[0] == {"127.0.2.1"}
    sent = next(s for f in flows for s in f["steps"] if s["name"] == "send")
    message_id = sent["response_body"]["message_id"]
    assert find_message(lab_mod.mail_dir(lab.runbook), subject_contains=message_id)


def test_failing_flow_halts_with_redacted_evidence(lab: Lab) -> None:
    """A flow that cannot pass (login refused) halts the incident after its deadline,
    and the journal keeps the failing request and response without the password."""
    dsn = lab.runbook.database("main").endpoints["region-a"].dsn()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE users SET password_hash=%s WHERE email='alice@example.com'",
                  (hash_password("changed-by-someone"),))
    result = lab.cli("failover", "--yes", "--reason", "bad flow", "--actor", "alice",
                     extra_env={"DRORCH_LAB_FLOW_DEADLINE_S": "3"})
    assert result.returncode == ExitCode.HALTED
    step = _last_step(lab, "validate:flows")
    assert step["state"] == "halted" and step["status"] == "failed"
    flows = {f["name"]: f for f in step["detail"]["flows"]}
    login = flows["login-checkout"]
    assert not login["ok"] and login["attempts"] >= 2
    evidence = next(s for s in login["steps"] if s["name"] == "login")
    assert evidence["status"] == 401 and evidence["method"] == "POST"
    assert "wonderland" not in json.dumps(step["detail"])
    assert b"wonderland" not in (lab.state_dir / "journal.db").read_bytes()
    assert b"wonderland" not in (lab.state_dir / "audit.jsonl").read_bytes()


def test_dns_that_never_moves_halts_at_the_deadline(lab: Lab) -> None:
    """When the authoritative server keeps answering (here: does not answer), the DNS
    step fails at its deadline with the last answers recorded, and the incident halts."""
    state = lab_mod.LabState.load(lab_mod.state_path(lab.runbook))
    lab_mod.stop_pid(state.services["dns"])
    result = lab.cli("failover", "--yes", "--reason", "dns", "--actor", "alice",
                     extra_env={"DRORCH_LAB_DNS_VERIFY_S": "1.5"})
    assert result.returncode == ExitCode.HALTED
    step = _last_step(lab, "dns:lab.drorch.test.")
    assert step["state"] == "halted" and step["status"] == "failed"
    assert "did not move to region-b within 2s" in step["detail"]["error"]
    assert step["detail"]["dns_answers"]
