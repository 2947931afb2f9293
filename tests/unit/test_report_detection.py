"""The report's ``detection`` section: the alarm that raised an outage, the probes that
confirmed it, and which came first, from the trigger the watcher records."""

from __future__ import annotations

from typing import Any

from drorch.report_detection import detection

T0 = 1_800_000_000.0


def _trigger(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "kind": "health", "detail": "region-a failed", "region": "region-a",
        "first_failure_at": T0, "decided_at": T0 + 6, "down": ["db", "db-port", "app"],
        "alarms": ["lab-a-unhealthy"], "probe_failing_since": T0, "probes": 3, "quorum": 2,
        "alarm_events": [{"name": "lab-a-unhealthy", "state": "ALARM", "changed_at": T0 - 0.4,
                          "received_at": T0, "reason": "Threshold Crossed: 2 out of 2"}]}
    return base | over


def test_an_alarm_that_fired_before_the_probes_failed_is_named_with_the_confirming_probes(
) -> None:
    """Alarm first, probes confirm: both are named, with CloudWatch's time and drorch's."""
    d = detection(_trigger())
    assert d["first_signal"] == "alarm" and d["alarm_alone"] is False
    (alarm,) = d["alarms"]
    assert alarm["name"] == "lab-a-unhealthy" and alarm["changed_at"] == T0 - 0.4
    assert alarm["received_at_iso"].startswith("2027-01-15T08:00:00")
    assert d["confirmed_by"] == {"probes_down": ["db", "db-port", "app"], "probes": 3,
                                 "quorum": 2, "failing_since": T0,
                                 "failing_since_iso": "2027-01-15T08:00:00.000+00:00"}
    assert d["sentence"] == ("alarm lab-a-unhealthy fired first; probes db, db-port, app "
                             "failing (3/3, quorum 2) confirmed it")


def test_probes_that_failed_before_the_alarm_are_the_first_signal() -> None:
    """An alarm whose state changed after the probes' count began came second."""
    late = [{"name": "lab-a-unhealthy", "state": "ALARM", "changed_at": T0 + 2,
             "received_at": T0 + 2.5, "reason": "r"}]
    d = detection(_trigger(alarm_events=late))
    assert d["first_signal"] == "probes"
    assert d["sentence"].endswith("; alarm lab-a-unhealthy fired after them")
    assert detection(_trigger(alarm_events=[], alarms=[]))["first_signal"] == "probes"


def test_an_alarm_that_counted_alone_has_no_confirming_probes() -> None:
    d = detection(_trigger(kind="alarm", down=[], probe_failing_since=None))
    assert (d["first_signal"], d["alarm_alone"], d["confirmed_by"]) == ("alarm", True, None)
    assert "counted alone" in d["sentence"]


def test_a_human_decision_and_an_older_trigger() -> None:
    """Manual: no signal. A trigger recorded before alarm details were kept still names
    its alarms (times unknown) and takes the health count as the probes'."""
    manual = detection({"kind": "manual", "detail": "drill"})
    assert (manual["first_signal"], manual["alarms"], manual["confirmed_by"]) == (
        "manual", [], None)
    old = detection({"kind": "health", "first_failure_at": T0, "down": ["db", "app"],
                     "alarms": ["x"]})
    assert old["alarms"][0]["name"] == "x" and old["alarms"][0]["changed_at"] is None
    assert old["first_signal"] == "probes"  # the alarm's time is unknown: not claimed first
    assert old["confirmed_by"]["failing_since"] == T0
