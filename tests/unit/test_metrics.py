"""RPO/RTO arithmetic from the incident record: pure, no clock."""

from __future__ import annotations

from typing import Any

import pytest

from drorch import metrics

T0 = 1_800_000_000.0


def incident(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "first_failure_at": T0,
        "decided_at": T0 + 180,
        "completed_at": T0 + 200,
        "steps": [
            {"id": "freeze:main", "stage": "freeze", "status": "done",
             "started_at": T0 + 181, "ended_at": T0 + 182, "detail": {}},
            {"id": "promote:main", "stage": "promote", "status": "done",
             "started_at": T0 + 182, "ended_at": T0 + 186, "detail": {"wait_s": 3.5}},
            {"id": "dns:app", "stage": "dns", "status": "done", "started_at": T0 + 186,
             "ended_at": T0 + 195, "detail": {"wait_s": {"insync": 1, "ttl": 6}}},
        ],
        "flows": [
            {"name": "a", "ok": True, "started_at": T0 + 195, "ended_at": T0 + 198},
            {"name": "b", "ok": True, "started_at": T0 + 195, "ended_at": T0 + 199},
        ],
        "rpo": {"seconds": 0.8, "bytes": 4096, "transactions": None, "rows": None,
                "method": "lsn-at-promotion"},
        "targets": {"rpo_seconds": 5, "rto_seconds": 300},
    }
    base.update(over)
    return base


def test_lsn_strings_convert_to_integers_and_back() -> None:
    """'0/3000060' is 0x3000060; the high word shifts by 32 bits; round trip holds."""
    assert metrics.lsn_to_int("0/3000060") == 0x3000060
    assert metrics.lsn_to_int("1/0") == 1 << 32
    assert metrics.int_to_lsn(metrics.lsn_to_int("A/1F")) == "A/1F"
    assert metrics.lsn_diff("1/10", "0/FFFFFFF0") == 0x20
    assert metrics.lsn_diff("0/10", "0/20") == -0x10
    with pytest.raises(ValueError):
        metrics.lsn_to_int("3000060")


def test_rpo_estimate_in_seconds_and_bytes() -> None:
    """Seconds from commit times, bytes from LSNs, None where unknown, never negative."""
    assert metrics.rpo_estimate(primary_last_commit=T0 + 2.5, replica_last_replay=T0,
                                primary_lsn="0/3000100", replica_lsn="0/3000000") == {
        "seconds": 2.5, "bytes": 256}
    assert metrics.rpo_estimate(primary_lsn="0/10", replica_lsn="0/20") == {
        "seconds": None, "bytes": 0}
    assert metrics.rpo_estimate() == {"seconds": None, "bytes": None}


def test_compare_against_a_target() -> None:
    """Met when at or under target; None without a target; a missing value misses it."""
    assert metrics.compare(10, 10) == {"value": 10, "target": 10, "met": True}
    assert metrics.compare(11, 10)["met"] is False
    assert metrics.compare(11, None)["met"] is None
    assert metrics.compare(None, 10)["met"] is False


def test_rto_runs_from_first_failure_to_the_last_flow_passing() -> None:
    """RTO ends when the last flow passed, not when the engine wrote 'completed'."""
    out = metrics.rto(incident())
    assert out == {"seconds": 199.0, "start": T0, "end": T0 + 199,
                   "start_basis": "first_failure", "end_basis": "flows_passed"}


def test_failback_rto_counts_only_the_time_writes_were_refused() -> None:
    """A failback serves from the failed-over region while it fences, reconciles and
    resyncs: its RTO runs from the freeze to the flows; the preparation is apart."""
    out = metrics.rto(incident(kind="failback", first_failure_at=None))
    assert (out["seconds"], out["start"], out["start_basis"], out["preparation_s"]) == (
        18.0, T0 + 181, "writes_frozen", 1.0)
    assert "preparation_s" not in metrics.rto(incident(first_failure_at=None))


def test_rto_starts_at_the_decision_without_a_failing_observation() -> None:
    """A drill has no failure: RTO starts at the decision."""
    out = metrics.rto(incident(first_failure_at=None))
    assert (out["seconds"], out["start_basis"]) == (19.0, "decision")


def test_rto_is_unknown_when_a_flow_failed() -> None:
    """A failed flow means recovery was never shown: no RTO."""
    flows = [{"name": "a", "ok": True, "ended_at": T0 + 198},
             {"name": "b", "ok": False, "ended_at": T0 + 230}]
    assert metrics.rto(incident(flows=flows))["seconds"] is None
    summary = metrics.summarize(incident(flows=flows))
    assert summary["rto"]["met"] is False and summary["overhead_s"] is None


def test_rto_without_flows_ends_at_completion_and_says_so() -> None:
    """No flows declared: RTO ends at completed_at, basis 'completed_no_flows'."""
    out = metrics.rto(incident(flows=[]))
    assert (out["seconds"], out["end_basis"]) == (200.0, "completed_no_flows")


def test_phases_detect_decide_steps_validate() -> None:
    """Phases come in order with durations and the waits steps reported."""
    phases = metrics.phases(incident())
    assert [(p["name"], p["duration_s"], p["wait_s"]) for p in phases] == [
        ("detect", 180.0, 0.0), ("decide", 1.0, 0.0), ("freeze:main", 1.0, 0.0),
        ("promote:main", 4.0, 3.5), ("dns:app", 9.0, 7.0), ("validate", 4.0, 0.0)]


def test_a_validate_step_replaces_the_flow_phase_and_pending_steps_have_no_times() -> None:
    """A step of stage validate stands for validation; a pending step keeps None times."""
    steps = [*incident()["steps"],
             {"id": "validate:flows", "stage": "validate", "status": "done",
              "started_at": T0 + 195, "ended_at": T0 + 199, "detail": {}},
             {"id": "fence:old", "stage": "fence", "status": "pending",
              "started_at": None, "ended_at": None, "detail": {}}]
    names = [p["name"] for p in metrics.phases(incident(steps=steps))]
    assert "validate" not in names and names[-2:] == ["validate:flows", "fence:old"]
    assert metrics.phases(incident(steps=steps))[-1]["duration_s"] is None


def test_summary_compares_targets_and_computes_overhead() -> None:
    """RTO 199 s vs 300 met, RPO 0.8 s vs 5 met; overhead = RTO - detection - waits."""
    s = metrics.summarize(incident())
    assert (s["rto"]["value"], s["rto"]["met"]) == (199.0, True)
    assert s["rpo"]["seconds"] == {"value": 0.8, "target": 5, "met": True}
    assert s["rpo"]["bytes"] == 4096
    assert (s["detect_s"], s["waits_s"], s["overhead_s"]) == (180.0, 10.5, 8.5)
    missed = metrics.summarize(incident(targets={"rpo_seconds": 0.5, "rto_seconds": 60}))
    assert missed["rto"]["met"] is False and missed["rpo"]["seconds"]["met"] is False


def test_malformed_waits_count_as_zero() -> None:
    """A wait that is not a number (or a boolean) adds nothing."""
    assert metrics.step_wait({"wait_s": "soon"}) == 0.0
    assert metrics.step_wait({"wait_s": True}) == 0.0
    assert metrics.step_wait({"wait_s": -3}) == 0.0
    assert metrics.step_wait(None) == 0.0


def test_unmeasured_rpo_is_unknown_not_missed() -> None:
    """An RPO the old primary could not give at promotion is reported unknown (to be
    corrected at failback), not as a missed target; a measured one is compared."""
    from drorch.metrics import summarize

    base = {"decided_at": 0.0, "completed_at": 1.0, "steps": [], "flows": [],
            "targets": {"rpo_seconds": 5, "rto_seconds": 30}}
    unknown = summarize({**base, "rpo": {"seconds": None}})["rpo"]["seconds"]
    assert unknown["met"] is None and unknown["unknown"] is True
    measured = summarize({**base, "rpo": {"seconds": 9.0}})["rpo"]["seconds"]
    assert measured["met"] is False and "unknown" not in measured


def test_replica_currency_is_measured_from_the_rto_start() -> None:
    """With the old primary unreachable the report still says how current the replica
    was: its newest commit against the first failure (or the decision without one)."""
    from drorch.metrics import summarize

    base = {"decided_at": 100.0, "completed_at": 101.0, "steps": [], "flows": [],
            "targets": {}, "rpo": {"seconds": None, "replica_last_commit_at": 93.75}}
    assert summarize({**base, "first_failure_at": 94.0})["rpo"]["replica_behind_s"] == 0.25
    assert summarize(base)["rpo"]["replica_behind_s"] == 6.25
    assert summarize({**base, "rpo": {"seconds": None}})["rpo"]["replica_behind_s"] is None
