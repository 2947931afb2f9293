"""The incident report: stable JSON keys, Markdown and HTML that say the same, no secrets."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from drorch.report import SCHEMA_VERSION, build_report, gantt_svg, render, render_html

T0 = 1_800_000_000.0
SECRET = "hunter2-very-secret"
TOKEN = "tok-abcdefghijklmnopqrstuvwxyz"

TOP_KEYS = {
    "schema_version", "incident_id", "kind", "runbook", "from_region", "to_region", "state",
    "outcome", "summary", "decided_by", "times", "rto", "rpo", "targets_missed", "detect_s",
    "waits_s", "overhead_s", "phases", "steps", "flows", "timeline", "audit", "not_done",
    "detection",
}


def incident(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "incident_id": "inc-42", "kind": "failover", "runbook": "lab", "actor": "auto",
        "reason": "region-a failed for 3 min", "state": "failed_over",
        "from_region": "region-a", "to_region": "region-b",
        "trigger": {"kind": "health", "detail": "3/3 probes failing"},
        "first_failure_at": T0, "decided_at": T0 + 180, "completed_at": T0 + 200,
        "steps": [
            {"id": "freeze:main", "stage": "freeze", "status": "done", "started_at": T0 + 181,
             "ended_at": T0 + 182, "detail": {"dsn": f"host=x password={SECRET}"}},
            {"id": "promote:main", "stage": "promote", "status": "done",
             "started_at": T0 + 182, "ended_at": T0 + 186,
             "detail": {"wait_s": 3.5, "rpo_bytes": 4096, "password": SECRET}},
            {"id": "dns:app", "stage": "dns", "status": "done", "started_at": T0 + 186,
             "ended_at": T0 + 195, "detail": {"wait_s": 7}},
            {"id": "fence:old", "stage": "fence", "status": "pending", "started_at": None,
             "ended_at": None, "detail": {}},
        ],
        "transitions": [{"at": T0 + 180, "trigger": "fail_over", "state": "failing_over"}],
        "flows": [
            {"name": "buy", "ok": True, "attempts": 2, "duration_s": 4.0, "started_at": T0 + 195,
             "ended_at": T0 + 199, "error": None,
             "steps": [{"name": "checkout", "method": "POST", "url": "http://app/checkout",
                        "request_headers": {"Authorization": f"Bearer {TOKEN}"},
                        "response_body": {"token": TOKEN}}],
             "checks": []},
        ],
        "rpo": {"seconds": 0.8, "bytes": 4096, "transactions": None, "rows": None,
                "method": "lsn-at-promotion"},
        "targets": {"rpo_seconds": 5, "rto_seconds": 300},
        "audit": {"path": "/var/drorch/audit.jsonl", "head": "abc123"},
    }
    base.update(over)
    return base


def test_report_json_has_the_documented_keys() -> None:
    """Schema version 1 has exactly the documented top-level and nested keys."""
    report = build_report(incident())
    assert report["schema_version"] == SCHEMA_VERSION == 1
    assert set(report) == TOP_KEYS
    assert set(report["decided_by"]) == {"actor", "automatic", "trigger", "reason"}
    assert set(report["times"]) == {"first_failure_at", "decided_at", "completed_at"}
    assert set(report["times"]["decided_at"]) == {"at", "iso"}
    assert set(report["rto"]) == {"value", "target", "met", "start", "end", "start_basis",
                                  "end_basis"}
    assert set(report["rpo"]) == {"seconds", "bytes", "transactions", "rows", "method",
                                  "after_failover", "replica_last_commit_at", "caveats",
                                  "replica_behind_s"}
    assert set(report["rpo"]["seconds"]) == {"value", "target", "met"}
    assert set(report["steps"][0]) == {"id", "stage", "status", "started_at", "ended_at",
                                       "duration_s", "wait_s", "detail"}
    assert set(report["timeline"][0]) == {"at", "at_iso", "offset_s", "event", "detail"}
    assert set(report["phases"][0]) == {"name", "kind", "started_at", "ended_at",
                                        "duration_s", "wait_s"}


def test_report_values_describe_the_incident() -> None:
    """Outcome, decision, RTO/RPO verdicts and the ordered timeline are filled in."""
    report = build_report(incident())
    assert report["outcome"] == "completed"
    assert report["decided_by"] == {"actor": "auto", "automatic": True,
                                    "trigger": {"kind": "health", "detail": "3/3 probes failing"},
                                    "reason": "region-a failed for 3 min"}
    assert (report["rto"]["value"], report["rto"]["met"]) == (199.0, True)
    assert report["targets_missed"] == []
    assert report["times"]["first_failure_at"]["iso"].startswith("2027-01-15T")
    offsets = [e["offset_s"] for e in report["timeline"]]
    assert offsets == sorted(offsets) and offsets[0] == 0.0
    assert report["timeline"][0]["event"] == "first_failure"
    assert "flow_passed" in [e["event"] for e in report["timeline"]]
    assert "RTO 199.0 s (target 300 s, met)" in report["summary"]


def test_report_is_plain_json_and_stable() -> None:
    """The report survives a JSON round trip unchanged and is the same when built twice."""
    report = build_report(incident())
    assert json.loads(render(report, "json")) == report == build_report(incident())


def test_no_secret_reaches_any_format() -> None:
    """Passwords in step details and tokens in flow evidence are masked in JSON, MD, HTML."""
    report = build_report(incident())
    for fmt in ("json", "md", "html"):
        text = render(report, fmt)
        assert SECRET not in text, fmt
        assert TOKEN not in text, fmt
    assert report["steps"][1]["detail"]["rpo_bytes"] == 4096


def test_missed_targets_are_flagged() -> None:
    """An RTO over target is listed as missed, MISSED in Markdown and red in HTML."""
    report = build_report(incident(targets={"rpo_seconds": 5, "rto_seconds": 60}))
    assert report["targets_missed"] == ["rto"]
    md = render(report, "md")
    assert "| RTO | 199.000 s | 60 s | **MISSED** |" in md
    assert "| RPO (time) | 0.800 s | 5 s | met |" in md
    html = render_html(report)
    assert re.search(r'<tr class="miss"><td>RTO</td>', html)
    assert not re.search(r'<tr class="miss"><td>RPO', html)
    assert ".miss{color:#c00" in html
    ok_html = render_html(build_report(incident()))
    assert '<tr class="miss">' not in ok_html


def test_the_gantt_has_one_bar_per_timed_step() -> None:
    """The SVG is well-formed and has one step bar per step that ran, none for pending."""
    report = build_report(incident())
    svg = ET.fromstring(gantt_svg(report))
    bars = [el for el in svg.iter("{http://www.w3.org/2000/svg}rect")
            if el.get("class") == "bar step"]
    assert [b.get("data-step") for b in bars] == ["freeze:main", "promote:main", "dns:app"]
    phases = [el.get("data-phase") for el in svg.iter("{http://www.w3.org/2000/svg}rect")
              if el.get("data-phase")]
    assert phases == ["detect", "decide", "validate"]
    assert "fence:old" in gantt_svg(report)  # labelled, marked not started
    assert gantt_svg(report) in render_html(report)


def test_html_is_self_contained_and_escaped() -> None:
    """No external resources or scripts; names from the record are HTML-escaped."""
    steps = [{"id": "<script>alert(1)</script>", "stage": "x", "status": "failed",
              "started_at": T0 + 181, "ended_at": T0 + 182, "detail": {}}]
    html = render_html(build_report(incident(steps=steps, state="halted")))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "halted" in html


def test_markdown_steps_carry_their_note() -> None:
    """A step that did something other than its plan says so in the steps table."""
    steps = [{"id": "freeze:main", "stage": "freeze", "status": "done", "started_at": T0 + 181,
              "ended_at": T0 + 182, "detail": {"reachable": False,
                                               "note": "region-a unreachable: nothing to freeze"}}]
    md = render(build_report(incident(steps=steps)), "md")
    (row,) = [line for line in md.splitlines() if line.startswith("| freeze:main |")]
    assert row.endswith("| region-a unreachable: nothing to freeze |")


def test_failed_flows_and_halts_set_the_outcome() -> None:
    """A failed flow makes the outcome 'failed' (no RTO); a halted machine says 'halted'."""
    flows = [{"name": "buy", "ok": False, "attempts": 5, "duration_s": 30.0,
              "started_at": T0 + 195, "ended_at": T0 + 225, "error": "step checkout: 500",
              "steps": [], "checks": []}]
    report = build_report(incident(flows=flows))
    assert report["outcome"] == "failed"
    assert report["rto"]["value"] is None and report["targets_missed"] == ["rto"]
    assert "| buy | **FAILED** | 5 |" in render(report, "md")
    assert build_report(incident(state="halted"))["outcome"] == "halted"


def test_a_manual_drill_without_failure_time() -> None:
    """A drill decided by a human: not automatic, RTO from the decision."""
    report = build_report(incident(kind="drill", actor="alice", first_failure_at=None,
                                   trigger={"kind": "manual", "detail": "quarterly drill"}))
    assert report["decided_by"]["automatic"] is False
    assert report["rto"]["start_basis"] == "decision"
    assert report["timeline"][0]["event"] == "decided"
    assert "Drill inc-42" in report["summary"]


def test_unknown_format_is_refused() -> None:
    """Asking for a format that does not exist raises ValueError listing the choices."""
    with pytest.raises(ValueError, match="json, md, html"):
        render(build_report(incident()), "pdf")


def test_the_documentation_lists_every_top_level_key() -> None:
    """docs/report-json.md's top-level table names exactly the keys the report has (a
    failback's report adds ``reconcile``)."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "report-json.md").read_text()
    section = doc.split("## Top level", 1)[1].split("\n### ", 1)[0]
    documented: set[str] = set()
    for cells in re.findall(r"^\| (`[^|]+`) \|", section, flags=re.MULTILINE):
        documented |= set(re.findall(r"`([a-z_]+)`", cells))
    assert documented == TOP_KEYS | {"reconcile", "old_region"}
    old = {"region": "region-a", "write_flag_on_return": None, "databases": {"main": {
        "reachable_at_freeze": False,
        "fenced_on_return": {"state": "fenced", "by": "watch", "at": 1.0e9, "times": 1}}}}
    failover = build_report(incident(old_region=old))
    assert set(failover) == TOP_KEYS | {"old_region"} and failover["old_region"] == old
    shown = render(failover, "md")
    assert "## What was known about region-a" in shown
    assert "main: did not answer the freeze; came back and was fenced (fenced) by watch" in shown
    section = {"main": {"method": "wal", "acknowledged_rows_lost": 0, "tables": []}}
    failback = build_report(incident(kind="failback", reconcile=section))
    assert set(failback) == TOP_KEYS | {"reconcile"} and failback["reconcile"] == section
    markdown = render(failback, "md")
    assert "## Reconcile: main" in markdown and "Acknowledged rows lost: 0." in markdown
    assert "Acknowledged rows lost: 0." in render(failback, "html")
